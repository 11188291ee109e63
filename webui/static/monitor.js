// The monitor page: stats, charts, filters, the live request list and the detail view.
// Live updates come from Server-Sent Events (/api/monitor/stream); nothing polls.
"use strict";

const FILTER_KEYS = ["status", "model", "provider", "timeRange", "q", "session"];
const state = {
  filters: { status: "", model: "", provider: "", timeRange: "", q: "", session: "" },
  page: 1,
  limit: 50,
  total: 0,
  rows: new Map(), // id -> summary shown in the list
  costDecimals: 2, // of the list's cost column (costDecimals of its rows)
  selected: null, // id of the record in the detail view
  detail: null, // the full record shown in the detail view
  showAllChunks: false,
};
const $ = (id) => document.getElementById(id);

function filterParams(extra = {}) {
  const params = new URLSearchParams();
  for (const key of FILTER_KEYS) if (state.filters[key]) params.set(key, state.filters[key]);
  for (const [k, v] of Object.entries(extra)) params.set(k, v);
  return params;
}

// ---- throttled refreshes ----------------------------------------------------------------------------------
function throttle(fn, wait) {
  let timer = null;
  let last = 0;
  return function run() {
    if (timer) return;
    const delay = Math.max(0, last + wait - Date.now());
    timer = setTimeout(async () => {
      timer = null;
      last = Date.now();
      try { await fn(); } catch (err) { console.warn("refresh failed:", err.message); }
    }, delay);
  };
}
const refreshStatsSoon = throttle(loadStats, 1000);
const refreshListSoon = throttle(loadList, 1000);
const refreshDetailSoon = throttle(() => state.selected && loadDetail(state.selected, { quiet: true }), 500);

// ---- stats + charts -----------------------------------------------------------------------------------------
async function loadStats() {
  const stats = await api("/api/monitor/stats?" + filterParams());
  $("stat-total").textContent = fmt.int(stats.total);
  $("stat-total-sub").textContent =
    `${fmt.int(stats.success)} ok · ${fmt.int(stats.errors)} errors · ${fmt.int(stats.pending)} pending`;
  $("stat-success").textContent = fmt.pct(stats.successRate);
  $("stat-success-sub").textContent = stats.cancelled ? `${fmt.int(stats.cancelled)} cancelled` : "of finished requests";
  $("stat-latency").textContent = `${fmt.ms(stats.latencyMs.p50)} / ${fmt.ms(stats.latencyMs.p95)}`;
  $("stat-latency-sub").textContent = `average ${fmt.ms(stats.latencyMs.avg)}`;
  const t = stats.tokens;
  $("stat-tokens").textContent = `${fmt.compact(t.input)} / ${fmt.compact(t.output)}`;
  $("stat-tokens-sub").textContent = `cache: ${fmt.compact(t.cacheRead)} read · ${fmt.compact(t.cacheCreation)} written`;
  $("stat-cost").textContent = fmt.cost(stats.costUsd);
  $("stat-cost-sub").textContent = stats.total && stats.costedRequests < stats.total
    ? `${fmt.int(stats.total - stats.costedRequests)} requests without a price` : "";
  $("stat-savings").textContent = fmt.cost(stats.cacheSavingsUsd);
  $("stat-savings-sub").textContent = `${fmt.compact(t.cacheRead)} cache-read tokens` +
    (stats.cacheSavingsUnpricedTokens ? ` · ${fmt.compact(stats.cacheSavingsUnpricedTokens)} without a price` : "");
  updateOptions("model", stats.facets.models);
  updateOptions("provider", [...new Set(["anthropic", "openrouter", ...stats.facets.providers])]);  // built in, then any other
  drawCharts(stats);
  renderSessions(stats);
  renderCacheBreaks(stats.cacheBreaks);
  loadRateLimits(filterParams());
  showConversation(state.filters.session, stats.total);
}

/** Money lost to cache breaks, and where the prompts broke (cache_break.py). */
function renderCacheBreaks(breaks) {
  $("stat-breaks").textContent = fmt.cost(breaks.extraCostUsd);
  $("stat-breaks").title = breaks.byAt.map((e) => `${e.at}: ${e.count} · ${fmt.cost(e.extraCostUsd)}`).join("\n");
  $("stat-breaks-sub").textContent = breaks.count
    ? `${fmt.int(breaks.count)} breaks · ` + breaks.byAt.map((e) => `${e.at} ${fmt.int(e.count)}`).join(" · ")
    : "no cache break";
}

function shortSession(id) {
  return id.length > 13 ? id.slice(0, 8) + "…" + id.slice(-4) : id;
}

function filterBySession(id) {
  state.filters.session = id;
  return applyFilters();
}

/** The most expensive sessions among the matching records; a click shows only that session's requests. */
function renderSessions(stats) {
  const sessions = stats.bySession || [];
  $("sessions-title").textContent = stats.sessionCount > sessions.length
    ? `Top ${sessions.length} of ${fmt.int(stats.sessionCount)} sessions by cost`
    : `Sessions by cost (${fmt.int(stats.sessionCount || 0)})`;
  $("sessions-empty").hidden = sessions.length > 0;
  const tbody = clear($("sessions"));
  const savings = fmt.costs(sessions.map((se) => se.cacheSavingsUsd));
  const cost = fmt.costs(sessions.map((se) => se.costUsd));
  for (const se of sessions) {
    const open = () => filterBySession(se.session);
    tbody.append(h("tr", { "data-testid": "session-row", dataset: { session: se.session }, tabindex: "0",
      class: se.session === state.filters.session ? "selected" : null, title: `session ${se.session}: show its requests`,
      onclick: open, onkeydown: (ev) => { if (ev.key === "Enter") open(); } },
    h("td", { class: "mono" }, shortSession(se.session)),
    h("td", { class: "optional models", title: se.models.join(", ") }, se.models.join(", ")),
    h("td", { class: "num" }, fmt.int(se.requests)),
    h("td", { class: "num" }, fmt.pct(se.successRate)),
    h("td", { class: "num" }, `${fmt.compact(se.inputTokens)} / ${fmt.compact(se.outputTokens)}`),
    h("td", { class: "num" }, fmt.ms(se.latencyMs && se.latencyMs.p50)),
    h("td", { class: "num" }, savings(se.cacheSavingsUsd)),
    h("td", { class: "num" }, cost(se.costUsd)),
    h("td", { class: "num when" }, se.lastTs ? fmt.time(new Date(se.lastTs * 1000).toISOString()) : "—")));
  }
}

/** A filter's choices (models, providers) as the store has them, keeping the one chosen. */
function updateOptions(key, values) {
  const select = $(`filter-${key}`);
  const current = state.filters[key];
  const wanted = ["", ...values];
  if (current && !wanted.includes(current)) wanted.push(current);
  const have = Array.from(select.options, (o) => o.value);
  if (have.join("\n") === wanted.join("\n")) return;
  clear(select);
  for (const value of wanted) select.append(h("option", { value }, value || "all"));
  select.value = current;
}

function bucketLabel(bucketSeconds) {
  return (t, long) => {
    const d = new Date(t * 1000);
    if (long) return d.toLocaleString([], { hour12: false });
    if (bucketSeconds >= 86400) return d.toLocaleDateString([], { month: "short", day: "numeric" });
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  };
}

function drawCharts(stats) {
  const { bucketSeconds, points } = stats.timeline;
  const labels = points.map((p) => p.t);
  const tickLabel = bucketLabel(bucketSeconds);
  stackedBars($("chart-requests"), {
    labels, tickLabel, format: fmt.compact,
    series: [
      { name: "success", cls: "s1", values: points.map((p) => p.requests - p.errors) },
      { name: "errors", cls: "s5", values: points.map((p) => p.errors) },
    ],
  });
  stackedBars($("chart-tokens"), {
    labels, tickLabel, format: fmt.compact,
    series: [
      { name: "input", cls: "s1", values: points.map((p) => p.inputTokens) },
      { name: "output", cls: "s2", values: points.map((p) => p.outputTokens) },
      { name: "cache", cls: "s4", values: points.map((p) => p.cacheTokens) },
    ],
  });
  const priced = stats.byModel.some((m) => m.costUsd > 0);
  $("chart-models-title").textContent = priced ? "Cost by model" : "Requests by model (no prices recorded)";
  horizontalBars($("chart-models"), {
    rows: stats.byModel.map((m) => ({ label: m.model, value: priced ? m.costUsd : m.requests }))
      .sort((a, b) => b.value - a.value),
    format: priced ? fmt.costs(stats.byModel.map((m) => m.costUsd)) : fmt.int, cls: priced ? "s2" : "s1",
  });
  const days = stats.byDay || [];
  stackedBars($("chart-days"), {
    labels: days.map((d) => d.day), format: fmt.costs(days.map((d) => d.costUsd)),
    tickLabel: (day, long) => long ? `${day} · ${fmt.int(days.find((d) => d.day === day).requests)} requests`
      : new Date(day + "T00:00:00Z").toLocaleDateString([], { month: "short", day: "numeric", timeZone: "UTC" }),
    series: [{ name: "cost", cls: "s2", values: days.map((d) => d.costUsd) }],
  });
  const hist = stats.latencyHistogram;
  stackedBars($("chart-latency"), {
    labels: hist.map((b) => b.fromMs), format: fmt.int,
    tickLabel: (from, long) => {
      const b = hist.find((x) => x.fromMs === from);
      // ticks are narrow: "<250ms", "<2s", "≥1m" (the tooltip says it in full)
      const short = (ms) => (ms < 1000 ? `${ms}ms` : ms < 60000 ? `${ms / 1000}s` : `${ms / 60000}m`);
      const text = b.toMs === null ? `≥${short(from)}` : `<${short(b.toMs)}`;
      return long ? `${fmt.ms(from)} – ${b.toMs === null ? "∞" : fmt.ms(b.toMs)}` : text;
    },
    series: [{ name: "requests", cls: "s3", values: hist.map((b) => b.count) }],
  });
}

// ---- the list ---------------------------------------------------------------------------------------------------
async function loadList() {
  const data = await api("/api/monitor/requests?" + filterParams({ page: state.page, limit: state.limit }));
  state.total = data.total;
  state.rows = new Map(data.data.map((r) => [r.id, r]));
  state.costDecimals = costDecimals(data.data.map((r) => r.costUsd));
  const tbody = $("rows");
  const fresh = document.createDocumentFragment();
  for (const record of data.data) fresh.append(rowFor(record));
  clear(tbody).append(fresh);
  updatePager();
}

function updatePager() {
  const first = state.total ? (state.page - 1) * state.limit + 1 : 0;
  const last = Math.min(state.total, state.page * state.limit, first + state.rows.size - 1);
  $("page-info").textContent = `${fmt.int(first)}–${fmt.int(last)} of ${fmt.int(state.total)}`;
  $("prev").disabled = state.page <= 1;
  $("next").disabled = state.page * state.limit >= state.total;
  const filtered = FILTER_KEYS.some((k) => state.filters[k]);
  $("empty").hidden = state.total > 0;
  $("empty").textContent = filtered ? "No request matches these filters."
    : "No requests yet. Point Claude Code at this proxy (ANTHROPIC_BASE_URL) and they appear here live.";
}

function durationOf(record) {
  if (record.metrics && record.metrics.durationMs !== null && record.metrics.durationMs !== undefined) {
    return fmt.ms(record.metrics.durationMs);
  }
  return record.status === "pending" ? fmt.ms(Date.now() - new Date(record.timestamp).getTime()) : "—";
}

function rowFor(record) {
  const u = record.usage || {};
  const model = record.upstreamModel && record.upstreamModel !== record.model
    ? `${record.model || "—"} → ${record.upstreamModel}` : record.model || "—";
  const tr = h("tr", { "data-testid": "request-row", dataset: { id: record.id, status: record.status },
    class: record.id === state.selected ? "selected" : null, tabindex: "0",
    onclick: () => select(record.id), onkeydown: (ev) => { if (ev.key === "Enter") select(record.id); } },
  h("td", { class: "when", title: record.timestamp }, fmt.time(record.timestamp)),
  h("td", {}, h("span", { class: `status ${record.status}`, title: record.error ? record.error.message : record.status },
    record.status === "pending" ? "live" : record.status)),
  h("td", { class: "model", title: model }, model),
  h("td", { class: "optional" }, record.provider),
  h("td", { class: "preview optional", title: record.preview || "" }, record.preview || ""),
  h("td", { class: "num" }, `${fmt.compact(u.inputTokens)} / ${fmt.compact(u.outputTokens)}`),
  costCell(record),
  h("td", { class: "num duration" }, durationOf(record)));
  return tr;
}

/** The cost, or a "?" whose tooltip says why there is none (costNote); an estimate keeps its note as a tooltip. */
function costCell(record) {
  const unknown = record.costUsd === null || record.costUsd === undefined;
  const note = record.costNote || null;
  return h("td", { class: "num cost", title: note },
    unknown && note ? h("span", { class: "unknown-cost", "data-testid": "cost-note", title: note }, "?")
      : fmt.cost(record.costUsd, state.costDecimals));
}

/** The cost column keeps one decimals rule for all its rows: re-format it when a changed row changes the rule. */
function alignCosts() {
  const decimals = costDecimals(Array.from(state.rows.values(), (r) => r.costUsd));
  if (decimals === state.costDecimals) return;
  state.costDecimals = decimals;
  for (const tr of $("rows").rows) {
    const record = state.rows.get(tr.dataset.id);
    if (record) tr.querySelector("td.cost").replaceWith(costCell(record));
  }
}

function matchesFilters(record) {
  const f = state.filters;
  if (f.status && record.status !== f.status) return false;
  if (f.model && record.model !== f.model) return false;
  if (f.provider && record.provider !== f.provider) return false;
  if (f.session && record.sessionId !== f.session) return false;
  if (f.q && !(record.preview || "").toLowerCase().includes(f.q.toLowerCase())) return false;
  return true; // a time range always includes a record that is happening now
}

/** A live event: patch the visible row (or add it), then let the server's answer settle the rest. */
function onRecordEvent(type, record) {
  const tbody = $("rows");
  const existing = tbody.querySelector(`tr[data-id="${CSS.escape(record.id)}"]`);
  if (existing) {
    state.rows.set(record.id, record);
    existing.replaceWith(rowFor(record));
  } else if (type === "started" && state.page === 1 && matchesFilters(record)) {
    const row = rowFor(record);
    row.classList.add("fresh");
    tbody.prepend(row);
    state.rows.set(record.id, record);
    state.total += 1;
    while (tbody.rows.length > state.limit) {
      state.rows.delete(tbody.lastElementChild.dataset.id);
      tbody.lastElementChild.remove();
    }
    updatePager();
  }
  alignCosts();
  if (record.id === state.selected) {
    if (type === "ended") state.selectedEnded = record.id;
    refreshDetailSoon();
  }
  refreshStatsSoon();
  if (type !== "progressed") refreshListSoon();
}

setInterval(() => { // pending rows: their duration grows while you watch
  for (const tr of $("rows").querySelectorAll('tr[data-status="pending"]')) {
    const record = state.rows.get(tr.dataset.id);
    if (record) tr.querySelector(".duration").textContent = durationOf(record);
  }
}, 1000);

// ---- live events -----------------------------------------------------------------------------------------------
function setLive(stateName, text) {
  const el = $("live");
  el.dataset.state = stateName;
  el.textContent = text;
}

function connect() {
  const events = new EventSource("/api/monitor/stream");
  events.addEventListener("hello", () => {
    setLive("live", "live");
    refreshListSoon(); // catch up with whatever happened while disconnected
    refreshStatsSoon();
  });
  for (const type of ["started", "progressed", "ended"]) {
    events.addEventListener(type, (ev) => onRecordEvent(type, JSON.parse(ev.data).record));
  }
  events.addEventListener("cleared", () => { closeDetail(); refreshListSoon(); refreshStatsSoon(); });
  events.addEventListener("lagged", () => { refreshListSoon(); refreshStatsSoon(); });
  events.addEventListener("error", () => {
    setLive(events.readyState === EventSource.CLOSED ? "offline" : "connecting",
      events.readyState === EventSource.CLOSED ? "offline" : "reconnecting…");
    if (events.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
  });
}

// ---- the detail view ------------------------------------------------------------------------------------------
async function select(id) {
  state.selected = id;
  state.showAllChunks = false;
  for (const tr of $("rows").querySelectorAll("tr.selected")) tr.classList.remove("selected");
  const tr = $("rows").querySelector(`tr[data-id="${CSS.escape(id)}"]`);
  if (tr) tr.classList.add("selected");
  await loadDetail(id);
}

function closeDetail() {
  state.selected = null;
  state.detail = null;
  $("detail").hidden = true;
  $("content").classList.remove("with-detail");
  for (const tr of $("rows").querySelectorAll("tr.selected")) tr.classList.remove("selected");
}

async function loadDetail(id, { quiet = false, attempt = 0 } = {}) {
  let record;
  try {
    record = await api(`/api/monitor/requests/${encodeURIComponent(id)}`);
  } catch (err) {
    if (!quiet) toast(`Could not load the request: ${err.message}`, "error");
    return;
  }
  if (state.selected !== id) return;
  if (record.status === "pending" && state.selectedEnded === id && attempt < 20) {
    // The exchange has ended but the store writes its final version a moment later: ask again shortly.
    setTimeout(() => { if (state.selected === id) loadDetail(id, { quiet: true, attempt: attempt + 1 }); }, 250);
  }
  state.detail = record;
  const pane = $("detail");
  const scroll = pane.scrollTop;
  clear(pane).append(renderDetail(record));
  pane.hidden = false;
  pane.dataset.id = record.id;
  $("content").classList.add("with-detail");
  if (quiet) pane.scrollTop = scroll;
}

function section(title, ...content) {
  return [h("h4", {}, title), ...content];
}

function kv(pairs) {
  return h("div", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) =>
    h("div", {}, h("div", { class: "k" }, k), h("div", { class: "v" }, v === null || v === undefined ? "—" : v))));
}

function renderDetail(r) {
  const u = r.usage || {};
  const m = r.metrics || {};
  const frag = document.createDocumentFragment();
  frag.append(h("div", { class: "head" },
    h("span", { class: `status ${r.status}` }, r.status === "pending" ? "live" : r.status),
    h("h2", {}, r.model || "(no model)"),
    r.upstreamModel && r.upstreamModel !== r.model ? h("span", { class: "badge", title: "sent upstream as" }, "→ " + r.upstreamModel) : null,
    h("span", { class: "badge" }, r.provider),
    h("span", { class: "spacer" }),
    copyButton(() => JSON.stringify(r, null, 2), "copy JSON"),
    h("button", { type: "button", class: "copy", title: "Close", onclick: closeDetail }, "✕")));
  frag.append(kv([
    ["Time", new Date(r.timestamp).toLocaleString([], { hour12: false })],
    ["Duration", fmt.ms(m.durationMs)], ["First byte", fmt.ms(m.ttfbMs)],
    ["Input tokens", fmt.int(u.inputTokens)], ["Output tokens", fmt.int(u.outputTokens)],
    ["Cache read", fmt.int(u.cacheReadInputTokens)], ["Cache write", fmt.int(u.cacheCreationInputTokens)],
    ["Cost", r.costUsd === null && r.costNote ? r.costNote : fmt.cost(r.costUsd)], ["Stop reason", r.stopReason], ["Stream", r.stream ? `yes · ${fmt.int(m.chunkCount)} events` : "no"],
    ["HTTP", r.response && r.response.status], ["Bytes in / out", `${fmt.bytes(m.requestBytes)} / ${fmt.bytes(m.responseBytes)}`],
    ["Session", r.sessionId], ["Record id", r.id],
  ]));
  if (r.route || (r.attempts && r.attempts.length > 1)) frag.append(...section("Route and attempts", renderAttempts(r)));
  if (r.error) {
    frag.append(...section("Error", h("div", { class: "block error" },
      h("div", { class: "kind" }, r.error.type), h("pre", {}, r.error.message))));
  }
  if (r.cacheBreak) {
    frag.append(...section("Cache break", h("div", { class: "block cache-break", "data-testid": "detail-cache-break" },
      breakText(r.cacheBreak), " ", h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); select(r.cacheBreak.previousId); } },
        "previous call"))));
  }
  frag.append(...section("Answer", renderAnswer(r)));
  frag.append(...section("Request", renderRequest(r.request)));
  if (r.upstreamRequest) {
    frag.append(...section(["Upstream request (translated) ", copyButton(() => JSON.stringify(r.upstreamRequest, null, 2))],
      h("details", {}, h("summary", {}, `the body sent to ${r.provider}`), h("pre", {}, prettyJSON(r.upstreamRequest)))));
  }
  if (r.response) {
    frag.append(...section("Response headers", headersTable(r.response.headers)));
    if (r.response.body !== null && r.response.body !== undefined && !r.message) {
      frag.append(h("details", {}, h("summary", {}, "response body"), h("pre", {}, prettyJSON(r.response.body))));
    }
  }
  if (r.chunks && r.chunks.length) frag.append(...section(`Stream timeline (${r.chunks.length} events)`, renderTimeline(r.chunks)));
  if (r.upstreamResponse !== null && r.upstreamResponse !== undefined) {
    frag.append(h("details", {}, h("summary", {}, "upstream response (before translation)"),
      h("pre", {}, prettyJSON(r.upstreamResponse))));
  }
  if (r.upstreamChunks && r.upstreamChunks.length) {
    frag.append(h("details", {}, h("summary", {}, `upstream stream (${r.upstreamChunks.length} events, before translation)`),
      renderTimeline(r.upstreamChunks)));
  }
  return frag;
}

/** The route in config.json that matched, and each target tried, in order (failover). */
function renderAttempts(r) {
  const wrap = h("div", { "data-testid": "attempts" });
  wrap.append(h("div", { class: "hint" }, r.route
    ? `route #${r.route.index} matched: ${JSON.stringify(r.route.when)}` : "no route matched: the mode's provider"));
  const rows = (r.attempts || []).map((a, i) => h("tr", { class: a.status && a.status < 400 ? "" : "failed" },
    h("td", {}, String(i + 1)), h("td", {}, a.provider), h("td", { class: "mono" }, a.model || "—"),
    h("td", {}, a.status === null || a.status === undefined ? "no answer" : String(a.status)),
    h("td", {}, fmt.ms(a.durationMs)), h("td", {}, a.error || "")));
  wrap.append(h("table", { class: "mini attempts" },
    h("thead", {}, h("tr", {}, ...["#", "provider", "model", "status", "time", "error"].map((t) => h("th", {}, t)))),
    h("tbody", {}, ...rows)));
  return wrap;
}

function answerText(message) {
  return (message.content || []).filter((b) => b.type === "text").map((b) => b.text).join("\n\n");
}

function renderAnswer(r) {
  const message = r.message;
  if (!message || !Array.isArray(message.content) || !message.content.length) {
    return h("div", { class: "hint" }, r.status === "pending" ? "waiting for the answer…" : "no answer content");
  }
  const wrap = h("div", {});
  const text = answerText(message);
  if (text) wrap.append(h("div", { class: "buttons" }, copyButton(text, "copy answer text")));
  for (const block of message.content) {
    if (block.type === "text") {
      wrap.append(h("div", { class: "block text" }, h("div", { class: "kind" }, "text"), h("pre", {}, block.text)));
    } else if (block.type === "thinking" || block.type === "redacted_thinking") {
      wrap.append(h("details", { class: "block thinking" }, h("summary", {}, block.type),
        h("pre", {}, block.thinking || "(redacted)")));
    } else if (block.type === "tool_use" || block.type === "server_tool_use") {
      wrap.append(h("div", { class: "block tool" },
        h("div", { class: "kind" }, `${block.type}: `, h("strong", {}, block.name || ""), h("span", { class: "mono" }, block.id || ""),
          copyButton(() => JSON.stringify(block.input, null, 2), "copy input")),
        h("pre", {}, prettyJSON(block.input))));
    } else {
      wrap.append(h("div", { class: "block" }, h("div", { class: "kind" }, block.type), h("pre", {}, prettyJSON(block))));
    }
  }
  return wrap;
}

function lastUserText(body) {
  const messages = (body && Array.isArray(body.messages)) ? body.messages : [];
  for (let i = messages.length - 1; i >= 0; i--) {
    const msg = messages[i];
    if (msg.role !== "user") continue;
    if (typeof msg.content === "string") return msg.content;
    const texts = (msg.content || []).filter((b) => b.type === "text").map((b) => b.text);
    if (texts.length) return texts.join("\n\n");
  }
  return "";
}

function renderRequest(request) {
  const wrap = h("div", {});
  const body = request.body;
  const prompt = lastUserText(body);
  if (prompt) {
    wrap.append(h("div", { class: "block prompt" },
      h("div", { class: "kind" }, "last user message", copyButton(prompt)), h("pre", {}, prettyJSON(prompt, 20000))));
  }
  if (body && typeof body === "object") {
    const info = [];
    if (Array.isArray(body.messages)) info.push(`${body.messages.length} messages`);
    if (Array.isArray(body.tools)) info.push(`${body.tools.length} tools`);
    if (body.max_tokens) info.push(`max_tokens ${body.max_tokens}`);
    if (body.thinking && body.thinking.type) info.push(`thinking ${body.thinking.type}`);
    if (info.length) wrap.append(h("div", { class: "hint" }, info.join(" · ")));
  }
  wrap.append(h("details", {}, h("summary", {}, `${request.method} ${request.path} · headers (secrets masked)`),
    headersTable(request.headers)));
  wrap.append(h("details", {}, h("summary", {}, ["request body ", copyButton(() => JSON.stringify(body, null, 2))]),
    h("pre", {}, prettyJSON(body))));
  return wrap;
}

function headersTable(headers) {
  const entries = Object.entries(headers || {});
  if (!entries.length) return h("div", { class: "hint" }, "none");
  return h("table", { class: "headers" }, h("tbody", {}, entries.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, v)))));
}

function describeChunk(data) {
  if (!data || typeof data !== "object") return String(data ?? "");
  switch (data.type) {
    case "message_start": {
      const msg = data.message || {};
      const usage = msg.usage || {};
      return `${msg.model || ""} · in ${usage.input_tokens ?? "?"} · cache read ${usage.cache_read_input_tokens ?? 0}`;
    }
    case "content_block_start": {
      const b = data.content_block || {};
      return `#${data.index} ${b.type}${b.name ? " " + b.name : ""}`;
    }
    case "content_block_delta": {
      const d = data.delta || {};
      if (d.type === "text_delta") return JSON.stringify(d.text);
      if (d.type === "thinking_delta") return "thinking: " + JSON.stringify(d.thinking);
      if (d.type === "input_json_delta") return "input: " + d.partial_json;
      if (d.type === "signature_delta") return "signature";
      return JSON.stringify(d);
    }
    case "content_block_stop": return `#${data.index}`;
    case "message_delta": {
      const usage = data.usage || {};
      return `stop ${data.delta && data.delta.stop_reason} · out ${usage.output_tokens ?? "?"}`;
    }
    case "error": return `${data.error && data.error.type}: ${data.error && data.error.message}`;
    default: {
      const text = JSON.stringify(data);
      return text.length > 300 ? text.slice(0, 300) + "…" : text;
    }
  }
}

function renderTimeline(chunks) {
  const wrap = h("div", { class: "timeline" });
  const end = Math.max(1, ...chunks.map((c) => c.tMs));
  const svg = s("svg", { viewBox: "0 0 600 26", preserveAspectRatio: "none", role: "img",
    "aria-label": "when each event arrived" });
  svg.append(s("line", { x1: 0, x2: 600, y1: 13, y2: 13, class: "gridline" }));
  chunks.forEach((c, i) => {
    const x = (c.tMs / end) * 596 + 2;
    const cls = i === 0 ? "tick first" : i === chunks.length - 1 ? "tick last" : "tick";
    svg.append(s("line", { x1: x, x2: x, y1: 4, y2: 22, class: cls }, s("title", {}, `${fmt.ms(c.tMs)} ${c.event || ""}`)));
  });
  wrap.append(svg);
  const limit = state.showAllChunks ? chunks.length : Math.min(chunks.length, 200);
  for (const c of chunks.slice(0, limit)) {
    wrap.append(h("div", { class: "tl-row" }, h("span", { class: "tl-t" }, `+${Math.round(c.tMs)} ms`),
      h("span", { class: "tl-e" }, c.event || "(data)"), h("span", { class: "tl-d" }, describeChunk(c.data))));
  }
  if (limit < chunks.length) {
    wrap.append(h("button", { type: "button", onclick: () => { state.showAllChunks = true; loadDetail(state.selected, { quiet: true }); } },
      `show all ${fmt.int(chunks.length)} events`));
  }
  return wrap;
}

// ---- filters, buttons ---------------------------------------------------------------------------------------------
function showSessionFilter() {
  $("session-chip").hidden = !state.filters.session;
  $("session-chip-value").textContent = state.filters.session ? shortSession(state.filters.session) : "";
  $("session-chip").title = state.filters.session ? `only session ${state.filters.session}` : "";
}

function applyFilters() {
  state.page = 1;
  showSessionFilter();
  $("export").href = "/api/monitor/export?" + filterParams();
  const url = new URL(location.href);
  url.search = filterParams().toString();
  history.replaceState(null, "", url);
  return Promise.all([loadList(), loadStats()]).then(() => {
    // the detail shows a request of the list: one that the filters or the search leave out goes with it
    if (state.selected && !state.rows.has(state.selected)) closeDetail();
  }).catch((err) => toast(err.message, "error"));
}

const OVERVIEW_KEY = "anthropic-proxy.monitor.overview";

/** Show or hide the charts and the sessions (above the list). */
function showOverview(shown) {
  document.querySelector("main").classList.toggle("overview-hidden", !shown);
  $("toggle-overview").setAttribute("aria-expanded", String(shown));
}

/** The Charts button: fold or unfold, and keep the choice in localStorage for the next visit. */
function toggleOverview() {
  const shown = $("toggle-overview").getAttribute("aria-expanded") !== "true";
  showOverview(shown);
  try { localStorage.setItem(OVERVIEW_KEY, shown ? "shown" : "hidden"); } catch { /* storage disabled */ }
}

function storedOverview() {
  try { return localStorage.getItem(OVERVIEW_KEY) !== "hidden"; } catch { return true; }
}

function readFiltersFromUrl() {
  const params = new URLSearchParams(location.search);
  for (const key of FILTER_KEYS) state.filters[key] = params.get(key) || "";
  $("filter-status").value = state.filters.status;
  $("filter-provider").value = state.filters.provider;
  $("filter-time").value = state.filters.timeRange;
  $("search").value = state.filters.q;
  if (state.filters.model) updateOptions("model", [state.filters.model]);
  if (state.filters.provider) updateOptions("provider", [state.filters.provider]);
  showSessionFilter();
  $("export").href = "/api/monitor/export?" + filterParams();
}

async function analyze() {
  let report;
  try {
    report = await api("/api/monitor/analyze?" + filterParams({ format: "json" }));
  } catch (err) {
    toast(`Analysis failed: ${err.message}`, "error");
    return;
  }
  const params = filterParams().toString();
  $("analyze-full").href = "/api/monitor/analyze" + (params ? "?" + params : "");
  clear($("analyze-body")).append(renderAnalysis(report));
  const dialog = $("analyze-dialog");
  if (!dialog.open) dialog.showModal();
  dialog.scrollTop = 0;
}

/** A small table: cells are text or nodes; columns from `numericFrom` on are right-aligned. */
function miniTable(headers, rows, { numericFrom = 1, testid = null, rowAttrs = () => ({}) } = {}) {
  const num = (i) => (i >= numericFrom ? "num" : null);
  return h("table", { class: "mini", "data-testid": testid },
    h("thead", {}, h("tr", {}, headers.map((text, i) => h("th", { class: num(i) }, text)))),
    h("tbody", {}, rows.map((cells, r) => h("tr", rowAttrs(r), cells.map((c, i) => h("td", { class: num(i) }, c))))));
}

/** Table rows of `items` made by `cells(item, cost)`, where cost[key] formats the column of items' `key` costs. */
function costColumns(items, keys, cells) {
  const cost = Object.fromEntries(keys.map((key) => [key, fmt.costs(items.map((item) => item[key]))]));
  return items.map((item) => cells(item, cost));
}

function orNone(items, build, message) {
  return items.length ? build(items) : h("div", { class: "hint" }, message);
}

/** The report's highlights (AnalysisReport JSON), every value as text. */
function renderAnalysis(rep) {
  const t = rep.totals, c = rep.cache, lat = rep.latencyMs, ttfb = rep.ttfbMs;
  const frag = document.createDocumentFragment();
  const filters = Object.entries(rep.filters || {}).filter(([, v]) => v !== null && v !== "").map(([k, v]) => `${k}=${v}`);
  frag.append(h("div", { class: "hint" }, `${fmt.int(t.requests)} records` +
    (rep.firstTimestamp ? ` from ${fmt.time(rep.firstTimestamp)} to ${fmt.time(rep.lastTimestamp)}` : "") +
    ` · filters: ${filters.length ? filters.join(", ") : "none"}`));
  frag.append(kv([
    ["Requests", `${fmt.int(t.requests)} (${fmt.int(t.errors)} errors)`], ["Success rate", fmt.pct(t.successRate)],
    ["Cost", fmt.cost(t.costUsd) + (t.unpricedRequests ? ` + ${fmt.int(t.unpricedRequests)} unpriced` : "")],
    ["Tokens incl. cache", `${fmt.compact(t.totalTokens)} (${fmt.compact(t.inputTokens)} in · ${fmt.compact(t.outputTokens)} out · ` +
      `${fmt.compact(t.cacheReadTokens)} cache read · ${fmt.compact(t.cacheCreationTokens)} cache write)`],
    ["Cache hit rate", fmt.pct(c.hitRate)], ["Cache savings", fmt.cost(c.savingsUsd)],
    ["Latency p50 / p95", `${fmt.ms(lat.p50)} / ${fmt.ms(lat.p95)}`], ["First byte p50", fmt.ms(ttfb.p50)],
    ["Sessions", fmt.int(rep.sessionCount)],
  ]));
  if (rep.unpricedModels.length) {
    frag.append(h("div", { class: "hint warn" }, `No price for: ${rep.unpricedModels.join(", ")} (left out of the cost).`));
  }
  frag.append(h("h4", {}, "Request types"), orNone(rep.byRequestType, (rows) => miniTable(
    ["Type", "Requests", "Errors", "Tokens in / out", "Avg latency", "Cost"],
    costColumns(rows, ["costUsd"], (r, cost) => [r.key, fmt.int(r.requests), fmt.int(r.errors),
      `${fmt.compact(r.inputTokens)} / ${fmt.compact(r.outputTokens)}`, fmt.ms(r.avgDurationMs), cost.costUsd(r.costUsd)]),
    { testid: "analyze-types" }), "no requests"));
  frag.append(h("h4", {}, "Tool calls"), orNone(rep.toolUsage, (rows) => h("div", { class: "tags", "data-testid": "analyze-tools" },
    rows.map((x) => h("span", { class: "badge" }, `${x.name} × ${fmt.int(x.count)}`))), "no tool calls"));
  frag.append(h("h4", {}, "Cost and tokens by model"), orNone(rep.byModel, (rows) => miniTable(
    ["Model", "Requests", "Input", "Output", "Cache write", "Cache read", "Cache savings", "Cost"],
    costColumns(rows, ["cacheSavingsUsd", "costUsd"], (r, cost) => [r.key, fmt.int(r.requests),
      fmt.compact(r.inputTokens), fmt.compact(r.outputTokens), fmt.compact(r.cacheCreationTokens),
      fmt.compact(r.cacheReadTokens), cost.cacheSavingsUsd(r.cacheSavingsUsd),
      cost.costUsd(r.costUsd) + (r.unpricedRequests ? " + ?" : "")]), { testid: "analyze-models" }), "no requests"));
  if (rep.byDay.length > 1) {
    frag.append(h("h4", {}, "By day (UTC)"), miniTable(["Day", "Requests", "Errors", "Tokens in / out", "Cost"],
      costColumns(rep.byDay, ["costUsd"], (r, cost) => [r.key, fmt.int(r.requests), fmt.int(r.errors),
        `${fmt.compact(r.inputTokens)} / ${fmt.compact(r.outputTokens)}`, cost.costUsd(r.costUsd)])));
  }
  frag.append(h("h4", {}, "Cache efficiency"), kv([
    ["Hit rate", fmt.pct(c.hitRate)], ["Read", fmt.compact(c.readTokens)], ["Written", fmt.compact(c.writeTokens)],
    ["Uncached input", fmt.compact(c.uncachedInputTokens)], ["Saved by reads", fmt.cost(c.savingsUsd)],
    ["Write premium", fmt.cost(c.writePremiumUsd)], ["Net savings", fmt.cost(c.netSavingsUsd)],
    c.unpricedReadTokens ? ["Reads without a price", fmt.compact(c.unpricedReadTokens)] : null,
  ]));
  frag.append(h("h4", {}, "Latency"), miniTable(["", "Count", "p50", "p90", "p95", "p99", "Max"],
    [["Duration", lat], ["First byte", ttfb]].map(([name, p]) =>
      [name, fmt.int(p.count), fmt.ms(p.p50), fmt.ms(p.p90), fmt.ms(p.p95), fmt.ms(p.p99), fmt.ms(p.max)]),
    { testid: "analyze-latency" }));
  frag.append(h("h4", {}, "Errors by type"), orNone(rep.errorsByType, (rows) => miniTable(["Type", "Example", "Count"],
    rows.map((e) => [e.type, e.example, fmt.int(e.count)]), { numericFrom: 2, testid: "analyze-errors" }), "no errors"));
  const openRequest = (id) => (ev) => { ev.preventDefault(); $("analyze-dialog").close(); select(id); };
  frag.append(h("h4", {}, "Most expensive requests"), orNone(rep.mostExpensiveRequests, (rows) => miniTable(
    ["Request", "Type", "Tokens in / out", "Duration", "Cost"],
    costColumns(rows, ["costUsd"], (r, cost) => [h("a", { href: "#", "data-testid": "analyze-request", dataset: { id: r.id },
      onclick: openRequest(r.id), title: r.preview || r.id }, `${fmt.time(r.timestamp)} · ${r.model || "—"} · ${r.preview || "(no prompt)"}`),
    r.requestType, `${fmt.compact(r.inputTokens)} / ${fmt.compact(r.outputTokens)}`, fmt.ms(r.durationMs), cost.costUsd(r.costUsd)]),
    { numericFrom: 2 }), "no priced request"));
  const openSession = (id) => (ev) => { ev.preventDefault(); $("analyze-dialog").close(); filterBySession(id); };
  frag.append(h("h4", {}, "Most expensive sessions"), orNone(rep.mostExpensiveSessions, (rows) => miniTable(
    ["Session", "Models", "Requests", "Turns", "Cache hit rate", "Duration", "Cost"],
    costColumns(rows, ["costUsd"], (se, cost) => [h("a", { href: "#", "data-testid": "analyze-session", dataset: { session: se.sessionId },
      onclick: openSession(se.sessionId), title: `session ${se.sessionId}: show its requests` }, shortSession(se.sessionId)),
    se.models.join(", "), fmt.int(se.requests), fmt.int(se.turns), fmt.pct(se.cacheHitRate), fmt.ms(se.durationMs),
    cost.costUsd(se.costUsd) + (se.unpricedRequests ? " + ?" : "")]), { numericFrom: 2 }), "no Claude Code session"));
  return frag;
}

/** Upload an export file (multipart/form-data, as `curl -F file=@FILE` does): all of it or nothing is imported. */
async function importFile(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const result = await api("/api/monitor/import", { method: "POST", body: form });
    toast(`Imported ${fmt.int(result.imported)} of ${fmt.int(result.records)} records from ${file.name}` +
      (result.skipped ? ` (${fmt.int(result.skipped)} were already here)` : ""));
    await Promise.all([loadList(), loadStats()]);
  } catch (err) {
    toast(`Import failed: ${err.message}`, "error");
  }
}

async function clearAll() {
  if (!(await confirmDialog("Delete every record?", "This empties the record store. It cannot be undone.", "Delete all"))) return;
  try {
    const result = await api("/api/monitor/clear", { method: "POST" });
    toast(`Deleted ${fmt.int(result.deleted)} records`);
    closeDetail();
    await Promise.all([loadList(), loadStats()]);
  } catch (err) {
    toast(`Clear failed: ${err.message}`, "error");
  }
}

function wire() {
  const bind = (id, key) => $(id).addEventListener("change", (ev) => { state.filters[key] = ev.target.value; applyFilters(); });
  bind("filter-status", "status");
  bind("filter-model", "model");
  bind("filter-provider", "provider");
  bind("filter-time", "timeRange");
  let searchTimer = null;
  $("search").addEventListener("input", (ev) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.filters.q = ev.target.value.trim(); applyFilters(); }, 250);
  });
  $("prev").addEventListener("click", () => { state.page = Math.max(1, state.page - 1); loadList(); });
  $("next").addEventListener("click", () => { state.page += 1; loadList(); });
  $("analyze").addEventListener("click", analyze);
  $("analyze-close").addEventListener("click", () => $("analyze-dialog").close());
  $("session-clear").addEventListener("click", () => filterBySession(""));
  $("clear").addEventListener("click", clearAll);
  $("toggle-overview").addEventListener("click", toggleOverview);
  $("import").addEventListener("click", () => $("import-file").click());
  $("import-file").addEventListener("change", (ev) => {
    const file = ev.target.files[0];
    ev.target.value = ""; // choosing the same file again is a new import
    if (file) importFile(file);
  });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && state.selected) closeDetail(); });
}

const MODEL_SOURCES = { pinned: "pinned in /config", newest: "the newest of the family in OpenRouter's model list",
  fallback: "built-in fallback: OpenRouter's model list has not been fetched yet" };

/** In openrouter mode, the OpenRouter model each Claude family is sent to (and, as a tooltip, why). */
function showModelMap(config) {
  const el = $("model-map");
  el.hidden = config.mode !== "openrouter" || !config.modelMap;
  if (el.hidden) return;
  clear(el).append(...Object.entries(config.modelMap).map(([family, c]) => h("span", {
    title: `${family === "default" ? "any other model name" : `claude ${family}`} → ${c.id}: ${MODEL_SOURCES[c.source]}`,
    dataset: { family, source: c.source } }, `${family === "default" ? "other" : family} → `, h("code", {}, c.id))));
}

async function start() {
  readFiltersFromUrl();
  showOverview(storedOverview());
  wire();
  api("/api/monitor/config").then((c) => { $("mode-badge").textContent = `${c.mode} mode`; showModelMap(c); })
    .catch(() => {});
  await Promise.all([loadList(), loadStats()]).catch((err) => toast(err.message, "error"));
  connect();
}

document.addEventListener("DOMContentLoaded", start);
