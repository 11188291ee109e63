"""The PostgreSQL dialect (`store_url=postgresql://...`): several proxies write one database, each web app shows
all their records. Writes take turns on an advisory lock (as processes sharing one SQLite file take turns on its
lock); placeholders are rewritten from `?` to `%s`. psycopg (v3) is imported only when such a store is opened.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from anthropic_proxy.store.dialects import Connection, Dialect, mask_url
from anthropic_proxy.store.schema import POSTGRES_MIGRATIONS

_RECORD_TABLES = ("records", "blobs", "nodes", "record_refs", "turns")
_LOCK_MIGRATE = 0x616E7001  # advisory lock keys ("anp" + n), the same in every anthropic-proxy
_LOCK_WRITE = 0x616E7002


class PostgresDialect(Dialect):
    name = "postgresql"
    shared = True
    unlimited = "ALL"
    search = "strpos(search, ?) > 0"  # the column is lower-cased already
    json_values = "json_array_elements_text(CAST(? AS json)) AS value"

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
            for number, step in enumerate(migrations[version:], start=version + 1):
                if isinstance(step, str):
                    db.raw.execute(step)
                else:  # a step that rewrites rows: while no instance writes
                    db.raw.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_WRITE,))
                    step(db)
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
    def contains_lower(expr: str) -> str:
        return f"strpos(lower({expr}), ?) > 0"

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

