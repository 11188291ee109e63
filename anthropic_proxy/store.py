"""The shared, durable record store (SQLite): written off the proxy's hot path, read by everyone else.

Writes go through a queue to one writer thread, so no client ever waits for the disk. Reads open their
own connection (WAL lets them run beside the writer); async callers run them with `asyncio.to_thread`.

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

Search (`q`): the `search` column holds what is *new* in each record, lower-cased and masked: the text of the
messages this call added to its conversation (`bodies.new_turn`: the latest user turn, with its tool results)
and of the answer. A record is found by its own prompt and its answer; the history it repeats and the system
prompt are not searched (they would make every later record of the session match, at quadratic cost).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import bodies
from .masking import mask_text
from .pricing import PriceBook, savings_for_tokens
from .record import Record, RecordError

logger = logging.getLogger("anthropic_proxy.store")

DB_NAME = "records.sqlite3"
_STOP = object()
_PRUNE_EVERY = 500  # writes between two retention passes
_BATCH_SECONDS = 0.05  # how long the writer waits for more records after the first
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
    # v3: bodies cut into content-addressed pieces (see the module docstring). v2 rows keep refs NULL.
    """
    ALTER TABLE records ADD COLUMN refs TEXT;
    CREATE INDEX records_legacy ON records(ts) WHERE refs IS NULL;
    CREATE TABLE blobs (id TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE nodes (id TEXT PRIMARY KEY, parent TEXT, blob TEXT NOT NULL) WITHOUT ROWID;
    CREATE INDEX nodes_parent ON nodes(parent);
    CREATE INDEX nodes_blob ON nodes(blob);
    CREATE TABLE record_refs (record_id TEXT NOT NULL, ref TEXT NOT NULL, PRIMARY KEY (record_id, ref))
        WITHOUT ROWID;
    CREATE INDEX record_refs_ref ON record_refs(ref);
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
    try:
        return mask_text(record.model_dump_json(by_alias=True))
    except ValueError:  # a lone surrogate ("\\ud800" in the client's JSON) cannot be UTF-8: escape it
        return mask_text(json.dumps(record.model_dump(mode="json", by_alias=True), separators=(",", ":")))


def _search_text(record: Record) -> str:
    """What `q` searches: the text this call added to its conversation (its latest turn) and the answer's
    text, lower-cased and masked. Bounded per record: the resent history is not repeated here."""
    parts: list[str] = []
    body = record.request.body
    if isinstance(body, dict):
        messages = body.get("messages")
        for message in bodies.new_turn(messages) if isinstance(messages, list) else ():
            if isinstance(message, dict):
                parts.extend(bodies.iter_texts(message.get("content")))
    elif isinstance(body, str):
        parts.append(body[:10_000])
    if record.message:
        parts.extend(bodies.iter_texts(record.message.get("content")))
    return _utf8(mask_text("\n".join(parts)).lower())


def _utf8(text: str | None) -> str | None:
    """Text SQLite can store: a lone surrogate (valid in a JSON escape, not in UTF-8) becomes '?'."""
    if text is None or text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


_RECORD_COLUMNS = ("id", "ts", "status", "provider", "model", "session", "search", "summary", "data", "refs",
                   *_METRIC_COLUMNS)
_INSERT = (f"INSERT OR REPLACE INTO records ({', '.join(_RECORD_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_RECORD_COLUMNS))})")
_CHAIN = """
    WITH RECURSIVE chain(id, parent, blob, depth) AS (
        SELECT id, parent, blob, 0 FROM nodes WHERE id = ?
        UNION ALL SELECT nodes.id, nodes.parent, nodes.blob, chain.depth + 1
        FROM nodes JOIN chain ON nodes.id = chain.parent
    )
    SELECT chain.parent, blobs.data FROM chain LEFT JOIN blobs ON blobs.id = chain.blob ORDER BY chain.depth DESC
"""


@dataclass(slots=True)
class _Prepared:
    """A record made ready for the database (done outside the write transaction)."""

    record_id: str
    row: tuple[Any, ...]
    split: bodies.Split


def _prepare(record: Record) -> _Prepared:
    split = bodies.split(record.model_dump(mode="json", by_alias=True))
    row = (record.id, record.timestamp.timestamp(), record.status, record.provider, _utf8(record.model),
           _utf8(record.session_id), _search_text(record), mask_text(json.dumps(record.summary())), split.skeleton,
           json.dumps(split.refs, separators=(",", ":")), *_metric_values(record))
    return _Prepared(record.id, row, split)


class StoreCorrupt(RuntimeError):
    """A stored record refers to a piece the database no longer has."""


class Store:
    """SQLite store. `put` never blocks; every other method is a synchronous read or admin call.

    `close_orphans=False` opens a store without ending the `pending` records of another process that may
    be running on the same state dir (the `export`/`import` commands)."""

    def __init__(self, state_dir: Path, *, max_records: int = 50_000, retention_days: float = 30,
                 busy_timeout: float = 30, close_orphans: bool = True) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        self.max_records = max_records
        self.retention_days = retention_days
        self.busy_timeout = busy_timeout  # how long a write waits for another process's lock
        self.write_errors = 0  # failed write attempts
        self.last_write_error: str | None = None  # set while writes fail
        self.unsaved = 0  # records waiting in memory for a write that works
        self.lost = 0  # records dropped because writes failed for too long (or could not be serialised)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._queued: dict[str, Record] = {}  # put but not yet written: `get` answers from here
        with self._connect() as db:
            self._migrate(db)
            if close_orphans:
                self._close_orphans(db)
            self._legacy = db.execute("SELECT 1 FROM records WHERE refs IS NULL LIMIT 1").fetchone() is not None
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

    def _close_orphans(self, db: sqlite3.Connection) -> None:
        """Records a crashed run left `pending` can never finish now: end them with the reason."""
        orphans: list[Record] = []
        for row in db.execute("SELECT data, refs FROM records WHERE status = 'pending'").fetchall():
            record = self._load(db, *row)
            record.status = "error"
            record.error = record.error or RecordError(
                type="proxy_stopped", message="the proxy stopped before this exchange finished")
            orphans.append(record)
        if orphans:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._store(db, [_prepare(r) for r in orphans])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # --- writing -------------------------------------------------------------------------------

    def put(self, record: Record) -> None:
        """Queue an insert-or-replace; the latest put of a record wins. `get` sees it at once."""
        self._queued[record.id] = record
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
            idle_work = self._legacy and not unsaved
            try:
                # Old rows are rewritten a few at a time with pauses between (the writer shares the GIL with the
                # proxy): about a tenth of one core until they are all done.
                batch = [self._queue.get(timeout=_RETRY_SECONDS if unsaved else 0.2 if idle_work else None)]
            except queue.Empty:
                batch = []
            self._gather(batch)
            if not batch and idle_work:
                self._upgrade_legacy(db)
                continue
            for item in batch:
                if isinstance(item, Record):
                    unsaved.pop(item.id, None)
                    unsaved[item.id] = item  # the latest put of a record wins
            if unsaved:
                written = self._write(db, list(unsaved.values()))
                if written:
                    writes += len(unsaved)
                    for record in unsaved.values():  # the database now has it, unless a newer put came
                        if self._queued.get(record.id) is record:
                            del self._queued[record.id]
                    unsaved.clear()
                    if writes >= min(_PRUNE_EVERY, max(1, self.max_records // 10)):
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

    def _gather(self, batch: list[Any]) -> None:
        """Wait a moment for more after the first record: a call's pending and final versions then usually
        arrive together and are written once, and the writer (which shares the GIL with the proxy) works
        after a call rather than during it. A flush or stop request ends the wait at once."""
        if not batch:
            return
        deadline = time.monotonic() + _BATCH_SECONDS
        while len(batch) < 256 and not isinstance(batch[-1], threading.Event) and batch[-1] is not _STOP:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                return

    def _keep_within(self, unsaved: dict[str, Record]) -> None:
        """Memory is the last resort while the disk refuses writes: keep the newest, count what is dropped."""
        while len(unsaved) > _MAX_UNSAVED:
            self._queued.pop(unsaved.pop(next(iter(unsaved))).id, None)
            self.lost += 1
            if self.lost == 1 or self.lost % 1000 == 0:
                logger.error("store: %d record(s) lost: %s kept refusing writes", self.lost, self.path)

    def _prepare_all(self, records: list[Record]) -> list[_Prepared]:
        prepared: list[_Prepared] = []
        for record in records:
            try:
                prepared.append(_prepare(record))
            except Exception:  # one record that cannot be serialised must not stop the writer
                self.lost += 1
                logger.exception("store: record %s cannot be stored", record.id)
        return prepared

    def _write(self, db: sqlite3.Connection, records: list[Record]) -> bool:
        prepared = self._prepare_all(records)
        try:
            db.execute("BEGIN IMMEDIATE")
            self._store(db, prepared)
            db.execute("COMMIT")
        except (ValueError, TypeError):  # a bug, not the disk: retrying would fail forever; keep the writer alive
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            self.lost += len(prepared)
            logger.exception("store: %d record(s) could not be stored", len(prepared))
            return True
        except sqlite3.Error as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # a full disk can refuse even this
                    db.execute("ROLLBACK")
            self.write_errors += 1
            if self.last_write_error is None:  # log a failure streak once, not at every retry
                logger.error("store: writing to %s failed (%s); keeping %d record(s) in memory and retrying",
                             self.path, exc, len(prepared))
            self.last_write_error = str(exc)
            return False
        if self.last_write_error is not None:
            logger.warning("store: writing to %s works again", self.path)
            self.last_write_error = None
        return True

    @staticmethod
    def _store(db: sqlite3.Connection, prepared: list[_Prepared]) -> None:
        """Insert or replace records with the pieces they add (inside the caller's transaction)."""
        garbage: set[str] = set()
        for item in prepared:
            split = item.split
            for keys in split.refs.values():
                for key, ref in keys.items():
                    if key != bodies.MESSAGES:
                        db.execute("INSERT OR IGNORE INTO blobs (id, data) VALUES (?, ?)", (ref, split.blobs[ref]))
            for chain in split.chains.values():
                # Nodes exist as a prefix of the chain (a node's ancestors always exist): binary search its end.
                lo, hi = 0, len(chain)  # chain[:lo] exists, chain[hi:] does not
                while lo < hi:
                    mid = (lo + hi) // 2
                    if db.execute("SELECT 1 FROM nodes WHERE id = ?", (chain[mid][0],)).fetchone():
                        lo = mid + 1
                    else:
                        hi = mid
                for node, parent, blob in chain[lo:]:
                    db.execute("INSERT OR IGNORE INTO blobs (id, data) VALUES (?, ?)", (blob, split.blobs[blob]))
                    db.execute("INSERT INTO nodes (id, parent, blob) VALUES (?, ?, ?)", (node, parent, blob))
            old = {ref for (ref,) in db.execute("SELECT ref FROM record_refs WHERE record_id = ?", (item.record_id,))}
            new = split.ref_ids()
            db.execute(_INSERT, item.row)
            if old != new:
                db.executemany("DELETE FROM record_refs WHERE record_id = ? AND ref = ?",
                               [(item.record_id, ref) for ref in old - new])
                db.executemany("INSERT INTO record_refs (record_id, ref) VALUES (?, ?)",
                               [(item.record_id, ref) for ref in new - old])
                garbage |= old - new
        if garbage:
            _collect(db, garbage)

    def _upgrade_legacy(self, db: sqlite3.Connection, count: int = 8) -> None:
        """Rewrite a few v2 rows (whole bodies) in the v3 form; clears `_legacy` when none are left."""
        try:
            rows = db.execute("SELECT data FROM records WHERE refs IS NULL ORDER BY ts LIMIT ?", (count,)).fetchall()
            if not rows:
                self._legacy = False
                return
            prepared = self._prepare_all([Record.model_validate_json(data) for (data,) in rows])
            db.execute("BEGIN IMMEDIATE")
            self._store(db, prepared)
            db.execute("COMMIT")
        except Exception as exc:  # try again when the writer is next idle; never lose the row
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            logger.warning("store: rewriting old records failed (%s); will retry", exc)
            time.sleep(_RETRY_SECONDS)

    def _prune(self, db: sqlite3.Connection) -> None:
        cutoff = time.time() - self.retention_days * 86400
        ids = [i for (i,) in db.execute("SELECT id FROM records WHERE ts < ?", (cutoff,))]
        ids += [i for (i,) in db.execute("SELECT id FROM records WHERE ts >= ? ORDER BY ts DESC LIMIT -1 OFFSET ?",
                                         (cutoff, self.max_records))]
        if not ids:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            _delete_records(db, ids)
            db.execute("COMMIT")
        except sqlite3.Error as exc:  # retention runs again after the next writes
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            logger.warning("store: retention pass failed (%s)", exc)

    def import_records(self, records: Iterable[Record]) -> dict[str, int]:
        """Add records in ONE transaction: all of them or, if `records` raises (bad input), none.

        A record whose id is already stored is skipped (importing the same file twice changes nothing).
        Returns `{"records", "imported", "skipped"}` counts."""
        self.flush()
        seen = imported = 0
        batch: list[Record] = []
        with self._reader() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for record in records:
                    seen += 1
                    batch.append(record)
                    if len(batch) >= 64:
                        imported += self._import_batch(db, batch)
                        batch.clear()
                imported += self._import_batch(db, batch)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return {"records": seen, "imported": imported, "skipped": seen - imported}

    def _import_batch(self, db: sqlite3.Connection, batch: list[Record]) -> int:
        fresh: dict[str, Record] = {}
        for record in batch:
            if record.id not in fresh and not db.execute("SELECT 1 FROM records WHERE id = ?",
                                                         (record.id,)).fetchone():
                fresh[record.id] = record
        self._store(db, [_prepare(r) for r in fresh.values()])
        return len(fresh)

    # --- reading -------------------------------------------------------------------------------

    @staticmethod
    def _load(db: sqlite3.Connection, data: str, refs: str | None) -> Record:
        if refs is None:  # a v2 row: the whole record
            return Record.model_validate_json(data)

        def blob(ref: str) -> Any:
            row = db.execute("SELECT data FROM blobs WHERE id = ?", (ref,)).fetchone()
            if row is None:
                raise StoreCorrupt(f"record piece {ref} is missing from {DB_NAME}")
            return json.loads(row[0])

        def messages(leaf: str) -> list[Any]:
            rows = db.execute(_CHAIN, (leaf,)).fetchall()
            if not rows or rows[0][0] is not None or any(text is None for _, text in rows):
                raise StoreCorrupt(f"message chain {leaf} is incomplete in {DB_NAME}")
            return [json.loads(text) for _, text in rows]

        return Record.model_validate(bodies.assemble(json.loads(data), json.loads(refs), blob, messages))

    def get(self, record_id: str) -> Record | None:
        if (queued := self._queued.get(record_id)) is not None:  # newer than the database until written
            return queued
        with self._reader() as db:
            row = db.execute("SELECT data, refs FROM records WHERE id = ?", (record_id,)).fetchone()
            return self._load(db, *row) if row else None

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
                rows = db.execute(f"SELECT ts, id, data, refs FROM records{cursor_where} ORDER BY ts, id LIMIT 50",
                                  [*params, last_ts, last_id]).fetchall()
                if not rows:
                    return
                loaded = [self._load(db, data, refs) for _, _, data, refs in rows]
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
        where, params = flt.where()
        now = time.time() if now is None else now
        with self._reader() as db:
            # One pass over the matching rows (a covering index when unfiltered), then every figure
            # from that narrow copy: a text search (`q`) scans the big rows once, not once per figure.
            # The session comes from its own (covering) index, joined by rowid, so the records are still read
            # from the metrics index (their big rows stay on disk).
            db.execute("CREATE TEMP TABLE sess (rid INTEGER PRIMARY KEY, sid TEXT NOT NULL)")
            db.execute("INSERT INTO sess SELECT rowid, session FROM records WHERE session IS NOT NULL")
            db.execute("CREATE TEMP TABLE sel AS SELECT ts, status, provider, model, "
                       + ", ".join(_METRIC_COLUMNS) + ", date(ts, 'unixepoch') AS day, sess.sid AS session "
                       f"FROM records LEFT JOIN sess ON sess.rid = records.rowid{where}", params)
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
                    "SELECT CAST(ts / ? AS INTEGER) AS b, count(*), total(status = 'error'), total(input_tokens), "
                    "total(output_tokens), total(cache_creation_tokens + cache_read_tokens), total(cost_usd) "
                    "FROM sel GROUP BY b ORDER BY b", (bucket,))
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
            **breakdowns,
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
            db.execute("BEGIN IMMEDIATE")
            try:
                deleted = db.execute("DELETE FROM records").rowcount
                for table in ("record_refs", "nodes", "blobs"):
                    db.execute(f"DELETE FROM {table}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return deleted

    def _reader(self) -> _ClosingConnection:
        return _ClosingConnection(self._connect())


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


def _nearest_rank(values: list[float], p: float) -> float | None:
    return values[round(p * (len(values) - 1))] if values else None  # as `aggregate`'s own p50 / p95


def _breakdowns(db: sqlite3.Connection, book: PriceBook | None, top_sessions: int) -> dict[str, Any]:
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
    in_top = f"session IN ({', '.join('?' * len(top))})" if top else "0"

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


def _delete_records(db: sqlite3.Connection, ids: list[str]) -> None:
    """Delete records and whatever pieces only they used (inside the caller's transaction)."""
    garbage: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        garbage.update(ref for (ref,) in db.execute(f"SELECT ref FROM record_refs WHERE record_id IN ({marks})",
                                                    chunk))
        db.execute(f"DELETE FROM record_refs WHERE record_id IN ({marks})", chunk)
        db.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk)
    _collect(db, garbage)


def _collect(db: sqlite3.Connection, candidates: set[str]) -> None:
    """Remove the nodes and blobs among `candidates` (and, for nodes, their ancestors) nothing uses any more."""
    blobs: set[str] = set()
    nodes = list(candidates)
    while nodes:
        ref = nodes.pop()
        if db.execute("SELECT 1 FROM record_refs WHERE ref = ? LIMIT 1", (ref,)).fetchone():
            continue
        row = db.execute("SELECT parent, blob FROM nodes WHERE id = ?", (ref,)).fetchone()
        if row is None:
            blobs.add(ref)  # not a node: a blob (system, tools)
            continue
        if db.execute("SELECT 1 FROM nodes WHERE parent = ? LIMIT 1", (ref,)).fetchone():
            continue
        db.execute("DELETE FROM nodes WHERE id = ?", (ref,))
        blobs.add(row[1])
        if row[0] is not None:
            nodes.append(row[0])
    for ref in blobs:
        if not db.execute("SELECT 1 FROM record_refs WHERE ref = ? LIMIT 1", (ref,)).fetchone() \
                and not db.execute("SELECT 1 FROM nodes WHERE blob = ? LIMIT 1", (ref,)).fetchone():
            db.execute("DELETE FROM blobs WHERE id = ?", (ref,))


class _ClosingConnection:
    """`with store._reader() as db:` closes the connection afterwards (sqlite3's own context manager doesn't)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        return self._db

    def __exit__(self, *exc: object) -> None:
        self._db.close()

