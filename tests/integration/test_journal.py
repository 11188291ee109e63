"""The store's backlog lives on disk (state_dir/journal): bounded memory whatever the writer's speed, and nothing lost
when the writer or the proxy is killed, or the disk fills up (see docs/journal.md and the README's bounds)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fakes.harness import FAKE_API_KEY, ProxyProcess

FILLER = "x" * (20 << 10)  # a 20 KB prompt: what a call of Claude Code's carries, give or take


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def calls(url: str, tags: list[str], done: dict[str, float], concurrency: int = 10,
                stop: threading.Event | None = None) -> None:
    """One non-streamed call per tag (x-test-tag), each with a unique prompt; `done[tag]` is when its answer ended."""
    pending = list(reversed(tags))
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=concurrency),
                                 headers={"x-api-key": FAKE_API_KEY}) as client:
        async def worker() -> None:
            while pending and not (stop and stop.is_set()):
                tag = pending.pop()
                body = {"model": "claude-sonnet-4-5", "max_tokens": 16,
                        "messages": [{"role": "user", "content": f"{tag} {FILLER}"}]}
                try:
                    response = await client.post("/v1/messages", json=body, headers={"x-test-tag": tag})
                except httpx.HTTPError:
                    continue  # (the proxy was killed under it)
                if response.status_code == 200:
                    done[tag] = time.time()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def stored_tags(proxy: ProxyProcess) -> list[str]:
    """The x-test-tag of every record in the store, one per record."""
    tags, page = [], 1
    while items := proxy.list_records(limit=500, page=page)["data"]:
        tags += [item["request"]["headers"].get("x-test-tag", "") for item in items]
        page += 1
    return tags


def wait_stored(proxy: ProxyProcess, count: int, timeout: float = 30) -> list[str]:
    """The tags of the stored records once there are `count` and the writer is done (the pages of a list taken
    while records go in may overlap)."""
    deadline = time.monotonic() + timeout
    while (store := proxy.health()["store"])["queued"] or (store["records"] or 0) < count:
        assert time.monotonic() < deadline, f"{count} records are not stored: {store}"
        time.sleep(0.2)
    return stored_tags(proxy)


@pytest.fixture
def load() -> Iterator:
    """Run `calls` in a thread; yields a starter returning (thread, done, stop)."""
    threads: list[tuple[threading.Thread, threading.Event]] = []

    def start(url: str, tags: list[str], concurrency: int = 10):
        done: dict[str, float] = {}
        stop = threading.Event()
        thread = threading.Thread(target=lambda: asyncio.run(calls(url, tags, done, concurrency, stop)), daemon=True)
        thread.start()
        threads.append((thread, stop))
        return thread, done, stop

    yield start
    for thread, stop in threads:
        stop.set()
        thread.join(timeout=30)


def test_memory_stays_bounded_while_the_writer_is_stopped(start_proxy, test_tag):
    proxy = start_proxy()
    assert proxy.proc is not None
    warm_up = [f"{test_tag}-warm-{i}" for i in range(200)]
    asyncio.run(calls(proxy.url, warm_up, {}))
    wait_stored(proxy, len(warm_up))
    writer = proxy.writer_pid()
    before = rss_mb(proxy.proc.pid) + rss_mb(writer)
    os.kill(writer, signal.SIGSTOP)
    try:
        tags = [f"{test_tag}-{i}" for i in range(1000)]  # 20 MB of prompts the writer does not take
        done: dict[str, float] = {}
        started = time.monotonic()
        asyncio.run(calls(proxy.url, tags, done))
        assert len(done) == len(tags), "every call went through while the writer was stopped"
        assert time.monotonic() - started < 30
        grown = rss_mb(proxy.proc.pid) + rss_mb(writer) - before
        assert grown < 10, f"proxy + writer grew {grown:.1f} MB while the writer was stopped"
    finally:
        os.kill(writer, signal.SIGCONT)
    stored = wait_stored(proxy, len(warm_up) + len(tags))
    assert sorted(stored) == sorted(warm_up + tags)  # each once
    assert proxy.health()["store"]["lost"] == 0


def test_a_killed_writer_loses_nothing(start_proxy, test_tag, load):
    proxy = start_proxy()
    tags = [f"{test_tag}-{i}" for i in range(300)]
    thread, done, _ = load(proxy.url, tags)
    for _ in range(2):
        while len(done) < 100 * (_ + 1):
            time.sleep(0.01)
        os.kill(proxy.writer_pid(), signal.SIGKILL)
        time.sleep(0.5)  # (a new writer is started)
    thread.join(timeout=60)
    assert len(done) == len(tags)
    stored = wait_stored(proxy, len(tags))
    assert sorted(stored) == sorted(tags)
    assert proxy.health()["store"]["writerRestarts"] == 2


def test_a_killed_proxy_loses_no_call_that_completed_a_second_before(start_proxy, test_tag, load):
    """SIGKILL of the proxy and its writer together under load: after a restart, every call whose answer ended a
    second before the kill is stored, once; the calls cut short are closed, none is left pending."""
    proxy = start_proxy()
    assert proxy.proc is not None
    tags = [f"{test_tag}-{i}" for i in range(5000)]
    thread, done, stop = load(proxy.url, tags)
    while len(done) < 200:
        time.sleep(0.01)
    writer = proxy.writer_pid()
    os.kill(writer, signal.SIGSTOP)  # (the writer behind: the journal must hold what the database has not)
    time.sleep(1.5)
    proxy.proc.send_signal(signal.SIGKILL)
    os.kill(writer, signal.SIGKILL)
    killed_at = time.time()
    stop.set()
    thread.join(timeout=30)
    proxy.proc.wait()
    proxy.start()
    bound = sorted(tag for tag, at in done.items() if at < killed_at - 1.0)
    assert len(bound) >= 150
    deadline = time.monotonic() + 30
    while not set(bound) <= set(stored := stored_tags(proxy)):
        assert time.monotonic() < deadline, f"{len(set(bound) - set(stored))} calls lost: {proxy.health()}"
        time.sleep(0.2)
    assert len(stored) == len(set(stored))
    assert proxy.list_records(status="pending")["total"] == 0


def test_a_torn_journal_tail_is_skipped_and_said(start_proxy, test_tag):
    proxy = start_proxy()
    assert proxy.proc is not None
    writer = proxy.writer_pid()
    os.kill(writer, signal.SIGSTOP)
    tags = [f"{test_tag}-{i}" for i in range(3)]
    asyncio.run(calls(proxy.url, tags, {}, concurrency=1))
    time.sleep(0.5)
    proxy.proc.send_signal(signal.SIGKILL)
    os.kill(writer, signal.SIGKILL)
    proxy.proc.wait()
    newest = sorted((proxy.state_dir / "journal").glob("*.seg"))[-1]
    os.truncate(newest, newest.stat().st_size - 100)  # the last call's entry, cut short by the crash
    proxy.start()
    assert sorted(wait_stored(proxy, 2)) == tags[:2]
    deadline = time.monotonic() + 10
    while "torn tail" not in proxy.logs():
        assert time.monotonic() < deadline, proxy.logs()
        time.sleep(0.1)


def test_a_full_disk_keeps_calls_flowing_and_records_resume(fake_anthropic, tmp_path, test_tag, tmpfs, request):
    tiny_disk = tmpfs("8m")
    proxy = ProxyProcess(workdir=tmp_path, upstream=fake_anthropic.url)
    proxy.state_dir = tiny_disk / "state"
    proxy.start()
    request.addfinalizer(proxy.close)
    first = [f"{test_tag}-before"]
    asyncio.run(calls(proxy.url, first, {}))
    wait_stored(proxy, 1)
    filler = tiny_disk / "filler"
    with filler.open("wb") as file:  # take every free byte
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError:
            pass
    tags = [f"{test_tag}-{i}" for i in range(50)]
    done: dict[str, float] = {}
    asyncio.run(calls(proxy.url, tags, done))
    assert len(done) == len(tags), "calls go on while the disk is full"
    deadline = time.monotonic() + 10
    while (health := proxy.health())["status"] != "degraded":
        assert time.monotonic() < deadline, health
        time.sleep(0.1)
    filler.unlink()
    stored = wait_stored(proxy, 1 + len(tags))
    assert sorted(stored) == sorted(first + tags)
    deadline = time.monotonic() + 10
    while (health := proxy.health())["status"] != "ok":
        assert time.monotonic() < deadline, health
        time.sleep(0.1)
