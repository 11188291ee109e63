import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from anthropic_proxy.record.capture import Capture, Ending
from anthropic_proxy.record.derive import to_record
from anthropic_proxy.record.model import HttpRequestPart, Record, RecordError, Usage
from anthropic_proxy.store import DB_NAME, RecordFilter, Store, parse_time_range, record_json

KEY = "sk-ant-api03-" + "S3cr3tM1ddl3" * 5 + "-AbCd"


def make_record(**fields) -> Record:
    body = fields.pop("body", {"model": fields.get("model", "claude-sonnet-4-5"),
                               "messages": [{"role": "user", "content": "hello there"}]})
    return Record(request=HttpRequestPart(method="POST", path="/v1/messages", headers={"x-api-key": "masked"},
                                          body=body), **fields)


@pytest.fixture
def store(tmp_path: Path, store_url: str):
    """A store on each backend (see `store_url` in conftest.py)."""
    store = Store(tmp_path, url=store_url)
    yield store
    store.close()


def test_put_then_read_back(store: Store):
    record = make_record(model="claude-opus-4-1", status="success", usage=Usage(input_tokens=12, output_tokens=3))
    store.put(record)
    store.flush()
    assert store.get(record.id) == record
    rows, total = store.query(RecordFilter())
    assert total == 1 and rows[0]["id"] == record.id and rows[0]["usage"]["inputTokens"] == 12
    assert "chunks" not in rows[0] and "body" not in rows[0]["request"]
    assert rows[0]["preview"] == "hello there"


def test_latest_put_wins(store: Store):
    record = make_record()
    store.put(record)
    final = record.model_copy(update={"status": "success"})
    store.put(final)
    store.flush()
    assert store.get(record.id).status == "success"
    assert store.query(RecordFilter())[1] == 1


def test_filters_paging_and_order(store: Store):
    now = datetime.now(UTC)
    records = [make_record(model=m, status=s, provider=p, timestamp=now - timedelta(minutes=i))
               for i, (m, s, p) in enumerate([("a", "success", "anthropic"), ("b", "error", "openrouter"),
                                              ("a", "error", "anthropic"), ("a", "success", "anthropic")])]
    records.append(make_record(model="a", status="success", timestamp=now - timedelta(days=3)))
    for record in records:
        store.put(record)
    store.flush()
    rows, total = store.query(RecordFilter(model="a"), page=1, limit=2)
    assert total == 4 and [r["id"] for r in rows] == [records[0].id, records[2].id]
    rows, _ = store.query(RecordFilter(model="a"), page=2, limit=2)
    assert [r["id"] for r in rows] == [records[3].id, records[4].id]
    assert store.query(RecordFilter(status="error"))[1] == 2
    assert store.query(RecordFilter(provider="openrouter"))[1] == 1
    assert store.query(RecordFilter(since=parse_time_range("24h")))[1] == 4


def test_full_text_search_over_prompt_and_answer(store: Store):
    asked = make_record(body={"messages": [{"role": "user", "content": [{"type": "text", "text": "Refactor Parser"}]}]})
    answered = make_record(message={"content": [{"type": "text", "text": "Use a PARSER combinator"}]})
    other = make_record()
    for record in (asked, answered, other):
        store.put(record)
    store.flush()
    rows, total = store.query(RecordFilter(q="parser"))
    assert total == 2 and {r["id"] for r in rows} == {asked.id, answered.id}


def test_iter_records_streams_all_in_order(store: Store):
    now = datetime.now(UTC)
    records = [make_record(timestamp=now - timedelta(seconds=i)) for i in range(450)]
    for record in records:
        store.put(record)
    store.flush()
    ids = [r.id for r in store.iter_records(RecordFilter())]
    assert ids == [r.id for r in reversed(records)]


def test_keys_never_reach_the_database_file(tmp_path: Path):
    store = Store(tmp_path)
    record = make_record(body={"messages": [{"role": "user", "content": f"my key {KEY}"}]},
                         error=RecordError(type="x", message=f"Bearer {KEY}"))
    store.put(record)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob(DB_NAME + "*"))
    assert KEY[10:-4].encode() not in raw
    assert KEY[:10].encode() in raw


def test_records_survive_reopen_and_orphans_are_closed(tmp_path: Path, store_url: str):
    store = Store(tmp_path, url=store_url)
    done, pending = make_record(status="success"), make_record()
    store.put(done)
    store.put(pending)
    store.close()
    reopened = Store(tmp_path, url=store_url)
    try:
        assert reopened.get(done.id).status == "success"
        orphan = reopened.get(pending.id)
        assert orphan.status == "error" and orphan.error.type == "proxy_stopped"
        assert reopened.query(RecordFilter(status="pending"))[1] == 0
    finally:
        reopened.close()


def test_retention_by_count_and_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_url: str):
    monkeypatch.setattr("anthropic_proxy.store.writer.PRUNE_EVERY", 1)
    store = Store(tmp_path, url=store_url, max_records=3, retention_days=1)
    now = datetime.now(UTC)
    old = make_record(timestamp=now - timedelta(days=2))
    fresh = [make_record(timestamp=now - timedelta(seconds=i)) for i in range(5)]
    for record in [old, *fresh]:
        store.put(record)
    store.flush()
    store.put(make_record(timestamp=now + timedelta(seconds=1)))  # one more write runs the prune
    store.flush()
    rows, total = store.query(RecordFilter())
    assert total == 3
    assert old.id not in {r["id"] for r in rows}
    store.close()


def test_schema_is_versioned(tmp_path: Path):
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] >= 1
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("PRAGMA user_version = 999")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        Store(tmp_path)


def test_clear_and_stats(store: Store):
    store.put(make_record())
    assert store.clear() == 1
    stats = store.stats()
    assert stats["records"] == 0 and stats["bytes"] > 0


def test_time_range_validation():
    assert parse_time_range(None) is None
    with pytest.raises(ValueError, match="timeRange"):
        parse_time_range("2w")


@pytest.mark.parametrize("raw", [
    b'{"model": "m", "messages": [{"role": "user", "content": "h\\u00e9llo \\ud83d\\ude00"}], '
    b'"n": 123456789012345678901234567890}',
    b'{"messages": [{"role": "user", "content": "lone \\ud800 surrogate"}]}',
    b"not json at all",
    b"",
])
def test_a_request_body_handed_over_as_bytes_is_stored_as_parsed(store: Store, raw: bytes):
    """The proxy gives the writer a call's capture (the body's bytes) instead of a record: the record stored is the
    one derived from it, as a record put as it is would be stored."""
    capture = Capture(id=uuid.uuid4().hex, started=time.time(), method="POST", path="/v1/messages",
                      request_headers={"x-api-key": "masked"}, request=raw, status=200, response=b'{"input_tokens":3}',
                      ending=Ending("completed"), duration_ms=1.5)
    derived = to_record(capture, store.prices)
    encoded = derived.model_copy(update={"id": uuid.uuid4().hex})
    store.put(capture)
    store.put(encoded)
    store.flush()
    assert store._writer is not None and not store._writer.queued  # what follows reads the database
    assert store.get(capture.id) == derived
    assert record_json(store.get(capture.id)) == record_json(derived)
    assert store.get(encoded.id).request == store.get(capture.id).request
