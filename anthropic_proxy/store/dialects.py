"""What differs between the store's two databases: SQLite (the embedded default, here) and PostgreSQL (team
scale, `postgres.py`).

`store.Store` holds all the logic and writes its SQL once, with `?` placeholders and SQLite's spelling; a
`Dialect` supplies the rest: the connection, the schema migrations (`schema.py`), how a write transaction is
taken (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: an advisory lock), and the few expressions that are spelled
differently. `Connection` gives both one calling convention.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from anthropic_proxy.store.schema import SQLITE_MIGRATIONS

logger = logging.getLogger("anthropic_proxy.store")

DB_NAME = "records.sqlite3"
POSTGRES_SCHEMES = ("postgresql", "postgres")


def mask_url(url: str) -> str:
    """`url` with its password (user:PASSWORD@ or ?password=) replaced by ***: safe for logs and pages."""
    url = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url, flags=re.IGNORECASE)


def check_store_url(url: str) -> None:
    """Raise ValueError unless `url` is empty (SQLite in the state dir) or a postgresql:// URL."""
    if url and (urlsplit(url).scheme not in POSTGRES_SCHEMES or "://" not in url):
        raise ValueError(f"store_url must be empty (SQLite in state_dir) or postgresql://user:password@host/db "
                         f"(got {mask_url(url)!r})")


class Connection:
    """A database connection with one calling convention for both dialects: `?` placeholders, explicit
    `BEGIN`/`COMMIT` (autocommit outside them), `execute` returning a cursor to iterate or fetch from."""

    def __init__(self, dialect: Dialect, *, lazy: bool = False) -> None:
        self.dialect = dialect
        self.raw: Any = None if lazy else dialect.open()  # lazy: opened by `reopen_if_broken`

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.raw.execute(self.dialect.sql(sql), params)

    def executemany(self, sql: str, rows: Any) -> None:
        self.dialect.executemany(self.raw, self.dialect.sql(sql), rows)

    def script(self, sql: str) -> None:
        self.dialect.script(self.raw, sql)

    @property
    def in_transaction(self) -> bool:
        return self.raw is not None and self.dialect.in_transaction(self.raw)

    def begin_write(self) -> None:
        """Start a write transaction; only one runs at a time across every process using this database."""
        self.dialect.begin_write(self)

    def commit(self) -> None:
        self.raw.execute("COMMIT")

    def rollback(self) -> None:
        self.raw.execute("ROLLBACK")

    def reopen_if_broken(self) -> None:
        """Open the connection if it is not (yet), or was lost (PostgreSQL restarted); raises while it cannot."""
        if self.raw is None or self.dialect.is_broken(self.raw):
            if self.raw is not None:
                self.raw.close()
                self.raw = None
            self.raw = self.dialect.open()

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Dialect:
    """The SQLite dialect, and the interface the PostgreSQL one overrides."""

    name = "sqlite"
    shared = False  # True: instances on other hosts may use the database (they announce they are alive)
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    unstorable: tuple[type[BaseException], ...] = ()  # errors of the data, not the database: retrying cannot help
    unlimited = "-1"  # LIMIT <this> OFFSET n: no limit
    search = "instr(lower(search), ?) > 0"  # `q`: the lower-cased text appears in the search column
    json_values = "json_each(?)"  # a JSON array parameter as rows of one column, `value`

    def __init__(self, state_dir: Path, *, busy_timeout: float = 30) -> None:
        self.path = state_dir / DB_NAME
        self.busy_timeout = busy_timeout
        self.location = str(self.path)
        self._opened: tuple[int, int] | None = None  # the file the last `open` opened: (device, inode)

    # --- connections ---
    def open(self) -> Any:
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        self._opened = _file_identity(self.path)
        return db

    def file_lost(self) -> bool:
        """The database file is gone from its path, or the file there is not the one the last `open` opened (it
        was replaced): a connection to the old one would go on writing where nobody reads."""
        found = _file_identity(self.path)
        return found is None or (self._opened is not None and found != self._opened)

    def connect(self, *, lazy: bool = False) -> Connection:
        return Connection(self, lazy=lazy)

    @staticmethod
    def sql(text: str) -> str:
        return text

    @staticmethod
    def insert_ignore(table: str, columns: tuple[str, ...]) -> str:
        """An INSERT that keeps the row already there with the same key (and adds nothing)."""
        return f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"

    @staticmethod
    def upsert(table: str, columns: tuple[str, ...], key: str) -> str:
        """An INSERT that replaces the row already there with the same `key`."""
        return f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"

    @staticmethod
    def executemany(raw: Any, sql: str, rows: Any) -> None:
        raw.executemany(sql, rows)

    @staticmethod
    def script(raw: Any, sql: str) -> None:
        raw.executescript(sql)

    @staticmethod
    def in_transaction(raw: Any) -> bool:
        return raw.in_transaction

    @staticmethod
    def begin_write(db: Connection) -> None:
        db.raw.execute("BEGIN IMMEDIATE")

    @staticmethod
    def is_broken(raw: Any) -> bool:
        return False

    def scrub(self, message: str) -> str:
        """An error message fit for the log (no password)."""
        return message

    # --- schema ---
    def migrate(self, db: Connection) -> None:
        migrations = SQLITE_MIGRATIONS
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            raise RuntimeError(f"store schema v{version} is newer than this anthropic-proxy supports")
        rewrote = False
        for number, step in enumerate(migrations[version:], start=version + 1):
            if isinstance(step, str):
                db.script(f"BEGIN; {step}; PRAGMA user_version = {number}; COMMIT;")
                continue
            db.begin_write()
            try:
                step(db)
                db.execute(f"PRAGMA user_version = {number}")
                db.commit()
            except BaseException:
                db.rollback()
                raise
            rewrote = True
        if rewrote:  # a step that rewrote rows left their old pages free: give them back to the file system
            try:
                db.execute("VACUUM")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # (another process reading: the pages are reused by later writes)
                logger.info("store: could not vacuum %s after its migration (%s)", self.path, exc)

    def size(self, db: Connection) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(DB_NAME + "*") if p.exists())

    # --- expressions ---
    @staticmethod
    def contains_lower(expr: str) -> str:
        """`expr` lower-cased (ASCII at least) contains the parameter."""
        return f"instr(lower({expr}), ?) > 0"

    @staticmethod
    def json_text(column: str, *path: str) -> str:
        return f"json_extract({column}, '$.{'.'.join(path)}')"

    @staticmethod
    def utc_day(seconds: str) -> str:
        return f"date({seconds}, 'unixepoch')"

    @staticmethod
    def floor(expr: str) -> str:
        return f"CAST({expr} AS INTEGER)"

    def select_into_sel(self, db: Connection, columns: str, where: str, params: list[Any]) -> None:
        """Copy the matching records' narrow columns into the temp table `sel` (see `Store.aggregate`).
        SQLite: the session comes from its own (covering) index, joined by rowid, so the records are read from
        the metrics index and their big rows stay on disk."""
        db.execute("CREATE TEMP TABLE sess (rid INTEGER PRIMARY KEY, sid TEXT NOT NULL)")
        db.execute("INSERT INTO sess SELECT rowid, session FROM records WHERE session IS NOT NULL")
        db.execute(f"CREATE TEMP TABLE sel AS SELECT {columns}, sess.sid AS session "
                   f"FROM records LEFT JOIN sess ON sess.rid = records.rowid{where}", params)


def storable_text(text: str | None) -> str | None:
    """Text both databases can store: a lone surrogate (valid in a JSON escape, not in UTF-8) becomes '?', and so
    does NUL (PostgreSQL's text cannot hold it)."""
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "?")


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def dialect_for(state_dir: Path, url: str = "", *, busy_timeout: float = 30) -> Dialect:
    check_store_url(url)
    if not url:
        return Dialect(state_dir, busy_timeout=busy_timeout)
    from anthropic_proxy.store.postgres import PostgresDialect  # (it builds on this module's `Dialect`)

    return PostgresDialect(url)
