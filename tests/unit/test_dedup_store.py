"""The store keeps bodies as content-addressed pieces: exact round trips, linear size, garbage collection,
migration of v1/v2 databases, and search over each record's own turn."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes.claude_session import session_records

from anthropic_proxy.record.bodies import new_turn
from anthropic_proxy.record.model import HttpRequestPart, Record, RecordError
from anthropic_proxy.store import DB_NAME, RecordFilter, Store, record_json
from anthropic_proxy.store.schema import SQLITE_MIGRATIONS

from .test_store import KEY, make_record


@pytest.fixture
def store(tmp_path: Path, store_url: str):
    """A store on each backend (see `store_url` in conftest.py)."""
    store = Store(tmp_path, url=store_url)
    yield store
    store.close()


def counts(store: Store) -> dict[str, int]:
    with store._reader() as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("records", "blobs", "nodes", "record_refs")}


def stored_bytes(store: Store) -> int:
    """The text the store keeps for its records (whatever the database's page overhead)."""
    with store._reader() as db:
        return sum(db.execute(f"SELECT coalesce(sum(length({c})), 0) FROM {t}").fetchone()[0]
                   for t, c in (("records", "data"), ("records", "summary"), ("records", "search"), ("blobs", "data")))


def db_size(path: Path) -> int:
    db = sqlite3.connect(path / DB_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return sum(p.stat().st_size for p in path.glob(DB_NAME + "*"))


def odd_records() -> list[Record]:
    """Bodies of every shape the proxy can record, and values that are easy to get subtly wrong."""
    system = [{"type": "text", "text": "You are Claude Code. " * 30, "cache_control": {"type": "ephemeral"}}]
    tools = [{"name": f"tool{i}", "description": "d" * 100, "input_schema": {"type": "object"}} for i in range(5)]
    messages = [{"role": "user", "content": "ünïcødé — 日本語 \u2028 \x00 \ud800 lone surrogate"},
                {"role": "assistant", "content": [{"type": "text", "text": "ok", "z": 1, "a": 2.5e-300}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": f"key {KEY}"}]}]
    return [
        make_record(body={"model": "m", "system": system, "tools": tools, "messages": messages, "max_tokens": 9}),
        make_record(body={"tools": tools, "model": "m", "messages": messages[:1], "system": "short"}),
        make_record(body="not json {", status="error", error=RecordError(type="invalid_request_error", message="x")),
        make_record(body=None),
        make_record(body={"messages": []}),
        make_record(body={"messages": "not a list", "system": system}),
        make_record(body=[1, 2, 3]),
        make_record(body={"messages": [{"role": "user", "content": "Bearer\u00a0" + "t0ken" * 8}]}),
        make_record(provider="openrouter", upstream_model="google/gemini-2.5-flash",
                    upstream_request={"model": "google/gemini-2.5-flash", "messages": [
                        {"role": "system", "content": "s" * 400}, {"role": "user", "content": "hi"}],
                        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}] * 9},
                    body={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
                    message={"content": [{"type": "text", "text": "hello"}]}, upstream_response={"id": "x"}),
    ]


def test_every_record_comes_back_exactly(store: Store):
    records = [*odd_records(), *session_records(12)]
    for record in records:
        store.put(record)
    store.flush()
    for record in records:
        back = store.get(record.id)
        assert record_json(back) == record_json(record)
        masked = record.model_validate(json.loads(record_json(record)))  # what any store keeps: keys masked
        assert back == masked
    by_id = {r.id: record_json(r) for r in store.iter_records(RecordFilter())}
    assert by_id == {r.id: record_json(r) for r in records}


def test_key_order_of_bodies_is_kept(store: Store):
    body = {"tools": [{"name": "x" * 300}], "stream": True, "messages": [{"content": "a", "role": "user"}],
            "model": "m", "system": "y" * 300}
    record = make_record(body=body)
    store.put(record)
    store.flush()
    assert list(store.get(record.id).request.body) == ["tools", "stream", "messages", "model", "system"]
    assert list(store.get(record.id).request.body["messages"][0]) == ["content", "role"]


def test_a_session_is_stored_once_not_once_per_turn(tmp_path: Path):
    """200 turns of a real-shaped session: the store grows with the session, not with turns x history."""
    records = list(session_records(200))
    final_body = len(json.dumps(records[-1].request.body, separators=(",", ":")))
    half = tmp_path / "half"
    store = Store(half)
    for record in records[:100]:
        store.put(record)
    store.close()
    store = Store(tmp_path / "all")
    for record in records:
        store.put(record)
    store.close()
    total, first_half = db_size(tmp_path / "all"), db_size(half)
    # Whole bodies would take ~200 x the final body (quadratic); pieces take a few times it.
    assert total < 8 * final_body, (total, final_body)
    # Linear: the second 100 turns cost about what the first 100 did (quadratic: ~3 times as much).
    assert total < 2.6 * first_half, (total, first_half)
    reopened = Store(tmp_path / "all")
    try:
        assert reopened.get(records[-1].id) == records[-1]
        assert reopened.get(records[0].id) == records[0]
    finally:
        reopened.close()


def test_dedup_growth_is_linear(store: Store):
    """On each backend: the stored text grows with the session, not with turns x history."""
    records = list(session_records(200))
    final_body = len(json.dumps(records[-1].request.body, separators=(",", ":")))
    for record in records[:100]:
        store.put(record)
    store.flush()
    first_half = stored_bytes(store)
    for record in records[100:]:
        store.put(record)
    store.flush()
    total = stored_bytes(store)
    assert total < 8 * final_body, (total, final_body)
    assert total < 2.6 * first_half, (total, first_half)
    assert store.get(records[-1].id) == records[-1] and store.get(records[0].id) == records[0]


def test_pieces_are_shared_and_collected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_url: str):
    store = Store(tmp_path, url=store_url)
    now = datetime.now(UTC)
    old = list(session_records(6, seed=1, start=now - timedelta(days=3)))
    fresh = list(session_records(6, seed=2, start=now - timedelta(minutes=5)))
    for record in [*old, *fresh]:
        store.put(record)
    store.flush()
    both = counts(store)
    assert both["records"] == 12
    # the captured system and tools are one blob each for both sessions; messages of the shared first turn too
    shared = counts(store)["blobs"]
    store.close()

    monkeypatch.setattr("anthropic_proxy.store.writer.PRUNE_EVERY", 1)
    store = Store(tmp_path, url=store_url, retention_days=1)
    store.put(fresh[-1])  # a write runs the retention pass: the old session goes, with what only it used
    store.flush()
    after = counts(store)
    assert after["records"] == 6 and after["blobs"] < shared and after["nodes"] < both["nodes"]
    for record in fresh:
        assert store.get(record.id) == record
    assert store.clear() == 6
    assert counts(store) == {"records": 0, "blobs": 0, "nodes": 0, "record_refs": 0}
    store.close()


def test_a_replaced_record_drops_the_pieces_only_it_used(store: Store):
    first = make_record(body={"system": "a" * 500, "messages": [{"role": "user", "content": "one"}]})
    store.put(first)
    store.flush()
    body = {"system": "b" * 500, "messages": [{"role": "user", "content": "2"}]}
    second = first.model_copy(update={"request": HttpRequestPart(method="POST", path="/v1/messages", body=body)})
    store.put(second)
    store.flush()
    assert store.get(first.id) == second
    assert counts(store) == {"records": 1, "blobs": 2, "nodes": 1, "record_refs": 2}


def test_deleting_one_branch_keeps_the_shared_prefix(store: Store):
    """Two conversations that share their first messages share those nodes; removing one keeps the other."""
    records = list(session_records(5, seed=3))
    branch = records[3].model_copy(deep=True)
    branch.id = "branch"
    branch.request.body["messages"].append({"role": "assistant", "content": "a different turn"})
    for record in [*records, branch]:
        store.put(record)
    store.flush()
    before = counts(store)
    from anthropic_proxy.store.rows import delete_records
    with store._reader() as db:
        db.begin_write()
        delete_records(db, [records[-1].id, records[-2].id])
        db.commit()
    after = counts(store)
    assert after["records"] == before["records"] - 2 and after["nodes"] < before["nodes"]
    assert store.get("branch") == branch and store.get(records[2].id) == records[2]


def test_keys_are_masked_in_pieces_too(tmp_path: Path):
    store = Store(tmp_path)
    record = make_record(body={"system": f"use {KEY} " * 40, "tools": [{"name": KEY, "d": "x" * 300}],
                               "messages": [{"role": "user", "content": f"my key {KEY}"}]})
    store.put(record)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob(DB_NAME + "*"))
    assert KEY[10:-4].encode() not in raw and KEY[:10].encode() in raw


def test_search_covers_each_records_own_turn_and_answer(store: Store):
    records = list(session_records(6, seed=4))
    records[2].request.body["messages"][-1]["content"].append({"type": "text", "text": "find the Walrus"})
    records[4].message["content"][0]["text"] = "the answer mentions a narwhal"
    for record in records:
        store.put(record)
    store.flush()
    # Turn 2 added the walrus; later turns resend it as history, which is not searched again.
    assert [r["id"] for r in store.query(RecordFilter(q="walrus"))[0]] == [records[2].id]
    assert [r["id"] for r in store.query(RecordFilter(q="NARWHAL"))[0]] == [records[4].id]
    # A first call is found by its prompt (all of its messages are new).
    first = make_record(body={"messages": [{"role": "user", "content": "hello"},
                                           {"role": "user", "content": [{"type": "text", "text": "a Dugong?"}]}]})
    store.put(first)
    store.flush()
    assert [r["id"] for r in store.query(RecordFilter(q="dugong"))[0]] == [first.id]
    with store._reader() as db:
        longest = db.execute("SELECT max(length(search)) FROM records").fetchone()[0]
    assert longest < 20_000  # bounded by a turn, not by the history


def test_new_turn():
    u, a = {"role": "user"}, {"role": "assistant"}
    s = {"role": "system"}
    assert new_turn([u]) == [u]
    assert new_turn([u, a, u, s]) == [u, s]
    assert new_turn([u, a, u, a]) == [u, a]  # a prefill stays with its turn
    assert new_turn([]) == []


def _old_store(tmp_path: Path, version: int, records: list[Record]) -> None:
    """A database as anthropic-proxy wrote it at schema `version` (whole records in `data`)."""
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for number, script in enumerate(SQLITE_MIGRATIONS[:version], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    for r in records:
        text = "\n".join(json.dumps(m) for m in (r.request.body or {}).get("messages", []))  # v2's whole history
        db.execute("INSERT INTO records (id, ts, status, provider, model, session, search, summary, data) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (r.id, r.timestamp.timestamp(), r.status, r.provider, r.model, r.session_id, text.lower(),
                    json.dumps(r.summary()), record_json(r)))
    db.close()


@pytest.mark.parametrize("version", [1, 2])
def test_old_databases_migrate_and_stay_exact(tmp_path: Path, version: int):
    records = [*session_records(8, seed=5), make_record(status="pending")]
    records[3].request.body["messages"][-1]["content"].append({"type": "text", "text": "Manatee"})
    _old_store(tmp_path, version, records)
    store = Store(tmp_path)
    try:
        orphan = records[-1].model_copy(update={"status": "error", "error": RecordError(
            type="proxy_stopped", message="the proxy stopped before this exchange finished")})
        expected = {r.id: record_json(r) for r in [*records[:-1], orphan]}
        assert {r.id: record_json(r) for r in store.iter_records(RecordFilter())} == expected  # readable at once
        deadline = time.monotonic() + 10  # the writer rewrites the old rows when idle
        while counts(store)["record_refs"] == 0 or sqlite3.connect(store.path).execute(
                "SELECT count(*) FROM records WHERE refs IS NULL").fetchone()[0]:
            assert time.monotonic() < deadline, "old rows not rewritten"
            time.sleep(0.05)
        rewritten = {r.id: r for r in store.iter_records(RecordFilter())}
        # Rewritten rows get their cache breaks explained: record 4's history lacks the word record 3 added.
        broken = rewritten[records[4].id].cache_break
        assert broken is not None and (broken.previous_id, broken.at) == (records[3].id, "messages")
        assert broken.detail == f"message {broken.index} edited (user)"
        assert [r.id for r in rewritten.values() if r.cache_break] == [records[4].id]
        rewritten[records[4].id].cache_break = None
        assert {i: record_json(r) for i, r in rewritten.items()} == expected
        assert store.get(records[3].id) == records[3]
        stats = store.aggregate(RecordFilter())
        assert stats["total"] == 9 and stats["tokens"]["input"] == sum(r.usage.input_tokens for r in records)
        # search rebuilt: a record's own turn only (v2 searched the whole history: records 3 to 7)
        assert [r["id"] for r in store.query(RecordFilter(q="manatee"))[0]] == [records[3].id]
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
    db.close()


def test_a_record_that_cannot_be_serialised_does_not_stop_the_writer(store: Store):
    class Weird:
        pass

    bad = make_record(body={"messages": [{"role": "user", "content": Weird()}]})
    good = make_record()
    store.put(bad)
    store.put(good)
    store.flush()
    assert store.get(good.id) == good and store.get(bad.id) is None and store.lost == 1
