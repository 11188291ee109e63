"""Search over the pieces the store keeps (store/search.py): a unique body is stored once, a record is still found
by its own prompt and its answer, and stores written by the previous release are converted."""

from __future__ import annotations

import base64
import gzip
import json
import random
import shutil
import sqlite3
from pathlib import Path

from anthropic_proxy.record.model import HttpRequestPart, Record
from anthropic_proxy.store import DB_NAME, RecordFilter, Store, record_json
from anthropic_proxy.store.schema import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS

from .test_store import KEY, make_record

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "store_v5"  # written by the release before this change


def found(store: Store, q: str, **fields) -> list[str]:
    return [r["id"] for r in store.query(RecordFilter(q=q, **fields), limit=1000)[0]]


def database_bytes(store: Store) -> int:
    """What the records take in the database: SQLite's pages in use, PostgreSQL's relations (TOAST included)."""
    with store._reader() as db:
        if store.path is None:
            return store.dialect.size(db)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, free, size = (db.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
    return (pages - free) * size


def test_a_unique_body_is_stored_once(tmp_path: Path, store_url: str):
    """50 KB bodies that share nothing (and compress as little as PostgreSQL's TOAST would like): at most 1.3x."""
    store = Store(tmp_path, url=store_url)
    rng = random.Random(3)
    empty = database_bytes(store)
    raw = 0
    records = []
    for i in range(60):
        text = base64.b64encode(rng.randbytes(37_000)).decode()  # ~50 KB
        body = {"model": "claude-sonnet-4-5", "max_tokens": 64,
                "messages": [{"role": "user", "content": f"Prompt{i} {text}"}]}
        raw += len(json.dumps(body, separators=(",", ":")))
        records.append(make_record(body=body, status="success",
                                   message={"content": [{"type": "text", "text": f"Answer{i} zebra"}]}))
    for record in records:
        store.put(record)
    store.flush(120)
    try:
        used = database_bytes(store) - empty
        assert used < 1.3 * raw, (used, raw, round(used / raw, 2))
        assert found(store, "PROMPT17 ") == [records[17].id]  # (case-insensitive)
        assert found(store, "answer42 zebra") == [records[42].id]
        assert found(store, records[5].request.body["messages"][0]["content"][3000:3040].lower()) \
            == [records[5].id]
    finally:
        store.close()


def test_found_by_its_text_only(tmp_path: Path, store_url: str):
    """The prompt's and the answer's texts, as they are: not JSON keys, tool inputs or escapes; masked."""
    store = Store(tmp_path, url=store_url)
    prompt = make_record(body={"messages": [
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Ünïcode ÉCLAIR"}]},
            {"type": "text", "text": f'say "hi"\nthen 日本語 with {KEY}'}]}]}, status="success")
    tool = make_record(body={"messages": [
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Bash", "input": {"text": "okapi"}}]},
    ]}, status="error", message={"content": [{"type": "thinking", "thinking": "Pondering the Quokka"}]})
    for record in (prompt, tool):
        store.put(record)
    store.flush(60)
    try:
        assert found(store, "éclair") == found(store, "ÜNÏCODE") == [prompt.id]
        assert found(store, 'say "HI"\nthen') == found(store, "日本語") == [prompt.id]
        assert found(store, "quokka") == [tool.id]
        for absent in ("role", "content", "tool_result", "toolu_1", "okapi", "u00c9", "\\n", KEY[15:30].lower()):
            assert found(store, absent) == [], absent
        # with the other filters, in the figures, the export and the rate-limit reads
        assert found(store, "run", status="error") == [tool.id] and found(store, "run", status="success") == []
        assert store.aggregate(RecordFilter(q="quokka"))["total"] == 1
        assert [r.id for r in store.iter_records(RecordFilter(q="日本語"))] == [prompt.id]
        assert store.analyze(RecordFilter(q="quokka"))["errorsByType"][0]["count"] == 1
    finally:
        store.close()


def _fixture_records() -> dict[str, str]:
    lines = gzip.decompress((FIXTURE / "records.jsonl.gz").read_bytes()).decode().splitlines()
    return {json.loads(line)["id"]: line for line in lines}


def _fixture_store(tmp_path: Path) -> Path:
    with gzip.open(FIXTURE / "records.sqlite3.gz") as src, open(tmp_path / DB_NAME, "wb") as out:
        shutil.copyfileobj(src, out)
    return tmp_path / DB_NAME


def _copy_to_postgres(sqlite_file: Path, url: str) -> None:
    """The fixture's rows in a PostgreSQL database at the schema version of the same release (v2)."""
    import psycopg

    source = sqlite3.connect(sqlite_file)
    with psycopg.connect(url, autocommit=True) as db:
        for script in POSTGRES_MIGRATIONS[:2]:
            db.execute(script)
        db.execute("CREATE TABLE anthropic_proxy_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO anthropic_proxy_schema (version) VALUES (2)")
        for table in ("records", "blobs", "nodes", "record_refs"):
            cursor = source.execute(f"SELECT * FROM {table}")
            columns = [c[0] for c in cursor.description]
            with db.cursor() as insert:
                insert.executemany(f"INSERT INTO {table} ({', '.join(columns)}) "
                                   f"VALUES ({', '.join(['%s'] * len(columns))})", cursor.fetchall())
    source.close()


def test_a_store_of_the_previous_release_is_converted(tmp_path: Path, store_url: str):
    sqlite_file = _fixture_store(tmp_path)
    expected = _fixture_records()
    with sqlite3.connect(sqlite_file) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
        assert db.execute("SELECT max(length(search)) FROM records").fetchone()[0] > 2000  # prompts' text
    if store_url:
        _copy_to_postgres(sqlite_file, store_url)
        sqlite_file.unlink()
    store = Store(tmp_path, url=store_url)
    try:
        with store._reader() as db:
            if store_url:
                version = db.execute("SELECT version FROM anthropic_proxy_schema").fetchone()[0]
                assert version == len(POSTGRES_MIGRATIONS)
            else:
                assert db.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
            assert db.execute("SELECT max(length(search)) FROM records").fetchone()[0] <= 600  # answers only
            assert db.execute("SELECT count(DISTINCT record_id) FROM turns").fetchone()[0] == 5
            if not store_url:  # vacuumed: the pages the prompts' text took are the file system's again
                assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0
        stored = list(store.iter_records(RecordFilter()))
        ids = list(expected)  # the fixture's order: the session's 4 turns, a first call, a text body
        assert [r.id for r in stored if r.cache_break] == [ids[3]]  # turn 4 follows turn 3's edit
        assert {r.id: record_json(r.model_copy(update={"cache_break": None})) for r in stored} == expected
        assert found(store, "walrus") == found(store, "éclair") == [ids[2]]  # turn 3's own prompt
        assert found(store, "narwhal") == [ids[3]]  # answer 3
        assert found(store, "dugong") == found(store, "manatee") == [ids[4]]
        assert found(store, "axolotl") == [ids[5]]
        assert found(store, "role") == []
        # the converted store goes on: a new record is found, the old ones are replaced and deleted as before
        new = Record(request=HttpRequestPart(method="POST", path="/v1/messages", body={
            "messages": [{"role": "user", "content": "a Walrus again"}]}), status="success")
        store.put(new)
        store.flush(60)
        assert set(found(store, "walrus")) == {ids[2], new.id}
        assert store.clear() == 7
        with store._reader() as db:
            assert db.execute("SELECT count(*) FROM turns").fetchone()[0] == 0
    finally:
        store.close()


def test_replacing_a_record_replaces_its_turn(tmp_path: Path):
    store = Store(tmp_path)
    history = [{"role": "user", "content": "old sloth"}, {"role": "assistant", "content": "ok"}]
    record = make_record(body={"messages": [*history, {"role": "user", "content": "new lemur"}]})
    store.put(record)
    store.flush()
    assert found(store, "lemur") == [record.id] and found(store, "sloth") == []  # (history)
    record.request.body = {"messages": [{"role": "user", "content": "now a tapir"}]}
    store.put(record)
    store.flush()
    assert found(store, "tapir") == [record.id] and found(store, "lemur") == []
    store.close()
