// Ember's chat page. Plain JavaScript, no dependencies, nothing from other
// hosts. Model output only ever becomes DOM text nodes (never innerHTML),
// so an answer cannot inject markup or script.
"use strict";

const $ = (id) => document.getElementById(id);
const store = window.localStorage;

const state = {
  conversation: [], // {role, content, toolCalls?, element}
  models: new Map(), // id -> {window, sparse}
  controller: null, // the running request's AbortController
  lastUsage: null,
  countTimer: null,
  countSeq: 0,
};

// ---------------------------------------------------------------- requests

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch (_) { /* not JSON */ }
  return new ApiError(response.status, message, code);
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: headers() });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "Cannot reach the server: is `ember serve` still running?");
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

function showError(error) {
  const box = $("error");
  let text = error.message || String(error);
  if (error.status === 401) {
    text = "This server needs an API key: enter it under Settings (it stays in this browser).";
    openSettings();
    $("api-key").focus();
  } else if (error.code === "context_length_exceeded") {
    text = `The conversation is too long for the model's window. ${error.message}`;
  }
  box.textContent = text;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// ------------------------------------------------------------------ models

async function loadModels() {
  try {
    const response = await api("/v1/models");
    const list = (await response.json()).data || [];
    const select = $("model");
    select.replaceChildren();
    state.models.clear();
    for (const card of list) {
      state.models.set(card.id, { window: card.max_model_len || null, sparse: !!card.sparse_attention });
      const option = document.createElement("option");
      option.value = card.id;
      option.textContent = card.id;
      select.append(option);
    }
    const saved = store.getItem("ember.model");
    if (saved && state.models.has(saved)) select.value = saved;
    clearError();
    scheduleCount();
    updateHighlight();
  } catch (e) {
    showError(e);
  }
}

function currentModel() {
  return state.models.get($("model").value) || { window: null, sparse: false };
}

// ------------------------------------------------------------ conversation

function requestMessages(draft) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const turn of state.conversation) {
    const message = { role: turn.role, content: turn.content };
    if (turn.toolCalls && turn.toolCalls.length) {
      message.tool_calls = turn.toolCalls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
    }
    messages.push(message);
  }
  if (draft) messages.push({ role: "user", content: draft });
  return messages;
}

function addTurn(role, content) {
  $("empty").hidden = true;
  const article = document.createElement("article");
  article.className = `turn ${role}`;
  article.setAttribute("aria-label", role);
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "body";
  article.append(who, body);
  const turn = { role, content, element: article, body };
  if (role === "user") {
    body.textContent = content;
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "edit";
    edit.textContent = "Edit";
    edit.setAttribute("aria-label", "Edit this message");
    edit.addEventListener("click", () => editTurn(turn));
    article.append(edit);
  }
  $("log").append(article);
  article.scrollIntoView({ block: "end" });
  return turn;
}

/// Puts an earlier user turn back in the message box and drops it and
/// everything after it, so the conversation continues from there.
function editTurn(turn) {
  if (state.controller) return;
  const at = state.conversation.indexOf(turn);
  if (at < 0) return;
  for (const later of state.conversation.splice(at)) later.element.remove();
  $("message").value = turn.content;
  $("message").focus();
  $("empty").hidden = state.conversation.length > 0;
  updateHighlight();
  scheduleCount();
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("regenerate").disabled = busy;
  $("stop").disabled = !busy;
  $("new-chat").disabled = busy;
}

async function send(event) {
  if (event) event.preventDefault();
  if (state.controller) return;
  const text = $("message").value;
  if (!text.trim()) return;
  $("message").value = "";
  updateHighlight();
  state.conversation.push(addTurn("user", text));
  await complete();
}

async function regenerate() {
  if (state.controller) return;
  const last = state.conversation[state.conversation.length - 1];
  if (last && last.role === "assistant") {
    state.conversation.pop();
    last.element.remove();
  }
  if (state.conversation.length) await complete();
}

/// Streams one answer to the conversation so far.
async function complete() {
  clearError();
  const params = parameters();
  const body = {
    model: $("model").value,
    messages: requestMessages(null),
    stream: true,
    stream_options: { include_usage: true },
    temperature: params.temperature,
    top_p: params.top_p,
    max_tokens: params.max_tokens,
  };
  const turn = addTurn("assistant", "");
  turn.toolCalls = [];
  turn.body.classList.add("streaming");
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  let finish = null;
  let failed = false;
  try {
    const response = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body), signal: controller.signal });
    for await (const chunk of events(response)) {
      if (chunk.error) throw new ApiError(500, chunk.error.message, chunk.error.code);
      if (chunk.usage) state.lastUsage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      const delta = choice.delta || {};
      if (delta.content) turn.content += delta.content;
      for (const call of delta.tool_calls || []) {
        const slot = (turn.toolCalls[call.index] ||= { id: "", name: "", arguments: "" });
        if (call.id) slot.id = call.id;
        if (call.function && call.function.name) slot.name = call.function.name;
        if (call.function && call.function.arguments) slot.arguments += call.function.arguments;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
      renderAnswer(turn);
    }
  } catch (e) {
    if (e.name === "AbortError") {
      finish = "stopped";
    } else {
      failed = true;
      showError(e);
    }
  } finally {
    state.controller = null;
    setBusy(false);
    turn.body.classList.remove("streaming");
  }
  if (failed && !turn.content && !turn.toolCalls.length) {
    turn.element.remove();
    return;
  }
  renderAnswer(turn);
  const note = { length: "Cut at the max tokens limit.", stopped: "Stopped." }[finish];
  if (note) {
    const p = document.createElement("div");
    p.className = "finish";
    p.textContent = note;
    turn.element.append(p);
  }
  state.conversation.push(turn);
  scheduleCount();
}

/// The JSON payloads of a server-sent event stream, until `[DONE]`.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of frame.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

function newChat() {
  if (state.controller) return;
  for (const turn of state.conversation) turn.element.remove();
  state.conversation = [];
  state.lastUsage = null;
  $("empty").hidden = false;
  clearError();
  scheduleCount();
}

function parameters() {
  return {
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Math.max(1, Math.floor(Number($("max-tokens").value) || 1)),
  };
}

// ---------------------------------------------------------------- rendering

function renderAnswer(turn) {
  const body = turn.body;
  body.replaceChildren();
  const text = turn.content;
  const json = asJson(text);
  if (json !== null) {
    body.append(codeBlock(json, "json"));
  } else {
    renderMarkdown(body, text);
  }
  for (const call of turn.toolCalls || []) {
    const box = document.createElement("div");
    box.className = "tool";
    const name = document.createElement("div");
    name.className = "tool-name";
    name.textContent = `Tool call: ${call.name}`;
    box.append(name, codeBlock(asJson(call.arguments) ?? call.arguments, "json"));
    body.append(box);
  }
  body.parentElement.scrollIntoView({ block: "end" });
}

/// `text` pretty-printed when it is one JSON object or array, else null.
function asJson(text) {
  const t = text.trim();
  if (!(t.startsWith("{") || t.startsWith("["))) return null;
  try {
    return JSON.stringify(JSON.parse(t), null, 2);
  } catch (_) {
    return null;
  }
}

function codeBlock(code, language) {
  const pre = document.createElement("pre");
  const element = document.createElement("code");
  if (language) element.dataset.language = language;
  element.textContent = code;
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", "Copy code");
  copy.addEventListener("click", () => {
    const done = () => { copy.textContent = "Copied"; setTimeout(() => { copy.textContent = "Copy"; }, 1200); };
    if (navigator.clipboard) navigator.clipboard.writeText(code).then(done, () => {});
  });
  pre.append(copy, element);
  return pre;
}

/// A small Markdown subset (fenced code, headings, lists, paragraphs,
/// inline code, bold, italics) built as DOM nodes from text nodes only.
function renderMarkdown(container, text) {
  const parts = text.split(/^```/m);
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      const newline = part.indexOf("\n");
      const language = newline >= 0 ? part.slice(0, newline).trim() : "";
      const code = newline >= 0 ? part.slice(newline + 1) : "";
      container.append(codeBlock(code.replace(/\n$/, ""), language));
      return;
    }
    renderBlocks(container, part);
  });
}

function renderBlocks(container, text) {
  let list = null;
  let paragraph = null;
  for (const line of text.split("\n")) {
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
    const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
    if (!line.trim()) {
      list = null;
      paragraph = null;
    } else if (heading) {
      list = paragraph = null;
      const h = document.createElement(`h${Math.min(6, heading[1].length + 2)}`);
      inline(h, heading[2]);
      container.append(h);
    } else if (bullet || numbered) {
      paragraph = null;
      const kind = bullet ? "UL" : "OL";
      if (!list || list.tagName !== kind) {
        list = document.createElement(kind.toLowerCase());
        container.append(list);
      }
      const li = document.createElement("li");
      inline(li, (bullet || numbered)[1]);
      list.append(li);
    } else {
      list = null;
      if (!paragraph) {
        paragraph = document.createElement("p");
        container.append(paragraph);
      } else {
        paragraph.append(document.createElement("br"));
      }
      inline(paragraph, line);
    }
  }
}

function inline(parent, text) {
  const pattern = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*)/g;
  let at = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > at) parent.append(document.createTextNode(text.slice(at, match.index)));
    const token = match[0];
    let element;
    if (token.startsWith("`")) {
      element = document.createElement("code");
      element.textContent = token.slice(1, -1);
    } else if (token.startsWith("**")) {
      element = document.createElement("strong");
      element.textContent = token.slice(2, -2);
    } else {
      element = document.createElement("em");
      element.textContent = token.slice(1, -1);
    }
    parent.append(element);
    at = match.index + token.length;
  }
  if (at < text.length) parent.append(document.createTextNode(text.slice(at)));
}

// ---------------------------------------------------------- token counter

function scheduleCount() {
  clearTimeout(state.countTimer);
  state.countTimer = setTimeout(countTokens, 200);
}

/// The conversation with the draft, as the chat template renders it,
/// against the model's window; a remote model (no /tokenize) shows the last
/// answer's usage instead.
async function countTokens() {
  const seq = ++state.countSeq;
  const { window } = currentModel();
  const draft = $("message").value;
  const messages = requestMessages(draft.trim() ? draft : null);
  let count = 0;
  if (messages.length) {
    try {
      const response = await api("/tokenize", {
        method: "POST",
        body: JSON.stringify({ model: $("model").value, messages }),
      });
      count = (await response.json()).count;
    } catch (_) {
      count = state.lastUsage ? state.lastUsage.total_tokens : 0;
    }
  }
  if (seq !== state.countSeq) return;
  const context = $("context");
  context.textContent = `${count} / ${window ?? "?"}`;
  context.classList.toggle("full", window !== null && count >= window);
}

// -------------------------------------------------- [IMPORTANT] highlighting

/// Under sparse attention, `[IMPORTANT]...[/IMPORTANT]` spans of the draft
/// stay visible to every later token; the box behind the textarea marks them.
function updateHighlight() {
  const box = $("highlight");
  box.replaceChildren();
  if (!currentModel().sparse) return;
  const text = $("message").value;
  const pattern = /\[IMPORTANT\][\s\S]*?(\[\/IMPORTANT\]|$)/g;
  let at = 0;
  for (const match of text.matchAll(pattern)) {
    box.append(document.createTextNode(text.slice(at, match.index)));
    const mark = document.createElement("mark");
    mark.textContent = match[0];
    box.append(mark);
    at = match.index + match[0].length;
  }
  box.append(document.createTextNode(text.slice(at) + "\n"));
  box.scrollTop = $("message").scrollTop;
}

// ------------------------------------------------------------------ export

function exportMarkdown() {
  const p = parameters();
  const model = $("model").value;
  const lines = [`# Conversation with ${model}`, "", `- model: ${model}`, `- temperature: ${p.temperature}`,
    `- top_p: ${p.top_p}`, `- max_tokens: ${p.max_tokens}`, `- exported: ${new Date().toISOString()}`, ""];
  const system = $("system").value.trim();
  if (system) lines.push("## System", "", system, "");
  for (const turn of state.conversation) {
    lines.push(turn.role === "user" ? "## User" : "## Assistant", "", turn.content, "");
    for (const call of turn.toolCalls || []) {
      lines.push(`Tool call \`${call.name}\`:`, "", "```json", asJson(call.arguments) ?? call.arguments, "```", "");
    }
  }
  const blob = new Blob([lines.join("\n")], { type: "text/markdown" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  const stamp = new Date().toISOString().slice(0, 16).replace(/[-:T]/g, "");
  link.download = `ember-chat-${stamp}.md`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// ------------------------------------------------------------------ set-up

function openSettings() {
  $("settings").classList.add("open");
  $("settings-toggle").setAttribute("aria-expanded", "true");
}

function applyTheme(theme) {
  if (theme === "auto") document.documentElement.removeAttribute("data-theme");
  else document.documentElement.dataset.theme = theme;
}

function cycleTheme() {
  const order = ["auto", "dark", "light"];
  const next = order[(order.indexOf(store.getItem("ember.theme") || "auto") + 1) % order.length];
  store.setItem("ember.theme", next);
  applyTheme(next);
}

function persist(id, key) {
  const element = $(id);
  const saved = store.getItem(key);
  if (saved !== null) element.value = saved;
  element.addEventListener("input", () => store.setItem(key, element.value));
}

function showValues() {
  $("temperature-value").textContent = $("temperature").value;
  $("top-p-value").textContent = $("top-p").value;
}

function start() {
  applyTheme(store.getItem("ember.theme") || "auto");
  persist("system", "ember.system");
  persist("temperature", "ember.temperature");
  persist("top-p", "ember.top_p");
  persist("max-tokens", "ember.max_tokens");
  persist("api-key", "ember.api_key");
  showValues();
  $("temperature").addEventListener("input", showValues);
  $("top-p").addEventListener("input", showValues);
  $("composer").addEventListener("submit", send);
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) send(e);
  });
  $("message").addEventListener("input", () => { updateHighlight(); scheduleCount(); });
  $("message").addEventListener("scroll", () => { $("highlight").scrollTop = $("message").scrollTop; });
  $("system").addEventListener("input", scheduleCount);
  $("stop").addEventListener("click", stop);
  $("regenerate").addEventListener("click", regenerate);
  $("new-chat").addEventListener("click", newChat);
  $("export").addEventListener("click", exportMarkdown);
  $("theme").addEventListener("click", cycleTheme);
  $("settings-toggle").addEventListener("click", () => {
    const open = $("settings").classList.toggle("open");
    $("settings-toggle").setAttribute("aria-expanded", String(open));
  });
  $("model").addEventListener("change", () => {
    store.setItem("ember.model", $("model").value);
    updateHighlight();
    scheduleCount();
  });
  $("api-key").addEventListener("change", loadModels);
  setBusy(false);
  loadModels();
}

document.addEventListener("DOMContentLoaded", start);
