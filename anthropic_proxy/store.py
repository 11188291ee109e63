"""The shared, durable record store (SQLite, or PostgreSQL for a team): written off the proxy's hot path, read by
everyone else.

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

import contextlib
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import bodies
from .dialects import DB_NAME, SQLITE_MIGRATIONS, Connection, Dialect, dialect_for
from .masking import mask_text
from .pricing import PriceBook, savings_for_tokens
from .record import Record, RecordError

logger = logging.getLogger("anthropic_proxy.store")

__all__ = ["DB_NAME", "RecordFilter", "Store", "StoreCorrupt", "parse_time_range", "record_json"]

_STOP = object()
_PRUNE_EVERY = 500  # writes between two retention passes
_BATCH_SECONDS = 0.05  # how long the writer waits for more records after the first
_RETRY_SECONDS = 1.0  # between two attempts while writes fail
_MAX_UNSAVED = 10_000  # records held in memory while writes fail
_HEARTBEAT_SECONDS = 30.0  # how often an instance on a shared database says it is alive
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
    """Text both databases can store: a lone surrogate (valid in a JSON escape, not in UTF-8) becomes '?', and so
    does NUL (PostgreSQL's text cannot hold it)."""
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "?")


_RECORD_COLUMNS = ("id", "ts", "status", "provider", "model", "session", "search", "summary", "data", "refs",
                   *_METRIC_COLUMNS, "owner")
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


def _prepare(record: Record, owner: str) -> _Prepared:
    split = bodies.split(record.model_dump(mode="json", by_alias=True))
    row = (record.id, record.timestamp.timestamp(), record.status, record.provider, _utf8(record.model),
           _utf8(record.session_id), _search_text(record), mask_text(json.dumps(record.summary())), split.skeleton,
           json.dumps(split.refs, separators=(",", ":")), *_metric_values(record), owner)
    return _Prepared(record.id, row, split)


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
        if not url:
            state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dialect.path  # the SQLite file (None for PostgreSQL)
        self.location = self.dialect.location  # for logs and /health: the file, or the URL without password
        # Who writes: one id per run; `name` is the same for this host and state dir across restarts.
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.instance_name = f"{socket.gethostname()}:{state_dir.expanduser().resolve()}"
        self._announced = close_orphans and self.dialect.shared  # in `instances`, with heartbeats
        self._upsert = self.dialect.upsert("records", _RECORD_COLUMNS, "id")
        self._add_blob = self.dialect.insert_ignore("blobs", ("id", "data"))
        self._add_node = self.dialect.insert_ignore("nodes", ("id", "parent", "blob"))
        self._announce = self.dialect.upsert("instances", ("id", "name", "seen"), "id")
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
            self.dialect.migrate(db)
            if close_orphans:
                self._close_orphans(db)
            self._legacy = db.execute("SELECT 1 FROM records WHERE refs IS NULL LIMIT 1").fetchone() is not None
        self._writer = threading.Thread(target=self._write_loop, name="anthropic-proxy-store", daemon=True)
        self._writer.start()

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
            self._store(db, [_prepare(r, self.instance_id) for r in orphans])
            if shared:
                db.execute("DELETE FROM instances WHERE seen < ? OR name = ?",
                           (now - _STALE_SECONDS, self.instance_name))
                db.execute(self._announce, (self.instance_id, self.instance_name, now))
            if db.in_transaction:
                db.commit()
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise

    # --- writing -------------------------------------------------------------------------------

    def put(self, record: Record) -> None:
        """Queue an insert-or-replace; the latest put of a record wins. `get` sees it at once.

        The store keeps a shallow copy: the caller goes on changing its record (its stream is still arriving),
        and the writer, in another thread, must see each put as it was, with its own identity."""
        record = record.model_copy()
        self._queued[record.id] = record
        self._queue.put(record)

    def flush(self, timeout: float = 10) -> None:
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _settle(self) -> None:
        """Before a read over many records: let the writer finish what was put (it then stops gathering), so
        a list or a figure never lags a record that `get` already shows final. Bounded: a failing disk
        must not hang a page."""
        if self._queued:
            self.flush(timeout=2)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._writer.join(timeout=30)

    def _write_loop(self) -> None:
        db = self.dialect.connect(lazy=True)  # opened by the first write (which reports a failure to open)
        writes = 0
        unsaved: dict[str, Record] = {}  # records whose write failed (disk full, database locked): retried
        heartbeat = self._announced
        next_beat = time.monotonic() + _HEARTBEAT_SECONDS
        while True:
            idle_work = self._legacy and not unsaved
            # Old rows are rewritten a few at a time with pauses between (the writer shares the GIL with the
            # proxy): about a tenth of one core until they are all done.
            timeout = _RETRY_SECONDS if unsaved else 0.2 if idle_work else None
            if heartbeat:
                timeout = max(0.0, min(timeout or _HEARTBEAT_SECONDS, next_beat - time.monotonic()))
            try:
                batch = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                batch = []
            if heartbeat and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + _HEARTBEAT_SECONDS
                self._beat(db)
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
                                 len(unsaved), self.location)
                if self._announced:
                    with contextlib.suppress(*self.dialect.errors):
                        db.reopen_if_broken()
                        db.execute("DELETE FROM instances WHERE id = ?", (self.instance_id,))
                db.close()
                return

    def _beat(self, db: Connection) -> None:
        """Tell the other instances on the database that this one is alive (its pending records are live)."""
        try:
            db.reopen_if_broken()
            db.execute(self._announce, (self.instance_id, self.instance_name, time.time()))
        except self.dialect.errors as exc:  # the next write reports a lasting failure
            logger.debug("store: heartbeat failed (%s)", self.dialect.scrub(str(exc)))

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
                logger.error("store: %d record(s) lost: %s kept refusing writes", self.lost, self.location)

    def _prepare_all(self, records: list[Record]) -> list[_Prepared]:
        prepared: list[_Prepared] = []
        for record in records:
            try:
                prepared.append(_prepare(record, self.instance_id))
            except Exception:  # one record that cannot be serialised must not stop the writer
                self.lost += 1
                logger.exception("store: record %s cannot be stored", record.id)
        return prepared

    def _rollback(self, db: Connection) -> None:
        with contextlib.suppress(*self.dialect.errors):  # a full disk (or a lost server) can refuse even this
            if db.in_transaction:
                db.rollback()

    def _write(self, db: Connection, records: list[Record]) -> bool:
        prepared = self._prepare_all(records)
        try:
            db.reopen_if_broken()
            db.begin_write()
            self._store(db, prepared)
            db.commit()
        except (ValueError, TypeError, *self.dialect.unstorable):  # a bug or data no database takes, not the
            # disk: retrying would fail forever; keep the writer alive
            self._rollback(db)
            self.lost += len(prepared)
            logger.exception("store: %d record(s) could not be stored", len(prepared))
            return True
        except self.dialect.errors as exc:
            self._rollback(db)
            self.write_errors += 1
            message = self.dialect.scrub(str(exc)).strip()
            if self.last_write_error is None:  # log a failure streak once, not at every retry
                logger.error("store: writing to %s failed (%s); keeping %d record(s) in memory and retrying",
                             self.location, message, len(prepared))
            self.last_write_error = message
            return False
        if self.last_write_error is not None:
            logger.warning("store: writing to %s works again", self.location)
            self.last_write_error = None
        return True

    def _store(self, db: Connection, prepared: list[_Prepared]) -> None:
        """Insert or replace records with the pieces they add (inside the caller's transaction)."""
        garbage: set[str] = set()
        for item in prepared:
            split = item.split
            for keys in split.refs.values():
                for key, ref in keys.items():
                    if key != bodies.MESSAGES:
                        db.execute(self._add_blob, (ref, split.blobs[ref]))
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
                    db.execute(self._add_blob, (blob, split.blobs[blob]))
                    db.execute(self._add_node, (node, parent, blob))
            old = {ref for (ref,) in db.execute("SELECT ref FROM record_refs WHERE record_id = ?", (item.record_id,))}
            new = split.ref_ids()
            db.execute(self._upsert, item.row)
            if old != new:
                db.executemany("DELETE FROM record_refs WHERE record_id = ? AND ref = ?",
                               [(item.record_id, ref) for ref in old - new])
                db.executemany("INSERT INTO record_refs (record_id, ref) VALUES (?, ?)",
                               [(item.record_id, ref) for ref in new - old])
                garbage |= old - new
        if garbage:
            _collect(db, garbage)

    def _upgrade_legacy(self, db: Connection, count: int = 8) -> None:
        """Rewrite a few v2 rows (whole bodies) in the v3 form; clears `_legacy` when none are left."""
        try:
            db.reopen_if_broken()
            rows = db.execute("SELECT data FROM records WHERE refs IS NULL ORDER BY ts LIMIT ?", (count,)).fetchall()
            if not rows:
                self._legacy = False
                return
            prepared = self._prepare_all([Record.model_validate_json(data) for (data,) in rows])
            db.begin_write()
            self._store(db, prepared)
            db.commit()
        except Exception as exc:  # try again when the writer is next idle; never lose the row
            self._rollback(db)
            logger.warning("store: rewriting old records failed (%s); will retry", self.dialect.scrub(str(exc)))
            time.sleep(_RETRY_SECONDS)

    def _prune(self, db: Connection) -> None:
        """Retention. On a shared database every instance prunes; the write lock makes the passes take turns
        (deleting what another pass already deleted does nothing)."""
        cutoff = time.time() - self.retention_days * 86400
        try:
            db.reopen_if_broken()
            db.begin_write()
            ids = [i for (i,) in db.execute("SELECT id FROM records WHERE ts < ?", (cutoff,))]
            ids += [i for (i,) in db.execute(
                f"SELECT id FROM records WHERE ts >= ? ORDER BY ts DESC LIMIT {self.dialect.unlimited} OFFSET ?",
                (cutoff, self.max_records))]
            if ids:
                _delete_records(db, ids)
            db.commit()
        except self.dialect.errors as exc:  # retention runs again after the next writes
            self._rollback(db)
            logger.warning("store: retention pass failed (%s)", self.dialect.scrub(str(exc)))

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
        self._store(db, [_prepare(r, self.instance_id) for r in fresh.values()])
        return len(fresh)

    # --- reading -------------------------------------------------------------------------------

    @staticmethod
    def _load(db: Connection, data: str, refs: str | None) -> Record:
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
        self._settle()
        where, params = flt.where(self.dialect.search)
        with self._reader() as db:
            total = db.execute(f"SELECT count(*) FROM records{where}", params).fetchone()[0]
            rows = db.execute(f"SELECT summary FROM records{where} ORDER BY ts DESC LIMIT ? OFFSET ?",
                              [*params, limit, (page - 1) * limit]).fetchall()
        return [json.loads(row[0]) for row in rows], total

    def iter_records(self, flt: RecordFilter) -> Iterator[Record]:
        """Every matching record, oldest first, read in batches (exports stream from this)."""
        self._settle()
        where, params = flt.where(self.dialect.search)
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
        self._settle()
        where, params = flt.where(self.dialect.search)
        now = time.time() if now is None else now
        with self._reader() as db:
            # One pass over the matching rows (a covering index when unfiltered), then every figure
            # from that narrow copy: a text search (`q`) scans the big rows once, not once per figure.
            self.dialect.select_into_sel(db, "ts, status, provider, model, " + ", ".join(_METRIC_COLUMNS)
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
            size = self.dialect.size(db)
        return {"path": self.location, "backend": self.dialect.name, "records": count, "bytes": size,
                "writeErrors": self.write_errors, "lastWriteError": self.last_write_error, "unsaved": self.unsaved,
                "lost": self.lost, "queued": self._queue.qsize()}

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


def _delete_records(db: Connection, ids: list[str]) -> None:
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


def _collect(db: Connection, candidates: set[str]) -> None:
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

