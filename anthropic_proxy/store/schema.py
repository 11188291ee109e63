"""The store's schema: the migrations that build it, one list per database (`Dialect.migrate` runs them).

Each entry moves the schema one version up, in a transaction of its own: SQL, or a Python step that rewrites rows
(SQLite then vacuums). Never edit a released one, append a new one. SQLite counts its
versions in `PRAGMA user_version`; PostgreSQL in the table `anthropic_proxy_schema`, from its own v1 (SQLite's v4
in one step). PostgreSQL gets SQLite's `total()` and `json_group_array()` aggregates, so the statistics queries
stay one text for both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# SQL, or a Python step given the migration's `dialects.Connection` (not imported: dialects.py reads this module)
Migration = str | Callable[[Any], None]

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

# v6 (PostgreSQL v3): search without a second copy of each prompt (`search.py`): each record's new-turn blobs.
_TURNS = """
    CREATE TABLE turns (record_id TEXT NOT NULL, blob TEXT NOT NULL, PRIMARY KEY (record_id, blob));
"""


def _search_over_pieces(db: Any) -> None:
    """v7 (PostgreSQL v4): existing records' turns listed, their prompts' text dropped from `search`."""
    from anthropic_proxy.store.search import convert  # (search.py builds on dialects.py, which reads these lists)

    convert(db)


# v8 (PostgreSQL v5): how far the writer has consumed each journal (`consumed.py`), written in the transaction
# that writes the records it read there.
_JOURNAL_POSITIONS = """
    CREATE TABLE journal_positions (
        journal TEXT PRIMARY KEY, position TEXT NOT NULL, updated DOUBLE PRECISION NOT NULL
    );
"""

SQLITE_MIGRATIONS: list[Migration] = [
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
    # v3: bodies cut into content-addressed pieces (see store.py). v2 rows keep refs NULL.
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
    _TURNS.replace("));", ")) WITHOUT ROWID;"),
    _search_over_pieces,
    _JOURNAL_POSITIONS.replace("DOUBLE PRECISION", "REAL"),
]


# PostgreSQL's schema: SQLite's v4 in one step (PostgreSQL's own versions count from 1).
POSTGRES_MIGRATIONS: list[Migration] = [
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
    _TURNS,
    _search_over_pieces,
    _JOURNAL_POSITIONS,
]

