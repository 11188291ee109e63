"""A translated stream whose upstream goes quiet keeps the client's connection alive with pings."""

from __future__ import annotations

import json
import time
import uuid

import httpx
from fakes.harness import FAKE_API_KEY
from fakes.openrouter_upstream import DEFAULT_KEY, FakeOpenRouter


def test_quiet_upstream_gets_pings_and_the_message_stays_whole(start_proxy):
    with FakeOpenRouter() as fake:
        proxy = start_proxy(options={"openrouter_base_url": fake.base_url, "proxy_mode": "openrouter",
                                     "stream_keepalive": 1}, env={"OPENROUTER_API_KEY": DEFAULT_KEY})
        hold = uuid.uuid4().hex
        body = {"model": f"fake/hold/{hold}/anthropic/simple_streaming.0", "max_tokens": 100, "stream": True,
                "messages": [{"role": "user", "content": "Say hi"}]}
        raw = b""
        with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body, timeout=30,
                          headers={"x-api-key": FAKE_API_KEY, "anthropic-version": "2023-06-01"}) as response:
            chunks = response.iter_raw()
            while b"text_delta" not in raw:
                raw += next(chunks)
            fake.wait_holding(hold)
            held_at = len(raw)
            deadline = time.monotonic() + 3.5  # the upstream says nothing for 3.5 s
            while time.monotonic() < deadline:
                raw += next(chunks)
                if raw.count(b"event: ping", held_at) >= 2:
                    break
            pings_while_quiet = raw.count(b"event: ping", held_at)
            fake.release(hold)
            for chunk in chunks:
                raw += chunk
        assert pings_while_quiet >= 2, raw[held_at:].decode()
        events = [block for block in raw.decode().split("\n\n") if block.strip() and not block.startswith(":")]
        names = [block.split("\n")[0].removeprefix("event: ") for block in events]
        assert names[0] == "message_start" and names[-1] == "message_stop" and names.count("message_delta") == 1
        text = "".join(json.loads(block.split("\n")[1].removeprefix("data: "))["delta"].get("text", "")
                       for block, name in zip(events, names, strict=True) if name == "content_block_delta")
        assert text, "the answer arrived whole around the pings"
        record = proxy.wait_record(lambda r: r["model"] == body["model"])
        assert record["status"] == "success"
        assert sum(1 for c in record["chunks"] if c["event"] == "ping") >= 3  # the first one plus the keep-alives
