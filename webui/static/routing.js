// The config page's providers, routes and fallbacks editor (config.json `providers`, `routes`, `fallbacks`).
// Saved together with one POST /api/config: the server validates the whole and refuses it with a message, so
// nothing is ever half-applied. Keys are never shown: only each key variable's name and whether it is set.
"use strict";

const routing = { providers: [], routes: [], fallbacks: [], keys: {}, builtins: [], coolDowns: [] };
const FAMILY_CHOICES = ["", "haiku", "sonnet", "opus"];
const TRISTATE = [["", "any"], ["true", "yes"], ["false", "no"]];

function el(id) { return document.getElementById(id); }

function input(value, attrs = {}) {
  const node = h("input", { type: "text", spellcheck: "false", autocomplete: "off", title: attrs.placeholder, ...attrs });
  node.value = value === undefined || value === null ? "" : String(value);
  return node;
}

function select(options, value, attrs = {}) {
  const node = h("select", attrs, ...options.map(([v, label]) => h("option", { value: v }, label)));
  node.value = value === undefined || value === null ? "" : String(value);
  return node;
}

function providerNames() {
  return [...routing.builtins, ...routing.providers.map((p) => p.name.value.trim()).filter(Boolean)];
}

// ---- providers --------------------------------------------------------------------------------------------
function providerRow(name, entry) {
  const row = {
    name: input(name, { "data-testid": "provider-name", placeholder: "name, e.g. local" }),
    type: select([["openai", "OpenAI-compatible"], ["anthropic", "Anthropic-compatible"]], entry.type || "openai",
      { "data-testid": "provider-type" }),
    baseUrl: input(entry.baseUrl, { "data-testid": "provider-url", placeholder: "http://127.0.0.1:11434/v1" }),
    apiKeyEnv: input(entry.apiKeyEnv, { "data-testid": "provider-key-env", placeholder: "KEY VARIABLE (empty: keyless)" }),
    headers: input(entry.headers && Object.keys(entry.headers).length ? JSON.stringify(entry.headers) : "",
      { placeholder: '{"X-Header": "value"} (optional)' }),
    timeout: input(entry.timeout, { placeholder: "timeout s", size: 6 }),
    testModel: input("", { "data-testid": "provider-test-model", placeholder: "model to ask" }),
  };
  const keyState = entry.apiKeyEnv
    ? h("span", { class: "keystate " + (routing.keys[name] ? "yes" : "no"), "data-testid": "provider-key-state" },
      routing.keys[name] ? "key set" : "key not set")
    : h("span", { class: "hint" }, "keyless");
  row.node = h("div", { class: "route-row provider-row", "data-testid": "provider-row" },
    row.name, row.type, row.baseUrl, row.apiKeyEnv, keyState, row.headers, row.timeout, row.testModel,
    h("button", { type: "button", "data-testid": "provider-test", onclick: () => testProvider(row) }, "Test"),
    h("button", { type: "button", class: "danger", title: "Remove", onclick: () => remove(routing.providers, row) }, "✕"));
  return row;
}

function providerEntry(row) {
  const entry = { type: row.type.value, baseUrl: row.baseUrl.value.trim(), apiKeyEnv: row.apiKeyEnv.value.trim() };
  const headers = row.headers.value.trim();
  if (headers) {
    try { entry.headers = JSON.parse(headers); } catch { throw new Error(`provider ${row.name.value}: headers must be a JSON object`); }
  }
  if (row.timeout.value.trim()) entry.timeout = Number(row.timeout.value.trim());
  return entry;
}

async function testProvider(row) {
  const model = row.testModel.value.trim();
  if (!model) { toast("Type the model to ask first", "error"); return; }
  let entry;
  try { entry = providerEntry(row); } catch (err) { toast(err.message, "error"); return; }
  try {
    const result = await api("/api/config/test-provider", { json: { entry, model, provider: row.name.value.trim() } });
    toast(result.message, result.ok ? "success" : "error");
  } catch (err) {
    toast(`Test failed: ${err.message}`, "error");
  }
}

// ---- routes -----------------------------------------------------------------------------------------------
function routeRow(rule) {
  const when = rule.when || {};
  const header = when.header || {};
  const row = {
    model: input(when.model, { placeholder: "model glob", "data-testid": "route-model-glob" }),
    family: select(FAMILY_CHOICES.map((f) => [f, f || "any family"]), when.family, { "data-testid": "route-family" }),
    minInputTokens: input(when.minInputTokens, { placeholder: "min tokens", size: 7, "data-testid": "route-min-tokens" }),
    thinking: select(TRISTATE.map(([v, l]) => [v, `thinking: ${l}`]), when.thinking, { "data-testid": "route-thinking" }),
    images: select(TRISTATE.map(([v, l]) => [v, `images: ${l}`]), when.images),
    tool: input(when.tool, { placeholder: "tool glob" }),
    headerName: input(header.name, { placeholder: "header" }),
    headerValue: input(header.value, { placeholder: "value glob" }),
    provider: select(providerNames().map((n) => [n, n]), rule.provider, { "data-testid": "route-provider" }),
    target: input(rule.model, { placeholder: "model (empty: as asked)", "data-testid": "route-target-model" }),
  };
  row.node = h("div", { class: "route-row", "data-testid": "route-row" },
    row.model, row.family, row.minInputTokens, row.thinking, row.images, row.tool, row.headerName, row.headerValue,
    h("span", { class: "arrow" }, "→"), row.provider, row.target,
    h("button", { type: "button", title: "Up", "data-testid": "route-up", onclick: () => move(row, -1) }, "↑"),
    h("button", { type: "button", title: "Down", onclick: () => move(row, 1) }, "↓"),
    h("button", { type: "button", class: "danger", title: "Remove", onclick: () => remove(routing.routes, row) }, "✕"));
  return row;
}

function routeRule(row) {
  const when = {};
  const text = (node) => node.value.trim();
  if (text(row.model)) when.model = text(row.model);
  if (row.family.value) when.family = row.family.value;
  if (text(row.minInputTokens)) when.minInputTokens = Number(text(row.minInputTokens));
  if (row.thinking.value) when.thinking = row.thinking.value === "true";
  if (row.images.value) when.images = row.images.value === "true";
  if (text(row.tool)) when.tool = text(row.tool);
  if (text(row.headerName)) when.header = { name: text(row.headerName), value: text(row.headerValue) || "*" };
  const rule = { when, provider: row.provider.value };
  if (text(row.target)) rule.model = text(row.target);
  return rule;
}

function move(row, by) {
  const i = routing.routes.indexOf(row);
  const j = i + by;
  if (j < 0 || j >= routing.routes.length) return;
  [routing.routes[i], routing.routes[j]] = [routing.routes[j], routing.routes[i]];
  draw();
}

// ---- fallbacks --------------------------------------------------------------------------------------------
function fallbackRow(source, targets) {
  const row = {
    source: input(source, { placeholder: "anthropic or provider:model", "data-testid": "fallback-source" }),
    targets: input((targets || []).join(", "), { placeholder: "openrouter:anthropic/claude-sonnet-4.5, local",
      "data-testid": "fallback-targets" }),
  };
  row.node = h("div", { class: "route-row", "data-testid": "fallback-row" }, row.source, h("span", { class: "arrow" }, "→"),
    row.targets, h("button", { type: "button", class: "danger", title: "Remove", onclick: () => remove(routing.fallbacks, row) }, "✕"));
  return row;
}

// ---- the whole --------------------------------------------------------------------------------------------
function remove(list, row) {
  list.splice(list.indexOf(row), 1);
  draw();
}

function draw() {
  clear(el("providers")).append(...routing.builtins.map((name) => h("div", { class: "route-row builtin" },
    h("strong", {}, name), h("span", { class: "hint" }, name === "anthropic"
      ? "built in: Anthropic Messages, the client's own key" : "built in: OpenAI-compatible, OPENROUTER_API_KEY"))),
  ...routing.providers.map((r) => r.node));
  // a route's provider list follows the providers' names as they are typed
  for (const row of routing.routes) {
    const chosen = row.provider.value;
    clear(row.provider).append(...providerNames().map((n) => h("option", { value: n }, n)));
    row.provider.value = chosen;
  }
  clear(el("routes")).append(...(routing.routes.length ? routing.routes.map((r) => r.node)
    : [h("div", { class: "hint" }, "No routes: every call goes to the mode's provider.")]));
  clear(el("fallbacks")).append(...(routing.fallbacks.length ? routing.fallbacks.map((r) => r.node)
    : [h("div", { class: "hint" }, "No fallbacks: a failed call fails.")]));
  clear(el("cool-downs")).append(...(routing.coolDowns.length
    ? routing.coolDowns.map((c) => h("div", { "data-testid": "cool-down" },
      `${c.target}: HTTP ${c.status}, ${c.remainingS} s left`))
    : [h("span", { class: "hint" }, "none")]));
}

function renderRouting(config) {
  routing.builtins = config.builtinProviders || ["anthropic", "openrouter"];
  routing.keys = config.providerKeys || {};
  routing.coolDowns = config.coolDowns || [];
  routing.providers = Object.entries(config.providers || {}).map(([name, entry]) => providerRow(name, entry));
  routing.routes = (config.routes || []).map(routeRow);
  routing.fallbacks = Object.entries(config.fallbacks || {}).map(([source, targets]) => fallbackRow(source, targets));
  draw();
}

function routingPatch() {
  const providers = {};
  for (const row of routing.providers) providers[row.name.value.trim()] = providerEntry(row);
  const fallbacks = {};
  for (const row of routing.fallbacks) {
    fallbacks[row.source.value.trim()] = row.targets.value.split(",").map((t) => t.trim()).filter(Boolean);
  }
  return { providers, routes: routing.routes.map(routeRule), fallbacks };
}

async function saveRouting() {
  let patch;
  try { patch = routingPatch(); } catch (err) { toast(err.message, "error"); return; }
  try {
    renderRouting(await api("/api/config", { json: patch }));
    toast("Providers, routes and fallbacks saved");
  } catch (err) {
    toast(`Not saved: ${err.message}`, "error");
  }
}

async function loadRouting() {
  try { renderRouting(await api("/api/config")); } catch (err) { toast(`Loading the routes failed: ${err.message}`, "error"); }
}

document.addEventListener("DOMContentLoaded", () => {
  el("add-provider").addEventListener("click", () => { routing.providers.push(providerRow("", {})); draw(); });
  el("add-route").addEventListener("click", () => { routing.routes.push(routeRow({ provider: "anthropic" })); draw(); });
  el("add-fallback").addEventListener("click", () => { routing.fallbacks.push(fallbackRow("", [])); draw(); });
  el("save-routing").addEventListener("click", saveRouting);
  loadRouting();
});
