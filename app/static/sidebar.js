// The side list of conversations: newest first, searched by their text; rename, export and delete each,
// export them all, import an export back. On a narrow screen it slides over the chat and closes once a
// conversation is picked.

import * as store from "./store.js";

const $ = (id) => document.getElementById(id);
const NARROW = window.matchMedia("(max-width: 48rem)");

// `open(id)`: show that conversation; `deleted(id)`: it is gone; `currentId()`: the one on screen (or
// null); `busy()`: an answer is streaming (the list then only shows).
export function createSidebar({ open, deleted, currentId, busy }) {
  const ui = {
    body: document.body,
    sidebar: $("sidebar"),
    toggle: $("sidebar-toggle"),
    search: $("search"),
    list: $("conversations"),
    note: $("storage-note"),
    exportAll: $("export-all"),
    importButton: $("import"),
    importFile: $("import-file"),
    backdrop: $("backdrop"),
  };

  function say(text) {
    ui.note.textContent = text;
    ui.note.hidden = !text;
  }

  function refresh() {
    const query = ui.search.value.trim().toLowerCase();
    const shown = store.conversations().filter((c) => !query || store.searchText(c).includes(query));
    ui.list.replaceChildren(...shown.map(item));
    ui.exportAll.disabled = store.conversations().length === 0;
  }

  function item(conv) {
    const li = document.createElement("li");
    li.className = "conversation";
    li.dataset.id = conv.id;
    if (conv.id === currentId()) li.setAttribute("aria-current", "true");
    const title = button("open", conv.title, `${conv.title}\n${new Date(conv.updatedAt).toLocaleString()}`);
    const actions = document.createElement("span");
    actions.className = "item-actions";
    actions.append(
      button("rename", "✎", "Rename"), button("export", "⤓", "Export as JSON"), button("delete", "✕", "Delete")
    );
    li.append(title, actions);
    return li;
  }

  function button(className, text, title) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = text;
    b.title = title;
    if (className !== "open") b.setAttribute("aria-label", title);
    return b;
  }

  function rename(li, conv) {
    const input = document.createElement("input");
    input.className = "rename-input";
    input.value = conv.title;
    input.setAttribute("aria-label", "New name");
    li.querySelector(".open").replaceWith(input);
    input.focus();
    input.select();
    let done = false;
    const finish = (keep) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (keep && title && title !== conv.title) {
        conv.title = title;
        conv.renamed = true;
        store.save(conv, { touch: false });
      }
      refresh();
    };
    input.addEventListener("keydown", (event) => {
      if (event.isComposing || event.keyCode === 229) return;
      if (event.key === "Enter") finish(true);
      else if (event.key === "Escape") finish(false);
      event.stopPropagation(); // Esc here cancels the rename, not the answer
    });
    input.addEventListener("blur", () => finish(true));
  }

  ui.list.addEventListener("click", (event) => {
    const target = event.target.closest("button");
    const li = event.target.closest("li.conversation");
    if (!target || !li) return;
    const conv = store.get(li.dataset.id);
    if (!conv) return;
    if (target.classList.contains("export")) {
      download(`hychat-${slug(conv.title)}.json`, store.exportJSON([conv]));
    } else if (busy()) {
      say("Wait for the answer to end (or Stop it) first.");
    } else if (target.classList.contains("open")) {
      open(conv.id);
      if (NARROW.matches) showList(false);
    } else if (target.classList.contains("rename")) {
      rename(li, conv);
    } else if (target.classList.contains("delete") && window.confirm(`Delete "${conv.title}"?`)) {
      store.remove(conv.id);
      deleted(conv.id);
      refresh();
    }
  });

  ui.search.addEventListener("input", refresh);
  ui.exportAll.addEventListener("click", () => {
    download(`hychat-conversations-${new Date().toISOString().slice(0, 10)}.json`, store.exportJSON(store.conversations()));
  });
  ui.importButton.addEventListener("click", () => ui.importFile.click());
  ui.importFile.addEventListener("change", async () => {
    const file = ui.importFile.files[0];
    ui.importFile.value = "";
    if (!file) return;
    try {
      const imported = store.parseImport(await file.text());
      let dropped = 0;
      for (const conv of imported) dropped += store.save(conv, { touch: false, keep: currentId() });
      say(`Imported ${imported.length} conversation${imported.length === 1 ? "" : "s"}.${droppedNote(dropped)}`);
      if (imported.some((c) => c.id === currentId()) && !busy()) open(currentId());
    } catch (error) {
      say(`Nothing imported: ${error.message}.`);
    }
    refresh();
  });

  // Open on a wide screen and closed on a narrow one, unless the user says otherwise.
  const showList = (visible) => {
    ui.body.dataset.sidebar = visible ? "open" : "closed";
    ui.toggle.setAttribute("aria-expanded", String(visible));
  };
  ui.toggle.addEventListener("click", () => showList(!ui.sidebar.checkVisibility()));
  ui.backdrop.addEventListener("click", () => showList(false));
  ui.toggle.setAttribute("aria-expanded", String(ui.sidebar.checkVisibility()));

  return { refresh, say };
}

export function droppedNote(dropped) {
  return dropped
    ? ` ${dropped} older conversation${dropped === 1 ? " was" : "s were"} removed to stay within this browser's storage.`
    : "";
}

function slug(title) {
  return title.replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-|-$/g, "").slice(0, 40) || "chat";
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000); // the download has started long before
}
