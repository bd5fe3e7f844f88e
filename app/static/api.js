// The server's API as the page uses it: GET v1/models and a streamed POST v1/chat/completions, read with
// fetch; failures as ChatError, with what the user can do about them.

export class ChatError extends Error {
  // status: the HTTP status (0: no answer, the network failed); code: the error body's `code`, if any.
  constructor(message, { status = null, code = null } = {}) {
    super(message);
    this.name = "ChatError";
    this.status = status;
    this.code = code;
  }
}

export function authHeaders(apiKey) {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

async function refused(response) {
  let message = `HTTP ${response.status}`;
  let code = null;
  try {
    const body = await response.json();
    if (body?.error?.message) message = body.error.message;
    code = body?.error?.code ?? null;
  } catch {
    // not JSON: keep the status line
  }
  return new ChatError(message, { status: response.status, code });
}

// fetch, its network failure (a TypeError, with the browser's words) as a ChatError with status 0.
async function call(url, init) {
  try {
    return await fetch(url, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ChatError(`the server could not be reached (${error.message})`, { status: 0 });
  }
}

// What to do about `error` (a ChatError or another Error), in one sentence; `action`: which button helps.
export function advice(error) {
  const { status, code } = error;
  if (status === 401 || status === 403) {
    return { hint: "Enter the server's API key under Settings, then retry.", action: "settings" };
  }
  const busy = ["queue_full", "no_slot_available", "no_room_for_model"].includes(code);
  if (status === 429 || status === 503 || busy) return { hint: "The server is busy: wait a moment, then retry.", action: "retry" };
  if (status === 0) return { hint: "Is the server still running? Start it again (make run), then retry.", action: "retry" };
  if (code === "context_length_exceeded") {
    return { hint: "The conversation is too long for the model: start a new chat or edit an earlier question." };
  }
  if (status === 404) return { hint: "Pick another model, then retry.", action: "retry" };
  if (status === 400 || status === 422) return { hint: "Check the values under Settings, then retry.", action: "settings" };
  return { hint: "Retry; if it fails again, the server's log says why.", action: "retry" };
}

// GET v1/models' data.
export async function listModels(apiKey) {
  const response = await call("v1/models", { headers: authHeaders(apiKey) });
  if (!response.ok) throw await refused(response);
  return (await response.json()).data;
}

// EventSource can only GET and cannot send an Authorization header, so the stream is read with
// fetch. The parser follows the WHATWG "event stream interpretation" rules (any line ending,
// one optional space after the colon, multi-line data, comments such as the server's pings).
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // A "\r" at the very end may be the first half of "\r\n": it waits for the next chunk.
      const lines = buffer.split(/\r\n|\r(?!$)|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield { event: type || "message", data: data.join("\n") };
          type = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") type = value;
        else if (field === "data") data.push(value);
      }
    }
  } finally {
    // Leaving early (an error event, a stop) closes the connection: the server then cancels.
    reader.cancel().catch(() => {});
  }
}

// One streamed answer from POST v1/chat/completions: OpenAI's chunks, then "data: [DONE]". `onPiece`
// gets each piece of reasoning and of text as it comes; resolves to what the last chunks say: the
// model that answered, finish_reason, usage and timings (not OpenAI's: llama-server's, as hychat's).
export async function streamChat(body, apiKey, signal, onPiece) {
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders(apiKey) };
  const response = await call("v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body), signal });
  if (!response.ok) throw await refused(response);
  const end = {};
  try {
    for await (const event of sseEvents(response.body)) {
      if (event.data === "[DONE]") return end;
      const chunk = JSON.parse(event.data);
      if (chunk.error) {
        throw new ChatError(chunk.error.message || "generation failed", { code: chunk.error.code ?? null });
      }
      end.model = chunk.model ?? end.model;
      const choice = chunk.choices?.[0];
      const delta = choice?.delta ?? {};
      if (delta.reasoning_content || delta.content) onPiece(delta.reasoning_content ?? "", delta.content ?? "");
      end.finishReason = choice?.finish_reason ?? end.finishReason;
      end.usage = chunk.usage ?? end.usage;
      end.timings = chunk.timings ?? end.timings;
    }
  } catch (error) {
    if (error.name === "AbortError" || error instanceof ChatError) throw error;
    throw new ChatError(`the answer broke off (${error.message})`, { status: 0 });
  }
  throw new ChatError("the answer ended early (connection closed)", { status: 0 });
}
