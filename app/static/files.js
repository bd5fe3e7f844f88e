// Text files attached to a question: read in the browser, checked, and sent inside the message as fenced
// blocks headed by their names (the model sees them; nothing is uploaded apart from the message).

export const MAX_FILE_BYTES = 100 * 1024; // ~25k tokens: more than a small model's context already
export const MAX_FILES = 5;

// Reads `file` as UTF-8 text: {name, size, text}, or throws an Error that says what is wrong with it.
// A file that is not valid UTF-8 or holds NUL bytes is taken for binary (images, PDFs, archives...).
export async function readTextFile(file) {
  if (file.size > MAX_FILE_BYTES) {
    throw new Error(`${file.name} is ${kib(file.size)}: files up to ${kib(MAX_FILE_BYTES)} can be attached.`);
  }
  const bytes = new Uint8Array(await file.arrayBuffer());
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    text = null;
  }
  if (text === null || text.includes("\0")) {
    throw new Error(`${file.name} is not a text file: attach code, Markdown, CSV or plain text.`);
  }
  return { name: file.name, size: file.size, text };
}

export function kib(bytes) {
  return bytes < 1024 ? `${bytes} B` : `${(bytes / 1024).toFixed(bytes < 10240 ? 1 : 0)} KB`;
}

// The message the model gets: what the user typed, then each file as a fenced block named by its file.
// The fence is longer than any run of backticks in the file, so the file cannot close it.
export function messageText(content, files = []) {
  const blocks = files.map((f) => {
    const longest = Math.max(0, ...(f.text.match(/`+/g) ?? []).map((run) => run.length));
    const fence = "`".repeat(Math.max(3, longest + 1));
    const lang = /\.([A-Za-z0-9]+)$/.exec(f.name)?.[1]?.toLowerCase() ?? "";
    const body = f.text.endsWith("\n") ? f.text : `${f.text}\n`;
    return `File: ${f.name}\n${fence}${lang}\n${body}${fence}`;
  });
  return [content, ...blocks].filter(Boolean).join("\n\n");
}
