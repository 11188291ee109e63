"""A soak: thousands of calls through one proxy keep its memory flat and its store within retention."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from fakes.harness import FAKE_API_KEY

BODY = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "x" * 2000}]}
MAX_RECORDS = 300


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def hammer(url: str, count: int, concurrency: int = 20) -> None:
    remaining = list(range(count))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits,
                                 headers={"x-api-key": FAKE_API_KEY}) as client:
        async def worker() -> None:
            while remaining:
                i = remaining.pop()
                if i % 2:
                    async with client.stream("POST", "/v1/messages", json={**BODY, "stream": True}) as response:
                        assert response.status_code == 200
                        await response.aread()
                else:
                    assert (await client.post("/v1/messages", json=BODY)).status_code == 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def test_thousands_of_calls_keep_memory_flat_and_the_store_bounded(start_proxy):
    proxy = start_proxy(options={"max_records": MAX_RECORDS})
    assert proxy.proc is not None
    asyncio.run(hammer(proxy.url, 600))  # warm-up: caches, pools, allocator arenas
    proxy.wait_records(lambda r: True, count=1)
    warm = rss_mb(proxy.proc.pid)
    asyncio.run(hammer(proxy.url, 2400))
    health = proxy.health()
    assert health["inFlight"] == 0
    grown = rss_mb(proxy.proc.pid) - warm
    assert grown < 25, f"RSS grew {grown:.1f} MB over 2400 calls after warm-up (from {warm:.1f} MB)"
    store = health["store"]
    assert store["records"] <= MAX_RECORDS + 500, store  # retention runs every few hundred writes
    assert store["lost"] == 0 and store["unsaved"] == 0
    # The writer may still be writing the last calls (and pruning): the list and the store's count agree once it
    # has caught up.
    deadline = time.monotonic() + 10
    while (listed := proxy.list_records(limit=1))["total"] != (store := proxy.health()["store"])["records"]:
        assert time.monotonic() < deadline, (listed["total"], store)
        time.sleep(0.1)
    assert listed["data"][0]["status"] == "success"
