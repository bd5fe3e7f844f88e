// The chat page: sends the conversation to POST /v1/chat/completions with "stream": true and renders the
// answer as it arrives, with the model's reasoning (if any) in a collapsible block above it. The model
// is picked from GET /v1/models; in compare mode each question goes to two models at once, answered side
// by side. Plain browser JavaScript, no build step; markdown-it 14.1.0 is vendored in vendor/.
"use strict";

(() => {
  const SETTINGS_KEY = "hychat.settings";
  // think: "" leaves thinking to the server's default (the model's own behaviour), "on" or "off" asks.
  // model, modelB: "" is the server's default (the first model GET /v1/models lists).
  const DEFAULTS = {
    temperature: 0.7, maxTokens: 512, think: "", system: "", apiKey: "", model: "", modelB: "", compare: false,
  };
  const THINK = { on: true, off: false };
  const STATES = { loaded: "loaded", unloaded: "not loaded", failed: "failed" };

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
    model: $("model"),
    modelB: $("model-b"),
    modelBPicker: $("model-b-picker"),
    compare: $("compare"),
    settingsToggle: $("settings-toggle"),
    settings: $("settings"),
    temperature: $("temperature"),
    maxTokens: $("max-tokens"),
    think: $("think"),
    system: $("system"),
    apiKey: $("api-key"),
  };

  // The finished turns, as sent to the server; the system prompt is added per request. One conversation
  // per column: in compare mode the second holds model B's answers (a copy of the first when it starts).
  let conversations = [[]];
  let controller = null; // the running answers' AbortController (Stop aborts them all); null when idle
  let models = []; // GET /v1/models' data: empty until it has answered

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
    ui.compare.checked = s.compare === true;
    ui.modelBPicker.hidden = !ui.compare.checked;
    // Chosen once the list of models has come (fillPicker); until then the choice is kept here.
    ui.model.dataset.saved = s.model;
    ui.modelB.dataset.saved = s.modelB;
  }

  function readSettings() {
    const number = (input, fallback) => (input.value.trim() === "" ? fallback : Number(input.value));
    return {
      temperature: number(ui.temperature, DEFAULTS.temperature),
      maxTokens: Math.round(number(ui.maxTokens, DEFAULTS.maxTokens)),
      think: ui.think.value,
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

  function authHeaders(apiKey) {
    return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  }

  // --- the models, from GET /v1/models --------------------------------------------------------------

  // Lists the models with their state; again after each answer, as a request loads the model it names.
  // False when the server would not list them (no API key yet): requests then go to its default model.
  async function loadModels() {
    try {
      const response = await fetch("v1/models", { headers: authHeaders(readSettings().apiKey) });
      if (!response.ok) throw new Error(await errorMessage(response));
      models = (await response.json()).data;
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

  function addMessage(role, parent = ui.messages) {
    ui.empty.hidden = true;
    const article = document.createElement("article");
    article.className = `msg ${role}`;
    const content = document.createElement("div");
    content.className = "content";
    const meta = document.createElement("div");
    meta.className = "meta";
    article.append(content, meta);
    parent.append(article);
    return { article, content, meta };
  }

  // Compare mode's answers to one question, side by side (stacked on a narrow screen), each column
  // headed by the model it asked.
  function addColumns(names) {
    const pair = document.createElement("div");
    pair.className = "pair";
    ui.messages.append(pair);
    return names.map((name) => {
      const answer = addMessage("assistant", pair);
      answer.article.classList.add("column");
      answer.article.setAttribute("aria-label", `Answer from ${name}`);
      const head = document.createElement("h2");
      head.className = "column-head";
      head.textContent = name;
      answer.article.prepend(head);
      return answer;
    });
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

  // `done`: {backend, model, tokensPerS, ttftMs, completionTokens, finishReason}.
  function showUsage(meta, done) {
    const parts = [
      done.backend,
      done.model,
      Number.isFinite(done.tokensPerS) && `${done.tokensPerS.toFixed(1)} tok/s`,
      Number.isFinite(done.ttftMs) && `TTFT ${Math.round(done.ttftMs)} ms`,
      Number.isInteger(done.completionTokens) && `${done.completionTokens} tokens`,
    ];
    if (done.finishReason === "length") parts.push("cut at max tokens");
    meta.textContent = parts.filter(Boolean).join(" · ");
    meta.dataset.backend = done.backend ?? "";
    meta.dataset.model = done.model ?? "";
    meta.dataset.tokensPerS = done.tokensPerS ?? "";
    meta.dataset.ttftMs = done.ttftMs ?? "";
  }

  function setBusy(busy) {
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    ui.newChat.disabled = busy;
    document.body.dataset.busy = busy ? "true" : "false";
  }

  // One streamed answer from POST v1/chat/completions: OpenAI's chunks, then "data: [DONE]". `onPiece`
  // gets each piece of reasoning and of text as it comes; resolves to what the last chunks say: the
  // model that answered, finish_reason, usage and timings (not OpenAI's: llama-server's, as hychat's).
  async function streamChat(body, apiKey, signal, onPiece) {
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders(apiKey) };
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const end = {};
    for await (const event of sseEvents(response.body)) {
      if (event.data === "[DONE]") return end;
      const chunk = JSON.parse(event.data);
      if (chunk.error) throw new Error(chunk.error.message || "generation failed");
      end.model = chunk.model ?? end.model;
      const choice = chunk.choices?.[0];
      const delta = choice?.delta ?? {};
      if (delta.reasoning_content || delta.content) onPiece(delta.reasoning_content ?? "", delta.content ?? "");
      end.finishReason = choice?.finish_reason ?? end.finishReason;
      end.usage = chunk.usage ?? end.usage;
      end.timings = chunk.timings ?? end.timings;
    }
    throw new Error("the answer ended early (connection closed)");
  }

  async function ask(question) {
    controller = new AbortController();
    setBusy(true);
    addMessage("user").content.textContent = question; // what the user typed is shown as typed
    const user = { role: "user", content: question };
    if (!models.length) await loadModels(); // listed once the API key is set; names the default model
    const settings = readSettings();
    const picked = settings.compare ? [settings.model, settings.modelB] : [settings.model];
    if (settings.compare && conversations.length === 1) conversations.push(structuredClone(conversations[0]));
    const answers = settings.compare
      ? addColumns(picked.map((name) => name || "Server default"))
      : [addMessage("assistant")];
    scrollToBottom();
    // Both columns at once, each with its own conversation; Stop (the one controller) aborts both.
    const { signal } = controller;
    await Promise.all(answers.map((a, i) => answerInto(a, conversations[i], user, picked[i], settings, signal)));
    controller = null;
    setBusy(false);
    loadModels(); // a request loads the model it names: its state has changed
  }

  // Streams `model`'s answer to `history` + `user` into `answer`; the turn then joins `history` if some
  // text came (a stopped answer too, so that the model sees what it had said).
  async function answerInto(answer, history, user, model, settings, signal) {
    answer.article.classList.add("streaming");
    const turns = [...history, user];
    const messages = settings.system.trim() ? [{ role: "system", content: settings.system }, ...turns] : turns;

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
    // The time to first token as the user waits for it: the queue and loading the model included.
    const started = performance.now();
    let firstAt = 0;
    const onPiece = (reasoningPiece, textPiece) => {
      firstAt ||= performance.now();
      if (reasoningPiece) {
        reasoning ??= addReasoning(answer);
        thought += reasoningPiece;
      }
      if (textPiece) {
        text += textPiece;
        if (reasoning?.details.dataset.state === "streaming") endReasoning(reasoning);
      }
      if (!frame) frame = requestAnimationFrame(render);
    };
    try {
      const body = {
        model: model || undefined, // left out, for the server's default model, until the list has come
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
      if (reasoning) endReasoning(reasoning, end.usage?.completion_tokens_details?.reasoning_tokens);
      showUsage(answer.meta, {
        backend: backendOf(end.model) ?? backendOf(model),
        model: end.model,
        tokensPerS: end.timings?.predicted_per_second ?? (firstAt ? tokens / decodeS : NaN),
        ttftMs: firstAt ? firstAt - started : NaN,
        completionTokens: tokens,
        finishReason: end.finishReason,
      });
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
      if (text) history.push(user, { role: "assistant", content: text });
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
    conversations = [[]];
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
  ui.apiKey.addEventListener("change", loadModels); // the key may be what the list needed
  ui.model.addEventListener("change", saveSettings);
  ui.modelB.addEventListener("change", saveSettings);
  ui.compare.addEventListener("change", () => {
    ui.modelBPicker.hidden = !ui.compare.checked;
    // Model B's conversation starts as a copy of the one so far when compare mode is next used.
    if (!ui.compare.checked) conversations = [conversations[0]];
    saveSettings();
  });

  loadSettings();
  setBusy(false);
  loadModels();

  // For tests and the console: the renderer and a copy of a column's conversation (0: the model's, or
  // model A's in compare mode; 1: model B's).
  window.hychat = {
    renderMarkdown,
    conversation: (column = 0) => structuredClone(conversations[column] ?? []),
  };
})();
