// Shared helpers for the monitor and config pages. Everything from a record or the API is put in the
// page with textContent (never innerHTML): prompts and model names may contain HTML and scripts.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an element: h("div", {class: "x", dataset: {id: 1}, onclick: fn}, "text", child...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

/** The same for SVG elements (charts). */
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = String(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function appendAll(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** fetch + JSON; throws an Error with the API's message on a non-2xx answer. */
async function api(path, options = {}) {
  const init = { headers: { Accept: "application/json" }, ...options };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers = { ...init.headers, "Content-Type": "application/json" };
    init.body = JSON.stringify(options.json);
    delete init.json;
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) {
    const message = (data && data.error && data.error.message) || (typeof data === "string" && data) ||
      `HTTP ${response.status}`;
    throw new Error(message);
  }
  return data;
}

let toastTimer = null;
/** Show a toast: kind is "success", "warning" or "error". */
function toast(message, kind = "success") {
  const el = document.querySelector('[data-testid="toast"]');
  if (!el) return;
  el.textContent = message;
  el.dataset.kind = kind;
  el.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove("show"), kind === "success" ? 3000 : 6000);
}

/** Copy text to the clipboard (with a fallback where the Clipboard API is unavailable). */
async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
    } else {
      const area = h("textarea", { class: "offscreen" });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    toast("Copied to the clipboard");
  } catch (err) {
    toast(`Copy failed: ${err.message}`, "error");
  }
}

function copyButton(getText, label = "copy") {
  return h("button", { class: "copy", type: "button", title: "Copy to the clipboard",
    onclick: (ev) => { ev.stopPropagation(); copyText(typeof getText === "function" ? getText() : getText); } },
  label);
}

/** Ask for confirmation in an in-page <dialog> (resolves true/false). */
function confirmDialog(title, message, confirmLabel = "Confirm") {
  return new Promise((resolve) => {
    const yes = h("button", { class: "primary", type: "button", "data-testid": "confirm-yes" }, confirmLabel);
    const no = h("button", { type: "button", "data-testid": "confirm-no" }, "Cancel");
    const dialog = h("dialog", { "data-testid": "confirm" },
      h("h3", {}, title), h("p", {}, message), h("div", { class: "actions" }, no, yes));
    const done = (value) => { dialog.close(); dialog.remove(); resolve(value); };
    yes.addEventListener("click", () => done(true));
    no.addEventListener("click", () => done(false));
    dialog.addEventListener("cancel", () => done(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** Decimals that show the smallest non-zero cost among `costs` with two significant digits: 2 to 8 (costs are
 * kept to 1e-8 USD). One rule for a whole column, so that $0.012300 and $0.000078 line up. */
function costDecimals(costs) {
  let smallest = Infinity;
  for (const c of costs) if (typeof c === "number" && c !== 0 && isFinite(c)) smallest = Math.min(smallest, Math.abs(c));
  return smallest === Infinity ? 2 : Math.min(8, Math.max(2, Math.ceil(-Math.log10(smallest)) + 1));
}

const fmt = {
  int(n) { return n === null || n === undefined ? "—" : Math.round(n).toLocaleString("en-US"); },
  compact(n) {
    if (n === null || n === undefined) return "—";
    const abs = Math.abs(n);
    if (abs >= 1e9) return (n / 1e9).toFixed(1) + "B";
    if (abs >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (abs >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return fmt.int(n);
  },
  /** A cost in USD with `decimals` decimals: by default enough for two significant digits (see costDecimals). */
  cost(n, decimals = costDecimals([n])) {
    if (n === null || n === undefined) return "—";
    return "$" + n.toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
  },
  /** The formatter for a column of costs: every row with the same decimals, those its smallest cost needs. */
  costs(values) {
    const decimals = costDecimals(values);
    return (n) => fmt.cost(n, decimals);
  },
  ms(n) {
    if (n === null || n === undefined) return "—";
    if (n < 1000) return Math.round(n) + " ms";
    if (n < 60000) return (n / 1000).toFixed(n < 10000 ? 2 : 1) + " s";
    return Math.floor(n / 60000) + "m " + Math.round((n % 60000) / 1000) + "s";
  },
  pct(x) { return x === null || x === undefined ? "—" : (x * 100).toFixed(1) + "%"; },
  time(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    const today = new Date();
    const sameDay = d.toDateString() === today.toDateString();
    const t = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
    return sameDay ? t : d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + t;
  },
  bytes(n) {
    if (n === null || n === undefined) return "—";
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KB";
    return (n / 1048576).toFixed(1) + " MB";
  },
};

/** Pretty JSON, cut at `limit` characters (the full text stays available to copy). */
function prettyJSON(value, limit = 200000) {
  const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  if (text === undefined) return "";
  return text.length > limit ? text.slice(0, limit) + `\n… (${fmt.int(text.length - limit)} more characters)` : text;
}
