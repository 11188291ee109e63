"""Anthropic-mode passthrough through a real mitmdump running addons/proxy.py, driven by the real SDK.

One proxy per module (fixture `proxy`); tests that stop or restart a proxy start their own.
Each test tags its requests with `x-test-tag` so it finds its own exchange at the fake upstream
and its own record in the proxy's store, whatever the other tests did.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from fakes.anthropic_upstream import (
    FINAL_OUTPUT_TOKENS,
    FINAL_TEXT,
    STREAM_TOOL_TEXT,
    THINKING_SIGNATURE,
    THINKING_TEXT,
    TOOL_INPUT,
    USAGE_START,
    Exchange,
)
from fakes.harness import (
    DATA_DIR,
    FAKE_API_KEY,
    FINAL_STATUSES,
    STREAM_BREAK_ERRORS,
    by_tag,
    first_text,
    headers_get,
    json_body,
)

from anthropic_proxy.translate.reasoning import SIGNATURE_PREFIX

MODEL = "claude-opus-4-8"
MESSAGES = [{"role": "user", "content": "Hello, how are you?"}]
HOP_BY_HOP = {"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}
CLAUDE_CODE_FIXTURES = sorted((DATA_DIR / "claude_code").glob("claude_code_request_*.json"))
SECRET_MIDDLE = FAKE_API_KEY[10:-4]
MASKED_KEY = FAKE_API_KEY[:10] + "..." + FAKE_API_KEY[-4:]


# ---- helpers -----------------------------------------------------------------------------------------------
def wire_headers(req: Any) -> list[tuple[str, str]]:
    """The headers an httpx/httpx2 request put on the wire, in order."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers.raw]


def header_map(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        if k.lower() not in HOP_BY_HOP:
            out.setdefault(k.lower(), []).append(v)
    return out


def assert_forwarded_unchanged(sent: Any, ex: Exchange) -> None:
    """What the client sent is what the upstream received: method, path + query, headers, body bytes."""
    assert ex.method == sent.method
    assert ex.raw_path == sent.url.raw_path.decode()
    assert ex.body == sent.content, "request body bytes changed on the way upstream"
    assert header_map(ex.raw_headers) == header_map(wire_headers(sent))


def only(items: list[Any], what: str = "item") -> Any:
    assert len(items) == 1, f"expected exactly one {what}, got {len(items)}"
    return items[0]


def assert_no_secret(record: dict[str, Any]) -> None:
    text = json.dumps(record)
    assert SECRET_MIDDLE not in text
    # not even a fragment of it
    for i in range(0, len(SECRET_MIDDLE) - 12):
        assert SECRET_MIDDLE[i:i + 12] not in text, f"API key fragment {SECRET_MIDDLE[i:i + 12]!r} in record"


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        event, data = None, []
        for line in block.decode().split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        out.append((event, "\n".join(data)))
    return out


# ---- start-up ----------------------------------------------------------------------------------------------
def test_health(proxy, fake_anthropic):
    info = proxy.health()
    assert info["status"] == "ok"
    assert info["mode"] == "anthropic"
    assert info["upstream"].rstrip("/") == fake_anthropic.url
    assert isinstance(info["version"], str) and info["version"]
    assert isinstance(info["store"], dict)


def test_listens_on_loopback_only(proxy):
    ip = "127.0.0.1"
    # A non-loopback address of this machine, if it has one: the proxy must not answer there.
    import socket
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
    except OSError:
        pass
    if ip.startswith("127."):
        # no other interface: check the bound address via the loopback alias 127.0.0.2 instead
        ip = "127.0.0.2"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{ip}:{proxy.port}/health", timeout=2, trust_env=False)


# ---- non-streaming requests --------------------------------------------------------------------------------
def test_create_forwards_request_unchanged(client, sent_requests, fake_anthropic, test_tag):
    message = client.messages.create(
        model=MODEL,
        max_tokens=64,
        system="You are terse.",
        messages=MESSAGES,
        extra_headers={"x-custom-header": "custom value; with=odd chars", "x-another": "2"},
        extra_body={"unknown_field": {"nested": [1, 2.5, None, "ü"]}, "context_management": {"edits": []}},
    )
    assert message.content[0].text == FINAL_TEXT
    sent = only(sent_requests, "SDK request")
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert_forwarded_unchanged(sent, ex)
    assert ex.raw_path == "/v1/messages"
    assert ex.header("x-custom-header") == "custom value; with=odd chars"
    assert ex.header("authorization") == f"Bearer {FAKE_API_KEY}"  # how this SDK sends api_key
    body = ex.json()
    assert body["unknown_field"] == {"nested": [1, 2.5, None, "ü"]}
    assert body["context_management"] == {"edits": []}


def test_beta_messages_keep_query_and_beta_header(client, sent_requests, fake_anthropic, test_tag):
    # Claude Code (the TypeScript SDK) adds ?beta=true to beta calls; the Python SDK does not, so ask for it.
    betas = ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"]
    message = client.beta.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, betas=betas,
                                          extra_query={"beta": "true"})
    assert message.content[0].text == FINAL_TEXT
    sent = only(sent_requests, "SDK request")
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert_forwarded_unchanged(sent, ex)
    assert ex.raw_path == "/v1/messages?beta=true"
    assert ex.query_string == "beta=true"
    assert ex.header("anthropic-beta") == ",".join(betas)


def test_response_status_headers_and_body_unchanged(client, fake_anthropic, test_tag):
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert raw.status_code == 200
    assert raw.http_response.content == bytes(ex.sent)
    for name, value in ex.response_headers:
        assert raw.headers.get(name) == value, f"response header {name} changed"
    assert raw.headers["request-id"] == f"req_fake_{ex.seq:06d}"
    assert raw.headers.get("content-length") in (None, str(len(ex.sent)))
    assert raw.parse().usage.output_tokens == 29


def test_compressed_response_passed_through_and_recorded(http, fake_anthropic, proxy, test_tag):
    """A gzip answer reaches the client still compressed, byte for byte; the record holds the message."""
    headers = {"x-test-tag": test_tag, "x-fake-scenario": "message_gzip", "x-api-key": FAKE_API_KEY,
               "accept-encoding": "gzip"}
    body = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}
    with http.stream("POST", "/v1/messages", json=body, headers=headers) as r:
        received = b"".join(r.iter_raw())
        assert r.headers.get("content-encoding") == "gzip"
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert ex.header("accept-encoding") == "gzip"
    assert received == bytes(ex.sent)
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "success"
    assert record["message"]["content"][0]["text"] == FINAL_TEXT
    assert record["usage"]["outputTokens"] == 29


@pytest.mark.parametrize("fixture", CLAUDE_CODE_FIXTURES, ids=lambda p: p.stem.removeprefix("claude_code_"))
def test_claude_code_request_bytes_unchanged(fixture: Path, http, sent_requests, fake_anthropic, proxy,
                                              test_tag):
    captured = json.loads(fixture.read_text())
    dropped = HOP_BY_HOP | {"content-length"}
    headers = {k: v for k, v in captured["headers"].items() if k.lower() not in dropped}
    if "x-api-key" in headers:
        headers["x-api-key"] = FAKE_API_KEY
    if "authorization" in headers:
        headers["authorization"] = f"Bearer {FAKE_API_KEY}"
    headers["x-test-tag"] = test_tag
    body = json.dumps(captured["body"], ensure_ascii=False).encode()
    query = "&".join(f"{k}={v}" for k, v in captured["query"].items())
    r = http.request(captured["method"], f"{captured['path']}?{query}", content=body, headers=headers)
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert r.status_code == 200, r.text[:500]
    assert_forwarded_unchanged(only(sent_requests), ex)
    assert ex.body == body
    assert ex.raw_path == f"{captured['path']}?beta=true"
    assert r.content == bytes(ex.sent)
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "success"
    assert json_body(record["request"]["body"]) == captured["body"]  # role: "system" messages included
    assert record["model"] == captured["body"]["model"]


def test_history_from_openrouter_mode_loses_only_its_reasoning_blocks(http, fake_anthropic, proxy, test_tag):
    """A conversation that went on in openrouter mode carries thinking blocks whose signature Anthropic never issued
    (the translator's `SIGNATURE_PREFIX`): passthrough drops those, and only those, before the real API sees them."""
    ours = f"{SIGNATURE_PREFIX}eyJ0eXBlIjoicmVhc29uaW5nLnRleHQifQ=="
    history = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Adding.", "signature": ours},
            {"type": "redacted_thinking", "data": ours},
            {"type": "thinking", "thinking": "Sure.", "signature": THINKING_SIGNATURE},  # Anthropic's: kept
            {"type": "text", "text": "4"}]},
        {"role": "user", "content": "And 3 + 3?"},
    ]
    body = {"model": MODEL, "max_tokens": 64, "messages": history}
    r = http.post("/v1/messages", json=body, headers={"x-test-tag": test_tag, "x-api-key": FAKE_API_KEY})
    assert r.status_code == 200, r.text[:300]
    sent = only(fake_anthropic.tagged(test_tag), "upstream request").json()
    assert sent["messages"][1]["content"] == history[1]["content"][2:]
    assert sent["messages"][0] == history[0] and sent["messages"][2] == history[2]
    record = proxy.wait_record(by_tag(test_tag))
    assert json_body(record["request"]["body"]) == sent, "the record shows the body as the API got it"


def test_a_body_not_in_its_declared_coding_is_passed_on_and_recorded(http, proxy, test_tag):
    """`Content-Encoding: gzip` on a plain body: mitmproxy cannot decode it; the proxy passes it on as it came (the
    fake upstream cannot read it either, and answers 500) and records the call with that answer."""
    body = json.dumps({"model": MODEL, "max_tokens": 64, "messages": MESSAGES}).encode()
    r = http.post("/v1/messages", content=body, headers={"x-test-tag": test_tag, "x-api-key": FAKE_API_KEY,
                                                         "content-type": "application/json",
                                                         "content-encoding": "gzip"})
    assert r.status_code == 500
    record = proxy.wait_record(by_tag(test_tag))
    assert record["response"]["status"] == 500 and record["status"] == "error"
    assert json_body(record["request"]["body"]) == json.loads(body), "the body as it came"


def test_claude_code_fixtures_include_system_role_messages():
    # Guards the parametrized test above: the copied captures do carry `role: "system"` messages.
    roles = {
        m["role"]
        for f in CLAUDE_CODE_FIXTURES
        for m in json.loads(f.read_text())["body"].get("messages", [])
    }
    assert "system" in roles
    assert len(CLAUDE_CODE_FIXTURES) == 6


def test_other_v1_paths_pass_through(http, sent_requests, fake_anthropic, test_tag):
    r = http.get("/v1/models?limit=5&after_id=x", headers={"x-test-tag": test_tag, "x-api-key": FAKE_API_KEY})
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert_forwarded_unchanged(only(sent_requests), ex)
    assert ex.raw_path == "/v1/models?limit=5&after_id=x"
    assert r.status_code == ex.status
    assert r.content == bytes(ex.sent)


# ---- streaming ---------------------------------------------------------------------------------------------
def test_stream_text(client, sent_requests, fake_anthropic, test_tag):
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == FINAL_TEXT
    assert final.content[0].text == FINAL_TEXT
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == USAGE_START["input_tokens"]
    assert final.usage.cache_read_input_tokens == USAGE_START["cache_read_input_tokens"]
    assert final.usage.cache_creation_input_tokens == USAGE_START["cache_creation_input_tokens"]
    assert final.usage.output_tokens == FINAL_OUTPUT_TOKENS
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert_forwarded_unchanged(only(sent_requests), ex)
    assert ex.json()["stream"] is True


def test_stream_bytes_unchanged(http, fake_anthropic, test_tag):
    """The SSE body reaches the client byte for byte (events split across writes, multi-byte characters)."""
    headers = {"x-test-tag": test_tag, "x-fake-scenario": "stream_tool", "x-api-key": FAKE_API_KEY}
    body = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": MESSAGES}
    with http.stream("POST", "/v1/messages", json=body, headers=headers) as r:
        received = b"".join(r.iter_raw())
        assert r.status_code == 200
        ex = only(fake_anthropic.tagged(test_tag), "upstream request")
        for name, value in ex.response_headers:
            assert r.headers.get(name) == value, f"response header {name} changed"
    assert received == bytes(ex.sent)


def test_stream_is_not_buffered(client, fake_anthropic, test_tag):
    """The first events reach the SDK while the upstream is still holding the rest of the answer."""
    hold_id = test_tag
    try:
        with client.messages.stream(
            model=MODEL, max_tokens=64, messages=MESSAGES,
            extra_headers={"x-fake-scenario": "hold", "x-fake-hold-id": hold_id, "x-fake-hold-timeout": "8"},
        ) as stream:
            started = time.monotonic()
            events = iter(stream)
            first = first_text(events)
            still_holding = fake_anthropic.is_holding(hold_id)
            waited = time.monotonic() - started
            fake_anthropic.release(hold_id)
            rest = list(events)
            final = stream.get_final_message()
    finally:
        fake_anthropic.release(hold_id)
    assert first == "Hello"
    assert still_holding, f"first text event arrived only after the upstream finished ({waited:.2f}s)"
    assert any(e.type == "message_stop" for e in rest)
    assert final.content[0].text == FINAL_TEXT


def test_stream_tool_use(client, fake_anthropic, test_tag):
    with client.messages.stream(
        model=MODEL, max_tokens=256, messages=MESSAGES,
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
        extra_headers={"x-fake-scenario": "stream_tool"},
    ) as stream:
        json_fragments = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert "".join(json_fragments) == json.dumps(TOOL_INPUT)
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == THINKING_TEXT
    assert final.content[0].signature == THINKING_SIGNATURE
    assert final.content[1].text == STREAM_TOOL_TEXT
    assert final.content[2].input == TOOL_INPUT
    assert final.content[2].name == "get_weather"
    assert final.stop_reason == "tool_use"


def test_count_tokens(client, sent_requests, fake_anthropic, proxy, test_tag):
    result = client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert_forwarded_unchanged(only(sent_requests), ex)
    assert ex.raw_path == "/v1/messages/count_tokens"
    assert result.input_tokens == len(ex.body) // 4
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "success"
    assert record["request"]["path"].startswith("/v1/messages/count_tokens")
    assert record["response"]["status"] == 200
    assert json_body(record["response"]["body"]) == {"input_tokens": len(ex.body) // 4}


# ---- errors from the upstream ------------------------------------------------------------------------------
def test_rate_limit_passed_through(client, fake_anthropic, proxy, test_tag):
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES,
                               extra_headers={"x-fake-scenario": "rate_limit"})
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")  # the proxy itself does not retry
    err = info.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "7"
    assert err.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert err.response.headers["request-id"] == f"req_fake_{ex.seq:06d}"
    assert err.response.content == bytes(ex.sent)
    assert err.body["error"]["type"] == "rate_limit_error"
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "error"
    assert record["response"]["status"] == 429
    assert record["error"]["type"] == "rate_limit_error"
    assert headers_get(record["response"]["headers"], "retry-after") == "7"


def test_sdk_retry_after_429(make_client, sent_requests, fake_anthropic, proxy, test_tag):
    retrying = make_client(max_retries=2)
    message = retrying.messages.create(
        model=MODEL, max_tokens=64, messages=MESSAGES,
        extra_headers={"x-fake-scenario": "flaky", "x-fake-flaky-id": test_tag, "x-fake-fail-times": "1"},
    )
    assert message.content[0].text == FINAL_TEXT
    exchanges = fake_anthropic.tagged(test_tag)
    assert [ex.status for ex in exchanges] == [429, 200]
    assert [ex.header("x-stainless-retry-count") for ex in exchanges] == ["0", "1"]
    assert len(sent_requests) == 2
    for sent, ex in zip(sent_requests, exchanges, strict=True):
        assert_forwarded_unchanged(sent, ex)
    records = proxy.wait_records(by_tag(test_tag), count=2)
    assert [r["status"] for r in records] == ["error", "success"]
    assert [r["response"]["status"] for r in records] == [429, 200]


def test_overloaded_529_passed_through(client, fake_anthropic, proxy, test_tag):
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES,
                               extra_headers={"x-fake-scenario": "overloaded"})
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert info.value.status_code == 529
    assert info.value.response.content == bytes(ex.sent)
    assert info.value.body["error"]["type"] == "overloaded_error"
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "error"
    assert record["response"]["status"] == 529
    assert record["error"]["type"] == "overloaded_error"


def test_error_event_mid_stream(http, fake_anthropic, proxy, test_tag):
    """An SSE `error` event (Anthropic's mid-stream overload) passes through and marks the record as error."""
    headers = {"x-test-tag": test_tag, "x-fake-scenario": "error_event", "x-api-key": FAKE_API_KEY}
    body = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": MESSAGES}
    with http.stream("POST", "/v1/messages", json=body, headers=headers) as r:
        received = b"".join(r.iter_raw())
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert received == bytes(ex.sent)
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "error"
    assert record["error"]["type"] == "overloaded_error"


def test_upstream_cut_mid_stream(http, fake_anthropic, proxy, test_tag):
    headers = {"x-test-tag": test_tag, "x-fake-scenario": "cut", "x-api-key": FAKE_API_KEY}
    body = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": MESSAGES}
    received = b""
    failure: Exception | None = None
    try:
        with http.stream("POST", "/v1/messages", json=body, headers=headers) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                received += chunk
    except httpx.HTTPError as exc:
        failure = exc
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert ex.cut and len(ex.events) == 4
    sent = bytes(ex.sent)
    assert received[:len(sent)] == sent, "bytes sent before the cut did not all reach the client"
    tail = received[len(sent):]
    assert b"message_stop" not in received
    # The client must be told the stream broke: a transport error, or an SSE error event appended.
    assert failure is not None or b"event: error" in tail, "the cut stream ended like a clean one"
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "error"
    assert record["error"] and record["error"]["message"], "no reason recorded for the cut"
    assert [c["event"] for c in record["chunks"]] == ex.events


def test_upstream_cut_seen_by_sdk(client, fake_anthropic, test_tag):
    with (
        pytest.raises(STREAM_BREAK_ERRORS),
        client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES,
                               extra_headers={"x-fake-scenario": "cut"}) as stream,
    ):
        for _ in stream:
            pass
        stream.get_final_message()
    assert only(fake_anthropic.tagged(test_tag)).cut


def _disconnect_mid_stream(proxy, fake_anthropic, test_tag) -> Exchange:
    headers = {"x-test-tag": test_tag, "x-fake-scenario": "slow", "x-fake-events": "100",
               "x-fake-interval-ms": "50", "x-api-key": FAKE_API_KEY}
    body = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": MESSAGES}
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=20) as c:  # noqa: SIM117
        with c.stream("POST", "/v1/messages", json=body, headers=headers) as r:
            received = b""
            chunks = r.iter_raw()
            while b"content_block_delta" not in received:
                received += next(chunks)
    # response and connection closed here, long before the 100 events (5 s) are through
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    assert not ex.completed
    return ex


def test_client_disconnect_mid_stream_is_cancelled(proxy, fake_anthropic, test_tag):
    _disconnect_mid_stream(proxy, fake_anthropic, test_tag)
    record = proxy.wait_record(by_tag(test_tag), timeout=4)  # well before the upstream would finish
    assert record["status"] == "cancelled"
    assert record["stream"] is True


def test_client_disconnect_closes_upstream(proxy, fake_anthropic, test_tag):
    ex = _disconnect_mid_stream(proxy, fake_anthropic, test_tag)
    assert ex.finished.wait(4), "the proxy kept the upstream stream open after the client left"
    assert ex.client_disconnected and not ex.completed


# ---- records -----------------------------------------------------------------------------------------------
def test_record_of_non_streaming_request(client, sent_requests, fake_anthropic, proxy, test_tag):
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=MESSAGES,
                                                   metadata={"user_id": "user-1"})
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    sent = only(sent_requests)
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "success"
    assert record["provider"] == "anthropic"
    assert record["model"] == MODEL
    assert record["stream"] is False
    assert record["stopReason"] == "end_turn"
    assert record["error"] is None
    assert isinstance(record["timestamp"], (str, int, float)) and record["timestamp"]
    assert record["request"]["method"] == "POST"
    assert record["request"]["path"].startswith("/v1/messages")
    assert json_body(record["request"]["body"]) == json.loads(sent.content)
    assert record["response"]["status"] == 200
    assert headers_get(record["response"]["headers"], "request-id") == raw.headers["request-id"]
    assert record["message"] == json.loads(ex.sent)
    assert record["usage"] == {"inputTokens": 12, "outputTokens": 29,
                               "cacheCreationInputTokens": 3, "cacheReadInputTokens": 5}
    assert record["costUsd"] is None or record["costUsd"] >= 0
    metrics = record["metrics"]
    assert 0 <= metrics["ttfbMs"] <= metrics["durationMs"]
    assert metrics["requestBytes"] == len(sent.content)
    assert metrics["responseBytes"] == len(ex.sent)
    assert headers_get(record["request"]["headers"], "authorization") == f"Bearer {MASKED_KEY}"
    assert_no_secret(record)
    # the same record through the list
    listed = proxy.list_records(limit=50)
    assert record["id"] in [r["id"] for r in listed["data"]]


def test_record_of_streamed_tool_use(client, sent_requests, fake_anthropic, proxy, test_tag):
    with client.messages.stream(
        model=MODEL, max_tokens=256, messages=MESSAGES,
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
        extra_headers={"x-fake-scenario": "stream_tool"},
    ) as stream:
        stream.until_done()
    ex = only(fake_anthropic.tagged(test_tag), "upstream request")
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "success"
    assert record["stream"] is True
    assert record["stopReason"] == "tool_use"
    assert record["usage"] == {
        "inputTokens": USAGE_START["input_tokens"],
        "outputTokens": FINAL_OUTPUT_TOKENS,
        "cacheCreationInputTokens": USAGE_START["cache_creation_input_tokens"],
        "cacheReadInputTokens": USAGE_START["cache_read_input_tokens"],
    }
    message = record["message"]
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use"]
    assert message["content"][0]["thinking"] == THINKING_TEXT
    assert message["content"][0]["signature"] == THINKING_SIGNATURE
    assert message["content"][1]["text"] == STREAM_TOOL_TEXT
    assert message["content"][2]["input"] == TOOL_INPUT  # an object, not the JSON fragments
    assert message["stop_reason"] == "tool_use"
    chunks = record["chunks"]
    assert [c["event"] for c in chunks] == ex.events
    times = [c["tMs"] for c in chunks]
    assert all(isinstance(t, (int, float)) and t >= 0 for t in times)
    assert times == sorted(times)
    for chunk, name in zip(chunks, ex.events, strict=True):
        assert json_body(chunk["data"])["type"] == name
    metrics = record["metrics"]
    assert metrics["chunkCount"] == len(ex.events)
    assert 0 <= metrics["ttfbMs"] <= metrics["durationMs"]
    assert metrics["ttfbMs"] == times[0]  # a stream's first byte is where its timeline begins
    assert metrics["requestBytes"] == len(only(sent_requests).content)
    assert metrics["responseBytes"] == len(ex.sent)
    assert_no_secret(record)


def test_x_api_key_masked_in_record(http, fake_anthropic, proxy, test_tag):
    # Claude Code's default: x-api-key (the Python SDK sends Authorization: Bearer, see the test above).
    headers = {"x-api-key": FAKE_API_KEY, "anthropic-version": "2023-06-01", "x-test-tag": test_tag}
    body = {"model": MODEL, "max_tokens": 8, "messages": MESSAGES, "stream": True}
    r = http.post("/v1/messages", json=body, headers=headers)
    assert r.status_code == 200
    ex = only(fake_anthropic.tagged(test_tag))
    assert ex.header("x-api-key") == FAKE_API_KEY  # unmasked on the wire
    record = proxy.wait_record(by_tag(test_tag))
    assert headers_get(record["request"]["headers"], "x-api-key") == MASKED_KEY
    assert_no_secret(record)


def test_record_api_list_and_detail(client, proxy, test_tag):
    client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)
    proxy.wait_record(by_tag(test_tag))
    page = proxy.list_records(limit=2, page=1)
    assert page["page"] == 1 and page["limit"] == 2
    assert len(page["data"]) == 2 and page["total"] >= 2
    everything = proxy.list_records(limit=500)["data"]
    assert len(everything) == page["total"] or page["total"] > 500
    ids = [r["id"] for r in everything]
    assert ids[:2] == [r["id"] for r in page["data"]]
    stamps = [r["timestamp"] for r in everything]
    assert stamps == sorted(stamps, reverse=True), "list is not newest first"
    errors = proxy.list_records(status="error", limit=500)["data"]
    assert errors and all(r["status"] == "error" for r in errors)
    missing = proxy.get("/api/monitor/requests/does-not-exist")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/json")
    missing.json()


# ---- restart -----------------------------------------------------------------------------------------------
def test_restart_keeps_records(start_proxy, fake_anthropic, test_tag):
    p = start_proxy()
    url = p.url
    base = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}
    with httpx.Client(base_url=url, trust_env=False, timeout=20) as c:
        done = c.post("/v1/messages", json=base, headers={"x-test-tag": test_tag + "-a"})
        assert done.status_code == 200
        streamed = c.post("/v1/messages", json={**base, "stream": True},
                          headers={"x-test-tag": test_tag + "-b"})
        assert streamed.status_code == 200
    before = [p.wait_record(by_tag(test_tag + s)) for s in ("-a", "-b")]

    # a stream still in flight when the proxy stops
    hold_id = test_tag + "-c"
    outcome: list[Any] = []

    def in_flight() -> None:
        try:
            with httpx.Client(base_url=url, trust_env=False, timeout=20) as c, c.stream(
                "POST", "/v1/messages", json={**base, "stream": True},
                headers={"x-test-tag": hold_id, "x-fake-scenario": "hold", "x-fake-hold-id": hold_id},
            ) as r:
                outcome.append(b"".join(r.iter_raw()))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=in_flight, daemon=True)
    thread.start()
    try:
        fake_anthropic.wait_holding(hold_id)
        pending = p.wait_record(by_tag(hold_id), final=False)
        p.restart()
    finally:
        fake_anthropic.release(hold_id)
        thread.join(10)
    assert p.url == url

    after = {r["id"]: r for r in p.records()}
    for old in before:
        new = after.get(old["id"])
        assert new is not None, f"record {old['id']} lost on restart"
        for key in ("status", "model", "usage", "message", "stopReason", "stream", "request"):
            assert new[key] == old[key], key
    stale = after.get(pending["id"])
    assert stale is not None, "the in-flight record was lost on restart"
    assert stale["status"] in FINAL_STATUSES - {"success"}
    assert all(r["status"] != "pending" for r in after.values()), "a record stays pending after restart"
    assert p.list_records(status="pending")["total"] == 0

    # and the restarted proxy records new traffic
    with httpx.Client(base_url=url, trust_env=False, timeout=20) as c:
        assert c.post("/v1/messages", json=base, headers={"x-test-tag": test_tag + "-d"}).status_code == 200
    assert p.wait_record(by_tag(test_tag + "-d"))["status"] == "success"


def test_record_detail_of_a_stream_in_flight_shows_its_events_so_far(make_client, proxy, fake_anthropic, test_tag):
    """The exchange keeps only the stream's bytes while it flows: the detail API reads them for whoever asks."""
    client = make_client(default_headers={"x-test-tag": test_tag, "x-fake-scenario": "hold",
                                          "x-fake-hold-id": test_tag})

    def consume() -> None:
        with client.messages.stream(model=MODEL, max_tokens=8, messages=MESSAGES) as stream:
            stream.until_done()

    done = threading.Thread(target=consume, daemon=True)
    record_id = None
    done.start()
    try:
        fake_anthropic.wait_holding(test_tag)
        record_id = proxy.wait_record(by_tag(test_tag), final=False)["id"]
        live = proxy.get_record(record_id)
        assert live is not None and live["status"] == "pending"
        assert [c["event"] for c in live["chunks"]] == ["message_start", "ping", "content_block_start",
                                                        "content_block_delta"], "the events sent before the hold"
        assert live["message"]["content"] and live["metrics"]["chunkCount"] == len(live["chunks"])
    finally:
        fake_anthropic.release(test_tag)
        done.join(timeout=10)
    final = proxy.wait_record(record_id or by_tag(test_tag))
    assert final["status"] == "success" and len(final["chunks"]) > len(live["chunks"])


@pytest.mark.parametrize("stream", [False, True])
def test_a_single_try_is_recorded_alike_whether_watched_or_not(client, proxy, test_tag, stream):
    """Nobody watches this proxy: the store's writer settles the record, and its one attempt names the model."""
    body = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        with client.messages.stream(**body) as events:
            events.until_done()
    else:
        client.messages.create(**body)
    record = proxy.wait_record(by_tag(test_tag))
    assert [(a["provider"], a["model"], a["status"]) for a in record["attempts"]] == [
        ("anthropic", "claude-sonnet-4-5", 200)]
