"""What differs between the store's two databases: SQLite (the embedded default) and PostgreSQL (team scale).

`store.Store` holds all the logic and writes its SQL once, with `?` placeholders and SQLite's spelling; a
`Dialect` supplies the rest: the connection, the schema migrations, how a write transaction is taken (SQLite:
`BEGIN IMMEDIATE`; PostgreSQL: an advisory lock, so several proxies writing one database take turns, as
processes sharing one SQLite file do), and the few expressions that are spelled differently.

PostgreSQL gets SQLite's `total()` and `json_group_array()` aggregates in its schema, so the statistics queries
stay one text for both. psycopg (v3) is imported only when a `postgresql://` store is opened.
"""

from __future__ import annotations

import re
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DB_NAME = "records.sqlite3"
POSTGRES_SCHEMES = ("postgresql", "postgres")
_RECORD_TABLES = ("records", "blobs", "nodes", "record_refs")


def mask_url(url: str) -> str:
    """`url` with its password (user:PASSWORD@ or ?password=) replaced by ***: safe for logs and pages."""
    url = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url, flags=re.IGNORECASE)


def check_store_url(url: str) -> None:
    """Raise ValueError unless `url` is empty (SQLite in the state dir) or a postgresql:// URL."""
    if url and (urlsplit(url).scheme not in POSTGRES_SCHEMES or "://" not in url):
        raise ValueError(f"store_url must be empty (SQLite in state_dir) or postgresql://user:password@host/db "
                         f"(got {mask_url(url)!r})")


# v5 (PostgreSQL v2): what explains a call's cache break (`cache_break.py`): the first piece of its prompt and
# its last breakpoint (written with the record), and the explanation with the two figures the statistics sum.
_CACHE_BREAK_COLUMNS = """
    ALTER TABLE records ADD COLUMN cache_head TEXT;
    ALTER TABLE records ADD COLUMN cache_bp TEXT;
    ALTER TABLE records ADD COLUMN cache_break TEXT;
    ALTER TABLE records ADD COLUMN cache_break_at TEXT;
    ALTER TABLE records ADD COLUMN cache_break_usd DOUBLE PRECISION;
    CREATE INDEX records_session_model_ts ON records(session, model, ts);
    CREATE INDEX records_cache_head_ts ON records(cache_head, ts);
    CREATE INDEX records_cache_breaks ON records(ts, cache_break_at, cache_break_usd) WHERE cache_break_at IS NOT NULL;
"""

# Each entry moves the schema one version up; never edit a released one, append a new one.
SQLITE_MIGRATIONS: list[str] = [
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
    # v4: several instances on one database: who wrote each record, and which instances are alive.
    """
    ALTER TABLE records ADD COLUMN owner TEXT;
    CREATE TABLE instances (id TEXT PRIMARY KEY, name TEXT NOT NULL, seen REAL NOT NULL);
    """,
    _CACHE_BREAK_COLUMNS.replace("DOUBLE PRECISION", "REAL"),
]


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
        for number, script in enumerate(migrations[version:], start=version + 1):
            db.script(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    def size(self, db: Connection) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(DB_NAME + "*") if p.exists())

    # --- expressions ---
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


_LOCK_MIGRATE = 0x616E7001  # advisory lock keys ("anp" + n), the same in every anthropic-proxy
_LOCK_WRITE = 0x616E7002

# PostgreSQL's schema: SQLite's v4 in one step (PostgreSQL's own versions count from 1).
POSTGRES_MIGRATIONS: list[str] = [
    """
    CREATE TABLE records (
        id TEXT PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT,
        session TEXT,
        search TEXT NOT NULL DEFAULT '',
        summary TEXT NOT NULL,
        data TEXT NOT NULL,
        duration_ms DOUBLE PRECISION,
        input_tokens BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        cache_creation_tokens BIGINT NOT NULL DEFAULT 0,
        cache_read_tokens BIGINT NOT NULL DEFAULT 0,
        cost_usd DOUBLE PRECISION,
        refs TEXT,
        owner TEXT
    );
    CREATE INDEX records_ts ON records(ts);
    CREATE INDEX records_status_ts ON records(status, ts);
    CREATE INDEX records_model ON records(model);
    CREATE INDEX records_session ON records(session);
    CREATE INDEX records_provider_ts ON records(provider, ts);
    CREATE INDEX records_model_ts ON records(model, ts);
    CREATE INDEX records_legacy ON records(ts) WHERE refs IS NULL;
    CREATE TABLE blobs (id TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE nodes (id TEXT PRIMARY KEY, parent TEXT, blob TEXT NOT NULL);
    CREATE INDEX nodes_parent ON nodes(parent);
    CREATE INDEX nodes_blob ON nodes(blob);
    CREATE TABLE record_refs (record_id TEXT NOT NULL, ref TEXT NOT NULL, PRIMARY KEY (record_id, ref));
    CREATE INDEX record_refs_ref ON record_refs(ref);
    CREATE TABLE instances (id TEXT PRIMARY KEY, name TEXT NOT NULL, seen DOUBLE PRECISION NOT NULL);
    -- SQLite's aggregates, for the shared statistics queries: total() is a float sum that is 0 over no rows
    -- (total(condition) counts the rows where it holds); json_group_array() a JSON array as text.
    CREATE FUNCTION anthropic_proxy_count_true(double precision, boolean) RETURNS double precision
        LANGUAGE sql IMMUTABLE STRICT AS 'SELECT $1 + CASE WHEN $2 THEN 1 ELSE 0 END';
    CREATE FUNCTION anthropic_proxy_json_array(text[]) RETURNS text
        LANGUAGE sql IMMUTABLE AS 'SELECT array_to_json($1)::text';
    CREATE AGGREGATE total(double precision) (SFUNC = float8pl, STYPE = double precision, INITCOND = '0');
    CREATE AGGREGATE total(boolean) (SFUNC = anthropic_proxy_count_true, STYPE = double precision,
                                     INITCOND = '0');
    CREATE AGGREGATE json_group_array(text) (SFUNC = array_append, STYPE = text[], INITCOND = '{}',
                                             FINALFUNC = anthropic_proxy_json_array);
    """,
    _CACHE_BREAK_COLUMNS,
]


class PostgresDialect(Dialect):
    name = "postgresql"
    shared = True
    unlimited = "ALL"
    search = "strpos(search, ?) > 0"  # the column is lower-cased already

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise RuntimeError("store_url is a postgresql:// URL but psycopg is not installed: "
                               "pip install 'anthropic-proxy[postgres]'") from exc
        self._psycopg = psycopg
        self.url = url
        self.location = mask_url(url)
        self.path = None
        self.errors = (psycopg.Error,)
        self.unstorable = (psycopg.DataError,)
        self._password = urlsplit(url).password or ""

    def open(self) -> Any:
        return self._psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                                     application_name="anthropic-proxy")

    def file_lost(self) -> bool:
        return False  # (a server's database: a lost connection is `is_broken`)

    @staticmethod
    def sql(text: str) -> str:
        return _postgres_sql(text)

    @staticmethod
    def insert_ignore(table: str, columns: tuple[str, ...]) -> str:
        return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                "ON CONFLICT DO NOTHING")

    @staticmethod
    def upsert(table: str, columns: tuple[str, ...], key: str) -> str:
        return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                f"ON CONFLICT ({key}) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in columns if c != key))

    @staticmethod
    def executemany(raw: Any, sql: str, rows: Any) -> None:
        with raw.cursor() as cursor:
            cursor.executemany(sql, rows)

    @staticmethod
    def script(raw: Any, sql: str) -> None:
        raw.execute(sql)  # several statements: allowed without parameters

    def in_transaction(self, raw: Any) -> bool:
        return raw.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE

    @staticmethod
    def begin_write(db: Connection) -> None:
        db.raw.execute("BEGIN")
        db.raw.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_WRITE,))

    @staticmethod
    def is_broken(raw: Any) -> bool:
        return raw.closed or raw.broken

    def scrub(self, message: str) -> str:
        return message.replace(self._password, "***") if self._password else message

    def migrate(self, db: Connection) -> None:
        migrations = POSTGRES_MIGRATIONS
        # Several proxies may start at once: the first to take the lock migrates, the others then see it done.
        db.raw.execute("BEGIN")
        try:
            db.raw.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_MIGRATE,))
            db.raw.execute("CREATE TABLE IF NOT EXISTS anthropic_proxy_schema (version INTEGER NOT NULL)")
            row = db.raw.execute("SELECT max(version) FROM anthropic_proxy_schema").fetchone()
            version = row[0] or 0
            if version > len(migrations):
                raise RuntimeError(f"store schema v{version} is newer than this anthropic-proxy supports")
            for number, script in enumerate(migrations[version:], start=version + 1):
                db.raw.execute(script)
                db.raw.execute("DELETE FROM anthropic_proxy_schema")
                db.raw.execute("INSERT INTO anthropic_proxy_schema (version) VALUES (%s)", (number,))
            db.raw.execute("COMMIT")
        except BaseException:
            db.raw.execute("ROLLBACK")
            raise

    def size(self, db: Connection) -> int:
        sizes = " + ".join(f"pg_total_relation_size('{table}')" for table in _RECORD_TABLES)
        return int(db.execute(f"SELECT {sizes}").fetchone()[0])

    @staticmethod
    def json_text(column: str, *path: str) -> str:
        return f"({column}::json #>> '{{{','.join(path)}}}')"

    @staticmethod
    def utc_day(seconds: str) -> str:
        return f"to_char(to_timestamp({seconds}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    @staticmethod
    def floor(expr: str) -> str:
        return f"floor({expr})::bigint"

    def select_into_sel(self, db: Connection, columns: str, where: str, params: list[Any]) -> None:
        # CREATE TABLE AS takes no bound parameters: the rows go in with an INSERT.
        db.execute(f"CREATE TEMP TABLE sel AS SELECT {columns}, session FROM records WITH NO DATA")
        db.execute(f"INSERT INTO sel SELECT {columns}, session FROM records{where}", params)


@lru_cache(maxsize=512)
def _postgres_sql(text: str) -> str:
    """Placeholders: `?` -> `%s` (a literal % doubled). The store's SQL has no `?` inside string literals."""
    return text.replace("%", "%%").replace("?", "%s")


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def dialect_for(state_dir: Path, url: str = "", *, busy_timeout: float = 30) -> Dialect:
    check_store_url(url)
    return PostgresDialect(url) if url else Dialect(state_dir, busy_timeout=busy_timeout)
