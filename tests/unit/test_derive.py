"""A capture (the raw facts of a call) and the one function that derives its record from them."""

from __future__ import annotations

import gzip
import json
import random
import time
from pathlib import Path

import pytest

from anthropic_proxy.record.capture import Capture, Ending
from anthropic_proxy.record.derive import client_reader, describe, to_record, to_stored
from anthropic_proxy.record.model import Attempt, Record
from anthropic_proxy.record.pricing import PriceBook
from anthropic_proxy.record.stream_log import StreamLog

FIXTURES = Path(__file__).parent.parent / "data" / "anthropic_sse" / "anthropic"
BOOK = PriceBook()
REQUEST = json.dumps({"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 64,
                      "messages": [{"role": "user", "content": "hi"}]}).encode()
ERROR_EVENT = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n'


def sse(name: str) -> bytes:
    lines = (FIXTURES / f"{name}.chunks.txt").read_text().splitlines()
    return b"".join(f"event: {json.loads(line)['type']}\ndata: {line}\n\n".encode() for line in lines if line)


WHOLE = sse("anthropic-json-tool.1")


def cut(stream: bytes, rng: random.Random, pieces: int) -> StreamLog:
    points = sorted(rng.sample(range(1, len(stream)), min(pieces, len(stream) - 1)))
    return [(10.0 + i, stream[a:b]) for i, (a, b) in enumerate(zip([0, *points], [*points, len(stream)], strict=True))]


def capture(**fields) -> Capture:
    defaults = {"id": "rec1", "started": 1_700_000_000.5, "method": "POST", "path": "/v1/messages?beta=true",
                "request_headers": {"x-api-key": "sk-ant-...abcd", "x-claude-code-session-id": "s1"},
                "request": REQUEST}
    return Capture(**{**defaults, **fields})


COMPLETED = Ending("completed")


def streamed(stream: bytes, ending: Ending | None = COMPLETED, **fields) -> Capture:
    fields = {"response_headers": {"content-type": "text/event-stream"}, **fields}
    return capture(status=200, streamed=True, client_log=cut(stream, random.Random(1), 7) if stream else [],
                   ending=ending, duration_ms=99.5, **fields)


def test_encoding_is_lossless_and_versioned():
    full = streamed(WHOLE, upstream_log=[(1.0, b"data: {}\n\n"), (2.5, b"")], upstream_request=b'{"a":1}',
                    upstream_response=b"", route_match={"index": 0, "when": {"family": "haiku"}},
                    attempts=[Attempt(provider="x", model="m", status=529, error="HTTP 529", duration_ms=1.0),
                              Attempt(provider="anthropic", status=200)],
                    reported_cost=0.25, catalog_price={"prompt": "0.000001"}, ttfb_ms=3.0,
                    ending=Ending("failed", "the upstream sent nothing", "timeout_error"))
    whole_answer = capture(status=200, response=b'{"type":"message"}', request=b"", ending=None)
    for original in (full, whole_answer):
        data = original.encode()
        assert Capture.decode(data) == original
    assert b'"content_block_delta"' in full.encode() and WHOLE[100:200] in full.encode(), "bodies go as they are"
    parts = full.encode_parts()
    assert parts[1] is full.request and parts[-2] is full.upstream_log[0][1], "handed on without a copy"
    data = bytearray(full.encode())
    data[4] = 99
    with pytest.raises(ValueError, match="version 99"):
        Capture.decode(bytes(data))
    with pytest.raises(ValueError):
        Capture.decode(full.encode()[:-1])
    with pytest.raises(ValueError):
        Capture.decode(b"{}")


def test_encoding_a_typical_call_is_cheap():
    """A Claude Code call: a few hundred KB of request, a stream of a hundred network chunks."""
    call = streamed(WHOLE * 4, request=REQUEST * 3000)
    call.client_log = cut(WHOLE * 4, random.Random(2), 100)
    started = time.perf_counter()
    for _ in range(200):
        Capture.decode(call.encode())
    per_call = (time.perf_counter() - started) / 200
    assert per_call < 500e-6, f"{per_call * 1e6:.0f} µs to encode and decode"  # (a few tens on an idle machine)


def test_a_stream_that_passed_whole():
    record = to_record(streamed(WHOLE), BOOK)
    assert (record.status, record.error, record.stop_reason) == ("success", None, "tool_use")
    assert (record.model, record.stream, record.session_id) == ("claude-sonnet-4-5", True, "s1")
    assert record.request.body == json.loads(REQUEST) and record.request.headers["x-api-key"] == "sk-ant-...abcd"
    assert record.message["content"][0]["type"] == "tool_use" and record.usage.output_tokens > 0
    assert record.metrics.chunk_count == len(record.chunks) == WHOLE.count(b"\n\n")
    assert record.metrics.response_bytes == len(WHOLE) and record.metrics.request_bytes == len(REQUEST)
    assert record.metrics.ttfb_ms == record.chunks[0].t_ms and record.metrics.duration_ms == 99.5
    assert record.timestamp.timestamp() == 1_700_000_000.5 and record.id == "rec1"
    assert record.cost_usd and record.cost_note is None
    assert [a.model_dump() for a in record.attempts] == [
        {"provider": "anthropic", "model": "claude-sonnet-4-5", "status": 200, "error": None,
         "duration_ms": record.metrics.ttfb_ms}]


@pytest.mark.parametrize(("stream", "ending", "status", "error"), [
    (WHOLE[:WHOLE.index(b"event: message_stop")] + ERROR_EVENT, Ending("completed"), "error", "overloaded_error"),
    (WHOLE[:700], Ending("completed"), "error", "incomplete_stream"),
    (b"", Ending("completed"), "error", "incomplete_stream"),
    (WHOLE[:700], Ending("cancelled", "Client disconnected."), "cancelled", "client_disconnected"),
    (WHOLE[:700], Ending("failed", "peer closed", "upstream_error"), "error", "upstream_error"),
    (WHOLE[:700], Ending("failed", "silent", "timeout_error"), "error", "timeout_error"),
    (WHOLE[:WHOLE.index(b"event: content_block_stop")] + ERROR_EVENT, Ending("cancelled", "Client disconnected."),
     "error", "overloaded_error"),
], ids=["error-event", "cut-short", "empty", "client-left", "upstream-cut", "timeout", "error-event-then-left"])
def test_how_a_stream_ended(stream: bytes, ending: Ending, status: str, error: str):
    record = to_record(streamed(stream, ending), BOOK)
    assert (record.status, record.error.type) == (status, error)
    if ending.kind != "completed" and error != "overloaded_error":
        assert record.error.message == ending.message
    ended_half_way = bool(stream) and not stream.endswith(b"\n\n")  # (the end delivers the last event as it is)
    assert record.metrics.response_bytes == len(stream)
    assert len(record.chunks) == stream.count(b"\n\n") + ended_half_way


def test_a_stream_not_in_its_declared_coding_is_unreadable():
    call = streamed(WHOLE, response_headers={"content-type": "text/event-stream", "Content-Encoding": "gzip"})
    record = to_record(call)
    assert record.status == "error" and record.error.type == "undecodable_stream" and "gzip" in record.error.message
    call.client_log = [(1.0, gzip.compress(WHOLE))]
    assert to_record(call).status == "success"


def test_a_running_stream_is_pending_with_what_passed_so_far():
    half = WHOLE[:WHOLE.index(b"event: message_delta")] + b"event: message_delta\ndata: {"
    record = to_record(streamed(half, ending=None), BOOK)
    assert record.status == "pending" and record.error is None and record.attempts == [] and record.cost_usd is None
    assert len(record.chunks) == half.count(b"\n\n"), "the half-way event is not read yet"
    assert record.message["content"][0]["type"] == "tool_use"


def test_a_reader_that_goes_on_gives_the_same_record():
    """The live monitor's progress reads a growing log with one reader: what it read is not read again."""
    call = streamed(WHOLE, ending=None)
    log = call.client_log
    reader = client_reader(call, keep=False)
    for end in range(1, len(log) + 1):
        call.client_log = log[:end]
        progress = to_record(call, client=reader)
        again = to_record(call)
        assert (progress.message, progress.usage, progress.metrics.chunk_count) == \
            (again.message, again.usage, again.metrics.chunk_count)
        assert progress.chunks == []


@pytest.mark.parametrize(("status_code", "body", "status", "error"), [
    (200, {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "stop_reason":
           "end_turn", "content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 9, "output_tokens": 2}},
     "success", None),
    (200, {"input_tokens": 1234}, "success", None),
    (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error",
     "overloaded_error"),
    (502, "<html>bad gateway</html>", "error", "http_error"),
], ids=["message", "count-tokens", "error-body", "html-error"])
def test_a_whole_answer(status_code: int, body: object, status: str, error: str | None):
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    record = to_record(capture(status=status_code, response_headers={"content-type": "application/json"},
                               response=content, ttfb_ms=4.0, duration_ms=5.0, ending=Ending("completed")), BOOK)
    assert record.status == status and (record.error.type if record.error else None) == error
    assert record.response.body == body and record.metrics.response_bytes == len(content)
    assert record.metrics.ttfb_ms == 4.0 and record.chunks == []
    if isinstance(body, dict) and body.get("type") == "message":
        assert record.message == body and record.stop_reason == "end_turn" and record.usage.output_tokens == 2
        assert record.cost_usd
    if isinstance(body, dict) and "input_tokens" in body:
        assert record.usage.input_tokens == 1234


def test_a_call_that_got_no_answer():
    record = to_record(capture(ending=Ending("failed", "connection refused", "upstream_error"), duration_ms=3.0))
    assert record.status == "error" and record.response is None and record.error.message == "connection refused"
    assert [(a.status, a.error, a.duration_ms) for a in record.attempts] == [(None, "connection refused", 3.0)]


def test_a_translated_call_keeps_both_sides_and_its_reported_cost():
    upstream = [(5.0, b'data: {"choices":[]}\n\n'), (6.0, b"data: [DONE]\n\n")]
    tries = [Attempt(provider="openrouter", model="x/y", status=429), Attempt(provider="openrouter", model="x/z",
                                                                               status=200)]
    call = streamed(WHOLE, provider="openrouter", upstream_model="x/z", upstream_request=b'{"model":"x/z"}',
                    upstream_log=upstream, attempts=tries, reported_cost=0.125, route_match={"index": 1})
    record = to_record(call, BOOK)
    assert record.upstream_request == {"model": "x/z"} and record.route == {"index": 1}
    assert [c.data for c in record.upstream_chunks] == [{"choices": []}, "[DONE]"]
    assert record.attempts == tries and record.cost_usd == 0.125


def test_the_writers_form_is_the_same_record():
    for call in (streamed(WHOLE, upstream_log=[(5.0, b'data: {"choices":[]}\n\n')], upstream_request=b'{"a":1}'),
                 capture(status=200, response=b'{"input_tokens":3}', ending=Ending("completed")),
                 streamed(WHOLE[:300], ending=None)):
        record = to_record(call, BOOK)
        stored, data = to_stored(call, BOOK)
        assert data == json.loads(record.model_dump_json(by_alias=True))
        assert list(data) == list(json.loads(record.model_dump_json(by_alias=True))), "in the model's order"
        assert Record.model_validate(data) == record
        assert stored.chunks == [] and stored.message == record.message and stored.cost_usd == record.cost_usd


def test_the_call_is_described_from_its_bytes():
    call = capture(request=b"not json", request_headers={})
    assert tuple(describe(call)) == ("not json", None, False, None)
    assert to_record(call).request.body == "not json"
