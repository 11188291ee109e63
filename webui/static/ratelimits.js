// The rate-limit panel of the monitor: the latest anthropic-ratelimit-* headers (GET /api/monitor/ratelimits),
// the limits with what remains and when they reset, and for the unified 5h / 7d windows how full they are and
// when they fill at the current rate. Headers it does not know are listed as they came.
"use strict";

function untilText(iso) {
  if (!iso) return "—";
  const seconds = (new Date(iso) - Date.now()) / 1000;
  const when = fmt.time(iso);
  if (!isFinite(seconds)) return String(iso);
  if (seconds <= 0) return `${when} (passed)`;
  const span = seconds < 3600 ? `${Math.ceil(seconds / 60)} min` : seconds < 172800
    ? `${(seconds / 3600).toFixed(1)} h` : `${(seconds / 86400).toFixed(1)} days`;
  return `${when} (in ${span})`;
}

function projectionText(w) {
  if (w.utilization !== null && w.utilization >= 1) return "full now";
  if (!w.fillsAt) return w.ratePerHour === null ? "not enough points yet for a projection" : "not filling at the current rate";
  const rate = `${(w.ratePerHour * 100).toFixed(1)} %/h`;
  const verdict = w.fillsBeforeReset === false ? "after the window resets" : "before the window resets";
  return `at ${rate}, full at ${fmt.time(w.fillsAt)}, ${verdict}`;
}

/** A sparkline of one header's values over time (0 to 1 for a utilisation). */
function sparkline(points) {
  const svg = s("svg", { class: "rl-spark", viewBox: "0 0 200 30", preserveAspectRatio: "none", role: "img",
    "aria-label": "utilisation over time" });
  if (points.length < 2) return svg;
  const t0 = points[0].t;
  const span = Math.max(1, points[points.length - 1].t - t0);
  const xy = points.map((p) => `${(((p.t - t0) / span) * 200).toFixed(1)},${(29 - Math.min(1, Math.max(0, p.v)) * 28).toFixed(1)}`);
  svg.append(s("polyline", { points: xy.join(" "), class: "rl-line" }),
    s("title", {}, `${points.length} points since ${fmt.time(new Date(t0 * 1000).toISOString())}`));
  return svg;
}

function renderWindow(w, series) {
  const key = w.header.replace(/^anthropic-ratelimit-/, "");
  const points = series.filter((p) => key in p.values).map((p) => ({ t: p.t, v: p.values[key] }));
  const used = w.utilization === null ? null : Math.max(0, Math.min(1, w.utilization));
  const fill = h("span", { class: used !== null && used >= 0.9 ? "full" : null });
  fill.style.width = `${((used || 0) * 100).toFixed(1)}%`; // (the CSP allows styles set from script, not attributes)
  return h("div", { class: "rl-window", "data-testid": "ratelimit-window", dataset: { window: w.window } },
    h("div", { class: "rl-name" }, `${w.window} window`, w.status ? h("span", { class: "badge" }, w.status) : null),
    h("div", { class: "rl-bar", title: `${fmt.pct(used)} used` }, fill),
    h("div", { class: "rl-figures" }, `${fmt.pct(used)} used · resets ${untilText(w.reset)}`),
    sparkline(points),
    h("div", { class: "rl-projection", "data-testid": "ratelimit-projection" }, projectionText(w)));
}

function renderLimits(limits) {
  return h("div", { class: "rl-limits" }, limits.map((l) => h("div", { class: "rl-limit", "data-testid": "ratelimit-row",
    dataset: { name: l.name }, title: `resets ${untilText(l.reset)}` },
  h("span", { class: "rl-name" }, l.name), " ",
  h("span", { class: "mono" }, `${l.remaining === null ? "—" : fmt.int(Number(l.remaining))} / ` +
    `${l.limit === null ? "—" : fmt.int(Number(l.limit))} left`),
  h("span", { class: "rl-figures" }, ` · resets ${untilText(l.reset)}`))));
}

function renderHeaders(latest) {
  const names = Object.keys(latest);
  return h("details", { class: "rl-headers" }, h("summary", {}, `all ${names.length} anthropic-ratelimit-* headers, as last seen`),
    h("table", { class: "mini", "data-testid": "ratelimit-headers" }, h("tbody", {}, names.map((name) =>
      h("tr", {}, h("td", { class: "mono" }, name), h("td", { class: "mono" }, latest[name].value),
        h("td", {}, fmt.time(latest[name].at)))))));
}

const RATE_LIMIT_POINTS = 300; // the newest records read: enough for the current windows' rate

/** Fill the panel from the rate-limit report of the records matching `params` (hidden while there is none). */
async function loadRateLimits(params) {
  const panel = document.getElementById("ratelimits");
  if (!panel) return;
  let report;
  try {
    params.set("limit", String(RATE_LIMIT_POINTS));
    report = await api("/api/monitor/ratelimits?" + params);
  } catch (err) {
    console.warn("rate limits:", err.message);
    return;
  }
  const latest = report.latest || {};
  panel.hidden = Object.keys(latest).length === 0;
  if (panel.hidden) return;
  const newest = Object.values(latest).map((v) => v.at).sort().pop();
  appendAll(clear(panel), [
    h("h3", {}, "Rate limits and quota", h("span", { class: "sub" }, ` as of ${fmt.time(newest)}`)),
    report.windows.length ? h("div", { class: "rl-windows" }, report.windows.map((w) => renderWindow(w, report.series))) : null,
    report.limits.length ? renderLimits(report.limits) : null,
    renderHeaders(latest)]);
}
