// The messages on screen, built from the conversation's nodes (store.js). Model output goes through
// render.js; everything else the user or the model wrote is set as text, never as HTML. The buttons
// carry a data-action that chat.js handles for the whole list.

import { renderInto } from "./render.js";
import { advice } from "./api.js";
import { kib } from "./files.js";

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function button(action, text, title) {
  const b = element("button", action, text);
  b.type = "button";
  b.dataset.action = action;
  if (title) {
    b.title = title;
    b.setAttribute("aria-label", title);
  }
  return b;
}

// `< 2/3 >` under a message that has other versions: `index` of `count` siblings.
function branches(index, count) {
  const nav = element("span", "branches");
  if (count < 2) return nav;
  const prev = button("prev", "‹", "Previous version");
  const next = button("next", "›", "Next version");
  prev.disabled = index === 0;
  next.disabled = index === count - 1;
  nav.append(prev, element("span", "branch-count", `${index + 1}/${count}`), next);
  return nav;
}

function actions(...children) {
  const row = element("div", "actions");
  row.append(...children);
  return row;
}

export function fileChips(files, removable = false) {
  const chips = element("div", "chips");
  files.forEach((file, i) => {
    const chip = element("span", "chip");
    chip.title = `${file.name} · ${kib(file.size)}`;
    chip.append(element("span", "chip-name", file.name), element("span", "chip-size", kib(file.size)));
    if (removable) {
      const remove = button("remove-file", "×", `Remove ${file.name}`);
      remove.dataset.index = i;
      chip.append(remove);
    }
    chips.append(chip);
  });
  return chips;
}

// A question as typed, its attached files as chips. `at`: [index, count] among its versions.
export function userView(node, [index, count]) {
  const article = element("article", "msg user");
  article.dataset.node = node.id;
  article.append(element("div", "content", node.content));
  if (node.files?.length) article.append(fileChips(node.files));
  article.append(
    actions(branches(index, count), button("copy", "Copy", "Copy this question"), button("edit", "Edit", "Edit and resend"))
  );
  return article;
}

// An answer, or compare mode's two side by side: {element, columns: [view...]}, a view per answer
// ({article, content, meta}, to stream into). `names`: each column's heading, in compare mode.
export function assistantView(node, [index, count], names = null) {
  const nav = branches(index, count);
  const regenerate = button("regenerate", "Regenerate", "Regenerate this answer");
  if (node.answers.length === 1 && !names) {
    const view = answerView(node.answers[0]);
    view.article.dataset.node = node.id;
    view.article.append(actions(nav, button("copy", "Copy", "Copy this answer"), regenerate));
    return { element: view.article, columns: [view] };
  }
  // Compare mode: headed by the models asked, each column its own Copy; one Regenerate for both.
  const pair = element("div", "pair");
  pair.dataset.node = node.id;
  const columns = node.answers.map((answer, column) => {
    const view = answerView(answer);
    const name = names?.[column] ?? (answer.asked || "Server default");
    view.article.classList.add("column");
    view.article.dataset.column = column;
    view.article.setAttribute("aria-label", `Answer from ${name}`);
    view.article.prepend(element("h2", "column-head", name));
    view.article.append(actions(button("copy", "Copy", "Copy this answer")));
    return view;
  });
  pair.append(...columns.map((c) => c.article), actions(nav, regenerate));
  return { element: pair, columns };
}

function answerView(answer) {
  const article = element("article", "msg assistant");
  const view = { article, content: element("div", "content"), meta: element("div", "meta"), reasoning: null };
  article.append(view.content, view.meta);
  if (answer.reasoning) {
    view.reasoning = addReasoning(view);
    view.reasoning.text.textContent = answer.reasoning.trim();
    endReasoning(view.reasoning, answer.reasoningTokens);
  }
  renderInto(view.content, answer.content);
  if (answer.error) showError(view, answer.error);
  else if (answer.usage) showUsage(view.meta, answer.usage);
  else if (answer.stopped) view.meta.textContent = "Stopped";
  return view;
}

// The reasoning block above an answer's content, made when the first reasoning arrives. It is open
// while the reasoning streams; its text is shown as plain text, never as HTML.
export function addReasoning(view) {
  const details = element("details", "reasoning");
  details.open = true;
  details.dataset.state = "streaming";
  const summary = element("summary", "", "Reasoning…");
  const text = element("div", "reasoning-text");
  details.append(summary, text);
  view.content.before(details);
  return { details, summary, text };
}

// Once the answer starts or the stream ends, the block closes (only then: a reader who opens it again
// keeps it open). `tokens`: usage.reasoning_tokens of the done event, when there is one.
export function endReasoning(reasoning, tokens) {
  const { details, summary } = reasoning;
  if (details.dataset.state === "streaming") details.open = false;
  details.dataset.state = "done";
  if (Number.isInteger(tokens)) {
    details.dataset.tokens = tokens;
    summary.textContent = `Reasoning (${tokens} token${tokens === 1 ? "" : "s"})`;
  } else if (!details.dataset.tokens) {
    summary.textContent = "Reasoning";
  }
}

// `usage`: {backend, model, tokensPerS, ttftMs, completionTokens, finishReason}.
export function showUsage(meta, usage) {
  const parts = [
    usage.backend,
    usage.model,
    Number.isFinite(usage.tokensPerS) && `${usage.tokensPerS.toFixed(1)} tok/s`,
    Number.isFinite(usage.ttftMs) && `TTFT ${Math.round(usage.ttftMs)} ms`,
    Number.isInteger(usage.completionTokens) && `${usage.completionTokens} tokens`,
  ];
  if (usage.finishReason === "length") parts.push("cut at max tokens");
  meta.textContent = parts.filter(Boolean).join(" · ");
  meta.dataset.backend = usage.backend ?? "";
  meta.dataset.model = usage.model ?? "";
  meta.dataset.tokensPerS = usage.tokensPerS ?? "";
  meta.dataset.ttftMs = usage.ttftMs ?? "";
}

// A failed answer: a box that says what went wrong and what to do, with the button that does it.
// `error`: {message, status, code}.
export function showError(view, error) {
  view.article.classList.add("failed");
  const { hint, action } = advice(error);
  const box = element("div", "error");
  box.setAttribute("role", "alert");
  box.append(element("p", "error-message", `Error: ${error.message}`), element("p", "error-hint", hint));
  if (action === "settings") box.append(button("open-settings", "Open Settings"));
  box.append(button("retry", "Retry", "Ask for this answer again"));
  view.content.after(box);
}
