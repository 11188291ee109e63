"""The shared, durable record store (SQLite, or PostgreSQL for a team): written off the proxy's hot path, read by
everyone else.

Writes go to a writer process of its own (`store_writer.py`), so no client ever waits for the disk and the
proxy's GIL does not pay for it; how a record becomes rows is `store_rows.py`. Reads open their own connection
(WAL lets them run beside the writer); async callers run them with `asyncio.to_thread`.

Bodies without the quadratic repetition (schema v3): Claude Code resends the whole conversation on every
call, so a record's body is cut into content-addressed pieces (`bodies.split`: system, tools, each message):

    records(..., data, refs)   data: the record's masked JSON with the pieces replaced by null;
                               refs: JSON {slot: {key: blob id | last node id}} (NULL: a v2 row, data is whole)
    blobs(id, data)            one row per distinct piece (canonical masked JSON; id = its hash)
    nodes(id, parent, blob)    message chains: node i = (node i-1, message i), so lists sharing a prefix share
                               its nodes and a new turn adds one node per new message
    record_refs(record_id, ref)  which blobs and nodes each record uses directly (what keeps them alive)

A write adds only the pieces the store does not have yet (nodes are found by a binary search along the chain:
an existing node's ancestors always exist). Deleting records (retention, clear, a replaced record) collects
what they referenced: a node is removed when no record and no child node uses it (then its parent is looked
at), a blob when no record and no node uses it. `get` and `iter_records` reassemble the exact record
(`record_json` equal, byte for byte). Rows of a v2 database stay readable as they were; the writer rewrites
them in the new form, a few at a time, whenever it has nothing else to do.

Two databases (`dialects.py`): SQLite in the state dir (the default), or PostgreSQL (`store_url`), where several
proxy instances write one database and each web app shows all their records. The logic here is shared; the
dialect supplies the connection, migrations, write locking and the few expressions spelled differently. Every
record carries its writer's instance id (`owner`). On PostgreSQL an instance announces itself in `instances`
(refreshed every half minute) and at start-up closes only the `pending` records no live instance owns: those of
its own predecessor (same host and state dir) and of instances silent for five minutes. SQLite serves one proxy
per state dir: at start-up all its `pending` records are orphans.

Search (`q`): the `search` column holds what is *new* in each record, lower-cased and masked: the text of the
messages this call added to its conversation (`bodies.new_turn`: the latest user turn, with its tool results)
and of the answer. A record is found by its own prompt and its answer; the history it repeats and the system
prompt are not searched (they would make every later record of the session match, at quadratic cost).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from anthropic_proxy.record import bodies
from anthropic_proxy.record.call_end import CallEnds
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.derive import to_record
from anthropic_proxy.record.masking import mask_text
from anthropic_proxy.record.model import CacheBreak, Record, RecordError
from anthropic_proxy.record.pricing import PRICES_FILE, PriceBook, savings_for_tokens
from anthropic_proxy.store import writer as store_writer
from anthropic_proxy.store.dialects import DB_NAME, SQLITE_MIGRATIONS, Connection, Dialect, dialect_for
from anthropic_proxy.store.rows import METRIC_COLUMNS, RowWriter, prepare
from anthropic_proxy.store.writer import WriterProcess, WriterSettings
from anthropic_proxy.telemetry.tracing import TraceConfig

logger = logging.getLogger("anthropic_proxy.store")

__all__ = ["DB_NAME", "RecordFilter", "Store", "StoreCorrupt", "parse_time_range", "record_json"]

_STALE_SECONDS = 300.0  # an instance silent this long is gone: its pending records are orphans


@dataclass(frozen=True, slots=True)
class RecordFilter:
    status: str | None = None
    model: str | None = None
    provider: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    session: str | None = None
    q: str | None = None

    def where(self, search: str = Dialect.search) -> tuple[str, list[Any]]:
        """The SQL condition (`?` placeholders) and its parameters; `search`: the dialect's text match."""
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
            clauses.append(search)
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


_MIGRATIONS = SQLITE_MIGRATIONS  # (the name older tests and tools know)

# Latency histogram buckets (upper bounds, ms); the last bucket is open-ended.
LATENCY_BUCKETS_MS = (250, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000)
_TIME_BUCKETS_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


def time_bucket_seconds(span_seconds: float, target_buckets: int = 48) -> int:
    """The smallest round bucket size that cuts `span_seconds` into at most `target_buckets` buckets."""
    for size in _TIME_BUCKETS_S:
        if span_seconds / size <= target_buckets:
            return size
    return _TIME_BUCKETS_S[-1]


def record_json(record: Record) -> str:
    """The one serialisation of a record that leaves memory: keys masked wherever they appear."""
    try:
        return mask_text(record.model_dump_json(by_alias=True))
    except ValueError:  # a lone surrogate ("\\ud800" in the client's JSON) cannot be UTF-8: escape it
        return mask_text(json.dumps(record.model_dump(mode="json", by_alias=True), separators=(",", ":")))


_CHAIN = """
    WITH RECURSIVE chain(id, parent, blob, depth) AS (
        SELECT id, parent, blob, 0 FROM nodes WHERE id = ?
        UNION ALL SELECT nodes.id, nodes.parent, nodes.blob, chain.depth + 1
        FROM nodes JOIN chain ON nodes.id = chain.parent WHERE chain.depth + 1 < ?
    )
    SELECT chain.parent, blobs.data FROM chain LEFT JOIN blobs ON blobs.id = chain.blob ORDER BY chain.depth DESC
"""


class StoreCorrupt(RuntimeError):
    """A stored record refers to a piece the database no longer has."""


class Store:
    """The record store. `put` never blocks; every other method is a synchronous read or admin call.

    `url`: empty for SQLite in `state_dir`, or `postgresql://...` (see `dialects.py`).
    `close_orphans=False` opens a store without ending any `pending` record and without announcing itself as
    an instance (the `export`/`import` commands, which run beside a proxy)."""

    def __init__(self, state_dir: Path, *, url: str = "", max_records: int = 50_000, retention_days: float = 30,
                 busy_timeout: float = 30, close_orphans: bool = True) -> None:
        self.dialect = dialect_for(state_dir, url, busy_timeout=busy_timeout)
        self.state_dir, self.url = state_dir, url
        if not url:
            state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dialect.path  # the SQLite file (None for PostgreSQL)
        self.location = self.dialect.location  # for logs and /health: the file, or the URL without password
        # Who writes: one id per run; `name` is the same for this host and state dir across restarts.
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.instance_name = f"{socket.gethostname()}:{state_dir.expanduser().resolve()}"
        self._announced = close_orphans and self.dialect.shared  # in `instances`, with heartbeats
        self.max_records = max_records
        self.retention_days = retention_days
        self.busy_timeout = busy_timeout  # how long a write waits for another process's lock
        self.prices = PriceBook(state_dir / PRICES_FILE)  # the proxy's too (Runtime.prices), and its writer's
        self.rows = RowWriter(self.dialect, self.prices)
        self._writer: WriterProcess | None = None  # started by the first put (the proxy's store: at once)
        self.call_ends = CallEnds()  # each call's final facts, as the writer reads them (call_end.py)
        self.tracing: TraceConfig | None = None  # the writer makes a span per call (tracing.py)
        with self._connect() as db:
            self.dialect.migrate(db)
            if close_orphans:
                self._close_orphans(db)
            self._legacy = db.execute("SELECT 1 FROM records WHERE refs IS NULL LIMIT 1").fetchone() is not None
        if close_orphans:  # a proxy's store: its writer also beats the heartbeat and rewrites v2 rows when idle
            self._writer_process()

    def _connect(self) -> Connection:
        return self.dialect.connect()

    def _close_orphans(self, db: Connection) -> None:
        """Records a crashed run left `pending` can never finish now: end them with the reason. Only those no
        live instance owns: this one's predecessor's (same name), a silent instance's, or nobody's (v3 rows).
        On a shared database, then announce this instance, in the same transaction (two instances starting at
        once do not close each other's records). SQLite announces nothing: its pending records are all orphans."""
        shared = self.dialect.shared
        if shared:
            db.begin_write()
        try:
            now = time.time()
            rows = db.execute(
                "SELECT data, refs FROM records WHERE status = 'pending' AND (owner IS NULL OR owner NOT IN "
                "(SELECT id FROM instances WHERE seen >= ? AND name <> ?))",
                (now - _STALE_SECONDS, self.instance_name)).fetchall()
            orphans: list[Record] = []
            for row in rows:
                record = self._load(db, *row)
                record.status = "error"
                record.error = record.error or RecordError(
                    type="proxy_stopped", message="the proxy stopped before this exchange finished")
                orphans.append(record)
            if orphans and not shared:
                db.begin_write()
            self.rows.store(db, [prepare(r, self.instance_id) for r in orphans])
            if shared:
                db.execute("DELETE FROM instances WHERE seen < ? OR name = ?",
                           (now - _STALE_SECONDS, self.instance_name))
                db.execute(self.rows.announce, (self.instance_id, self.instance_name, now))
            if db.in_transaction:
                db.commit()
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise

    # --- writing -------------------------------------------------------------------------------

    def put(self, item: Record | Capture) -> None:
        """Queue an insert-or-replace; the latest put of a record wins. `get` sees it at once.

        A call's capture (`record/capture.py`) goes to the writer as its raw facts, and its record is derived there
        (`derive.to_stored`); a record goes as it is. A running call's capture is kept as it is, not copied, while
        its exchange goes on filling it: `get` then shows its record as it is now, and the writer's sender encodes
        it if the call still runs `PENDING_DELAY` later; a newer put supersedes it."""
        self._writer_process().put(item)

    def configure_tracing(self, config: TraceConfig | None) -> None:
        """An OpenTelemetry span per call from now on, made by the writer process (None: none)."""
        self.tracing = config
        if self._writer is not None:
            self._writer.configure_tracing(config)

    def flush(self, timeout: float = 10) -> None:
        """Wait until the writer has tried to write everything put so far (bounded by `timeout`)."""
        if self._writer is not None:
            self._writer.flush(timeout)

    def _settle(self) -> None:
        """Before a read over many records: let the writer finish what was put, so a list or a figure never
        lags a record that `get` already shows final. Bounded: a failing disk must not hang a page."""
        if self._writer is not None and self._writer.queued:
            self.flush(timeout=2)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _writer_process(self) -> WriterProcess:
        if self._writer is None:
            settings = WriterSettings(
                state_dir=self.state_dir, url=self.url, busy_timeout=self.busy_timeout,
                instance_id=self.instance_id, instance_name=self.instance_name, announced=self._announced,
                legacy=self._legacy, prune_every=store_writer.PRUNE_EVERY,
                heartbeat_seconds=store_writer.HEARTBEAT_SECONDS, trace=self.tracing)
            self._writer = WriterProcess(settings, lambda: (self.max_records, self.retention_days),
                                         on_ends=self.call_ends.deliver)
        return self._writer

    # The writer's counters (0 / None before the first put): /health and `stats` show them.
    @property
    def write_errors(self) -> int:
        """Failed write attempts."""
        return self._writer.write_errors if self._writer else 0

    @property
    def last_write_error(self) -> str | None:
        """Set while writes fail."""
        return self._writer.last_write_error if self._writer else None

    @property
    def unsaved(self) -> int:
        """Records waiting in the writer's memory for a write that works."""
        return self._writer.unsaved if self._writer else 0

    @property
    def lost(self) -> int:
        """Records dropped: writes failed for too long, or they could not be serialised."""
        return self._writer.lost if self._writer else 0

    @property
    def queued(self) -> int:
        """Records put and not yet written."""
        return len(self._writer.queued) if self._writer else 0

    @property
    def writer_restarts(self) -> int:
        """Writer processes that died and were replaced."""
        return self._writer.restarts if self._writer else 0

    def import_records(self, records: Iterable[Record]) -> dict[str, int]:
        """Add records in ONE transaction: all of them or, if `records` raises (bad input), none.

        A record whose id is already stored is skipped (importing the same file twice changes nothing).
        Returns `{"records", "imported", "skipped"}` counts."""
        self.flush()
        seen = imported = 0
        batch: list[Record] = []
        with self._reader() as db:
            db.begin_write()
            try:
                for record in records:
                    seen += 1
                    batch.append(record)
                    if len(batch) >= 64:
                        imported += self._import_batch(db, batch)
                        batch.clear()
                imported += self._import_batch(db, batch)
                db.commit()
            except BaseException:
                db.rollback()
                raise
        return {"records": seen, "imported": imported, "skipped": seen - imported}

    def _import_batch(self, db: Connection, batch: list[Record]) -> int:
        fresh: dict[str, Record] = {}
        for record in batch:
            if record.id not in fresh and not db.execute("SELECT 1 FROM records WHERE id = ?",
                                                         (record.id,)).fetchone():
                fresh[record.id] = record
        self.rows.store(db, [prepare(r, self.instance_id) for r in fresh.values()])
        return len(fresh)

    # --- reading -------------------------------------------------------------------------------

    @staticmethod
    def _load(db: Connection, data: str, refs: str | None, cache_break: str | None = None, *,
              tail: int | None = None) -> Record:
        """A stored row as the record it is, with the cache break the store explained (`cache_break.py`).
        `tail`: only the last `tail` messages of each message list, and no system prompt or tools (a session's
        turns: what each call added is at the end; its history is in the calls before it)."""
        record = Store._assemble(db, data, refs, tail)
        record.cache_break = CacheBreak.model_validate_json(cache_break) if cache_break else None
        return record

    @staticmethod
    def _assemble(db: Connection, data: str, refs: str | None, tail: int | None = None) -> Record:
        if refs is None:  # a v2 row: the whole record
            return Record.model_validate_json(data)

        def blob(ref: str) -> Any:
            if tail is not None:
                return None
            row = db.execute("SELECT data FROM blobs WHERE id = ?", (ref,)).fetchone()
            if row is None:
                raise StoreCorrupt(f"record piece {ref} is missing from {DB_NAME}")
            return json.loads(row[0])

        def messages(leaf: str) -> list[Any]:
            rows = db.execute(_CHAIN, (leaf, tail or 2**62)).fetchall()
            whole = tail is None or len(rows) < tail
            if not rows or (whole and rows[0][0] is not None) or any(text is None for _, text in rows):
                raise StoreCorrupt(f"message chain {leaf} is incomplete in {DB_NAME}")
            return [json.loads(text) for _, text in rows]

        return Record.model_validate(bodies.assemble(json.loads(data), json.loads(refs), blob, messages))

    def get(self, record_id: str) -> Record | None:
        if self._writer is not None and (queued := self._writer.pending(record_id)) is not None:
            # newer than the database until written: a call's record is derived from its capture, as the writer will
            return to_record(queued, self.prices) if isinstance(queued, Capture) else queued.model_copy()
        with self._reader() as db:
            row = db.execute("SELECT data, refs, cache_break FROM records WHERE id = ?", (record_id,)).fetchone()
            return self._load(db, *row) if row else None

    def query(self, flt: RecordFilter, *, page: int = 1, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
        """Summaries of one page of matching records, newest first, and the count of all matches."""
        self._settle()
        where, params = flt.where(self.dialect.search)
        with self._reader() as db:
            total = db.execute(f"SELECT count(*) FROM records{where}", params).fetchone()[0]
            rows = db.execute(f"SELECT summary, cache_break FROM records{where} ORDER BY ts DESC LIMIT ? OFFSET ?",
                              [*params, limit, (page - 1) * limit]).fetchall()
        return [{**json.loads(summary), "cacheBreak": json.loads(found) if found else None}
                for summary, found in rows], total

    def iter_records(self, flt: RecordFilter, *, tail: int | None = None) -> Iterator[Record]:
        """Every matching record, oldest first, read in batches (exports stream from this). `tail`: see `_load`."""
        self._settle()
        where, params = flt.where(self.dialect.search)
        last_ts, last_id = float("-inf"), ""
        while True:
            with self._reader() as db:
                cursor_where = (where + " AND" if where else " WHERE") + " (ts, id) > (?, ?)"
                rows = db.execute(f"SELECT ts, id, data, refs, cache_break FROM records{cursor_where} "
                                  "ORDER BY ts, id LIMIT 50", [*params, last_ts, last_id]).fetchall()
                if not rows:
                    return
                loaded = [self._load(db, *row[2:], tail=tail) for row in rows]
            last_ts, last_id = rows[-1][0], rows[-1][1]
            yield from loaded

    def aggregate(self, flt: RecordFilter, *, now: float | None = None, book: PriceBook | None = None,
                  sessions: int = 20) -> dict[str, Any]:
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
        self._settle()
        where, params = flt.where(self.dialect.search)
        now = time.time() if now is None else now
        with self._reader() as db:
            # One pass over the matching rows (a covering index when unfiltered), then every figure
            # from that narrow copy: a text search (`q`) scans the big rows once, not once per figure.
            self.dialect.select_into_sel(db, "ts, status, provider, model, " + ", ".join(METRIC_COLUMNS)
                                         + f", {self.dialect.utc_day('ts')} AS day", where, params)
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
                    f"SELECT {self.dialect.floor('ts / ?')} AS b, count(*), total(status = 'error'), "
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

    def analyze(self, flt: RecordFilter, *, top: int = 5) -> dict[str, Any]:
        """Errors by type and the slowest exchanges among the records matching `flt`."""
        where, params = flt.where(self.dialect.search)
        error_where = (where + " AND" if where else " WHERE") + " status = 'error'"
        timed_where = (where + " AND" if where else " WHERE") + " duration_ms IS NOT NULL"
        with self._reader() as db:
            errors = [{"type": t or "unknown", "count": n} for t, n in db.execute(
                f"SELECT {self.dialect.json_text('summary', 'error', 'type')} AS t, count(*) FROM records{error_where} "
                "GROUP BY t ORDER BY 2 DESC", params)]
            slowest = [json.loads(s) for (s,) in db.execute(
                f"SELECT summary FROM records{timed_where} ORDER BY duration_ms DESC LIMIT ?", [*params, top])]
        return {"errorsByType": errors, "slowest": slowest}

    def ratelimit_headers(self, flt: RecordFilter, *, limit: int = 2000) -> list[tuple[float, str, dict[str, Any]]]:
        """(timestamp, id, response headers) of the newest `limit` matching records, oldest first: what
        `ratelimits.report` reads (from the summaries, which keep the headers)."""
        self._settle()
        where, params = flt.where(self.dialect.search)
        with self._reader() as db:
            rows = db.execute(f"SELECT ts, id, summary FROM records{where} ORDER BY ts DESC LIMIT ?",
                              [*params, limit]).fetchall()
        found = []
        for ts, record_id, summary in reversed(rows):
            response = json.loads(summary).get("response") or {}
            if headers := response.get("headers"):
                found.append((ts, record_id, headers))
        return found

    def facets(self) -> dict[str, list[str]]:
        """The distinct models and providers in the store (filter choices), from their indexes."""
        with self._reader() as db:
            models = [m for (m,) in db.execute("SELECT DISTINCT model FROM records WHERE model IS NOT NULL "
                                               "ORDER BY model")]
            providers = [p for (p,) in db.execute("SELECT DISTINCT provider FROM records ORDER BY provider")]
        return {"models": models, "providers": providers}

    def stats(self) -> dict[str, Any]:
        """The store's figures and state; never raises for a database that cannot be read (`readError` says why)."""
        writer = self._writer
        count = size = read_error = None
        try:
            with self._reader() as db:
                count = db.execute("SELECT count(*) FROM records").fetchone()[0]
                size = self.dialect.size(db)
        except (*self.dialect.errors, OSError) as exc:
            read_error = mask_text(self.dialect.scrub(str(exc)))
        return {"path": self.location, "backend": self.dialect.name, "records": count, "bytes": size,
                "readError": read_error, "writeErrors": self.write_errors, "lastWriteError": self.last_write_error,
                "unsaved": self.unsaved, "lost": self.lost, "queued": self.queued,
                "writerRestarts": self.writer_restarts, "notice": writer.notice if writer else None,
                "threadRestarts": writer.thread_restarts if writer else 0,
                "lastThreadError": writer.last_thread_error if writer else None}

    def clear(self) -> int:
        self.flush()
        with self._reader() as db:
            db.begin_write()
            try:
                deleted = db.execute("DELETE FROM records").rowcount
                for table in ("record_refs", "nodes", "blobs"):
                    db.execute(f"DELETE FROM {table}")
                db.commit()
            except BaseException:
                db.rollback()
                raise
        return deleted

    def _reader(self) -> Connection:
        """A connection for one read (or admin call); `with` closes it."""
        return self._connect()


# ---- breakdowns (`aggregate`) -------------------------------------------------------------------------------
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

