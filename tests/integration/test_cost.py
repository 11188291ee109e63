"""Cost per record through a real mitmdump: the fake Anthropic answers with cache usage, the record's
costUsd equals the hand-computed value; an unknown model gets null and a note; state_dir/prices.json changes
the price while the proxy runs; a broken prices.json is ignored, not fatal."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.anthropic_upstream import FINAL_OUTPUT_TOKENS, USAGE_START
from fakes.harness import FAKE_API_KEY, ProxyProcess, by_tag

MESSAGES = [{"role": "user", "content": "Hello, how are you?"}]


def send(proxy: ProxyProcess, tag: str, model: str, *, stream: bool = False, path: str = "/v1/messages",
         headers: dict[str, str] | None = None) -> dict[str, Any]:
    body = {"model": model, "max_tokens": 64, "messages": MESSAGES, "stream": stream}
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=20) as client:
        response = client.post(path, json=body, headers={"x-api-key": FAKE_API_KEY, "anthropic-version": "2023-06-01",
                                                         "x-test-tag": tag, **(headers or {})})
        assert response.status_code in (200, 429), response.text
    return proxy.wait_record(by_tag(tag))


def write_prices(proxy: ProxyProcess, content: Any) -> Path:
    path = proxy.state_dir / "prices.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new mtime even within one clock tick
    return path


@pytest.fixture(scope="module")
def proxy(proxy_factory) -> ProxyProcess:
    return proxy_factory()


def test_streamed_cost_matches_the_hand_computed_value(proxy, test_tag):
    assert USAGE_START["cache_creation"] == {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0}
    record = send(proxy, test_tag, "claude-sonnet-4-5-20250929", stream=True)
    assert record["status"] == "success" and record["stream"] is True
    # Sonnet 4.5: 25 in x $3 + 42 out x $15 + 100 5m-writes x $3.75 + 200 reads x $0.30 per MTok
    assert (USAGE_START["input_tokens"], FINAL_OUTPUT_TOKENS) == (25, 42)
    assert record["costUsd"] == pytest.approx((25 * 3 + 42 * 15 + 100 * 3.75 + 200 * 0.30) / 1e6, abs=1e-12)
    assert record["costUsd"] == 0.00114 and record["costNote"] is None
    # the list reads the database, which the background writer brings up to date a moment later
    deadline = time.monotonic() + 5
    while (listed := next(r for r in proxy.list_records(limit=50)["data"] if r["id"] == record["id"])) \
            ["status"] != "success" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listed["costUsd"] == 0.00114 and listed["costNote"] is None


def test_non_streamed_cost_matches_the_hand_computed_value(proxy, test_tag):
    record = send(proxy, test_tag, "claude-opus-4-8")
    # Opus 4.8: 12 in x $5 + 29 out x $25 + 3 5m-writes x $6.25 + 5 reads x $0.50 per MTok
    assert record["costUsd"] == 0.00080625 and record["costNote"] is None


def test_unknown_model_is_null_and_flagged(proxy, test_tag):
    record = send(proxy, test_tag, "claude-unreleased-9")
    assert record["status"] == "success" and record["usage"]["inputTokens"] == 12
    assert record["costUsd"] is None
    assert "claude-unreleased-9" in record["costNote"] and "prices.json" in record["costNote"]


def test_count_tokens_and_refused_calls_cost_nothing(proxy, test_tag):
    counted = send(proxy, test_tag + "-count", "claude-unreleased-9", path="/v1/messages/count_tokens")
    assert counted["usage"]["inputTokens"] > 0 and counted["costUsd"] == 0.0
    limited = send(proxy, test_tag + "-429", "claude-opus-4-8", headers={"x-fake-scenario": "rate_limit"})
    assert limited["status"] == "error" and limited["costUsd"] == 0.0


def test_prices_json_override_applies_while_running(start_proxy, test_tag):
    proxy = start_proxy()
    write_prices(proxy, {"models": {"claude-unreleased-9": {"input": 1, "output": 2},
                                    "claude-opus-4-8": {"input": 10, "output": 50, "cacheRead": 2}}})
    # 12 x 1 + 29 x 2 + 3 x 1.25 (5m writes default to 1.25x input) + 5 x 0.1 = 74.25 per MTok
    assert send(proxy, test_tag + "-new", "claude-unreleased-9")["costUsd"] == 0.00007425
    # replaces the built-in price: 12 x 10 + 29 x 50 + 3 x 12.5 + 5 x 2 = 1617.5
    assert send(proxy, test_tag + "-opus", "claude-opus-4-8")["costUsd"] == 0.0016175
    write_prices(proxy, "{ this is not json")
    record = send(proxy, test_tag + "-broken", "claude-opus-4-8")
    assert record["costUsd"] == 0.00080625  # the file is ignored: the built-in table applies
    assert send(proxy, test_tag + "-gone", "claude-unreleased-9")["costUsd"] is None
    assert proxy.health()["status"] == "ok"
    assert "prices.json is not a valid price file" in proxy.logs()


def test_prices_json_present_at_start(start_proxy, fake_anthropic, tmp_path_factory, test_tag):
    proxy = start_proxy(wait_ready=False)
    proxy.stop()
    write_prices(proxy, {"models": {"claude-sonnet-4-5": {"input": 1, "output": 1, "cacheWrite5m": 1,
                                                          "cacheRead": 1}}})
    proxy.start()
    record = send(proxy, test_tag, "claude-sonnet-4-5-20250929", stream=True)
    assert record["costUsd"] == (25 + 42 + 100 + 200) / 1e6
