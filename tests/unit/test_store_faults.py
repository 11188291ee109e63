"""The store when the disk refuses writes: records wait in memory, are retried, and land once it works."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from anthropic_proxy.store import DB_NAME, RecordFilter, Store

from .test_store import make_record


def wait_until(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_locked_database_keeps_records_and_writes_them_later(tmp_path: Path):
    store = Store(tmp_path, busy_timeout=0.1)
    try:
        blocker = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database
        records = [make_record(status="success") for _ in range(3)]
        for record in records:
            store.put(record)
        wait_until(lambda: store.unsaved == 3 and store.last_write_error is not None)
        assert "locked" in store.stats()["lastWriteError"]
        blocker.execute("ROLLBACK")
        blocker.close()
        wait_until(lambda: store.unsaved == 0 and store.last_write_error is None)
        assert {r["id"] for r in store.query(RecordFilter())[0]} == {r.id for r in records}
        assert store.lost == 0
    finally:
        store.close()


def test_full_disk_keeps_records_in_memory_until_space_returns(tmpfs):
    tiny_disk = tmpfs("2m")
    store = Store(tiny_disk)
    try:
        filler = tiny_disk / "filler"
        with open(filler, "wb", buffering=0) as file:  # take every free byte
            try:
                while True:
                    file.write(b"x" * 4096)
            except OSError:
                pass
        big = "y" * 20_000
        records = [make_record(body={"messages": [{"role": "user", "content": big}]}) for _ in range(5)]
        for record in records:
            store.put(record)
        wait_until(lambda: store.unsaved == 5)
        assert "full" in (store.last_write_error or "") or "disk" in (store.last_write_error or "")
        filler.unlink()  # space comes back
        wait_until(lambda: store.unsaved == 0)
        assert store.query(RecordFilter())[1] == 5 and store.lost == 0
    finally:
        store.close()


def test_a_killed_writer_process_is_replaced_and_nothing_is_lost(tmp_path: Path):
    store = Store(tmp_path)
    try:
        first = [make_record(status="success") for _ in range(3)]
        for record in first:
            store.put(record)
        store.flush()
        writer = store._writer
        old_pid = writer._process.pid
        writer._process.kill()
        writer._process.wait()
        wait_until(lambda: "writer process stopped" in (store.last_write_error or "")
                   or writer._process.pid != old_pid)
        later = [make_record(status="success") for _ in range(3)]
        for record in later:
            store.put(record)  # sent to a dead process, or queued while it restarts
        wait_until(lambda: writer._process.pid != old_pid and not writer.queued)
        assert store.stats()["writerRestarts"] == 1
        assert store.last_write_error is None  # the new process reported: healthy again
        assert {r["id"] for r in store.query(RecordFilter())[0]} == {r.id for r in first + later}
        assert store.lost == 0
    finally:
        store.close()


def test_the_writer_process_ends_with_the_store_and_with_the_proxy(tmp_path: Path):
    store = Store(tmp_path)
    process = store._writer._process
    store.put(make_record(status="success"))
    store.close()
    assert process.poll() == 0  # a clean stop: it wrote, then exited
    assert Store(tmp_path, close_orphans=False).query(RecordFilter())[1] == 1

    # The proxy killed outright (no close): the writer sees its socket end, writes what it holds, and exits.
    script = (f"from pathlib import Path; from anthropic_proxy.store import Store; "
              f"from tests.unit.test_store import make_record; import os, sys; "
              f"s = Store(Path({str(tmp_path / 'b')!r})); s.put(make_record(status='success')); "
              f"import time; time.sleep(0.5); "
              f"print(s._writer._process.pid, flush=True); os._exit(0)")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).resolve().parents[2])
    pid = int(child.stdout.split()[0])
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid))
    assert Store(tmp_path / "b", close_orphans=False).query(RecordFilter())[1] == 1


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return "zombie"


def test_a_call_still_running_gets_its_pending_row_without_anyone_asking(tmp_path: Path):
    """A pending record is written once its call has run PENDING_DELAY (a crash then leaves a trace to close)."""
    store = Store(tmp_path)
    try:
        record = make_record()  # pending
        store.put(record)

        def rows() -> list[tuple[str, str]]:
            with sqlite3.connect(tmp_path / DB_NAME) as db:  # no flush: only what the writer did by itself
                return db.execute("SELECT id, status FROM records").fetchall()

        wait_until(lambda: rows() == [(record.id, "pending")], timeout=5)
    finally:
        store.close()


def test_a_store_thread_that_fails_is_started_again_and_says_so(tmp_path: Path):
    """Whatever ends a loop of the store's threads (here a SystemExit out of the receiver, as a log handler that
    cannot print raises) must not leave later records in memory for good, and stats (so /health) say it."""
    store = Store(tmp_path)
    try:
        writer = store._writer
        apply, failures = writer._apply, []

        def failing_once(report):
            if not failures:
                failures.append(report)
                raise SystemExit(1)
            apply(report)

        writer._apply = failing_once
        store.put(make_record(status="success"))
        wait_until(lambda: failures)
        later = [make_record(status="success") for _ in range(3)]
        for record in later:
            store.put(record)
        wait_until(lambda: all(r.id not in writer.queued for r in later))
        stats = store.stats()
        assert stats["threadRestarts"] == 1 and "receiver thread failed (SystemExit(1))" in stats["lastThreadError"]
        assert writer._receiver.is_alive() and writer._sender.is_alive()
        assert {r.id for r in later} <= {r["id"] for r in store.query(RecordFilter())[0]}
    finally:
        store.close()


def test_a_deleted_database_file_is_re_created_with_its_schema(tmp_path: Path):
    store = Store(tmp_path / "state")
    try:
        store.put(make_record(status="success"))
        store.flush()
        subprocess.run(["rm", "-rf", str(tmp_path / "state")], check=True)
        assert store.stats()["readError"] is not None and store.stats()["records"] is None  # no raise
        wait_until(lambda: store.stats()["notice"] is not None)
        later = make_record(status="success")
        store.put(later)
        store.flush()
        assert [r["id"] for r in store.query(RecordFilter())[0]] == [later.id]
        assert "deleted or replaced" in store.stats()["notice"] and store.stats()["readError"] is None
    finally:
        store.close()
