// Conversations, kept in this browser's localStorage (one key each; nothing leaves the browser).
//
// A conversation is a tree of messages: editing a question or regenerating an answer adds a sibling,
// so earlier versions stay as branches. `leaf` is the last message of the branch on screen; each
// message's `current` names the child last shown under it, so stepping back to a branch finds it as
// it was left. The branch shown is the history sent to the model.
//
//   {id, title, renamed, createdAt, updatedAt, leaf, nodes: {root: {id: "root", children}, [id]: node}}
//   user node:      {id, parent, role: "user", content, files: [{name, size, text}], children, current}
//   assistant node: {id, parent, role: "assistant", answers: [answer, ...], children, current}
//   answer:         {content, reasoning, reasoningTokens, usage, stopped, error: {message, status, code}}
//
// An assistant node holds one answer, or two in compare mode (model A's, model B's): each column's
// history takes its own answer where a node has one for it, the first otherwise.

import { messageText } from "./files.js";

const PREFIX = "hychat.chat.";
// The bounds: past either, the conversations last touched longest ago are dropped (never the one on
// screen). Localstorage holds about 5 MB per origin, counted in UTF-16: 2M characters leave room for
// the settings and for other browsers' smaller counts.
export const MAX_CONVERSATIONS = 200;
export const MAX_STORED_CHARS = 2_000_000;
export const EXPORT_FORMAT = "hychat.conversations";

const all = new Map(); // id -> conversation, as stored
const sizes = new Map(); // id -> length of its stored JSON

export function newId() {
  return `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

export function newConversation() {
  const now = Date.now();
  return {
    id: newId(), title: "", renamed: false, createdAt: now, updatedAt: now, leaf: "root",
    nodes: { root: { id: "root", children: [] } },
  };
}

// --- the tree ---------------------------------------------------------------------------------------

export function addNode(conv, parentId, fields) {
  const node = { id: newId(), parent: parentId, ...fields, children: [] };
  conv.nodes[node.id] = node;
  conv.nodes[parentId].children.push(node.id);
  if (!conv.title && node.role === "user") conv.title = titleOf(node.content || node.files?.[0]?.name || "");
  return node;
}

export function titleOf(text) {
  const line = text.trim().split("\n")[0].trim();
  return line.length > 60 ? `${line.slice(0, 59)}…` : line || "New chat";
}

// The messages from the first to `leafId`, the root left out.
export function branch(conv, leafId = conv.leaf) {
  const path = [];
  for (let node = conv.nodes[leafId]; node && node.id !== "root"; node = conv.nodes[node.parent]) path.push(node);
  return path.reverse();
}

// Shows the branch through `nodeId`: down to its last shown leaf, each message on the way marked current.
export function show(conv, nodeId) {
  let id = nodeId;
  for (let node = conv.nodes[id]; node.children.length; node = conv.nodes[id]) {
    id = node.children.includes(node.current) ? node.current : node.children.at(-1);
  }
  conv.leaf = id;
  for (let node = conv.nodes[id]; node.parent; node = conv.nodes[node.parent]) conv.nodes[node.parent].current = node.id;
}

export function siblings(conv, node) {
  return conv.nodes[node.parent].children;
}

export function answerOf(node, column) {
  return node.answers[column] ?? node.answers[0];
}

// The chat messages of `path` for `column`, as the model gets them: a question whose answer has no text
// (it failed) is left out with it; the last question, still unanswered, is kept.
export function history(path, column = 0) {
  const messages = [];
  path.forEach((node, i) => {
    if (node.role !== "user") return;
    const reply = path[i + 1];
    const text = reply ? answerOf(reply, column)?.content : null;
    if (reply && !text) return;
    messages.push({ role: "user", content: messageText(node.content, node.files) });
    if (reply) messages.push({ role: "assistant", content: text });
  });
  return messages;
}

export function searchText(conv) {
  const texts = Object.values(conv.nodes).flatMap((n) => [
    n.content ?? "", ...(n.files ?? []).map((f) => f.name), ...(n.answers ?? []).map((a) => a.content),
  ]);
  return [conv.title, ...texts].join("\n").toLowerCase();
}

// --- localStorage -------------------------------------------------------------------------------------

export function loadAll() {
  for (let i = 0; i < localStorage.length; i++) {
    const key = localStorage.key(i);
    if (!key.startsWith(PREFIX)) continue;
    const text = localStorage.getItem(key);
    let conv = null;
    try {
      conv = clean(JSON.parse(text));
    } catch {
      conv = null;
    }
    if (conv && key === PREFIX + conv.id) {
      all.set(conv.id, conv);
      sizes.set(conv.id, text.length);
    }
  }
}

// Newest first.
export function conversations() {
  return [...all.values()].sort((a, b) => b.updatedAt - a.updatedAt);
}

export function get(id) {
  return all.get(id);
}

// Stores `conv`, then drops the oldest conversations past the bounds (`conv` itself too, if it is the
// oldest), never the one `keep` names (the one on screen); returns how many were dropped.
export function save(conv, { touch = true, keep = conv.id } = {}) {
  if (touch) conv.updatedAt = Date.now();
  const text = JSON.stringify(conv);
  all.set(conv.id, conv);
  sizes.set(conv.id, text.length);
  let dropped = dropOldest(keep);
  while (all.has(conv.id)) {
    try {
      localStorage.setItem(PREFIX + conv.id, text);
      break;
    } catch (error) {
      // The browser's own quota, smaller than ours: make room, unless nothing else is left to drop.
      if (error.name !== "QuotaExceededError" || !dropOne(conv.id === keep ? keep : null)) throw error;
      dropped += 1;
    }
  }
  return dropped;
}

export function remove(id) {
  all.delete(id);
  sizes.delete(id);
  localStorage.removeItem(PREFIX + id);
}

function storedChars() {
  let total = 0;
  for (const n of sizes.values()) total += n;
  return total;
}

function dropOldest(keep) {
  let dropped = 0;
  while ((all.size > MAX_CONVERSATIONS || storedChars() > MAX_STORED_CHARS) && dropOne(keep)) dropped += 1;
  return dropped;
}

function dropOne(keep) {
  const oldest = conversations().filter((c) => c.id !== keep).at(-1);
  if (oldest) remove(oldest.id);
  return Boolean(oldest);
}

// --- export and import ----------------------------------------------------------------------------

export function exportJSON(list) {
  return JSON.stringify({ format: EXPORT_FORMAT, version: 1, conversations: list }, null, 2);
}

// The conversations in an export (or one conversation, or a list of them), each checked; throws when the
// text holds none.
export function parseImport(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    throw new Error("this file is not JSON");
  }
  const list = Array.isArray(data) ? data : (data?.conversations ?? [data]);
  const valid = (Array.isArray(list) ? list : []).map(clean).filter(Boolean);
  if (!valid.length) throw new Error("this file holds no hychat conversations");
  return valid;
}

const isString = (v) => typeof v === "string";

function reachable(nodes) {
  const seen = new Set();
  const stack = ["root"];
  while (stack.length) {
    const id = stack.pop();
    if (seen.has(id)) continue;
    seen.add(id);
    stack.push(...nodes[id].children);
  }
  return seen.size;
}

// `raw` as a conversation when it is one: every field the page reads has its type, every message hangs
// from the root, `leaf` is a message. Null otherwise.
function clean(raw) {
  const nodes = raw?.nodes;
  if (!isString(raw?.id) || !raw.id || typeof nodes !== "object" || !nodes?.root) return null;
  for (const [id, node] of Object.entries(nodes)) {
    if (node?.id !== id || !Array.isArray(node.children) || !node.children.every((c) => nodes[c]?.parent === id)) {
      return null;
    }
    if (id === "root") continue;
    if (!nodes[node.parent]?.children.includes(id)) return null;
    const ok =
      node.role === "user"
        ? isString(node.content) && Array.isArray(node.files ?? []) &&
          (node.files ?? []).every((f) => isString(f?.name) && isString(f.text))
        : node.role === "assistant" && Array.isArray(node.answers) && node.answers.length > 0 &&
          node.answers.every((a) => isString(a?.content) && isString(a.reasoning ?? ""));
    if (!ok) return null;
  }
  if (!nodes[raw.leaf] || reachable(nodes) !== Object.keys(nodes).length) return null; // no loops
  const now = Date.now();
  return {
    ...raw,
    title: isString(raw.title) && raw.title ? raw.title : "New chat",
    renamed: raw.renamed === true,
    createdAt: Number.isFinite(raw.createdAt) ? raw.createdAt : now,
    updatedAt: Number.isFinite(raw.updatedAt) ? raw.updatedAt : now,
  };
}
