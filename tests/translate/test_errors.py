"""OpenRouter errors before and during a stream -> Anthropic errors Claude Code knows how to handle."""

from __future__ import annotations

import json

import pytest
from helpers import DATA, STREAMS, parse_sse, validate_events

from anthropic_proxy.translate.errors import anthropic_error_body, translate_error
from anthropic_proxy.translate.stream import StreamTranslator


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (408, "timeout_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        (418, "invalid_request_error"),
        (599, "api_error"),
    ],
)
def test_status_mapping(status, error_type):
    body = json.dumps({"error": {"code": status, "message": "upstream says no"}}).encode()
    error = translate_error(status, body, {})
    assert error.status == status
    assert error.body == anthropic_error_body(error_type, "upstream says no")


def test_prestream_fixture_and_retry_after():
    body = (DATA / "openrouter_errors" / "prestream_error.json").read_bytes()
    error = translate_error(400, body, {"Content-Type": "application/json"})
    assert error.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Invalid model specified"},
    }
    limited = translate_error(429, b'{"error":{"code":429,"message":"slow down"}}', {"Retry-After": "7"})
    assert limited.headers == {"retry-after": "7"} and limited.body["error"]["type"] == "rate_limit_error"


def test_error_code_in_a_200_body_and_provider_metadata():
    body = {
        "error": {
            "code": 502,
            "message": "Provider returned error",
            "metadata": {"provider_name": "Chutes", "raw": "boom"},
        }
    }
    error = translate_error(200, json.dumps(body).encode(), {})
    assert error.status == 502
    assert error.body["error"] == {"type": "api_error", "message": "Provider returned error (Chutes; boom)"}


def test_non_json_error_body():
    error = translate_error(503, b"<html>Service Unavailable</html>", {})
    assert error.status == 503 and error.body["error"]["type"] == "overloaded_error"
    assert "Service Unavailable" in error.body["error"]["message"]


def _events(raw: bytes, finish: bool = True) -> list:
    translator = StreamTranslator(requested_model="claude-sonnet-4-5", tool_names={})
    out = translator.feed(raw) + (translator.finish() if finish else b"")
    return parse_sse(out)


def test_midstream_error_chunk_becomes_an_error_event():
    events = _events((DATA / "openrouter_errors" / "midstream_error.sse.txt").read_bytes())
    validate_events(events)
    names = [name for name, _ in events]
    assert "message_delta" not in names and "message_stop" not in names
    assert events[-1] == ("error", anthropic_error_body("api_error", "Provider disconnected unexpectedly"))
    assert any(d.get("delta", {}).get("text") == "Half an ans" for _, d in events)


def test_finish_reason_error_without_error_object():
    chunk = {"id": "g", "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}
    events = _events(f"data: {json.dumps(chunk)}\n\n".encode())
    validate_events(events)
    assert events[-1][0] == "error"


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9])
def test_stream_cut_before_finish_reason_is_an_error(cut):
    raw = STREAMS[0].read_bytes()
    finish_at = raw.index(b'"finish_reason":"')
    events = _events(raw[: int(finish_at * cut)])
    validate_events(events)
    assert events[-1][0] == "error"


def test_done_without_finish_reason_is_an_error():
    chunk = {"id": "g", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    events = _events(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode(), finish=False)
    validate_events(events)
    assert events[-1][0] == "error"


def test_fail_is_idempotent_and_ends_the_stream():
    translator = StreamTranslator(requested_model="claude", tool_names={})
    translator.feed(STREAMS[0].read_bytes()[:500])
    failed = translator.fail("proxy lost the upstream connection", "overloaded_error")
    assert parse_sse(failed)[-1] == (
        "error",
        anthropic_error_body("overloaded_error", "proxy lost the upstream connection"),
    )
    assert translator.fail("again") == b"" and translator.finish() == b"" and translator.feed(b"data: {}\n\n") == b""


def test_garbage_never_raises():
    events = _events(b'data: {not json\n\ndata: [1,2]\n\ndata: {"choices": 5}\n\n: comment\n\nevent: x\n\n')
    validate_events(events)
