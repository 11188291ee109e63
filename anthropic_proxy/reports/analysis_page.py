"""The analysis report as a page (`render_html`): the layout and style sheet are the template `analysis.html`
(package data), the values are filled in here, every one HTML-escaped.

In the template, a line break and the indentation after it are layout only: they are dropped when it is read, so
the page is the same one-line markup whatever the template's layout. The style sheet's lines start unindented and
keep their breaks.
"""

from __future__ import annotations

import functools
import html
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import resources
from string import Template
from typing import Any

from anthropic_proxy.reports.analysis_model import AnalysisReport, Breakdown

# What the report page may load: its inline stylesheet (and style attributes), nothing else. The page says it in
# a meta tag; the web app sends the same policy as the response's header (webui/monitor_api.py).
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'"
TEMPLATE = "analysis.html"


@functools.cache
def _template() -> Template:
    text = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    return Template(re.sub(r"\n[ \t]+", "", text))


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _usd_decimals(values: Iterable[float | None]) -> int:
    """The decimals that show the smallest non-zero cost among `values` with two significant digits (2 to 8; costs
    are kept to 1e-8 USD): one rule for a whole column, as on the monitor (common.js costDecimals)."""
    smallest = min((abs(value) for value in values if value), default=None)
    return 2 if smallest is None else min(8, max(2, math.ceil(-math.log10(smallest)) + 1))


def _usd(value: float | None, decimals: int | None = None) -> str:
    if value is None:
        return "—"
    return f"${value:,.{_usd_decimals([value]) if decimals is None else decimals}f}"


def _int(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _time(value: datetime | None) -> str:
    return "—" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: list[str], rows: list[list[Any]], *, numeric_from: int = 1, empty: str = "Nothing yet.") -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    num = ' class="num"'
    head = "".join(f"<th{num if i >= numeric_from else ''}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{num if i >= numeric_from else ''}>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bars(rows: list[tuple[str, float, str]]) -> str:
    """Label, value, shown value: a CSS bar chart (no script)."""
    if not rows:
        return '<p class="empty">Nothing yet.</p>'
    top = max(value for _, value, _ in rows) or 1
    items = "".join(
        f'<div class="bar-row"><span class="bar-label">{_e(label)}</span>'
        f'<span class="bar-track"><span class="bar" style="width:{_e(f"{max(value, 0) / top * 100:.1f}")}%"></span>'
        f'</span><span class="bar-value">{_e(shown)}</span></div>' for label, value, shown in rows)
    return f'<div class="bars">{items}</div>'


def _breakdown(rows: list[Breakdown], first: str) -> str:
    cost, savings = _usd_decimals(r.cost_usd for r in rows), _usd_decimals(r.cache_savings_usd for r in rows)
    return _table([first, "Requests", "Errors", "Input", "Output", "Cache write", "Cache read", "Cost",
                   "Unpriced", "Cache savings", "Avg latency"],
                  [[r.key, _int(r.requests), _int(r.errors), _int(r.input_tokens), _int(r.output_tokens),
                    _int(r.cache_creation_tokens), _int(r.cache_read_tokens), _usd(r.cost_usd, cost),
                    _int(r.unpriced_requests), _usd(r.cache_savings_usd, savings), _ms(r.avg_duration_ms)]
                   for r in rows])


def _card(label: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>'
            f'<div class="sub">{_e(sub)}</div></div>')


def render_html(report: AnalysisReport, *, title: str = "anthropic-proxy analysis") -> str:
    """A self-contained page: inline style, no script, no external resource; every value HTML-escaped."""
    t, c, lat, ttfb = report.totals, report.cache, report.latency_ms, report.ttfb_ms
    model_cost = _usd_decimals(r.cost_usd for r in report.by_model)
    request_cost = _usd_decimals(r.cost_usd for r in report.most_expensive_requests)
    session_cost = _usd_decimals(s.cost_usd for s in report.most_expensive_sessions)
    filters = ", ".join(f"{k}={v}" for k, v in report.filters.items() if v not in (None, "")) or "none"
    cards = "".join([
        _card("Requests", _int(t.requests), f"{_int(t.success)} ok · {_int(t.errors)} errors · "
                                            f"{_int(t.cancelled)} cancelled"),
        _card("Success rate", _pct(t.success_rate)),
        _card("Cost", _usd(t.cost_usd), f"{_int(t.unpriced_requests)} without a price" if t.unpriced_requests
              else "every request priced"),
        _card("Tokens incl. cache", _int(t.total_tokens), f"{_int(t.input_tokens)} in · {_int(t.output_tokens)} out · "
              f"{_int(t.cache_read_tokens)} cache read · {_int(t.cache_creation_tokens)} cache write"),
        _card("Cache hit rate", _pct(c.hit_rate), f"{_int(c.read_tokens)} read · {_int(c.write_tokens)} written"),
        _card("Cache savings", _usd(c.savings_usd), f"net {_usd(c.net_savings_usd)} after "
                                                    f"{_usd(c.write_premium_usd)} write premium"),
        _card("Latency p50 / p95", f"{_ms(lat.p50)} / {_ms(lat.p95)}", f"p99 {_ms(lat.p99)} · max {_ms(lat.max)}"),
        _card("Time to first byte p50", _ms(ttfb.p50), f"p95 {_ms(ttfb.p95)}"),
        _card("Sessions", _int(report.session_count), f"{_int(report.records_without_session)} requests without one"),
    ])
    unpriced = (f'<p class="warn">No price for: {_e(", ".join(report.unpriced_models))}. Their cost is left out; '
                f'add them to prices.json in the state directory.</p>' if report.unpriced_models else "")
    return _template().substitute(
        csp=REPORT_CSP,  # a constant: nothing to escape
        title=_e(title), generated=_e(_time(report.generated_at)), first=_e(_time(report.first_timestamp)),
        last=_e(_time(report.last_timestamp)), filters=_e(filters), cards=cards, unpriced=unpriced,
        cost_by_model=_bars([(r.key, r.cost_usd, _usd(r.cost_usd, model_cost)) for r in report.by_model]),
        requests_by_type=_bars([(r.key, r.requests, _int(r.requests)) for r in report.by_request_type]),
        by_model=_breakdown(report.by_model, "Model"),
        by_request_type=_breakdown(report.by_request_type, "Type"),
        by_provider=_breakdown(report.by_provider, "Provider"),
        by_day=_breakdown(report.by_day, "Day"),
        cache=_table(["Figure", "Value"], [
            ["Hit rate (cache reads / all prompt tokens)", _pct(c.hit_rate)],
            ["Cache read tokens", _int(c.read_tokens)], ["Cache write tokens", _int(c.write_tokens)],
            ["Uncached input tokens", _int(c.uncached_input_tokens)],
            ["Saved by cache reads (vs. the input price)", _usd(c.savings_usd)],
            ["Paid above the input price for cache writes", _usd(c.write_premium_usd)],
            ["Net savings", _usd(c.net_savings_usd)],
            ["Cache reads without a price (not in the savings)", _int(c.unpriced_read_tokens)]]),
        latency=_table(["", "Count", "p50", "p90", "p95", "p99", "Max", "Average"], [
            [name, _int(p.count), _ms(p.p50), _ms(p.p90), _ms(p.p95), _ms(p.p99), _ms(p.max), _ms(p.avg)]
            for name, p in (("Total duration", lat), ("Time to first byte", ttfb))]),
        tools=_table(["Tool", "Calls"], [[x.name, _int(x.count)] for x in report.tool_usage], empty="No tool calls."),
        errors=_table(["Type", "Example", "Count"], [[x.type, x.example, _int(x.count)] for x in report.errors_by_type],
                      numeric_from=2, empty="No errors."),
        requests=_table(
            ["Time", "Model", "Type", "Session", "Prompt", "Input", "Output", "Cache read", "Duration", "Cost"],
            [[_time(r.timestamp), r.model or "—", r.request_type, r.session_id or "—", r.preview,
              _int(r.input_tokens), _int(r.output_tokens), _int(r.cache_read_tokens), _ms(r.duration_ms),
              _usd(r.cost_usd, request_cost)] for r in report.most_expensive_requests], numeric_from=5),
        sessions=_table(
            ["Session", "Models", "Requests", "Turns", "Errors", "Input", "Output", "Cache hit rate", "Duration",
             "Cost"],
            [[s.session_id, ", ".join(s.models), _int(s.requests), _int(s.turns), _int(s.errors),
              _int(s.input_tokens), _int(s.output_tokens), _pct(s.cache_hit_rate), _ms(s.duration_ms),
              _usd(s.cost_usd, session_cost) + (f" (+{s.unpriced_requests} unpriced)" if s.unpriced_requests else "")]
             for s in report.most_expensive_sessions], numeric_from=2, empty="No Claude Code sessions."),
    )
