"""Faults the proxy must survive with an Anthropic-shaped answer and a final record: an unreachable
upstream, an upstream that stays silent (request_timeout), and a proxy pointed at itself."""

from __future__ import annotations

import re
import time

import anthropic
import httpx
import pytest
from fakes.harness import FAKE_API_KEY, STREAM_BREAK_ERRORS, free_port

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


def post(proxy, headers: dict[str, str] | None = None, body: dict | None = None, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{proxy.url}/v1/messages", json=body or BODY, timeout=timeout,
                      headers={"x-api-key": FAKE_API_KEY, "anthropic-version": "2023-06-01", **(headers or {})})


def test_unreachable_upstream_answers_anthropic_json_and_keeps_serving(start_proxy):
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = start_proxy(upstream=dead)
    client = anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(**BODY)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["content-type"] == "application/json"
    error = caught.value.body["error"]
    assert error["type"] == "api_error" and "could not get an answer from the upstream" in error["message"]
    record = proxy.wait_record(lambda r: True)
    assert record["status"] == "error" and "Connect call failed" in record["error"]["message"]
    assert proxy.health()["status"] == "ok"  # the proxy and its pages keep working


def test_silent_upstream_before_headers_fails_after_request_timeout(start_proxy):
    proxy = start_proxy(options={"request_timeout": 1})
    started = time.monotonic()
    response = post(proxy, {"x-fake-scenario": "silent", "x-fake-delay-ms": "8000"})
    elapsed = time.monotonic() - started
    assert response.status_code == 502, response.text
    assert response.json()["type"] == "error"
    assert elapsed < 5, f"the client waited {elapsed:.1f} s for a 1 s request_timeout"
    record = proxy.wait_record(lambda r: True)
    assert record["status"] == "error"
    assert record["error"]["type"] == "timeout_error" and "request_timeout" in record["error"]["message"]


def test_upstream_silent_mid_stream_fails_after_request_timeout(start_proxy):
    proxy = start_proxy(options={"request_timeout": 1})
    client = anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=0,
                                 default_headers={"x-fake-scenario": "hold", "x-fake-hold-timeout": "8"})
    started = time.monotonic()
    received: list[str] = []
    with pytest.raises(STREAM_BREAK_ERRORS), client.messages.stream(**BODY) as stream:
        for event in stream:
            received.append(event.type)
    assert "message_start" in received and "message_stop" not in received
    assert time.monotonic() - started < 5
    record = proxy.wait_record(lambda r: True)
    assert record["status"] == "error" and record["error"]["type"] == "timeout_error"
    assert record["message"]["content"][0]["text"], "the part that arrived is kept in the record"


def test_proxy_refuses_to_be_its_own_upstream(start_proxy):
    port = free_port()
    proxy = start_proxy(upstream=f"http://localhost:{port}", port=port, wait_ready=False)
    assert proxy.proc is not None
    assert proxy.proc.wait(timeout=15) != 0
    assert "is this proxy's own address" in proxy.logs()


def test_listening_beyond_loopback_requires_the_printed_token(start_proxy):
    proxy = start_proxy(options={"listen_host": "0.0.0.0"})
    match = re.search(r"/monitor\?token=([\w-]+)", proxy.logs())
    assert match, proxy.logs()
    token = match.group(1)
    assert proxy.get("/api/monitor/requests").status_code == 401
    answer = httpx.get(f"{proxy.url}/api/monitor/requests", headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and "data" in answer.json()
    assert httpx.get(f"{proxy.url}/api/monitor/requests", headers={"authorization": "Bearer wrong"}).status_code == 401


def test_a_bad_setting_stops_the_proxy_instead_of_leaving_a_forward_proxy(start_proxy):
    proxy = start_proxy(env={"LOG_LEVEL": "loud"}, wait_ready=False)
    assert proxy.proc is not None
    assert proxy.proc.wait(timeout=15) != 0
    assert "LOG_LEVEL must be one of" in proxy.logs()
