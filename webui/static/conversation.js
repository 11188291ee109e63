// The session view of the monitor: one session's calls as a conversation (GET /api/monitor/sessions/{id}):
// each turn's new user text, the answer and its tool calls, per-turn tokens, cost and latency, and where the
// prompt cache broke; charts of the context size and the cost over the turns. Shown while the list is filtered
// by a session, so /monitor?session=ID opens it.
"use strict";

const conversationView = { session: "", count: -1, seq: 0, fetchedAt: 0, timer: null };
const CONVERSATION_REFRESH_MS = 3000; // a live session is read again at most this often

function breakText(b) {
  const where = b.at === "ttl" ? "expired" : `at ${b.at}${b.index === null ? "" : "[" + b.index + "]"}`;
  const cost = b.extraCostUsd === null ? "" : ` · +${fmt.cost(b.extraCostUsd)}`;
  return `cache break ${where}: ${b.detail} · ~${fmt.int(b.uncachedTokens)} tokens not read from the cache${cost}`;
}

function turnView(t, n) {
  const tokens = `${fmt.int(t.inputTokens)} in · ${fmt.int(t.cacheReadTokens)} cached · ` +
    `${fmt.int(t.cacheWriteTokens)} written · ${fmt.int(t.outputTokens)} out`;
  const head = h("div", { class: "turn-head", tabindex: "0", title: "open this call", onclick: () => select(t.id),
    onkeydown: (ev) => { if (ev.key === "Enter") select(t.id); } },
  h("span", { class: "turn-n" }, `#${n + 1}`), h("span", { class: `status ${t.status}` }, t.status),
  h("span", { class: "mono" }, fmt.time(t.timestamp)), h("span", {}, t.model || ""),
  h("span", { class: "spacer" }), h("span", { class: "mono" }, tokens),
  h("span", { class: "mono" }, t.costUsd === null ? "?" : fmt.cost(t.costUsd)), h("span", { class: "mono" }, fmt.ms(t.durationMs)));
  const user = [
    ...t.userText.map((text) => h("pre", { class: "turn-user" }, text)),
    t.toolResults ? h("div", { class: "turn-note" }, `↩ ${t.toolResults} tool result${t.toolResults > 1 ? "s" : ""}`) : null,
  ];
  const answer = [
    t.thinking ? h("div", { class: "turn-note" }, "(thought first)") : null,
    t.answer ? h("pre", { class: "turn-answer" }, t.answer) : null,
    ...t.toolCalls.map((c) => h("div", { class: "turn-tool" }, h("b", {}, c.name), " ", h("code", {}, c.input))),
    t.error ? h("div", { class: "turn-note error" }, t.error) : null,
  ];
  return h("li", { class: "turn" + (t.cacheBreak ? " broken" : ""), "data-testid": "turn", dataset: { id: t.id } },
    head,
    t.cacheBreak ? h("div", { class: "turn-break", "data-testid": "turn-break" }, breakText(t.cacheBreak)) : null,
    ...user, ...answer);
}

function renderConversation(panel, data) {
  const turns = data.turns;
  const cost = turns.reduce((sum, t) => sum + (t.costUsd || 0), 0);
  const breaks = turns.filter((t) => t.cacheBreak);
  const lost = breaks.reduce((sum, t) => sum + (t.cacheBreak.extraCostUsd || 0), 0);
  const labels = turns.map((_, i) => i + 1);
  const tick = (label, long) => (long ? `turn ${label}` : String(label));
  const context = s("svg", { role: "img", "aria-label": "Context size per turn" });
  const costs = s("svg", { role: "img", "aria-label": "Cost per turn" });
  stackedBars(context, { labels, tickLabel: tick, series: [
    { name: "cache read", cls: "s4", values: turns.map((t) => t.cacheReadTokens) },
    { name: "cache write", cls: "s3", values: turns.map((t) => t.cacheWriteTokens) },
    { name: "input", cls: "s1", values: turns.map((t) => t.inputTokens) },
  ] });
  stackedBars(costs, { labels, tickLabel: tick, format: fmt.cost, series: [
    { name: "cost", cls: "s2", values: turns.map((t) => (t.cacheBreak ? 0 : t.costUsd || 0)) },
    { name: "cost (cache break)", cls: "s5", values: turns.map((t) => (t.cacheBreak ? t.costUsd || 0 : 0)) },
  ] });
  clear(panel).append(
    h("div", { class: "conv-head" },
      h("h3", {}, "Session ", h("code", {}, data.session)),
      h("span", { class: "sub", "data-testid": "conversation-summary" },
        `${turns.length} turns · ${fmt.cost(cost)} · ${breaks.length} cache break${breaks.length === 1 ? "" : "s"}` +
        (breaks.length ? ` (${fmt.cost(lost)} lost)` : "")),
      h("span", { class: "spacer" }),
      h("button", { type: "button", class: "copy", title: "Show every session", onclick: () => filterBySession("") }, "✕")),
    h("div", { class: "conv-charts" },
      h("div", { class: "chart" }, h("h3", {}, "Context size per turn (tokens)"), context,
        h("div", { class: "legend" }, h("span", { class: "s4" }, "cache read"), h("span", { class: "s3" }, "cache write"),
          h("span", { class: "s1" }, "input"))),
      h("div", { class: "chart" }, h("h3", {}, "Cost per turn"), costs,
        h("div", { class: "legend" }, h("span", { class: "s2" }, "cost"), h("span", { class: "s5" }, "turn after a cache break")))),
    h("ol", { class: "turns", "data-testid": "turns" }, turns.map(turnView)));
}

/** Show `session` as a conversation (hide the view for ""); `count`: its number of records, to refresh only
 * when it changed. */
async function showConversation(session, count = null) {
  const panel = document.getElementById("conversation");
  if (!panel) return;
  if (!session) {
    clearTimeout(conversationView.timer);
    conversationView.session = "";
    panel.hidden = true;
    clear(panel);
    return;
  }
  if (session === conversationView.session && count !== null) {
    if (count === conversationView.count) return;
    const wait = conversationView.fetchedAt + CONVERSATION_REFRESH_MS - Date.now();
    if (wait > 0) {
      clearTimeout(conversationView.timer);
      conversationView.timer = setTimeout(() => showConversation(session, count), wait);
      return;
    }
  }
  clearTimeout(conversationView.timer);
  conversationView.fetchedAt = Date.now();
  const seq = ++conversationView.seq;
  let data;
  try {
    data = await api(`/api/monitor/sessions/${encodeURIComponent(session)}`);
  } catch (err) {
    toast(`The session view failed: ${err.message}`, "error");
    return;
  }
  if (seq !== conversationView.seq) return; // another session was picked meanwhile
  conversationView.session = session;
  conversationView.count = count === null ? -1 : count;
  renderConversation(panel, data);
  panel.hidden = false;
}
