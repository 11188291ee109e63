// The config page: proxy mode, model mapping (with OpenRouter's model list), key state, test/save/reset/reload.
"use strict";

const FAMILIES = ["sonnet", "opus", "haiku", "default"];
const $ = (id) => document.getElementById(id);
let models = new Map(); // id -> model info from /api/config/models
let current = null; // the configuration as last shown (GET/POST /api/config)
const SOURCES = {
  pinned: () => "pinned here; empty the field and save to follow the newest model of the family",
  newest: (family) => `the newest ${family === "default" ? "sonnet" : family} in OpenRouter's model list`,
  fallback: () => "built-in fallback until OpenRouter's model list has been fetched",
};

function perMillion(price) {
  const n = Number(price);
  if (!isFinite(n)) return "?";
  return "$" + (n * 1e6).toFixed(n * 1e6 < 1 ? 3 : 2);
}

function describeModel(m) {
  const parts = [];
  if (m.name) parts.push(m.name);
  if (m.pricing) parts.push(`${perMillion(m.pricing.prompt)}/M in · ${perMillion(m.pricing.completion)}/M out`);
  if (m.contextLength) parts.push(`${fmt.compact(m.contextLength)} context`);
  return parts.join(" · ");
}

function showPrice(family) {
  const input = $(`map-${family}`);
  const id = input.value.trim() || input.placeholder;
  const m = models.get(id);
  $(`price-${family}`).textContent = m ? describeModel(m) : id && models.size ? "not in OpenRouter's list" : "";
}

function render(config) {
  current = config;
  for (const mode of ["anthropic", "openrouter"]) {
    $(`mode-${mode}`).setAttribute("aria-pressed", String(config.mode === mode));
  }
  $("mode-hint").textContent = config.mode === "openrouter"
    ? "Claude Code's requests are translated and sent to OpenRouter. Applies to the next request."
    : "Requests pass through to Anthropic unchanged. Applies to the next request.";
  const pin = config.pinned && config.pinned.mode;
  $("mode-pinned").hidden = !pin;
  $("mode-pinned").textContent = pin
    ? `Pinned to ${pin.value} by ${pin.by}: a switch here lasts only until the proxy restarts.` : "";
  for (const family of FAMILIES) {
    const choice = config.modelMap[family];
    $(`map-${family}`).value = choice.source === "pinned" ? choice.id : "";
    $(`map-${family}`).placeholder = choice.id;
    $(`source-${family}`).textContent = `→ ${choice.id}: ${SOURCES[choice.source](family)}`;
    showPrice(family);
  }
  const warnings = config.warnings || [];
  $("warnings").hidden = !warnings.length;
  clear($("warnings")).append(...warnings.map((text) => h("p", {}, "⚠ ", text)));
  const key = $("key-state");
  key.textContent = config.openrouterKeySet ? "set" : "not set";
  key.className = "keystate " + (config.openrouterKeySet ? "yes" : "no");
  $("base-url").textContent = config.openrouterBaseUrl || "";
  $("anthropic-upstream").textContent = config.anthropicUpstream || "";
  $("saved-state").textContent = `mode: ${config.mode}`;
}

async function run(action, work) {
  try {
    const result = await work();
    return result;
  } catch (err) {
    toast(`${action} failed: ${err.message}`, "error");
    return null;
  }
}

async function loadConfig() {
  const config = await run("Loading the configuration", () => api("/api/config"));
  if (config) render(config);
}

/** Where prices come from (GET /api/monitor/config: `prices`), shown read-only. */
async function loadPrices() {
  const info = await run("Loading the price information", () => api("/api/monitor/config"));
  if (!info || !info.prices) return;
  const p = info.prices;
  const source = /^https:\/\//.test(p.source || "")
    ? h("a", { href: p.source, target: "_blank", rel: "noopener noreferrer" }, p.source) : p.source || "—";
  const overridden = p.overrideModels.length
    ? `${p.overrideModels.length} model(s): ${p.overrideModels.join(", ")}` : "none (no file, or no model in it)";
  const items = [
    ["Prices", p.library || "—"], ["Source", source],
    ["Anthropic models priced", fmt.int(p.builtinModels.length)],
    ["Override file", h("code", { "data-testid": "prices-file" }, p.overrideFile || "—")],
    ["Overridden", p.overrideError ? "none: the file is ignored" : overridden],
  ];
  clear($("prices")).append(...items.map(([k, v]) => h("div", {}, h("div", { class: "k" }, k), h("div", { class: "v" }, v))));
  $("prices-error").hidden = !p.overrideError;
  $("prices-error").textContent = p.overrideError || "";
}

async function loadModels(refresh = false) {
  const result = await run("Loading OpenRouter's models", () => api("/api/config/models" + (refresh ? "?refresh=1" : "")));
  if (!result) { $("models-state").textContent = "OpenRouter's model list is unavailable."; return; }
  models = new Map((result.data || []).map((m) => [m.id, m]));
  const list = clear($("models"));
  for (const m of models.values()) list.append(h("option", { value: m.id }, describeModel(m)));
  const when = result.fetchedAt ? new Date(result.fetchedAt).toLocaleString([], { hour12: false }) : "never";
  $("models-state").textContent = result.error
    ? `${result.error}. ${models.size} models from the cache.`
    : `${fmt.int(models.size)} OpenRouter models (fetched ${when}${result.stale ? ", stale" : ""}). Type to search.`;
  for (const family of FAMILIES) showPrice(family);
}

/** Ask before a switch that will not do what its user expects; true to go ahead. */
async function switchConfirmed(mode) {
  const notes = [];
  if (mode === "openrouter" && current && !current.openrouterKeySet) {
    notes.push("OPENROUTER_API_KEY is not set: every call will be refused (401) until you set it in the " +
      "environment or .env and reload the configuration.");
  }
  const pin = current && current.pinned && current.pinned.mode;
  if (pin && pin.value !== mode) {
    notes.push(`${pin.by} pins the mode to ${pin.value}: this switch lasts only until the proxy restarts.`);
  }
  return !notes.length || confirmDialog(`Switch to ${mode} anyway?`, notes.join(" "), "Switch");
}

async function setMode(mode) {
  if (current && current.mode === mode) return;
  if (!(await switchConfirmed(mode))) return;
  const config = await run("Switching the mode", () => api("/api/config", { json: { mode } }));
  if (!config) return;
  render(config);
  if (config.warnings.length) toast(`Mode switched to ${config.mode}. ${config.warnings.join(" ")}`, "warning");
  else toast(`Mode switched to ${config.mode}`);
}

async function save() {
  const mapping = {};
  for (const family of FAMILIES) mapping[family] = $(`map-${family}`).value.trim() || null; // null: the newest
  const config = await run("Saving", () => api("/api/config", { json: { models: mapping } }));
  if (config) { render(config); toast("Model mapping saved"); }
}

async function reset() {
  if (!(await confirmDialog("Reset the configuration?", "Mode, model mapping and headers go back to their defaults.", "Reset"))) {
    return;
  }
  const config = await run("Reset", () => api("/api/config/reset", { method: "POST" }));
  if (config) { render(config); renderRouting(config); toast("Configuration reset to the defaults"); }
}

async function reload() {
  const config = await run("Reload", () => api("/api/config/reload", { method: "POST" }));
  if (config) {
    render(config); renderRouting(config); loadPrices();
    toast("Configuration reloaded from config.json and the environment");
  }
}

async function testKey() {
  const button = $("test-key");
  button.disabled = true;
  const result = await run("Testing the key", () => api("/api/config/test-openrouter", { method: "POST" }));
  button.disabled = false;
  if (result) toast(result.message || (result.ok ? "The key works" : "The key does not work"), result.ok ? "success" : "error");
}

document.addEventListener("DOMContentLoaded", () => {
  $("mode-anthropic").addEventListener("click", () => setMode("anthropic"));
  $("mode-openrouter").addEventListener("click", () => setMode("openrouter"));
  $("save").addEventListener("click", save);
  $("reset").addEventListener("click", reset);
  $("reload").addEventListener("click", reload);
  $("test-key").addEventListener("click", testKey);
  for (const family of FAMILIES) $(`map-${family}`).addEventListener("input", () => showPrice(family));
  loadConfig();
  loadModels();
  loadPrices();
});
