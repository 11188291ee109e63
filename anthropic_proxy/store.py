"""The shared, durable record store (SQLite): written off the proxy's hot path, read by everyone else.

Writes go through a queue to one writer thread, so no client ever waits for the disk. Reads open their
own connection (WAL lets them run beside the writer); async callers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

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
]


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

    def __init__(self, state_dir: Path, *, max_records: int = 50_000, retention_days: float = 30) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        self.max_records = max_records
        self.retention_days = retention_days
        self.write_errors = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        with self._connect() as db:
            self._migrate(db)
            self._close_orphans(db)
        self._writer = threading.Thread(target=self._write_loop, name="anthropic-proxy-store", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
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
        while True:
            item = self._queue.get()
            batch = [item]
            while not self._queue.empty() and len(batch) < 256:
                batch.append(self._queue.get_nowait())
            records = [r for r in batch if isinstance(r, Record)]
            if records:
                self._write(db, records)
                writes += len(records)
                if writes >= _PRUNE_EVERY:
                    writes = 0
                    self._prune(db)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is _STOP for item in batch):
                db.close()
                return

    def _write(self, db: sqlite3.Connection, records: list[Record]) -> None:
        rows = [
            (r.id, r.timestamp.timestamp(), r.status, r.provider, r.model, r.session_id, _search_text(r),
             mask_text(json.dumps(r.summary())), record_json(r))
            for r in records
        ]
        for attempt in range(5):
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO records "
                               "(id, ts, status, provider, model, session, search, summary, data) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                db.execute("COMMIT")
                return
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                logger.warning("store write failed (attempt %d/5): %s", attempt + 1, exc)
                time.sleep(0.2 * 2**attempt)
        self.write_errors += len(rows)
        logger.error("store: %d record(s) could not be written to %s", len(rows), self.path)

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

    def stats(self) -> dict[str, Any]:
        with self._reader() as db:
            count = db.execute("SELECT count(*) FROM records").fetchone()[0]
        size = sum(p.stat().st_size for p in self.path.parent.glob(DB_NAME + "*") if p.exists())
        return {"path": str(self.path), "records": count, "bytes": size, "writeErrors": self.write_errors,
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

