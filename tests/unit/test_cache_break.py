"""Cache-break explanations in the store: exact on a real Claude Code session's shape, independent of the order
records are written in, and neither lost nor doubled when the writer process is killed and replaced."""

from __future__ import annotations

import copy
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from fakes.claude_session import session_records

from anthropic_proxy.record.model import Record
from anthropic_proxy.record.pricing import PriceBook, cache_miss_usd
from anthropic_proxy.store import RecordFilter, Store
from anthropic_proxy.store.cache_break import prompt_facts, strip_markers

from .test_store import make_record
from .test_store_faults import wait_until


def _edit(record: Record, change) -> Record:
    record.request.body = copy.deepcopy(record.request.body)
    change(record.request.body)
    return record


def _session(turns: int = 8) -> list[Record]:
    """A session whose call 3 edits the first message, call 5 changes the Bash tool's description."""
    records = list(session_records(turns, seed=11))

    def edit_first(body):
        body["messages"][0]["content"][0]["text"] += " (edited)"

    def change_bash(body):
        bash = next(t for t in body["tools"] if t["name"] == "Bash")
        bash["description"] += " Also."

    _edit(records[3], edit_first)
    for record in records[4:]:  # the edit stays in the history of the calls that follow
        _edit(record, edit_first)
    for record in records[5:]:
        _edit(record, change_bash)
    return records


def _breaks(store: Store) -> dict[str, dict]:
    return {r.id: r.cache_break.model_dump(by_alias=True) for r in store.iter_records(RecordFilter())
            if r.cache_break is not None}


def _check(store: Store, records: list[Record]) -> None:
    found = _breaks(store)
    assert set(found) == {records[3].id, records[5].id}
    edited, tools = found[records[3].id], found[records[5].id]
    assert (edited["previousId"], edited["at"], edited["index"], edited["detail"]) == \
        (records[2].id, "messages", 0, "message 0 edited (user)")
    assert (tools["previousId"], tools["at"], tools["detail"]) == \
        (records[4].id, "tools", "tool `Bash` description changed")
    bash = next(i for i, t in enumerate(records[5].request.body["tools"]) if t["name"] == "Bash")
    assert tools["index"] == bash
    # Everything the previous call cached was lost at a tool (the first section): its cache reads plus writes,
    # at most what this call paid in full (3 input + 900 written in the fake session's usage).
    assert tools["uncachedTokens"] == 903
    book = PriceBook()
    assert tools["extraCostUsd"] == cache_miss_usd(records[5].model, 903, book, records[5].timestamp,
                                                   written=True, long_ttl=False) > 0
    stats = store.aggregate(RecordFilter())["cacheBreaks"]
    assert stats["count"] == 2
    assert stats["extraCostUsd"] == pytest.approx(edited["extraCostUsd"] + tools["extraCostUsd"], abs=1e-8)
    assert {e["at"]: e["count"] for e in stats["byAt"]} == {"messages": 1, "tools": 1}
    listed = {s["id"]: s["cacheBreak"] for s in store.query(RecordFilter(), limit=100)[0]}
    assert listed[records[5].id] == tools and listed[records[1].id] is None


def test_a_stable_session_has_no_break_and_edits_are_explained(tmp_path: Path):
    store = Store(tmp_path)
    try:
        stable = list(session_records(6, seed=3))
        for record in stable:
            store.put(record)
        store.flush()
        assert _breaks(store) == {}
        store.clear()
        records = _session()
        for record in records:
            store.put(record)
        store.flush()
        _check(store, records)
    finally:
        store.close()


def test_written_out_of_order_and_across_a_writer_restart(tmp_path: Path, store_url: str):
    """Later calls written first (their previous call still running), the writer killed in between, records
    written twice: the explanations are the same as in order, once each (on both databases)."""
    records = _session()
    store = Store(tmp_path, url=store_url)
    try:
        for record in reversed(records[3:]):
            store.put(record)
        store.flush()
        writer = store._writer
        old_pid = writer._process.pid
        writer._process.kill()
        writer._process.wait()
        for record in records[:4]:  # records[3] a second time
            store.put(record)
        wait_until(lambda: writer._process.pid != old_pid and not writer.queued)
        store.flush()
        assert store.stats()["writerRestarts"] == 1
        assert store.query(RecordFilter())[1] == len(records)
        _check(store, records)
    finally:
        store.close()


def test_ttl_and_session_less_calls(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_PROXY_CACHE_TTL_SCALE", "0.01")  # 5 minutes -> 3 s (the writer inherits it)
    records = list(session_records(4, seed=5))
    start = records[0].timestamp
    for record, seconds in zip(records, (0, 2, 4, 10), strict=True):  # 2 s apart, the last call 6 s later
        record.session_id = None
        record.timestamp = start + timedelta(seconds=seconds)
    store = Store(tmp_path)
    try:
        for record in records:
            store.put(record)
        store.flush()
        found = _breaks(store)
        assert list(found) == [records[3].id]
        assert found[records[3].id]["at"] == "ttl" and found[records[3].id]["index"] is None
        assert found[records[3].id]["previousId"] == records[2].id
        assert "the cache lives 3 s" in found[records[3].id]["detail"]
    finally:
        store.close()


def test_prompt_facts_find_the_last_breakpoint():
    body = {"tools": [{"name": "a", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "system": "be brief", "messages": [{"role": "user", "content": "hi"}]}
    head, point = prompt_facts("/v1/messages", body)
    assert point == '["tools", 0, 3600]' and head is not None
    body["messages"][0]["content"] = [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]
    assert prompt_facts("/v1/messages?beta=true", body)[1] == '["messages", 0, 300]'
    assert prompt_facts("/v1/messages", {"messages": [{"role": "user", "content": "hi"}]})[1] is None
    assert prompt_facts("/v1/messages/count_tokens", body) == (None, None)
    assert strip_markers(body["messages"][0]) == {"role": "user", "content": [{"type": "text", "text": "hi"}]}


def _tool(name: str, description: str = "does things") -> dict:
    return {"name": name, "description": description, "input_schema": {"type": "object"}}


def _call(session: str, n: int, *, tools: list, system, messages: list) -> Record:
    marked = copy.deepcopy(messages)
    marked[-1]["content"] = [{"type": "text", "text": marked[-1]["content"], "cache_control": {"type": "ephemeral"}}]
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "tools": tools, "system": system, "messages": marked}
    record = make_record(body=body, status="success", model="claude-sonnet-4-5", session_id=session)
    record.timestamp = record.timestamp.replace(microsecond=0) + timedelta(seconds=n)
    return record


@pytest.fixture(scope="module")
def named_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("named"))
    yield store
    store.close()


USER = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}, {"role": "user", "content": "3"}]
READ, BASH, EDIT = _tool("Read"), _tool("Bash"), _tool("Edit")


@pytest.mark.parametrize(("second", "expected"), [
    ({"tools": [BASH, READ, EDIT]}, ("tools", 0, "tools reordered (`Bash` moved to 0)")),
    ({"tools": [READ, EDIT]}, ("tools", 1, "tool `Bash` removed")),
    ({"tools": [READ, BASH, EDIT, _tool("Grep")]}, ("tools", 3, "tool `Grep` added")),
    ({"tools": [READ, _tool("Bash", "new words"), EDIT]}, ("tools", 1, "tool `Bash` description changed")),
    ({"system": "be terse"}, ("system", 0, "system prompt changed")),
    ({"messages": USER[:1]}, ("messages", 1, "conversation cut back to 1 message(s)")),
    ({"messages": [USER[0], {"role": "assistant", "content": "2"}, USER[2]]},
     ("messages", 1, "message 1 edited (assistant)")),
    ({"messages": [*USER, {"role": "assistant", "content": "4"}, {"role": "user", "content": "5"}]}, None),
])
def test_what_changed_is_named(named_store: Store, second, expected):
    store = named_store
    first = {"tools": [READ, BASH, EDIT], "system": "be brief", "messages": USER}
    session = uuid.uuid4().hex
    store.put(_call(session, 0, **first))
    later = _call(session, 1, **{**first, **second})
    store.put(later)
    store.flush()
    found = store.get(later.id).cache_break
    assert (found and (found.at, found.index, found.detail)) == expected


def test_a_subagent_between_two_calls_is_not_a_break(named_store: Store):
    """Main conversation, a subagent (same session and model, its own system prompt), main again, subagent
    again: each continues its own cache. The subagent's first call is compared with the main one's."""
    store, session = named_store, uuid.uuid4().hex
    main = {"tools": [READ, BASH, EDIT], "system": "be brief"}
    sub = {"tools": [READ, BASH, EDIT], "system": "you are a subagent: search"}
    calls = [_call(session, 0, **main, messages=USER[:1]), _call(session, 1, **main, messages=USER),
             _call(session, 2, **sub, messages=[{"role": "user", "content": "find it"}]),
             _call(session, 3, **main, messages=[*USER, {"role": "assistant", "content": "4"},
                                                 {"role": "user", "content": "5"}]),
             _call(session, 4, **sub, messages=[{"role": "user", "content": "find it"},
                                                {"role": "assistant", "content": "found"},
                                                {"role": "user", "content": "more"}])]
    for record in reversed(calls):  # any order
        store.put(record)
    store.flush()
    found = [store.get(c.id).cache_break for c in calls]
    assert [f and (f.previous_id, f.at, f.index) for f in found] == [
        None, None, (calls[1].id, "system", 0), None, None]
