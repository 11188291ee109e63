"""The monitor's figures over the records a filter selects: totals, latency, tokens, cost, chart series and
breakdowns (`aggregate`); errors by type and the slowest calls (`analyze`). Reads only, on the caller's
connection; the same SQL for both dialects (PostgreSQL's schema has SQLite's `total()` and `json_group_array()`).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from anthropic_proxy.record.pricing import PriceBook, savings_for_tokens
from anthropic_proxy.store import search
from anthropic_proxy.store.dialects import Connection, Dialect
from anthropic_proxy.store.filters import RecordFilter
from anthropic_proxy.store.rows import METRIC_COLUMNS

# Latency histogram buckets (upper bounds, ms); the last bucket is open-ended.
LATENCY_BUCKETS_MS = (250, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000)
_TIME_BUCKETS_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


def time_bucket_seconds(span_seconds: float, target_buckets: int = 48) -> int:
    """The smallest round bucket size that cuts `span_seconds` into at most `target_buckets` buckets."""
    for size in _TIME_BUCKETS_S:
        if span_seconds / size <= target_buckets:
            return size
    return _TIME_BUCKETS_S[-1]


def aggregate(db: Connection, dialect: Dialect, flt: RecordFilter, *, now: float | None = None,
              book: PriceBook | None = None, sessions: int = 20) -> dict[str, Any]:
    """Totals, latency percentiles, tokens, cost, and chart series over ALL records matching `flt`.

    Every figure is an SQL aggregate over the indexed metric columns (schema v2); nothing is
    parsed per row, so 10,000 records cost a few milliseconds.

    Breakdowns (`byModel`, `byProvider`, `byDay` (UTC), `bySession`: the `sessions` most expensive), each
    entry with requests, success / errors, tokens, cost and latency p50 / p95. With a price `book`, cache
    savings in dollars (`cacheSavingsUsd`, also per entry): what the cache reads would have cost at the
    input price minus what they cost, from `pricing.savings_for_tokens` per (model, day) of Anthropic
    records (base rates: a long-context request saves a little more than this says); cache reads without
    a price (unknown models, OpenRouter) are counted in `cacheSavingsUnpricedTokens`.
    """
    where, params = search.where(db, dialect, flt)
    now = time.time() if now is None else now
    # One pass over the matching rows (a covering index when unfiltered), then every figure
    # from that narrow copy: a text search (`q`) scans the big rows once, not once per figure.
    dialect.select_into_sel(db, "ts, status, provider, model, " + ", ".join(METRIC_COLUMNS)
                            + f", {dialect.utc_day('ts')} AS day", where, params)
    (total, success, errors, pending, cancelled, tin, tout, tcw, tcr, cost, costed, timed, avg_ms,
     first_ts, last_ts) = db.execute(
        "SELECT count(*), total(status = 'success'), total(status = 'error'), total(status = 'pending'), "
        "total(status = 'cancelled'), total(input_tokens), total(output_tokens), "
        "total(cache_creation_tokens), total(cache_read_tokens), total(cost_usd), count(cost_usd), "
        "count(duration_ms), avg(duration_ms), min(ts), max(ts) FROM sel").fetchone()
    durations = ("SELECT duration_ms FROM sel WHERE duration_ms IS NOT NULL "
                 "ORDER BY duration_ms LIMIT 1 OFFSET ?")

    def percentile(p: float) -> float | None:
        found = db.execute(durations, (round(p * (timed - 1)),)).fetchone() if timed else None
        return found[0] if found else None

    p50, p95 = percentile(0.5), percentile(0.95)
    start = flt.since.timestamp() if flt.since else (first_ts or now)
    end = flt.until.timestamp() if flt.until else max(now, last_ts or now)
    bucket = time_bucket_seconds(max(end - start, 60))
    timeline = [
        {"t": int(b) * bucket, "requests": n, "errors": int(e), "inputTokens": int(i),
         "outputTokens": int(o), "cacheTokens": int(c), "costUsd": round(k, 8)}
        for b, n, e, i, o, c, k in db.execute(
            f"SELECT {dialect.floor('ts / ?')} AS b, count(*), total(status = 'error'), "
            "total(input_tokens), total(output_tokens), total(cache_creation_tokens + cache_read_tokens), "
            "total(cost_usd) FROM sel GROUP BY b ORDER BY b", (bucket,))
    ]
    by_model = [
        {"model": m, "requests": n, "costUsd": round(k, 8), "inputTokens": int(i), "outputTokens": int(o)}
        for m, n, k, i, o in db.execute(
            "SELECT coalesce(model, '(none)'), count(*), total(cost_usd), total(input_tokens), "
            "total(output_tokens) FROM sel GROUP BY 1 ORDER BY 3 DESC, 2 DESC")
    ]
    case = " ".join(f"WHEN duration_ms < {edge} THEN {n}" for n, edge in enumerate(LATENCY_BUCKETS_MS))
    counts = dict(db.execute(
        f"SELECT CASE {case} ELSE {len(LATENCY_BUCKETS_MS)} END AS b, count(*) "
        "FROM sel WHERE duration_ms IS NOT NULL GROUP BY b").fetchall())
    breakdowns = _breakdowns(db, book, sessions)
    cache_breaks = _cache_breaks(db, where, params)
    for row in by_model:  # the breakdown's figures for the same rows, in the chart's order
        row.update({k: v for k, v in breakdowns["_models"][row["model"]].items() if k not in row})
    del breakdowns["_models"]
    edges = [0, *LATENCY_BUCKETS_MS]
    latency = [{"fromMs": lo, "toMs": edges[n + 1] if n + 1 < len(edges) else None, "count": counts.get(n, 0)}
               for n, lo in enumerate(edges)]
    finished = success + errors
    return {
        "total": total, "success": int(success), "errors": int(errors), "pending": int(pending),
        "cancelled": int(cancelled),
        "successRate": round(success / finished, 4) if finished else None,
        "latencyMs": {"p50": p50, "p95": p95, "avg": round(avg_ms, 2) if avg_ms is not None else None},
        "tokens": {"input": int(tin), "output": int(tout), "cacheCreation": int(tcw), "cacheRead": int(tcr),
                   "total": int(tin + tout + tcw + tcr)},
        "costUsd": round(cost, 8), "costedRequests": costed,  # costs are kept to 1e-8 USD
        "firstTs": first_ts, "lastTs": last_ts,
        "timeline": {"bucketSeconds": bucket, "points": timeline},
        "byModel": by_model, "latencyHistogram": latency,
        "cacheBreaks": cache_breaks,
        **breakdowns,
    }


def analyze(db: Connection, dialect: Dialect, flt: RecordFilter, *, top: int = 5) -> dict[str, Any]:
    """Errors by type and the slowest exchanges among the records matching `flt`."""
    where, params = search.where(db, dialect, flt)
    error_where = (where + " AND" if where else " WHERE") + " status = 'error'"
    timed_where = (where + " AND" if where else " WHERE") + " duration_ms IS NOT NULL"
    errors = [{"type": t or "unknown", "count": n} for t, n in db.execute(
        f"SELECT {dialect.json_text('summary', 'error', 'type')} AS t, count(*) FROM records{error_where} "
        "GROUP BY t ORDER BY 2 DESC", params)]
    slowest = [json.loads(s) for (s,) in db.execute(
        f"SELECT summary FROM records{timed_where} ORDER BY duration_ms DESC LIMIT ?", [*params, top])]
    return {"errorsByType": errors, "slowest": slowest}


# ---- breakdowns (`aggregate`) ----
_GROUP_FIGURES = ("count(*), total(status = 'success'), total(status = 'error'), total(input_tokens), "
                  "total(output_tokens), total(cache_creation_tokens), total(cache_read_tokens), total(cost_usd), "
                  "count(cost_usd)")


def _group_entry(values: tuple[Any, ...]) -> dict[str, Any]:
    n, ok, errors, tin, tout, tcw, tcr, cost, costed = values
    finished = ok + errors
    return {"requests": n, "success": int(ok), "errors": int(errors),
            "successRate": round(ok / finished, 4) if finished else None,
            "inputTokens": int(tin), "outputTokens": int(tout), "cacheCreationTokens": int(tcw),
            "cacheReadTokens": int(tcr), "costUsd": round(cost, 8), "costedRequests": costed,
            "latencyMs": {"p50": None, "p95": None}, "cacheSavingsUsd": None}


def _cache_breaks(db: Connection, where: str, params: list[Any]) -> dict[str, Any]:
    """Money lost to cache breaks among the records matching `where`: in all and by where the prompt broke (`at`).
    `unpriced`: breaks whose model has no price (not in `extraCostUsd`). Breaks are few: read from their own
    partial index, not through `sel` (whose covering index has no room for them)."""
    broken = (where + " AND" if where else " WHERE") + " cache_break_at IS NOT NULL"
    by_at = [{"at": at, "count": n, "extraCostUsd": round(usd, 8), "unpriced": n - priced}
             for at, n, usd, priced in db.execute(
                 "SELECT cache_break_at, count(*), total(cache_break_usd), count(cache_break_usd) "
                 f"FROM records{broken} GROUP BY 1 ORDER BY 3 DESC, 2 DESC, 1", params)]
    return {"count": sum(e["count"] for e in by_at), "extraCostUsd": round(sum(e["extraCostUsd"] for e in by_at), 8),
            "unpriced": sum(e["unpriced"] for e in by_at), "byAt": by_at}


def _nearest_rank(values: list[float], p: float) -> float | None:
    return values[round(p * (len(values) - 1))] if values else None  # as `aggregate`'s own p50 / p95


def _breakdowns(db: Connection, book: PriceBook | None, top_sessions: int) -> dict[str, Any]:
    """By model, provider, day and session over the `sel` temp table (see `aggregate`)."""
    groups: dict[str, dict[str, dict[str, Any]]] = {"model": {}, "provider": {}, "day": {}, "session": {}}
    # One scan for three breakdowns: (model, provider, day) rows are few; their sums make each breakdown.
    cells = db.execute(f"SELECT model, provider, day, {_GROUP_FIGURES} FROM sel GROUP BY 1, 2, 3").fetchall()
    sums: dict[str, dict[str, list[float]]] = {"model": {}, "provider": {}, "day": {}}
    for model, provider, day, *values in cells:
        for dimension, key_value in (("model", model or "(none)"), ("provider", provider), ("day", day)):
            into = sums[dimension].setdefault(key_value, [0] * len(values))
            for n, value in enumerate(values):
                into[n] += value
    for dimension, by_key in sums.items():
        for key_value, values in by_key.items():
            groups[dimension][key_value] = {dimension: key_value, **_group_entry(tuple(values))}
    session_count, with_session = db.execute("SELECT count(DISTINCT session), count(session) FROM sel").fetchone()
    for key_value, first_ts, last_ts, models, *values in db.execute(
            "SELECT session, min(ts), max(ts + coalesce(duration_ms, 0) / 1000.0), json_group_array(DISTINCT model), "
            f"{_GROUP_FIGURES} FROM sel WHERE session IS NOT NULL "
            "GROUP BY 1 ORDER BY total(cost_usd) DESC, count(*) DESC, 1 LIMIT ?", (top_sessions,)):
        groups["session"][key_value] = {"session": key_value, **_group_entry(tuple(values)), "firstTs": first_ts,
                                        "lastTs": last_ts, "models": sorted(m for m in json.loads(models) if m)}
    top = list(groups["session"])
    in_top = f"session IN ({', '.join('?' * len(top))})" if top else "1 = 0"

    # Latency p50 / p95 per group: the durations read once in order, split by group (a few ms per 10,000).
    durations: dict[str, dict[str, list[float]]] = {d: {} for d in groups}
    by_model, by_provider, by_day = durations["model"], durations["provider"], durations["day"]
    for duration, model, provider, day in db.execute(
            "SELECT duration_ms, coalesce(model, '(none)'), provider, day FROM sel WHERE duration_ms IS NOT NULL "
            "ORDER BY duration_ms"):
        by_model.setdefault(model, []).append(duration)
        by_provider.setdefault(provider, []).append(duration)
        by_day.setdefault(day, []).append(duration)
    for session, duration in db.execute(f"SELECT session, duration_ms FROM sel WHERE {in_top} AND "
                                        "duration_ms IS NOT NULL ORDER BY duration_ms", top):
        durations["session"].setdefault(session, []).append(duration)
    for dimension, by_key in durations.items():
        for key_value, values in by_key.items():
            groups[dimension][key_value]["latencyMs"] = {"p50": _nearest_rank(values, 0.5),
                                                         "p95": _nearest_rank(values, 0.95)}

    # Cache savings: Anthropic's prices per (model, day); an OpenRouter record's cache is billed by OpenRouter
    # (so it is left out, as in analysis.py). The top sessions get theirs from the same per-(model, day) rows.
    if book is None:
        return _breakdown_view(groups, session_count, with_session, None, 0)
    saved_by: dict[tuple[str, str], Decimal] = {}
    total_savings, unpriced_reads = Decimal(0), 0
    for entry in (e for by_key in groups.values() for e in by_key.values()):
        entry["cacheSavingsUsd"] = 0.0

    def saved(provider: str, model: str | None, day: str, reads: float) -> Decimal | None:
        if provider != "anthropic":
            return None
        usd = savings_for_tokens(model, int(reads), book, datetime.fromisoformat(day).replace(tzinfo=UTC))
        return None if usd is None else Decimal(repr(usd))

    for model, provider, day, *values in cells:
        reads = values[6]  # total(cache_read_tokens)
        if not reads:
            continue
        amount = saved(provider, model, day, reads)
        if amount is None:
            unpriced_reads += int(reads)
            continue
        total_savings += amount
        for dimension, key_value in (("model", model or "(none)"), ("provider", provider), ("day", day)):
            saved_by[dimension, key_value] = saved_by.get((dimension, key_value), Decimal(0)) + amount
    for session, provider, model, day, reads in db.execute(
            f"SELECT session, provider, model, day, total(cache_read_tokens) FROM sel WHERE {in_top} "
            "AND cache_read_tokens > 0 GROUP BY 1, 2, 3, 4", top):
        amount = saved(provider, model, day, reads)
        if amount is not None:
            saved_by["session", session] = saved_by.get(("session", session), Decimal(0)) + amount
    for (dimension, key_value), amount in saved_by.items():
        groups[dimension][key_value]["cacheSavingsUsd"] = float(amount)
    return _breakdown_view(groups, session_count, with_session, float(total_savings), unpriced_reads)


def _breakdown_view(groups: dict[str, dict[str, dict[str, Any]]], session_count: int, with_session: int,
                    savings: float | None, unpriced_reads: int) -> dict[str, Any]:
    def ordered(dimension: str) -> list[dict[str, Any]]:
        return sorted(groups[dimension].values(), key=lambda e: (-e["costUsd"], -e["requests"], e[dimension]))

    return {
        "_models": groups["model"],
        "byProvider": ordered("provider"), "byDay": sorted(groups["day"].values(), key=lambda e: e["day"]),
        "bySession": ordered("session"), "sessionCount": session_count,
        "recordsWithoutSession": sum(e["requests"] for e in groups["provider"].values()) - with_session,
        "cacheSavingsUsd": savings, "cacheSavingsUnpricedTokens": unpriced_reads,
    }

