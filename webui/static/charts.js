// Hand-drawn SVG charts (createElementNS, no library). Labels go in with textContent.
"use strict";

const CHART_W = 400;
const CHART_H = 130;
const PAD = { l: 40, r: 6, t: 8, b: 18 };

function chartFrame(svg) {
  clear(svg);
  svg.setAttribute("viewBox", `0 0 ${CHART_W} ${CHART_H}`);
  return svg;
}

function emptyChart(svg, message = "no data yet") {
  chartFrame(svg);
  svg.append(s("text", { x: CHART_W / 2, y: CHART_H / 2, "text-anchor": "middle", class: "empty-chart" }, message));
}

function niceMax(value) {
  if (value <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * p) return m * p;
  return 10 * p;
}

/**
 * Stacked vertical bars.
 * labels: x labels; series: [{name, cls, values}]; format: value -> text; tickLabel: label -> short text.
 */
function stackedBars(svg, { labels, series, format = fmt.compact, tickLabel = (l) => l }) {
  const totals = labels.map((_, i) => series.reduce((sum, se) => sum + (se.values[i] || 0), 0));
  if (!labels.length || totals.every((t) => t === 0)) return emptyChart(svg);
  chartFrame(svg);
  const max = niceMax(Math.max(...totals));
  const plotW = CHART_W - PAD.l - PAD.r;
  const plotH = CHART_H - PAD.t - PAD.b;
  for (const frac of [0, 0.5, 1]) {
    const y = PAD.t + plotH * (1 - frac);
    svg.append(s("line", { x1: PAD.l, x2: CHART_W - PAD.r, y1: y, y2: y, class: "gridline" }));
    svg.append(s("text", { x: PAD.l - 5, y: y + 3, "text-anchor": "end", class: "axis" }, format(max * frac)));
  }
  const step = plotW / labels.length;
  const barW = Math.max(1, step * 0.78);
  labels.forEach((label, i) => {
    let y = PAD.t + plotH;
    const x = PAD.l + i * step + (step - barW) / 2;
    const group = s("g", {});
    const tip = [tickLabel(label, true)];
    for (const se of series) {
      const v = se.values[i] || 0;
      tip.push(`${se.name}: ${format(v)}`);
      if (!v) continue;
      const hgt = (v / max) * plotH;
      y -= hgt;
      group.append(s("rect", { x, y, width: barW, height: Math.max(hgt, 0.5), class: se.cls }));
    }
    group.append(s("title", {}, tip.join("\n")));
    svg.append(group);
  });
  const ticks = Math.min(labels.length, 6);
  for (let k = 0; k < ticks; k++) {
    const i = Math.round((k * (labels.length - 1)) / Math.max(1, ticks - 1));
    const x = PAD.l + i * step + step / 2;
    svg.append(s("text", { x, y: CHART_H - 5, "text-anchor": "middle", class: "axis" }, tickLabel(labels[i], false)));
  }
}

/** Horizontal bars: rows [{label, value}]. */
function horizontalBars(svg, { rows, format = fmt.compact, cls = "s2", max: rowsMax = 6 }) {
  const shown = rows.filter((r) => r.value > 0).slice(0, rowsMax);
  if (!shown.length) return emptyChart(svg);
  chartFrame(svg);
  const max = Math.max(...shown.map((r) => r.value));
  const labelW = Math.round(CHART_W * 0.38);
  const rowH = (CHART_H - 6) / rowsMax;
  shown.forEach((row, i) => {
    const y = 3 + i * rowH;
    const w = ((CHART_W - labelW - 60) * row.value) / max;
    const label = row.label.length > 26 ? row.label.slice(0, 25) + "…" : row.label;
    svg.append(s("text", { x: labelW - 6, y: y + rowH * 0.62, "text-anchor": "end", class: "axis" }, label));
    const g = s("g", {}, s("rect", { x: labelW, y: y + rowH * 0.15, width: Math.max(w, 1), height: rowH * 0.7, class: cls }),
      s("title", {}, `${row.label}: ${format(row.value)}`));
    svg.append(g);
    svg.append(s("text", { x: labelW + w + 5, y: y + rowH * 0.62, class: "axis" }, format(row.value)));
  });
}
