"""The shared, durable record store (SQLite, or PostgreSQL for a team): written off the proxy's hot path, read by
everyone else.

Writes go to a writer process of its own (`writer/`), so no client ever waits for the disk and the proxy's
GIL does not pay for it; how a record becomes rows is `rows.py`, how rows become a record again `reading.py`.
Reads open their own connection (WAL lets them run beside the writer); async callers run them with
`asyncio.to_thread`. The monitor's figures are `statistics.py`; which records a read selects, `filters.py`.

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

Search (`q`, `search.py`): a record is found by its own prompt and its answer, over the pieces stored anyway
(`turns` lists each record's new-turn blobs); the `search` column keeps only the answer's text.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from anthropic_proxy.record.call_end import CallEnds
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.derive import to_record
from anthropic_proxy.record.masking import mask_text
from anthropic_proxy.record.model import Record, RecordError
from anthropic_proxy.record.pricing import PRICES_FILE, PriceBook
from anthropic_proxy.store import consumed, reading, search, statistics
from anthropic_proxy.store import writer as store_writer
from anthropic_proxy.store.dialects import Connection, dialect_for
from anthropic_proxy.store.filters import RecordFilter
from anthropic_proxy.store.journal import next_seq
from anthropic_proxy.store.rows import RowWriter, prepare
from anthropic_proxy.store.writer import WriterProcess, WriterSettings
from anthropic_proxy.telemetry.tracing import TraceConfig

_STALE_SECONDS = 300.0  # an instance silent this long is gone: its pending records are orphans
JOURNAL_DIR = "journal"  # in the state dir: what the proxy put and the writer has not written yet (docs/journal.md)
MEMORY_BUDGET_MB = 250  # the proxy and its writer together, RSS (the `memory_budget` option)
MIN_MEMORY_BUDGET_MB = 100  # what the two take idle, give or take
BATCH_SHARE = 64  # of the budget: the most of the journal the writer takes in one transaction
BACKLOG_SHARE = 8  # of the budget: what the journal holds in memory while its disk refuses writes
RECOVERY_SECONDS = 60.0  # how long a start waits for the writer to take what a crash left in the journal


class Store:
    """The record store. `put` never blocks; every other method is a synchronous read or admin call.

    `url`: empty for SQLite in `state_dir`, or `postgresql://...` (see `dialects.py`).
    `close_orphans=False` opens a store without ending any `pending` record and without announcing itself as
    an instance (the `export`/`import` commands, which run beside a proxy)."""

    def __init__(self, state_dir: Path, *, url: str = "", max_records: int = 50_000, retention_days: float = 30,
                 busy_timeout: float = 30, close_orphans: bool = True,
                 memory_budget_mb: int = MEMORY_BUDGET_MB) -> None:
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
        self.memory_budget_mb = memory_budget_mb
        self._close_orphans_at_start = close_orphans
        with self._connect() as db:
            self.dialect.migrate(db)
            self._legacy = db.execute("SELECT 1 FROM records WHERE refs IS NULL LIMIT 1").fetchone() is not None
        if close_orphans:  # a proxy's store: its writer also beats the heartbeat and rewrites v2 rows when idle
            writer = self._writer_process()
            with self._connect() as db:
                # What a crash left in the journal is written first: then only the calls it cut short are pending.
                if self._unconsumed(db, writer):
                    writer.flush(RECOVERY_SECONDS)
                self._close_orphans(db)

    def _connect(self) -> Connection:
        return self.dialect.connect()

    @staticmethod
    def _unconsumed(db: Connection, writer: WriterProcess) -> bool:
        """Whether the journal holds entries the database has not taken (a crash, or a writer stopped)."""
        position = consumed.load(db, writer.journal.journal.hex())
        return writer.journal.last_seq >= next_seq(position)

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
                heartbeat_seconds=store_writer.HEARTBEAT_SECONDS, trace=self.tracing,
                batch_bytes=self.memory_budget_mb * (1 << 20) // BATCH_SHARE)
            # A proxy's store keeps its journal in the state dir (what a crash leaves there is written at the next
            # start); a tool's, one of its own.
            journal = self.state_dir / JOURNAL_DIR if self._close_orphans_at_start else None
            self._writer = WriterProcess(settings, lambda: (self.max_records, self.retention_days),
                                         on_ends=self.call_ends.deliver, journal=journal,
                                         backlog_bytes=self.memory_budget_mb * (1 << 20) // BACKLOG_SHARE)
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
        """Records waiting in memory for a write that works: the journal's disk refuses them, or the database."""
        if self._writer is None:
            return 0
        journal = self._writer.journal
        return self._writer.unsaved + (journal.unwritten if journal.last_error is not None else 0)

    @property
    def lost(self) -> int:
        """Records dropped: writes failed for too long, or they could not be serialised."""
        return self._writer.lost if self._writer else 0

    @property
    def queued(self) -> int:
        """Records put and not yet written (as far as the proxy keeps count: see `MAX_HELD`)."""
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

    _load = staticmethod(reading.load)  # a stored row as its record (`reading.py`)

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
        with self._reader() as db:
            where, params = search.where(db, self.dialect, flt)
            total = db.execute(f"SELECT count(*) FROM records{where}", params).fetchone()[0]
            rows = db.execute(f"SELECT summary, cache_break FROM records{where} ORDER BY ts DESC LIMIT ? OFFSET ?",
                              [*params, limit, (page - 1) * limit]).fetchall()
        return [{**json.loads(summary), "cacheBreak": json.loads(found) if found else None}
                for summary, found in rows], total

    def iter_records(self, flt: RecordFilter, *, tail: int | None = None) -> Iterator[Record]:
        """Every matching record, oldest first, read in batches (exports stream from this). `tail`: see `_load`."""
        self._settle()
        with self._reader() as db:
            where, params = search.where(db, self.dialect, flt)
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
        """The monitor's figures over ALL records matching `flt` (`statistics.aggregate`)."""
        self._settle()
        with self._reader() as db:
            return statistics.aggregate(db, self.dialect, flt, now=now, book=book, sessions=sessions)

    def analyze(self, flt: RecordFilter, *, top: int = 5) -> dict[str, Any]:
        """Errors by type and the slowest exchanges among the records matching `flt` (`statistics.analyze`)."""
        with self._reader() as db:
            return statistics.analyze(db, self.dialect, flt, top=top)

    def ratelimit_headers(self, flt: RecordFilter, *, limit: int = 2000) -> list[tuple[float, str, dict[str, Any]]]:
        """(timestamp, id, response headers) of the newest `limit` matching records, oldest first: what
        `ratelimits.report` reads (from the summaries, which keep the headers)."""
        self._settle()
        with self._reader() as db:
            where, params = search.where(db, self.dialect, flt)
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
                "lastThreadError": writer.last_thread_error if writer else None,
                "journal": self._journal_stats(), "memory": self._memory()}

    def _journal_stats(self) -> dict[str, Any] | None:
        """The journal (docs/journal.md): its size on disk, what it holds in memory, appends it had to drop."""
        if self._writer is None:
            return None
        journal = self._writer.journal
        return {"path": str(journal.directory), "bytes": journal.disk_bytes, "unwritten": journal.unwritten,
                "lost": journal.lost, "lastError": journal.last_error}

    def _memory(self) -> dict[str, Any]:
        """The resident memory of the proxy and its writer (MB), against the budget they share."""
        proxy, writer = self._writer.memory_mb() if self._writer else (None, None)
        return {"proxyMb": proxy and round(proxy, 1), "writerMb": writer and round(writer, 1),
                "budgetMb": self.memory_budget_mb}

    def clear(self) -> int:
        self.flush()
        with self._reader() as db:
            db.begin_write()
            try:
                deleted = db.execute("DELETE FROM records").rowcount
                for table in ("record_refs", "turns", "nodes", "blobs"):
                    db.execute(f"DELETE FROM {table}")
                db.commit()
            except BaseException:
                db.rollback()
                raise
        return deleted

    def _reader(self) -> Connection:
        """A connection for one read (or admin call); `with` closes it."""
        return self._connect()

