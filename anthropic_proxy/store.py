"""The shared, durable record store (SQLite): written off the proxy's hot path, read by everyone else.

Writes go through a queue to one writer thread, so no client ever waits for the disk. Reads open their
own connection (WAL lets them run beside the writer); async callers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .masking import mask_text
from .record import Record, RecordError

logger = logging.getLogger("anthropic_proxy.store")

DB_NAME = "records.sqlite3"
_STOP = object()
_PRUNE_EVERY = 500  # writes between two retention passes
_RETRY_SECONDS = 1.0  # between two attempts while writes fail
_MAX_UNSAVED = 10_000  # records held in memory while writes fail


@dataclass(frozen=True, slots=True)
class RecordFilter:
    status: str | None = None
    model: str | None = None
    provider: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    session: str | None = None
    q: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("status", self.status), ("model", self.model),
                              ("provider", self.provider), ("session", self.session)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since:
            clauses.append("ts >= ?")
            params.append(self.since.timestamp())
        if self.until:
            clauses.append("ts <= ?")
            params.append(self.until.timestamp())
        if self.q:
            clauses.append("instr(lower(search), ?) > 0")
            params.append(self.q.lower())
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


_TIME_RANGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7),
                "30d": timedelta(days=30)}


def parse_time_range(value: str | None) -> datetime | None:
    """`1h`/`24h`/`7d`/`30d` -> the start of that window; anything else is a ValueError."""
    if not value or value == "all":
        return None
    if value not in _TIME_RANGES:
        raise ValueError(f"timeRange must be one of {', '.join(_TIME_RANGES)} (got {value!r})")
    return datetime.now(UTC) - _TIME_RANGES[value]


# Each entry moves the schema one version up; never edit a released one, append a new one.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE records (
        id TEXT PRIMARY KEY,
        ts REAL NOT NULL,
        status TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT,
        session TEXT,
        search TEXT NOT NULL DEFAULT '',
        summary TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX records_ts ON records(ts);
    CREATE INDEX records_status_ts ON records(status, ts);
    CREATE INDEX records_model ON records(model);
    CREATE INDEX records_session ON records(session);
    """,
    # v2: metrics as real columns, so the monitor's stats are SQL aggregates (no JSON parsing per row).
    """
    ALTER TABLE records ADD COLUMN duration_ms REAL;
    ALTER TABLE records ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE records ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE records ADD COLUMN cache_creation_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE records ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE records ADD COLUMN cost_usd REAL;
    UPDATE records SET
        duration_ms = json_extract(summary, '$.metrics.durationMs'),
        input_tokens = coalesce(json_extract(summary, '$.usage.inputTokens'), 0),
        output_tokens = coalesce(json_extract(summary, '$.usage.outputTokens'), 0),
        cache_creation_tokens = coalesce(json_extract(summary, '$.usage.cacheCreationInputTokens'), 0),
        cache_read_tokens = coalesce(json_extract(summary, '$.usage.cacheReadInputTokens'), 0),
        cost_usd = json_extract(summary, '$.costUsd');
    CREATE INDEX records_provider_ts ON records(provider, ts);
    CREATE INDEX records_model_ts ON records(model, ts);
    CREATE INDEX records_metrics ON records(ts, status, provider, model, duration_ms, input_tokens, output_tokens,
                                            cache_creation_tokens, cache_read_tokens, cost_usd);
    """,
]

_METRIC_COLUMNS = ("duration_ms", "input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens",
                   "cost_usd")
# Latency histogram buckets (upper bounds, ms); the last bucket is open-ended.
LATENCY_BUCKETS_MS = (250, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000)
_TIME_BUCKETS_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


def _metric_values(record: Record) -> tuple[Any, ...]:
    usage = record.usage
    return (record.metrics.duration_ms, usage.input_tokens, usage.output_tokens,
            usage.cache_creation_input_tokens, usage.cache_read_input_tokens, record.cost_usd)


def time_bucket_seconds(span_seconds: float, target_buckets: int = 48) -> int:
    """The smallest round bucket size that cuts `span_seconds` into at most `target_buckets` buckets."""
    for size in _TIME_BUCKETS_S:
        if span_seconds / size <= target_buckets:
            return size
    return _TIME_BUCKETS_S[-1]


def record_json(record: Record) -> str:
    """The one serialisation of a record that leaves memory: keys masked wherever they appear."""
    return mask_text(record.model_dump_json(by_alias=True))


def _search_text(record: Record) -> str:
    """What `q` searches: the prompt's text and the answer's text, lower-cased."""
    parts: list[str] = []
    body = record.request.body
    if isinstance(body, dict):
        parts.extend(_texts(body.get("system")))
        for message in body.get("messages") or []:
            if isinstance(message, dict):
                parts.extend(_texts(message.get("content")))
    if record.message:
        parts.extend(_texts(record.message.get("content")))
    return mask_text("\n".join(parts)).lower()


def _texts(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                for key in ("text", "thinking"):
                    if isinstance(block.get(key), str):
                        yield block[key]
                if "content" in block:
                    yield from _texts(block["content"])


class Store:
    """SQLite store. `put` never blocks; every other method is a synchronous read or admin call."""

    def __init__(self, state_dir: Path, *, max_records: int = 50_000, retention_days: float = 30,
                 busy_timeout: float = 30) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        self.max_records = max_records
        self.retention_days = retention_days
        self.busy_timeout = busy_timeout  # how long a write waits for another process's lock
        self.write_errors = 0  # failed write attempts
        self.last_write_error: str | None = None  # set while writes fail
        self.unsaved = 0  # records waiting in memory for a write that works
        self.lost = 0  # records dropped because writes failed for too long
        self._queue: queue.Queue[Any] = queue.Queue()
        with self._connect() as db:
            self._migrate(db)
            self._close_orphans(db)
        self._writer = threading.Thread(target=self._write_loop, name="anthropic-proxy-store", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(_MIGRATIONS):
            raise RuntimeError(f"store schema v{version} is newer than this anthropic-proxy supports")
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    @staticmethod
    def _close_orphans(db: sqlite3.Connection) -> None:
        """Records a crashed run left `pending` can never finish now: end them with the reason."""
        rows = db.execute("SELECT id, data FROM records WHERE status = 'pending'").fetchall()
        for record_id, data in rows:
            record = Record.model_validate_json(data)
            record.status = "error"
            record.error = record.error or RecordError(
                type="proxy_stopped", message="the proxy stopped before this exchange finished")
            db.execute("UPDATE records SET status = 'error', summary = ?, data = ? WHERE id = ?",
                       (json.dumps(record.summary()), record_json(record), record_id))

    # --- writing -------------------------------------------------------------------------------

    def put(self, record: Record) -> None:
        """Queue an insert-or-replace; the latest put of a record wins."""
        self._queue.put(record)

    def flush(self, timeout: float = 10) -> None:
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._writer.join(timeout=30)

    def _write_loop(self) -> None:
        db = self._connect()
        writes = 0
        unsaved: dict[str, Record] = {}  # records whose write failed (disk full, database locked): retried
        while True:
            try:
                batch = [self._queue.get(timeout=_RETRY_SECONDS if unsaved else None)]
            except queue.Empty:
                batch = []
            while not self._queue.empty() and len(batch) < 256:
                batch.append(self._queue.get_nowait())
            for item in batch:
                if isinstance(item, Record):
                    unsaved.pop(item.id, None)
                    unsaved[item.id] = item  # the latest put of a record wins
            if unsaved:
                written = self._write(db, list(unsaved.values()))
                if written:
                    writes += len(unsaved)
                    unsaved.clear()
                    if writes >= _PRUNE_EVERY:
                        writes = 0
                        self._prune(db)
                self._keep_within(unsaved)
            self.unsaved = len(unsaved)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is _STOP for item in batch):
                if unsaved:
                    logger.error("store: %d record(s) could not be written to %s before shutdown",
                                 len(unsaved), self.path)
                db.close()
                return

    def _keep_within(self, unsaved: dict[str, Record]) -> None:
        """Memory is the last resort while the disk refuses writes: keep the newest, count what is dropped."""
        while len(unsaved) > _MAX_UNSAVED:
            unsaved.pop(next(iter(unsaved)))
            self.lost += 1
            if self.lost == 1 or self.lost % 1000 == 0:
                logger.error("store: %d record(s) lost: %s kept refusing writes", self.lost, self.path)

    def _write(self, db: sqlite3.Connection, records: list[Record]) -> bool:
        rows = [
            (r.id, r.timestamp.timestamp(), r.status, r.provider, r.model, r.session_id, _search_text(r),
             mask_text(json.dumps(r.summary())), record_json(r), *_metric_values(r))
            for r in records
        ]
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO records "
                           "(id, ts, status, provider, model, session, search, summary, data, "
                           + ", ".join(_METRIC_COLUMNS) + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?"
                           + ", ?" * len(_METRIC_COLUMNS) + ")", rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # a full disk can refuse even this
                    db.execute("ROLLBACK")
            self.write_errors += 1
            if self.last_write_error is None:  # log a failure streak once, not at every retry
                logger.error("store: writing to %s failed (%s); keeping %d record(s) in memory and retrying",
                             self.path, exc, len(rows))
            self.last_write_error = str(exc)
            return False
        if self.last_write_error is not None:
            logger.warning("store: writing to %s works again", self.path)
            self.last_write_error = None
        return True

    def _prune(self, db: sqlite3.Connection) -> None:
        cutoff = time.time() - self.retention_days * 86400
        db.execute("DELETE FROM records WHERE ts < ?", (cutoff,))
        db.execute("DELETE FROM records WHERE id IN (SELECT id FROM records ORDER BY ts DESC LIMIT -1 OFFSET ?)",
                   (self.max_records,))

    # --- reading -------------------------------------------------------------------------------

    def get(self, record_id: str) -> Record | None:
        with self._reader() as db:
            row = db.execute("SELECT data FROM records WHERE id = ?", (record_id,)).fetchone()
        return Record.model_validate_json(row[0]) if row else None

    def query(self, flt: RecordFilter, *, page: int = 1, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
        """Summaries of one page of matching records, newest first, and the count of all matches."""
        where, params = flt.where()
        with self._reader() as db:
            total = db.execute(f"SELECT count(*) FROM records{where}", params).fetchone()[0]
            rows = db.execute(f"SELECT summary FROM records{where} ORDER BY ts DESC LIMIT ? OFFSET ?",
                              [*params, limit, (page - 1) * limit]).fetchall()
        return [json.loads(row[0]) for row in rows], total

    def iter_records(self, flt: RecordFilter) -> Iterator[Record]:
        """Every matching record, oldest first, read in batches (exports stream from this)."""
        where, params = flt.where()
        last_ts, last_id = float("-inf"), ""
        while True:
            with self._reader() as db:
                cursor_where = (where + " AND" if where else " WHERE") + " (ts, id) > (?, ?)"
                rows = db.execute(f"SELECT ts, id, data FROM records{cursor_where} ORDER BY ts, id LIMIT 200",
                                  [*params, last_ts, last_id]).fetchall()
            if not rows:
                return
            for ts, record_id, data in rows:
                last_ts, last_id = ts, record_id
                yield Record.model_validate_json(data)

    def aggregate(self, flt: RecordFilter, *, now: float | None = None) -> dict[str, Any]:
        """Totals, latency percentiles, tokens, cost, and chart series over ALL records matching `flt`.

        Every figure is an SQL aggregate over the indexed metric columns (schema v2); nothing is
        parsed per row, so 10,000 records cost a few milliseconds.
        """
        where, params = flt.where()
        now = time.time() if now is None else now
        with self._reader() as db:
            # One pass over the matching rows (a covering index when unfiltered), then every figure
            # from that narrow copy: a text search (`q`) scans the big rows once, not once per figure.
            db.execute("CREATE TEMP TABLE sel AS SELECT ts, status, model, " + ", ".join(_METRIC_COLUMNS)
                       + f" FROM records{where}", params)
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
                 "outputTokens": int(o), "cacheTokens": int(c), "costUsd": round(k, 6)}
                for b, n, e, i, o, c, k in db.execute(
                    "SELECT CAST(ts / ? AS INTEGER) AS b, count(*), total(status = 'error'), total(input_tokens), "
                    "total(output_tokens), total(cache_creation_tokens + cache_read_tokens), total(cost_usd) "
                    "FROM sel GROUP BY b ORDER BY b", (bucket,))
            ]
            by_model = [
                {"model": m, "requests": n, "costUsd": round(k, 6), "inputTokens": int(i), "outputTokens": int(o)}
                for m, n, k, i, o in db.execute(
                    "SELECT coalesce(model, '(none)'), count(*), total(cost_usd), total(input_tokens), "
                    "total(output_tokens) FROM sel GROUP BY 1 ORDER BY 3 DESC, 2 DESC")
            ]
            case = " ".join(f"WHEN duration_ms < {edge} THEN {n}" for n, edge in enumerate(LATENCY_BUCKETS_MS))
            counts = dict(db.execute(
                f"SELECT CASE {case} ELSE {len(LATENCY_BUCKETS_MS)} END AS b, count(*) "
                "FROM sel WHERE duration_ms IS NOT NULL GROUP BY b").fetchall())
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
            "costUsd": round(cost, 6), "costedRequests": costed,
            "firstTs": first_ts, "lastTs": last_ts,
            "timeline": {"bucketSeconds": bucket, "points": timeline},
            "byModel": by_model, "latencyHistogram": latency,
        }

    def analyze(self, flt: RecordFilter, *, top: int = 5) -> dict[str, Any]:
        """Errors by type and the slowest exchanges among the records matching `flt`."""
        where, params = flt.where()
        error_where = (where + " AND" if where else " WHERE") + " status = 'error'"
        timed_where = (where + " AND" if where else " WHERE") + " duration_ms IS NOT NULL"
        with self._reader() as db:
            errors = [{"type": t or "unknown", "count": n} for t, n in db.execute(
                f"SELECT json_extract(summary, '$.error.type') AS t, count(*) FROM records{error_where} "
                "GROUP BY t ORDER BY 2 DESC", params)]
            slowest = [json.loads(s) for (s,) in db.execute(
                f"SELECT summary FROM records{timed_where} ORDER BY duration_ms DESC LIMIT ?", [*params, top])]
        return {"errorsByType": errors, "slowest": slowest}

    def facets(self) -> dict[str, list[str]]:
        """The distinct models and providers in the store (filter choices), from their indexes."""
        with self._reader() as db:
            models = [m for (m,) in db.execute("SELECT DISTINCT model FROM records WHERE model IS NOT NULL "
                                               "ORDER BY model")]
            providers = [p for (p,) in db.execute("SELECT DISTINCT provider FROM records ORDER BY provider")]
        return {"models": models, "providers": providers}

    def stats(self) -> dict[str, Any]:
        with self._reader() as db:
            count = db.execute("SELECT count(*) FROM records").fetchone()[0]
        size = sum(p.stat().st_size for p in self.path.parent.glob(DB_NAME + "*") if p.exists())
        return {"path": str(self.path), "records": count, "bytes": size, "writeErrors": self.write_errors,
                "lastWriteError": self.last_write_error, "unsaved": self.unsaved, "lost": self.lost,
                "queued": self._queue.qsize()}

    def clear(self) -> int:
        self.flush()
        with self._reader() as db:
            return db.execute("DELETE FROM records").rowcount

    def _reader(self) -> _ClosingConnection:
        return _ClosingConnection(self._connect())


class _ClosingConnection:
    """`with store._reader() as db:` closes the connection afterwards (sqlite3's own context manager doesn't)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        return self._db

    def __exit__(self, *exc: object) -> None:
        self._db.close()

