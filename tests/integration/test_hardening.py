"""Bad input, keys, and load: the proxy passes odd calls through untouched, never leaks a key, and keeps
every byte and every record under concurrency."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid

import httpx
import pytest
from fakes.harness import FAKE_API_KEY

SECRET = FAKE_API_KEY[10:-4]
VALID = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("name", "content", "content_type"), [
    ("invalid-json", b'{"model": "claude", "messages": [', "application/json"),
    ("json-array", b"[1, 2, 3]", "application/json"),
    ("empty", b"", "application/json"),
    ("wrong-content-type", json.dumps(VALID).encode(), "text/plain"),
    ("not-utf8", b'{"model": "\xff\xfe"}', "application/json"),
])
def test_bad_input_reaches_the_upstream_untouched(proxy, fake_anthropic, name, content, content_type):
    tag = f"bad-{name}-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{proxy.url}/v1/messages", content=content, timeout=10,
                          headers={"content-type": content_type, "x-api-key": FAKE_API_KEY, "x-test-tag": tag})
    seen = fake_anthropic.wait_for(lambda ex: ex.header("x-test-tag") == tag)
    assert seen.body == content, "the proxy must not rewrite or drop what it cannot parse"
    assert response.status_code == seen.status and response.content == bytes(seen.sent)
    record = proxy.wait_record(lambda r: r["request"]["headers"].get("x-test-tag") == tag)
    assert record["status"] in ("success", "error")
    assert proxy.health()["status"] == "ok"


def test_missing_api_key_is_the_upstreams_business(proxy, fake_anthropic):
    tag = f"nokey-{uuid.uuid4().hex[:8]}"
    httpx.post(f"{proxy.url}/v1/messages", json=VALID, headers={"x-test-tag": tag}, timeout=10)
    seen = fake_anthropic.wait_for(lambda ex: ex.header("x-test-tag") == tag)
    assert seen.header("x-api-key") is None and seen.header("authorization") is None


def test_tens_of_megabytes_pass_and_the_proxy_keeps_serving(proxy, fake_anthropic):
    tag = f"big-{uuid.uuid4().hex[:8]}"
    body = {**VALID, "messages": [{"role": "user", "content": "x" * (24 * 1024 * 1024)}]}
    content = json.dumps(body).encode()
    response = httpx.post(f"{proxy.url}/v1/messages", content=content, timeout=60,
                          headers={"content-type": "application/json", "x-api-key": FAKE_API_KEY, "x-test-tag": tag})
    assert response.status_code == 200
    seen = fake_anthropic.wait_for(lambda ex: ex.header("x-test-tag") == tag)
    assert len(seen.body) == len(content)
    record = proxy.wait_record(lambda r: r["request"]["headers"].get("x-test-tag") == tag, timeout=30)
    assert record["metrics"]["requestBytes"] == len(content)
    assert httpx.post(f"{proxy.url}/v1/messages", json=VALID, timeout=10).status_code == 200


def test_no_key_middle_anywhere_on_disk_or_in_any_api_answer(proxy, fake_anthropic):
    leaky = {**VALID, "system": f"the key is {FAKE_API_KEY}",
             "messages": [{"role": "user", "content": f"Authorization: Bearer {FAKE_API_KEY}"}]}
    tag = f"leak-{uuid.uuid4().hex[:8]}"
    for scenario in ("message", "stream", "rate_limit"):
        httpx.post(f"{proxy.url}/v1/messages", json={**leaky, "stream": scenario == "stream"}, timeout=10,
                   headers={"x-api-key": FAKE_API_KEY, "authorization": f"Bearer {FAKE_API_KEY}",
                            "x-fake-scenario": scenario, "x-test-tag": tag})
    records = proxy.wait_records(lambda r: r["request"]["headers"].get("x-test-tag") == tag, count=3)
    assert all("the key is" in json.dumps(r["request"]["body"]) for r in records)
    answers = [proxy.get("/health").text, proxy.get("/api/monitor/requests", limit=500).text]
    answers += [proxy.get(f"/api/monitor/requests/{r['id']}").text for r in records]
    for path in ("/api/monitor/stats", "/api/monitor/export", "/api/monitor/analyze", "/api/config"):
        answers.append(proxy.get(path).text)
    for answer in answers:
        assert SECRET not in answer
    stored = b"".join(p.read_bytes() for p in proxy.state_dir.rglob("*") if p.is_file())
    assert SECRET.encode() not in stored
    db = sqlite3.connect(proxy.state_dir / "records.sqlite3")
    for (cell,) in db.execute("SELECT data || search || summary FROM records"):
        assert SECRET not in cell
    db.close()
    assert SECRET not in proxy.logs()


def test_fifty_concurrent_streams_keep_every_byte_and_record(proxy, fake_anthropic):
    tag = f"load-{uuid.uuid4().hex[:8]}"

    async def one(client: httpx.AsyncClient, i: int) -> bytes:
        async with client.stream("POST", "/v1/messages", json={**VALID, "stream": True},
                                 headers={"x-test-tag": f"{tag}-{i}", "x-api-key": FAKE_API_KEY,
                                          "x-fake-scenario": "slow", "x-fake-events": "40",
                                          "x-fake-interval-ms": "5"}) as response:
            assert response.status_code == 200
            return b"".join([chunk async for chunk in response.aiter_raw()])

    async def run() -> list[bytes]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=proxy.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(50)))

    bodies = asyncio.run(run())
    for i, body in enumerate(bodies):
        sent = fake_anthropic.wait_for(lambda ex, i=i: ex.header("x-test-tag") == f"{tag}-{i}")
        assert body == bytes(sent.sent), f"stream {i} differs from what the upstream sent"
    records = proxy.wait_records(lambda r: r["request"]["headers"].get("x-test-tag", "").startswith(tag),
                                 count=50, timeout=30)
    assert len(records) == 50 and all(r["status"] == "success" for r in records)
