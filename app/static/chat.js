// The chat page: sends the conversation to POST /api/chat with "stream": true and renders the answer
// as it arrives, with the model's reasoning (if any) in a collapsible block above it. Plain browser
// JavaScript, no build step; markdown-it 14.1.0 is vendored in vendor/.
"use strict";

(() => {
  const SETTINGS_KEY = "hychat.settings";
  // think: "" leaves thinking to the server's default (the model's own behaviour), "on" or "off" asks.
  const DEFAULTS = { temperature: 0.7, maxTokens: 512, think: "", system: "", apiKey: "" };
  const THINK = { on: true, off: false };

  // html: false escapes any HTML in the model's output; markdown-it's validateLink drops javascript:,
  // vbscript:, file: and non-image data: links. The page's Content-Security-Policy is the second line.
  const md = window.markdownit({ html: false, linkify: true, breaks: true });
  md.renderer.rules.link_open = (tokens, i, options, env, self) => {
    tokens[i].attrSet("target", "_blank");
    tokens[i].attrSet("rel", "noopener noreferrer");
    return self.renderToken(tokens, i, options);
  };

  function renderMarkdown(text) {
    return md.render(text);
  }

  const $ = (id) => document.getElementById(id);
  const ui = {
    messages: $("messages"),
    empty: $("empty"),
    composer: $("composer"),
    input: $("input"),
    send: $("send"),
    stop: $("stop"),
    newChat: $("new-chat"),
    settingsToggle: $("settings-toggle"),
    settings: $("settings"),
    temperature: $("temperature"),
    maxTokens: $("max-tokens"),
    think: $("think"),
    system: $("system"),
    apiKey: $("api-key"),
  };

  // The finished turns, as sent to the server; the system prompt is added per request.
  let conversation = [];
  let controller = null; // the running answer's AbortController; null when idle

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
    ui.system.value = s.system;
    ui.apiKey.value = s.apiKey;
  }

  function readSettings() {
    const number = (input, fallback) => (input.value.trim() === "" ? fallback : Number(input.value));
    return {
      temperature: number(ui.temperature, DEFAULTS.temperature),
      maxTokens: Math.round(number(ui.maxTokens, DEFAULTS.maxTokens)),
      think: ui.think.value,
      system: ui.system.value,
      apiKey: ui.apiKey.value.trim(),
    };
  }

  function saveSettings() {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(readSettings()));
  }

  // --- Server-Sent Events over fetch ---------------------------------------------------------------

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

  async function errorMessage(response) {
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body?.error?.message) message = body.error.message;
    } catch {
      // not JSON: keep the status line
    }
    if (response.status === 401) message += " (set the API key under Settings)";
    return message;
  }

  // --- the conversation on screen -----------------------------------------------------------------

  function addMessage(role) {
    ui.empty.hidden = true;
    const article = document.createElement("article");
    article.className = `msg ${role}`;
    const content = document.createElement("div");
    content.className = "content";
    const meta = document.createElement("div");
    meta.className = "meta";
    article.append(content, meta);
    ui.messages.append(article);
    return { article, content, meta };
  }

  // The reasoning block above an answer's content, made when the first reasoning arrives. It is open
  // while the reasoning streams; its text is shown as plain text, never as HTML.
  function addReasoning(answer) {
    const details = document.createElement("details");
    details.className = "reasoning";
    details.open = true;
    details.dataset.state = "streaming";
    const summary = document.createElement("summary");
    summary.textContent = "Reasoning…";
    const text = document.createElement("div");
    text.className = "reasoning-text";
    details.append(summary, text);
    answer.content.before(details);
    return { details, summary, text };
  }

  // Once the answer starts or the stream ends, the block closes (only then: a reader who opens it again
  // keeps it open). `tokens`: usage.reasoning_tokens of the done event, when there is one.
  function endReasoning(reasoning, tokens) {
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

  function nearBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function showUsage(meta, done) {
    const u = done.usage;
    const parts = [
      done.backend,
      done.model,
      `${u.tokens_per_s.toFixed(1)} tok/s`,
      `TTFT ${Math.round(u.ttft_ms)} ms`,
      `${u.completion_tokens} tokens`,
    ];
    if (done.finish_reason === "length") parts.push("cut at max tokens");
    meta.textContent = parts.filter(Boolean).join(" · ");
    meta.dataset.backend = done.backend;
    meta.dataset.model = done.model ?? "";
    meta.dataset.tokensPerS = u.tokens_per_s;
    meta.dataset.ttftMs = u.ttft_ms;
  }

  function setBusy(busy) {
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    ui.newChat.disabled = busy;
    document.body.dataset.busy = busy ? "true" : "false";
  }

  async function ask(question) {
    const settings = readSettings();
    const user = { role: "user", content: question };
    addMessage("user").content.textContent = question; // what the user typed is shown as typed
    const answer = addMessage("assistant");
    answer.article.classList.add("streaming");
    scrollToBottom();

    const history = [...conversation, user];
    const messages = settings.system.trim() ? [{ role: "system", content: settings.system }, ...history] : history;
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (settings.apiKey) headers.Authorization = `Bearer ${settings.apiKey}`;
    controller = new AbortController();
    setBusy(true);

    let text = "";
    let thought = ""; // the reasoning: shown, never sent back to the model
    let reasoning = null; // its block, once some has arrived
    let frame = 0; // one render per animation frame, however fast the tokens come
    const render = () => {
      frame = 0;
      const follow = nearBottom();
      if (reasoning) reasoning.text.textContent = thought.trim();
      answer.content.innerHTML = renderMarkdown(text);
      if (follow) scrollToBottom();
    };
    try {
      const response = await fetch("api/chat", {
        method: "POST",
        headers,
        body: JSON.stringify({
          messages,
          stream: true,
          temperature: settings.temperature,
          max_new_tokens: settings.maxTokens,
          think: THINK[settings.think], // undefined, so left out, for the model's default
        }),
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      let finished = false;
      for await (const event of sseEvents(response.body)) {
        const data = JSON.parse(event.data);
        if (event.event === "message") {
          if (data.reasoning) {
            reasoning ??= addReasoning(answer);
            thought += data.reasoning;
          }
          if (data.text) {
            text += data.text;
            if (reasoning?.details.dataset.state === "streaming") endReasoning(reasoning);
          }
          if (!frame) frame = requestAnimationFrame(render);
        } else if (event.event === "done") {
          if (reasoning) endReasoning(reasoning, data.usage?.reasoning_tokens);
          showUsage(answer.meta, data);
          finished = true;
        } else if (event.event === "error") {
          throw new Error(data.error?.message || "generation failed");
        }
      }
      if (!finished) throw new Error("the answer ended early (connection closed)");
    } catch (error) {
      if (error.name === "AbortError") {
        answer.meta.textContent = "Stopped";
      } else {
        answer.article.classList.add("failed");
        answer.meta.textContent = `Error: ${error.message}`;
      }
    } finally {
      cancelAnimationFrame(frame);
      render();
      if (reasoning?.details.dataset.state === "streaming") endReasoning(reasoning);
      answer.article.classList.remove("streaming");
      // A stopped answer stays part of the conversation; a turn with no answer is left out.
      if (text) conversation.push(user, { role: "assistant", content: text });
      controller = null;
      setBusy(false);
    }
  }

  // --- wiring ---------------------------------------------------------------------------------------

  function submit() {
    const question = ui.input.value.trim();
    if (!question || controller) return;
    ui.input.value = "";
    autosize();
    ask(question);
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
    } else if (event.key === "Escape" && controller) {
      controller.abort();
    }
  });

  ui.input.addEventListener("input", autosize);
  ui.stop.addEventListener("click", () => controller?.abort());

  ui.newChat.addEventListener("click", () => {
    conversation = [];
    ui.messages.replaceChildren(ui.empty);
    ui.empty.hidden = false;
    ui.input.focus();
  });

  ui.settingsToggle.addEventListener("click", () => {
    ui.settings.hidden = !ui.settings.hidden;
    ui.settingsToggle.setAttribute("aria-expanded", String(!ui.settings.hidden));
  });
  ui.settings.addEventListener("input", saveSettings);
  ui.settings.addEventListener("submit", (event) => event.preventDefault());

  loadSettings();
  setBusy(false);

  // For tests and the console: the renderer and a copy of the conversation.
  window.hychat = {
    renderMarkdown,
    conversation: () => structuredClone(conversation),
  };
})();
