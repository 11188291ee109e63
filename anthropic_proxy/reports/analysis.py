"""The analysis report (`GET /api/monitor/analyze`): where tokens, money and time go, in one pass.

`analyze(records)` reads an iterable of records once (e.g. `Store.iter_records(flt)`, which reads in batches)
and keeps only running totals, one small accumulator per model / provider / day / request type / session /
error type / tool, the durations (one float per record, for exact percentiles) and the top-N most expensive
requests: never the records themselves. The report's shape is in analysis_model.py; `render_html(report)`
(analysis_page.py) turns it into a self-contained page.

Each record counts under its request type (`classify`, request_types.py, which lists the rules).

Sessions (`group_sessions`, and the report's sessions part) group records by `record.session_id` (the
Recorder sets it from `x-claude-code-session-id`, else the session inside `metadata.user_id`). Per session:
requests, turns (distinct new user prompts: requests whose latest message is text a person typed, counted
once per distinct text, so the title and the main call for one prompt are one turn), tokens, cost (priced
requests only; `unpricedRequests` says how many are missing), cache hit rate (cache reads / all prompt
tokens), and duration (first request's start to the last request's end).

The same figures from SQL (store schema v2 columns), except turns:

    SELECT session, count(*) AS requests, total(status = 'error') AS errors,
           total(input_tokens), total(output_tokens), total(cache_creation_tokens), total(cache_read_tokens),
           total(cost_usd), count(*) - count(cost_usd) AS unpriced,
           total(cache_read_tokens) / nullif(total(input_tokens + cache_creation_tokens + cache_read_tokens), 0)
             AS cache_hit_rate,
           min(ts) AS started, max(ts + coalesce(duration_ms, 0) / 1000.0) AS ended
    FROM records WHERE session IS NOT NULL GROUP BY session ORDER BY total(cost_usd) DESC

Turns need a per-record flag: store `is_user_turn(record)` (and `turn_key(record)` to dedupe) at put time.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from anthropic_proxy.record.model import Record, text_preview
from anthropic_proxy.record.pricing import USD_QUANTUM, PriceBook, cache_savings_usd, cache_write_premium_usd
from anthropic_proxy.reports.analysis_model import (
    AnalysisReport,
    Breakdown,
    CacheEfficiency,
    ErrorCount,
    Percentiles,
    RequestSummary,
    SessionSummary,
    ToolCount,
    Totals,
)
from anthropic_proxy.reports.analysis_page import REPORT_CSP, render_html
from anthropic_proxy.reports.request_types import REQUEST_TYPES, answer_tool_calls, classify, is_user_turn, turn_key

# The report's shape, its page and the request types live in their own modules; the analysis is read from here.
__all__ = ["REPORT_CSP", "REQUEST_TYPES", "AnalysisReport", "Analyzer", "analyze", "classify", "group_sessions",
           "is_user_turn", "render_html", "turn_key"]


# ---- accumulators ------------------------------------------------------------------------------------------
def _money(value: Decimal) -> float:
    return float(value.quantize(USD_QUANTUM))


def _dec(value: float | None) -> Decimal:
    return Decimal(repr(value)) if value is not None else Decimal(0)


@dataclass
class _Bucket:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    unpriced: int = 0
    savings: Decimal = field(default_factory=Decimal)
    duration_total: float = 0.0
    timed: int = 0

    def add(self, record: Record, savings: float | None) -> None:
        usage = record.usage
        self.requests += 1
        self.errors += record.status == "error"
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_creation_tokens += usage.cache_creation_input_tokens
        self.cache_read_tokens += usage.cache_read_input_tokens
        if record.cost_usd is None:
            self.unpriced += 1
        else:
            self.cost += _dec(record.cost_usd)
        self.savings += _dec(savings)
        if record.metrics.duration_ms is not None:
            self.duration_total += record.metrics.duration_ms
            self.timed += 1

    def tally(self) -> dict[str, Any]:
        """The `Tally` fields, for the models built on it."""
        return {"requests": self.requests, "errors": self.errors, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cache_creation_tokens": self.cache_creation_tokens,
                "cache_read_tokens": self.cache_read_tokens, "cost_usd": _money(self.cost),
                "unpriced_requests": self.unpriced}

    def view(self, key: str) -> Breakdown:
        return Breakdown(key=key, **self.tally(), cache_savings_usd=_money(self.savings),
                         avg_duration_ms=round(self.duration_total / self.timed, 2) if self.timed else None)


@dataclass
class _Session(_Bucket):
    turns: set[str] = field(default_factory=set)
    started: datetime | None = None
    ended: datetime | None = None
    models: Counter[str] = field(default_factory=Counter)

    def add_record(self, record: Record, savings: float | None) -> None:
        self.add(record, savings)
        key = turn_key(record)
        if key is not None:
            self.turns.add(key)
        start = record.timestamp
        end = start + timedelta(milliseconds=record.metrics.duration_ms or 0)
        self.started = start if self.started is None or start < self.started else self.started
        self.ended = end if self.ended is None or end > self.ended else self.ended
        if record.model:
            self.models[record.model] += 1

    def summary(self, session_id: str) -> SessionSummary:
        prompt = self.input_tokens + self.cache_creation_tokens + self.cache_read_tokens
        duration = (self.ended - self.started).total_seconds() * 1000 if self.started and self.ended else None
        return SessionSummary(
            session_id=session_id, **self.tally(), turns=len(self.turns),
            cache_hit_rate=round(self.cache_read_tokens / prompt, 4) if prompt else None,
            started=self.started, ended=self.ended, duration_ms=round(duration, 2) if duration is not None else None,
            models=[m for m, _ in self.models.most_common()])


def _percentiles(values: list[float]) -> Percentiles:
    if not values:
        return Percentiles()
    values.sort()
    n = len(values)

    def at(p: float) -> float:
        return values[round(p * (n - 1))]  # nearest rank, as the store's aggregate

    return Percentiles(count=n, p50=at(0.5), p90=at(0.9), p95=at(0.95), p99=at(0.99), max=values[-1],
                       avg=round(sum(values) / n, 2))


def _summary(record: Record, request_type: str) -> RequestSummary:
    usage = record.usage
    return RequestSummary(id=record.id, timestamp=record.timestamp, model=record.model, provider=record.provider,
                          status=record.status, request_type=request_type, session_id=record.session_id,
                          cost_usd=record.cost_usd, input_tokens=usage.input_tokens,
                          output_tokens=usage.output_tokens, cache_read_tokens=usage.cache_read_input_tokens,
                          duration_ms=record.metrics.duration_ms, preview=text_preview(record))


def _rows(buckets: dict[str, _Bucket]) -> list[Breakdown]:
    rows = [bucket.view(key) for key, bucket in buckets.items()]
    return sorted(rows, key=lambda r: (-r.cost_usd, -r.requests, r.key))


class Analyzer:
    """Feed records one at a time (`add`), then read the `report()`."""

    def __init__(self, book: PriceBook | None = None, *, top: int = 10) -> None:
        self.book = book or PriceBook()
        self.top = top
        self._totals = _Bucket()
        self._status: Counter[str] = Counter()
        self._first: datetime | None = None
        self._last: datetime | None = None
        self._savings = Decimal(0)
        self._premium = Decimal(0)
        self._unpriced_reads = 0
        self._durations: list[float] = []
        self._ttfb: list[float] = []
        self._by: dict[str, dict[str, _Bucket]] = {"model": {}, "provider": {}, "day": {}, "type": {}}
        self._tools: Counter[str] = Counter()
        self._errors: dict[str, ErrorCount] = {}
        self._expensive: list[tuple[float, int, RequestSummary]] = []
        self._seq = 0
        self._sessions: dict[str, _Session] = {}
        self._no_session = 0
        self._unpriced_models: set[str] = set()

    def add(self, record: Record) -> None:
        self._seq += 1
        request_type = classify(record)
        savings = cache_savings_usd(record, self.book) if record.provider == "anthropic" else None
        if record.usage.cache_read_input_tokens and savings is None:
            self._unpriced_reads += record.usage.cache_read_input_tokens
        self._savings += _dec(savings)
        self._premium += _dec(cache_write_premium_usd(record, self.book) if record.provider == "anthropic" else None)
        self._totals.add(record, savings)
        self._status[record.status] += 1
        ts = record.timestamp
        self._first = ts if self._first is None or ts < self._first else self._first
        self._last = ts if self._last is None or ts > self._last else self._last
        if record.metrics.duration_ms is not None:
            self._durations.append(record.metrics.duration_ms)
        if record.metrics.ttfb_ms is not None:
            self._ttfb.append(record.metrics.ttfb_ms)
        keys = {"model": record.model or "(none)", "provider": record.provider,
                "day": ts.astimezone(UTC).date().isoformat(), "type": request_type}
        for dimension, key in keys.items():
            self._by[dimension].setdefault(key, _Bucket()).add(record, savings)
        for name, _ in answer_tool_calls(record):
            self._tools[name] += 1
        if record.status == "error":
            error_type = record.error.type if record.error else "unknown"
            entry = self._errors.setdefault(error_type, ErrorCount(type=error_type, count=0,
                                                                   example=(record.error.message if record.error
                                                                            else "")[:300]))
            entry.count += 1
        if record.cost_usd is None and record.model:
            self._unpriced_models.add(record.model)
        if record.cost_usd is not None and self.top > 0:
            item = (record.cost_usd, -self._seq, _summary(record, request_type)) if (
                len(self._expensive) < self.top or record.cost_usd > self._expensive[0][0]) else None
            if item is not None:
                (heapq.heappush if len(self._expensive) < self.top else heapq.heapreplace)(self._expensive, item)
        if record.session_id:
            self._sessions.setdefault(record.session_id, _Session()).add_record(record, savings)
        else:
            self._no_session += 1

    def sessions(self) -> list[SessionSummary]:
        """Every session, most expensive first."""
        rows = [s.summary(sid) for sid, s in self._sessions.items()]
        return sorted(rows, key=lambda s: (-s.cost_usd, -s.requests, s.session_id))

    def report(self) -> AnalysisReport:
        t = self._totals
        success, errors = self._status["success"], self._status["error"]
        prompt = t.input_tokens + t.cache_creation_tokens + t.cache_read_tokens
        totals = Totals(
            requests=t.requests, success=success, errors=errors, cancelled=self._status["cancelled"],
            pending=self._status["pending"],
            success_rate=round(success / (success + errors), 4) if success + errors else None,
            input_tokens=t.input_tokens, output_tokens=t.output_tokens, cache_creation_tokens=t.cache_creation_tokens,
            cache_read_tokens=t.cache_read_tokens, total_tokens=prompt + t.output_tokens, cost_usd=_money(t.cost),
            costed_requests=t.requests - t.unpriced, unpriced_requests=t.unpriced)
        cache = CacheEfficiency(
            hit_rate=round(t.cache_read_tokens / prompt, 4) if prompt else None, read_tokens=t.cache_read_tokens,
            write_tokens=t.cache_creation_tokens, uncached_input_tokens=t.input_tokens,
            savings_usd=_money(self._savings), write_premium_usd=_money(self._premium),
            net_savings_usd=_money(self._savings - self._premium), unpriced_read_tokens=self._unpriced_reads)
        by_day = sorted((b.view(k) for k, b in self._by["day"].items()), key=lambda r: r.key)
        errors_by_type = sorted(self._errors.values(), key=lambda e: (-e.count, e.type))
        expensive = [s for _, _, s in sorted(self._expensive, key=lambda item: (-item[0], -item[1]))]
        sessions = self.sessions()
        return AnalysisReport(
            generated_at=datetime.now(UTC), first_timestamp=self._first, last_timestamp=self._last,
            totals=totals, cache=cache, latency_ms=_percentiles(self._durations), ttfb_ms=_percentiles(self._ttfb),
            by_model=_rows(self._by["model"]), by_provider=_rows(self._by["provider"]), by_day=by_day,
            by_request_type=_rows(self._by["type"]),
            tool_usage=[ToolCount(name=n, count=c)
                        for n, c in sorted(self._tools.items(), key=lambda i: (-i[1], i[0]))],
            errors_by_type=errors_by_type, most_expensive_requests=expensive, session_count=len(sessions),
            records_without_session=self._no_session, most_expensive_sessions=sessions[:self.top],
            unpriced_models=sorted(self._unpriced_models))


def analyze(records: Iterable[Record], *, book: PriceBook | None = None, top: int = 10) -> AnalysisReport:
    """The report over `records`, read once. `book` prices cache savings (pass `runtime.prices`)."""
    analyzer = Analyzer(book, top=top)
    for record in records:
        analyzer.add(record)
    return analyzer.report()


def group_sessions(records: Iterable[Record], *, book: PriceBook | None = None) -> list[SessionSummary]:
    """Every Claude Code session among `records`, most expensive first (see the module docstring)."""
    analyzer = Analyzer(book, top=0)
    for record in records:
        if record.session_id:
            analyzer.add(record)
    return analyzer.sessions()
