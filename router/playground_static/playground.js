// tgi-py playground: plain JavaScript, no framework, no build step, nothing loaded from elsewhere.
// Streams are read with fetch() and a ReadableStream reader (EventSource cannot POST); Stop aborts the
// fetch, which closes the connection, and the server then cancels the request and frees its slot.
"use strict";

(() => {
  const byTest = (id) => document.querySelector(`[data-testid="${id}"]`);
  const KEY_STORE = "tgi-py-playground-api-key";

  // ---- settings -----------------------------------------------------------------------------------
  const keyRow = document.getElementById("api-key-row");
  const keyInput = byTest("api-key");
  const keyRequired = document.body.dataset.apiKey === "required";

  function showKeyField(focus) {
    keyRow.hidden = false;
    if (focus) keyInput.focus();
  }

  function headers(accept) {
    const h = { "Content-Type": "application/json", Accept: accept };
    const key = keyInput.value.trim();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  function number(id, parse) {
    const raw = byTest(id).value.trim();
    if (raw === "") return null;
    const value = parse(raw);
    return Number.isFinite(value) ? value : raw; // a bad value goes to the server, which says why (422)
  }

  function settings() {
    return {
      maxTokens: number("param-max-tokens", (v) => Number.parseInt(v, 10)),
      temperature: number("param-temperature", Number.parseFloat),
      topP: number("param-top-p", Number.parseFloat),
      seed: number("param-seed", (v) => Number.parseInt(v, 10)),
      stop: byTest("param-stop").value.split("\n").filter((s) => s !== ""),
    };
  }

  // TGI's native parameters: temperature 0 (or none) is greedy; top_p 1 means no nucleus filtering.
  function nativeParameters() {
    const s = settings();
    const p = { details: true, stop: s.stop };
    if (s.maxTokens !== null) p.max_new_tokens = s.maxTokens;
    const greedy = s.temperature === null || s.temperature === 0;
    p.do_sample = !greedy;
    if (!greedy) {
      p.temperature = s.temperature;
      if (s.topP !== null && s.topP !== 1) p.top_p = s.topP;
    }
    if (s.seed !== null) p.seed = s.seed;
    return p;
  }

  // OpenAI's: temperature 0 is greedy there too.
  function chatParameters() {
    const s = settings();
    const p = { temperature: s.temperature === null ? 0 : s.temperature };
    if (s.maxTokens !== null) p.max_tokens = s.maxTokens;
    if (s.topP !== null && s.topP !== 1) p.top_p = s.topP;
    if (s.seed !== null) p.seed = s.seed;
    if (s.stop.length) p.stop = s.stop;
    return p;
  }

  // ---- errors -------------------------------------------------------------------------------------
  // An HTTP error as one plain paragraph: status, the server's error_type and message, and what to do.
  async function httpError(response) {
    const text = await response.text().catch(() => "");
    let message = text.trim();
    let type = "";
    try {
      const body = JSON.parse(text);
      const error = body.error;
      message = typeof error === "string" ? error : (error && error.message) || message;
      type = body.error_type || (error && error.type) || "";
    } catch (_) {
      // not JSON: the text as it came
    }
    let line = `${response.status} ${response.statusText || ""}`.trim();
    if (type) line += ` (${type})`;
    if (message) line += `: ${message}`;
    const retry = response.headers.get("Retry-After");
    if (retry !== null) line += `\nRetry-After: ${retry} s. The server is busy; try again in ${retry} s.`;
    if (response.status === 401) {
      showKeyField(true);
      line += "\nEnter the server's API key in the API key field.";
    }
    return line;
  }

  function describe(error) {
    return error && error.name === "AbortError" ? "stopped" : `network error: ${error && error.message}`;
  }

  // ---- server-sent events over fetch ----------------------------------------------------------------
  // Yields the data of each event ("data:" lines joined); comments (": ping") and other fields are skipped.
  async function* sseData(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    const parse = (block) => block.split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).replace(/^ /, ""))
      .join("\n");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = (buffer + value).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const data = parse(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (data) yield data;
      }
    }
    const data = parse(buffer);
    if (data) yield data;
  }

  // ---- side by side ---------------------------------------------------------------------------------
  class Pane {
    constructor(name) {
      this.el = byTest(`${name}-pane`);
      this.out = byTest(`${name}-output`);
      this.ttft = byTest(`${name}-ttft`);
      this.total = byTest(`${name}-total`);
      this.tokens = byTest(`${name}-tokens`);
      this.tps = byTest(`${name}-tps`);
      this.status = byTest(`${name}-status`);
      this.error = byTest(`${name}-error`);
    }

    reset(t0) {
      this.t0 = t0;
      this.renders = 0;
      this.out.textContent = "";
      for (const dd of [this.ttft, this.total, this.tokens, this.tps]) dd.textContent = "-";
      this.error.hidden = true;
      this.error.textContent = "";
      delete this.el.dataset.firstTextMs;
      delete this.el.dataset.doneMs;
      this.el.dataset.renders = "0";
      this.state("waiting", "Waiting for the server...");
    }

    state(name, status) {
      this.el.dataset.state = name;
      this.el.setAttribute("aria-busy", String(name === "waiting" || name === "streaming"));
      if (status !== undefined) this.status.textContent = status;
    }

    busy() {
      return this.el.dataset.state === "waiting" || this.el.dataset.state === "streaming";
    }

    append(text) {
      const ms = performance.now() - this.t0;
      if (this.el.dataset.firstTextMs === undefined) {
        this.el.dataset.firstTextMs = ms.toFixed(1);
        this.ttft.textContent = `${ms.toFixed(0)} ms`;
      }
      const atBottom = this.out.scrollTop + this.out.clientHeight >= this.out.scrollHeight - 4;
      this.out.append(text);
      if (atBottom) this.out.scrollTop = this.out.scrollHeight;
      this.renders += 1;
      this.el.dataset.renders = String(this.renders);
    }

    done(tokens) {
      const ms = performance.now() - this.t0;
      this.el.dataset.doneMs = ms.toFixed(1);
      this.total.textContent = `${ms.toFixed(0)} ms`;
      this.tokens.textContent = String(tokens);
      this.tps.textContent = ms > 0 ? (tokens / (ms / 1000)).toFixed(1) : "-";
      this.state("done", "Done.");
    }

    fail(message, state = "error") {
      if (message === "stopped") {
        this.state("stopped", "Stopped: the request was cancelled on the server.");
        return;
      }
      this.error.textContent = message;
      this.error.hidden = false;
      this.state(state, "Failed.");
    }
  }

  const streamPane = new Pane("stream");
  const fullPane = new Pane("full");
  const generateButton = byTest("generate");
  const stopButton = byTest("stop");
  let compareController = null;

  async function runStreamed(body, signal) {
    const pane = streamPane;
    let tokens = 0;
    let finished = null;
    try {
      const response = await fetch("generate_stream", { method: "POST", headers: headers("text/event-stream"), body, signal });
      if (!response.ok) return pane.fail(await httpError(response));
      pane.state("streaming", "Receiving tokens...");
      for await (const data of sseData(response)) {
        let event;
        try {
          event = JSON.parse(data);
        } catch (_) {
          continue;
        }
        if (event.error !== undefined) {
          const type = event.error_type ? ` (${event.error_type})` : "";
          return pane.fail(`Error event in the stream${type}: ${event.error}`);
        }
        if (event.token) {
          tokens += 1;
          if (!event.token.special && event.token.text) pane.append(event.token.text);
        }
        if (event.generated_text !== null && event.generated_text !== undefined) finished = event;
      }
    } catch (error) {
      return pane.fail(describe(error));
    }
    if (finished === null) return pane.fail("The stream ended before its last token.");
    return pane.done((finished.details && finished.details.generated_tokens) || tokens);
  }

  async function runFull(body, signal) {
    const pane = fullPane;
    try {
      const response = await fetch("generate", { method: "POST", headers: headers("application/json"), body, signal });
      if (!response.ok) return pane.fail(await httpError(response));
      const answer = await response.json();
      pane.append(answer.generated_text);
      const tokens = (answer.details && answer.details.generated_tokens)
        || Number(response.headers.get("x-generated-tokens")) || 0;
      return pane.done(tokens);
    } catch (error) {
      return pane.fail(describe(error));
    }
  }

  async function generate() {
    if (compareController !== null) return;
    const controller = new AbortController();
    compareController = controller;
    generateButton.disabled = true;
    stopButton.disabled = false;
    const body = JSON.stringify({ inputs: byTest("prompt").value, parameters: nativeParameters() });
    // Both requests leave at the same moment, measured from the same start.
    const t0 = performance.now();
    streamPane.reset(t0);
    fullPane.reset(t0);
    document.body.dataset.compare = "running";
    await Promise.allSettled([runStreamed(body, controller.signal), runFull(body, controller.signal)]);
    compareController = null;
    generateButton.disabled = false;
    stopButton.disabled = true;
    document.body.dataset.compare = "done";
  }

  function stopCompare() {
    if (compareController !== null) compareController.abort();
  }

  document.getElementById("compare-form").addEventListener("submit", (e) => {
    e.preventDefault();
    generate();
  });
  stopButton.addEventListener("click", stopCompare);
  byTest("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      generate();
    }
  });

  // ---- chat ---------------------------------------------------------------------------------------
  const history = []; // {role, content}: what the next turn sends, after the system prompt
  const chatLog = byTest("chat-log");
  const chatInput = byTest("chat-input");
  const chatSend = byTest("chat-send");
  const chatStop = byTest("chat-stop");
  const chatError = byTest("chat-error");
  const chatStats = byTest("chat-stats");
  let chatController = null;

  function logItem(role, content) {
    const item = document.createElement("li");
    item.dataset.role = role;
    item.dataset.testid = `chat-${role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = content;
    item.append(who, text);
    chatLog.append(item);
    item.scrollIntoView({ block: "nearest" });
    return { item, text };
  }

  function chatFailed(message) {
    chatError.textContent = message;
    chatError.hidden = false;
  }

  async function sendChat() {
    const content = chatInput.value;
    if (chatController !== null || content.trim() === "") return;
    chatError.hidden = true;
    chatStats.textContent = "";
    const controller = new AbortController();
    chatController = controller;
    chatSend.disabled = true;
    chatStop.disabled = false;
    chatInput.value = "";
    const user = { role: "user", content };
    history.push(user);
    const userItem = logItem("user", content);
    const reply = logItem("assistant", "");
    reply.item.dataset.state = "waiting";
    reply.item.setAttribute("aria-busy", "true");
    const messages = [];
    const system = byTest("chat-system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history);
    const body = JSON.stringify({
      model: "tgi", messages, stream: true, stream_options: { include_usage: true }, ...chatParameters(),
    });
    const t0 = performance.now();
    let answer = "";
    let state = "done";
    let usage = null;
    try {
      const response = await fetch("v1/chat/completions", {
        method: "POST", headers: headers("text/event-stream"), body, signal: controller.signal,
      });
      if (!response.ok) throw new Error(await httpError(response));
      reply.item.dataset.state = "streaming";
      for await (const data of sseData(response)) {
        if (data === "[DONE]") break;
        let event;
        try {
          event = JSON.parse(data);
        } catch (_) {
          continue;
        }
        if (event.error !== undefined) {
          const type = event.error_type ? ` (${event.error_type})` : "";
          const message = typeof event.error === "string" ? event.error : JSON.stringify(event.error);
          throw new Error(`Error event in the stream${type}: ${message}`);
        }
        if (event.usage) usage = event.usage;
        const delta = event.choices && event.choices[0] && event.choices[0].delta;
        if (delta && delta.content) {
          answer += delta.content;
          reply.text.textContent = answer;
        }
      }
    } catch (error) {
      state = error.name === "AbortError" ? "stopped" : "error";
      if (state === "error") chatFailed(error instanceof TypeError ? describe(error) : error.message);
    }
    const ms = performance.now() - t0;
    reply.item.dataset.state = state;
    reply.item.setAttribute("aria-busy", "false");
    if (state === "done" || (state === "stopped" && answer !== "")) {
      history.push({ role: "assistant", content: answer });
      if (state === "stopped") reply.text.textContent = `${answer} [stopped]`;
    } else {
      // Not part of the conversation: the next turn does not send it; its text goes back to the input.
      history.splice(history.indexOf(user), 1);
      for (const turn of [userItem, reply]) {
        turn.item.dataset.kept = "false";
        turn.item.querySelector(".who").textContent += " (not kept in the history)";
      }
      if (answer === "") reply.item.remove();
      if (chatInput.value === "") chatInput.value = content;
    }
    if (usage) {
      const tps = ms > 0 ? (usage.completion_tokens / (ms / 1000)).toFixed(1) : "-";
      chatStats.textContent = `Prompt ${usage.prompt_tokens} tokens, reply ${usage.completion_tokens} tokens, `
        + `${ms.toFixed(0)} ms, ${tps} tokens/s`;
    } else if (state === "stopped") {
      chatStats.textContent = "Stopped: the request was cancelled on the server.";
    }
    chatLog.dataset.turns = String(history.filter((m) => m.role === "assistant").length);
    chatController = null;
    chatSend.disabled = false;
    chatStop.disabled = true;
    chatInput.focus();
  }

  document.getElementById("chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sendChat();
  });
  chatInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendChat();
    }
  });
  chatStop.addEventListener("click", () => chatController !== null && chatController.abort());
  byTest("chat-clear").addEventListener("click", () => {
    if (chatController !== null) chatController.abort();
    history.length = 0;
    chatLog.textContent = "";
    chatLog.dataset.turns = "0";
    chatError.hidden = true;
    chatStats.textContent = "";
  });

  // ---- modes, keys, model -----------------------------------------------------------------------------
  const modes = { compare: byTest("mode-compare"), chat: byTest("mode-chat") };

  function setMode(mode, focus) {
    for (const [name, button] of Object.entries(modes)) {
      const on = name === mode;
      button.setAttribute("aria-pressed", String(on));
      document.getElementById(name).hidden = !on;
    }
    document.body.dataset.mode = mode;
    if (window.location.hash !== `#${mode}`) window.history.replaceState(null, "", `#${mode}`);
    if (focus) (mode === "chat" ? chatInput : byTest("prompt")).focus();
  }

  modes.compare.addEventListener("click", () => setMode("compare", true));
  modes.chat.addEventListener("click", () => setMode("chat", true));
  window.addEventListener("hashchange", () => setMode(window.location.hash === "#chat" ? "chat" : "compare", false));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      stopCompare();
      if (chatController !== null) chatController.abort();
    }
  });

  async function loadInfo() {
    const model = byTest("model");
    try {
      const response = await fetch("info", { headers: headers("application/json") });
      if (response.status === 401) {
        showKeyField(false);
        model.textContent = "Model: (enter the API key to see it)";
        return;
      }
      const info = await response.json();
      model.textContent = `Model: ${info.model_id}, up to ${info.max_total_tokens} tokens a request`;
    } catch (error) {
      model.textContent = `Model: (${describe(error)})`;
    }
  }

  try {
    keyInput.value = window.sessionStorage.getItem(KEY_STORE) || "";
  } catch (_) {
    // storage may be off: the key then lives in the field only
  }
  keyInput.addEventListener("input", () => {
    try {
      window.sessionStorage.setItem(KEY_STORE, keyInput.value);
    } catch (_) {
      // see above
    }
  });
  keyInput.addEventListener("change", loadInfo);
  if (keyRequired) showKeyField(false);
  setMode(window.location.hash === "#chat" ? "chat" : "compare", false);
  loadInfo();
  document.body.dataset.ready = "true";
})();
