// The chat page: sends the branch of the conversation on screen to POST /v1/chat/completions with
// "stream": true and renders the answer as it arrives, with the model's reasoning (if any) in a
// collapsible block above it. The model is picked from GET /v1/models; in compare mode each question
// goes to two models at once, answered side by side. Conversations are kept in this browser
// (store.js) and listed beside the chat (sidebar.js); a question can be edited and an answer
// regenerated, each earlier version kept as a branch. Plain browser JavaScript, no build step:
// this module and the ones it imports, after the vendored libraries in vendor/.

import * as store from "./store.js";
import { ChatError, listModels, streamChat } from "./api.js";
import { MAX_FILES, messageText, readTextFile } from "./files.js";
import { renderInto, renderMarkdown } from "./render.js";
import { createSidebar, droppedNote } from "./sidebar.js";
import * as views from "./views.js";

const SETTINGS_KEY = "hychat.settings";
// think: "" leaves thinking to the server's default (the model's own behaviour), "on" or "off" asks.
// model, modelB: "" is the server's default (the first model GET /v1/models lists).
// theme: "system" follows the browser's prefers-color-scheme.
const DEFAULTS = {
  temperature: 0.7, maxTokens: 512, think: "", system: "", apiKey: "", model: "", modelB: "", compare: false,
  theme: "system",
};
const THINK = { on: true, off: false };
const THEMES = ["system", "light", "dark"];
const STATES = { loaded: "loaded", unloaded: "not loaded", failed: "failed" };

const $ = (id) => document.getElementById(id);
const ui = {
  messages: $("messages"),
  empty: $("empty"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  newChat: $("new-chat"),
  model: $("model"),
  modelB: $("model-b"),
  modelBPicker: $("model-b-picker"),
  compare: $("compare"),
  settingsToggle: $("settings-toggle"),
  settings: $("settings"),
  temperature: $("temperature"),
  maxTokens: $("max-tokens"),
  think: $("think"),
  theme: $("theme"),
  system: $("system"),
  apiKey: $("api-key"),
  attach: $("attach"),
  attachFile: $("attach-file"),
  attachments: $("attachments"),
  attachError: $("attach-error"),
};

let conv = null; // the conversation on screen; null for a new chat until its first question
let controller = null; // the running answers' AbortController (Stop aborts them all); null when idle
let models = []; // GET /v1/models' data: empty until it has answered
let pending = []; // the files attached to the next question: [{name, size, text}]

// --- settings, kept in localStorage -------------------------------------------------------------

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
  } catch {
    saved = {};
  }
  const s = { ...DEFAULTS, ...saved };
  ui.temperature.value = s.temperature;
  ui.maxTokens.value = s.maxTokens;
  ui.think.value = Object.hasOwn(THINK, s.think) ? s.think : DEFAULTS.think;
  ui.theme.value = THEMES.includes(s.theme) ? s.theme : DEFAULTS.theme;
  ui.system.value = s.system;
  ui.apiKey.value = s.apiKey;
  ui.compare.checked = s.compare === true;
  ui.modelBPicker.hidden = !ui.compare.checked;
  // Chosen once the list of models has come (fillPicker); until then the choice is kept here.
  ui.model.dataset.saved = s.model;
  ui.modelB.dataset.saved = s.modelB;
  applyTheme();
}

function readSettings() {
  const number = (input, fallback) => (input.value.trim() === "" ? fallback : Number(input.value));
  return {
    temperature: number(ui.temperature, DEFAULTS.temperature),
    maxTokens: Math.round(number(ui.maxTokens, DEFAULTS.maxTokens)),
    think: ui.think.value,
    theme: ui.theme.value,
    system: ui.system.value,
    apiKey: ui.apiKey.value.trim(),
    model: ui.model.value || ui.model.dataset.saved,
    modelB: ui.modelB.value || ui.modelB.dataset.saved,
    compare: ui.compare.checked,
  };
}

function saveSettings() {
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(readSettings()));
}

// chat.css picks the colours: prefers-color-scheme unless data-theme names one.
function applyTheme() {
  const theme = ui.theme.value;
  if (theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
}

function openSettings() {
  ui.settings.hidden = false;
  ui.settingsToggle.setAttribute("aria-expanded", "true");
  ui.apiKey.focus();
}

// --- the models, from GET /v1/models --------------------------------------------------------------

// Lists the models with their state; again after each answer, as a request loads the model it names.
// False when the server would not list them (no API key yet): requests then go to its default model.
async function loadModels() {
  try {
    models = await listModels(readSettings().apiKey);
  } catch (error) {
    ui.model.title = `The models could not be listed: ${error.message}`;
    return false;
  }
  ui.model.title = "";
  fillPicker(ui.model, () => usable()[0]);
  fillPicker(ui.modelB, () => usable().find((m) => m.id !== ui.model.value) ?? usable()[0]);
  return true;
}

function usable() {
  return models.filter((m) => m.status?.value !== "failed");
}

// The select's options, keeping its choice (or the saved one) while that model can answer, else
// `fallback()`'s: the default model for A, another one for B.
function fillPicker(select, fallback) {
  const wanted = select.value || select.dataset.saved;
  select.replaceChildren(
    ...models.map((m) => {
      const state = m.status?.value;
      const option = new Option(`${m.id} · ${STATES[state] ?? state ?? "unknown"}`, m.id);
      option.disabled = state === "failed";
      if (m.status?.problem) option.title = m.status.problem;
      return option;
    })
  );
  select.value = usable().some((m) => m.id === wanted) ? wanted : (fallback()?.id ?? "");
}

// The backend of the model `name` names (its id or an alias), when the list has it.
function backendOf(name) {
  return models.find((m) => m.id === name || m.aliases?.includes(name))?.backend;
}

// --- the conversation on screen -----------------------------------------------------------------

// The conversation on screen is named in the URL's fragment, so that a reload comes back to it.
function showInUrl(id) {
  history.replaceState(null, "", id ? `#${id}` : `${location.pathname}${location.search}`);
}

// Keeps `conv` in this browser; says so when older conversations had to go to make room.
function persist({ touch = true } = {}) {
  showInUrl(conv.id);
  try {
    const dropped = store.save(conv, { touch });
    if (dropped) sidebar.say(droppedNote(dropped).trim());
  } catch (error) {
    sidebar.say(`This conversation could not be kept in this browser (${error.message}).`);
  }
  sidebar.refresh();
}

function position(node) {
  const all = store.siblings(conv, node);
  return [all.indexOf(node.id), all.length];
}

// Draws the branch on screen; returns the views of its last answer (to stream into).
function render() {
  const path = conv ? store.branch(conv) : [];
  const elements = [];
  let last = null;
  for (const node of path) {
    if (node.role === "user") {
      elements.push(views.userView(node, position(node)));
    } else {
      last = views.assistantView(node, position(node));
      elements.push(last.element);
    }
  }
  ui.messages.replaceChildren(ui.empty, ...elements);
  ui.empty.hidden = elements.length > 0;
  return last;
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToBottom() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.newChat.disabled = busy;
  document.body.dataset.busy = busy ? "true" : "false";
}

function newChat() {
  if (controller) return;
  conv = null;
  showInUrl(null);
  render();
  sidebar.refresh();
  ui.input.focus();
}

function open(id) {
  conv = store.get(id);
  showInUrl(id);
  render();
  sidebar.refresh();
  scrollToBottom();
}

// A new question at the end of the branch on screen, then its answer.
async function ask(content, files) {
  if (!conv) conv = store.newConversation();
  const question = store.addNode(conv, conv.leaf, { role: "user", content, files });
  await answer(question);
}

// Answers `question` (a user node) with a new assistant node under it: a first answer, a regenerated
// one, or the answer to an edited question. In compare mode the node holds two answers, each streamed
// from its own model with its own column's history.
async function answer(question) {
  controller = new AbortController();
  setBusy(true);
  if (!models.length) await loadModels(); // listed once the API key is set; names the default model
  const settings = readSettings();
  const picked = settings.compare ? [settings.model, settings.modelB] : [settings.model];
  const node = store.addNode(conv, question.id, {
    role: "assistant",
    answers: picked.map((name) => ({ asked: name, content: "", reasoning: "" })),
  });
  store.show(conv, node.id);
  persist();
  const columns = render().columns;
  scrollToBottom();
  const path = store.branch(conv, question.id);
  // Both columns at once, each with its own history; Stop (the one controller) aborts both.
  const { signal } = controller;
  await Promise.all(
    columns.map((view, i) => streamInto(view, node.answers[i], store.history(path, i), settings, signal))
  );
  controller = null;
  setBusy(false);
  persist();
  loadModels(); // a request loads the model it names: its state has changed
}

// Streams the answer to `turns` into `view` and into `saved` (the stored answer). A stopped answer
// keeps its text, which the model sees in later turns; a failed one keeps its error.
async function streamInto(view, saved, turns, settings, signal) {
  view.article.classList.add("streaming");
  const messages = settings.system.trim() ? [{ role: "system", content: settings.system }, ...turns] : turns;
  let reasoning = null; // its block, once some has arrived
  let frame = 0; // one render per animation frame, however fast the tokens come
  const draw = () => {
    frame = 0;
    const follow = nearBottom();
    if (reasoning) reasoning.text.textContent = saved.reasoning.trim();
    renderInto(view.content, saved.content);
    if (follow) scrollToBottom();
  };
  // The time to first token as the user waits for it: the queue and loading the model included.
  const started = performance.now();
  let firstAt = 0;
  const onPiece = (reasoningPiece, textPiece) => {
    firstAt ||= performance.now();
    if (reasoningPiece) {
      reasoning ??= views.addReasoning(view);
      saved.reasoning += reasoningPiece;
    }
    if (textPiece) {
      saved.content += textPiece;
      if (reasoning?.details.dataset.state === "streaming") views.endReasoning(reasoning);
    }
    if (!frame) frame = requestAnimationFrame(draw);
  };
  try {
    const body = {
      model: saved.asked || undefined, // left out, for the server's default model, until the list has come
      messages,
      stream: true,
      stream_options: { include_usage: true },
      temperature: settings.temperature,
      max_tokens: settings.maxTokens,
      think: THINK[settings.think], // not OpenAI's, hychat's; undefined, so left out, for the model's default
    };
    const end = await streamChat(body, settings.apiKey, signal, onPiece);
    const tokens = end.usage?.completion_tokens;
    const decodeS = (performance.now() - firstAt) / 1000; // when the server sends no timings
    saved.reasoningTokens = end.usage?.completion_tokens_details?.reasoning_tokens;
    if (reasoning) views.endReasoning(reasoning, saved.reasoningTokens);
    saved.usage = {
      backend: backendOf(end.model) ?? backendOf(saved.asked),
      model: end.model,
      tokensPerS: end.timings?.predicted_per_second ?? (firstAt ? tokens / decodeS : NaN),
      ttftMs: firstAt ? firstAt - started : NaN,
      completionTokens: tokens,
      finishReason: end.finishReason,
    };
    views.showUsage(view.meta, saved.usage);
  } catch (error) {
    if (error.name === "AbortError") {
      saved.stopped = true;
      view.meta.textContent = "Stopped";
    } else {
      const known = error instanceof ChatError;
      saved.error = { message: error.message, status: known ? error.status : null, code: known ? error.code : null };
      views.showError(view, saved.error);
    }
  } finally {
    cancelAnimationFrame(frame);
    draw();
    if (reasoning?.details.dataset.state === "streaming") views.endReasoning(reasoning);
    view.article.classList.remove("streaming");
  }
}

// Edit in place: the question becomes a text box; sending it adds the edited question beside the
// original (same files) and answers it.
function edit(article, node) {
  const form = document.createElement("form");
  form.className = "edit-form";
  const box = document.createElement("textarea");
  box.value = node.content;
  box.rows = Math.min(10, node.content.split("\n").length + 1);
  box.setAttribute("aria-label", "Edit the question");
  const send = Object.assign(document.createElement("button"), { type: "submit", className: "primary" });
  send.textContent = "Send";
  const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: "Cancel" });
  const buttons = document.createElement("div");
  buttons.className = "edit-buttons";
  buttons.append(cancel, send);
  form.append(box, buttons);
  article.replaceChildren(form);
  box.focus();
  cancel.addEventListener("click", render);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = box.value.trim();
    if ((!content && !node.files?.length) || controller) return;
    answer(store.addNode(conv, node.parent, { role: "user", content, files: node.files ?? [] }));
  });
  box.addEventListener("keydown", (event) => {
    if (event.isComposing || event.keyCode === 229) return;
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "Escape") {
      event.stopPropagation(); // cancels the edit, not an answer
      render();
    }
  });
}

// Copies `text`; the button says whether it worked. navigator.clipboard needs a secure context
// (https, localhost, 127.0.0.1): elsewhere the older execCommand("copy") does it.
async function copy(text, button) {
  let ok = true;
  try {
    if (navigator.clipboard) {
      await navigator.clipboard.writeText(text);
    } else {
      const area = Object.assign(document.createElement("textarea"), { value: text });
      document.body.append(area);
      area.select();
      ok = document.execCommand("copy");
      area.remove();
    }
  } catch {
    ok = false;
  }
  const label = button.dataset.label ?? button.textContent;
  button.dataset.label = label;
  button.textContent = ok ? "Copied" : "Copy failed";
  setTimeout(() => (button.textContent = label), 1500);
}

function onMessageClick(event) {
  const button = event.target.closest("button");
  if (!button || !conv) return;
  if (button.classList.contains("copy-code")) {
    copy(button.closest("pre").querySelector("code")?.textContent ?? "", button);
    return;
  }
  const holder = button.closest("[data-node]");
  const node = holder && conv.nodes[holder.dataset.node];
  if (!node) return;
  const action = button.dataset.action;
  if (action === "copy") {
    const column = Number(button.closest("[data-column]")?.dataset.column ?? 0);
    copy(node.role === "user" ? node.content : store.answerOf(node, column).content, button);
  } else if (action === "open-settings") {
    openSettings();
  } else if (controller) {
    return; // the rest changes the conversation: not while an answer streams
  } else if (action === "prev" || action === "next") {
    const all = store.siblings(conv, node);
    store.show(conv, all[all.indexOf(node.id) + (action === "prev" ? -1 : 1)]);
    persist({ touch: false });
    render();
  } else if (action === "edit") {
    edit(holder, node);
  } else if (action === "regenerate" || action === "retry") {
    answer(conv.nodes[node.parent]);
  }
}

// --- attachments ----------------------------------------------------------------------------------

async function attach(fileList) {
  const errors = [];
  for (const file of fileList) {
    if (pending.length >= MAX_FILES) {
      errors.push(`At most ${MAX_FILES} files per question.`);
      break;
    }
    try {
      pending.push(await readTextFile(file));
    } catch (error) {
      errors.push(error.message);
    }
  }
  ui.attachError.textContent = errors.join(" ");
  ui.attachError.hidden = !errors.length;
  showPending();
}

function showPending() {
  ui.attachments.replaceChildren(...views.fileChips(pending, true).children);
  ui.attachments.hidden = !pending.length;
}

// --- wiring ---------------------------------------------------------------------------------------

function submit() {
  const question = ui.input.value.trim();
  if ((!question && !pending.length) || controller) return;
  const files = pending;
  pending = [];
  showPending();
  ui.attachError.hidden = true;
  ui.input.value = "";
  autosize();
  ask(question, files);
}

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${ui.input.scrollHeight + 2}px`;
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});

ui.input.addEventListener("keydown", (event) => {
  // While an input method is composing (Chinese, Japanese...), Enter picks the candidate: it must
  // not send. keyCode 229 covers browsers that end the composition before this keydown.
  if (event.isComposing || event.keyCode === 229) return;
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    submit();
  }
});

document.addEventListener("keydown", (event) => {
  if (event.isComposing || event.keyCode === 229) return;
  if (event.key === "Escape" && controller) {
    controller.abort();
  } else if (event.ctrlKey && event.shiftKey && event.key.toLowerCase() === "o") {
    event.preventDefault();
    newChat();
  }
});

ui.input.addEventListener("input", autosize);
ui.stop.addEventListener("click", () => controller?.abort());
ui.newChat.addEventListener("click", newChat);
ui.messages.addEventListener("click", onMessageClick);

ui.attach.addEventListener("click", () => ui.attachFile.click());
ui.attachFile.addEventListener("change", async () => {
  await attach([...ui.attachFile.files]);
  ui.attachFile.value = "";
});
ui.attachments.addEventListener("click", (event) => {
  const remove = event.target.closest("[data-action=remove-file]");
  if (!remove) return;
  pending.splice(Number(remove.dataset.index), 1);
  showPending();
});
ui.composer.addEventListener("dragover", (event) => event.preventDefault());
ui.composer.addEventListener("drop", (event) => {
  event.preventDefault();
  attach([...event.dataTransfer.files]);
});

ui.settingsToggle.addEventListener("click", () => {
  ui.settings.hidden = !ui.settings.hidden;
  ui.settingsToggle.setAttribute("aria-expanded", String(!ui.settings.hidden));
});
ui.settings.addEventListener("input", saveSettings);
ui.settings.addEventListener("submit", (event) => event.preventDefault());
ui.theme.addEventListener("change", applyTheme);
ui.apiKey.addEventListener("change", loadModels); // the key may be what the list needed
ui.model.addEventListener("change", saveSettings);
ui.modelB.addEventListener("change", saveSettings);
ui.compare.addEventListener("change", () => {
  ui.modelBPicker.hidden = !ui.compare.checked;
  saveSettings();
});
// An answer cut short by closing the page keeps what had come.
window.addEventListener("pagehide", () => controller && conv && store.save(conv));

const sidebar = createSidebar({
  open,
  deleted: (id) => id === conv?.id && newChat(),
  currentId: () => conv?.id ?? null,
  busy: () => controller !== null,
});

loadSettings();
setBusy(false);
store.loadAll();
if (store.get(location.hash.slice(1))) open(location.hash.slice(1));
else newChat();
loadModels();

// For tests and the console: the renderer, the messages a column's model gets for the branch on
// screen (0: the model's, or model A's in compare mode; 1: model B's), the stored conversation.
window.hychat = {
  renderMarkdown,
  messageText,
  conversation: (column = 0) => (conv ? store.history(store.branch(conv), column) : []),
  stored: () => (conv ? structuredClone(conv) : null),
};
