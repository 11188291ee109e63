"""The store on PostgreSQL as a team runs it: several instances on one database (the tests shared by both
backends are in test_store.py and test_dedup_store.py, parametrised by `store_url`)."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fakes.postgres import PG_PASSWORD, PostgresServer

from anthropic_proxy.store import RecordFilter, Store
from anthropic_proxy.store.dialects import check_store_url, mask_url

from .test_dedup_store import counts, session_records
from .test_store import make_record


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    return postgres.url(postgres.create_database(), password=PG_PASSWORD)


def wait_until(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_instances_share_records_and_close_only_their_own_orphans(tmp_path: Path, url: str):
    # Two instances start at once on an empty database: one migrates, the other waits for it.
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda name: Store(tmp_path / name, url=url), ["a", "b"])
    try:
        in_a, in_b, done = make_record(), make_record(), make_record(status="success")
        a.put(in_a)
        b.put(in_b)
        b.put(done)
        a.flush()
        b.flush()
        for store in (a, b):
            assert {r["id"] for r in store.query(RecordFilter())[0]} == {in_a.id, in_b.id, done.id}
        b.close()  # b "crashes" with a pending record, and starts again (same host and state dir)
        b = Store(tmp_path / "b", url=url)
        assert b.get(in_b.id).status == "error" and b.get(in_b.id).error.type == "proxy_stopped"
        assert b.get(in_a.id).status == "pending", "another live instance's record stays in flight"
        a.put(in_a.model_copy(update={"status": "success"}))
        a.flush()
        assert b.get(in_a.id).status == "success"
        # an instance that went silent (its host died) leaves orphans the next instance to start closes
        late = make_record()
        a.put(late)
        a.flush()
        with a._reader() as db:
            db.execute("UPDATE instances SET seen = 0 WHERE id = ?", (a.instance_id,))
        Store(tmp_path / "c", url=url).close()
        assert b.get(late.id).status == "error"
    finally:
        a.close()
        b.close()


def test_concurrent_writers_share_pieces(tmp_path: Path, url: str):
    """Two instances writing the same conversation at once store its pieces once."""
    records = list(session_records(30, seed=7))
    alone = Store(tmp_path / "alone", url=url)
    for record in records:
        alone.put(record)
    alone.flush()
    single = counts(alone)
    alone.clear()
    a, b = Store(tmp_path / "a", url=url), Store(tmp_path / "b", url=url)
    try:
        copies = [r.model_copy(update={"id": r.id + "-b"}) for r in records]
        for mine, theirs in zip(records, copies, strict=True):
            a.put(mine)
            b.put(theirs)
        a.flush()
        b.flush()
        both = counts(a)
        assert both["records"] == 60 and both["blobs"] == single["blobs"] and both["nodes"] == single["nodes"]
        assert b.get(records[-1].id) == records[-1] and a.get(copies[-1].id) == copies[-1]
    finally:
        for store in (alone, a, b):
            store.close()


def test_writes_survive_a_lost_connection(tmp_path: Path, url: str, postgres: PostgresServer):
    store = Store(tmp_path, url=url)
    try:
        store.put(make_record())
        store.flush()
        import psycopg

        with psycopg.connect(postgres.url(), autocommit=True) as admin:  # the server drops the writer
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'anthropic-proxy'")
        record = make_record(status="success")
        store.put(record)
        wait_until(lambda: store.get(record.id) is not None)
        assert store.unsaved == 0 and store.lost == 0
    finally:
        store.close()


def test_the_password_never_shows(tmp_path: Path, url: str):
    store = Store(tmp_path, url=url)
    try:
        stats = store.stats()
        assert PG_PASSWORD not in repr(stats) and stats["backend"] == "postgresql"
        assert stats["path"] == url.replace(PG_PASSWORD, "***") and stats["bytes"] > 0
        assert store.dialect.scrub(f"failed for {PG_PASSWORD}") == "failed for ***"
    finally:
        store.close()
    assert mask_url("postgresql://u:p%40ss@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"
    assert mask_url("postgres://h/db?user=u&password=secret&x=1") == "postgres://h/db?user=u&password=***&x=1"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    check_store_url("")
    with pytest.raises(ValueError, match=r"store_url must be.*\*\*\*"):
        check_store_url("mysql://u:hunter2@h/db")


def test_without_psycopg_the_error_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(RuntimeError, match=r"pip install 'anthropic-proxy\[postgres\]'"):
        Store(tmp_path, url="postgresql://u:pw@127.0.0.1/db")


def test_an_instance_keeps_saying_it_is_alive(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("anthropic_proxy.store.writer.HEARTBEAT_SECONDS", 0.1)
    store = Store(tmp_path, url=url)

    def seen() -> float:
        with store._reader() as db:
            return db.execute("SELECT seen FROM instances WHERE id = ?", (store.instance_id,)).fetchone()[0]

    try:
        first = seen()
        wait_until(lambda: seen() > first, timeout=5)
    finally:
        store.close()
    with store._reader() as db:  # a clean shutdown leaves the table
        assert db.execute("SELECT count(*) FROM instances").fetchone()[0] == 0
