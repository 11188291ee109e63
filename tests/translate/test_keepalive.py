"""OpenRouter's keep-alive comments reach the client as keep-alives: comments before the message, pings after."""

import json

from helpers import parse_sse, validate_events

from anthropic_proxy.translate.stream import StreamTranslator


def chunk(**delta) -> bytes:
    body = {"id": "gen-1", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return f"data: {json.dumps(body)}\n\n".encode()


def test_keepalives_before_and_during_the_message():
    translator = StreamTranslator(requested_model="claude-sonnet-4-5", tool_names={})
    before = translator.feed(b": OPENROUTER PROCESSING\n\n")
    assert before == b": keep-alive\n\n", "before message_start only an SSE comment is valid"
    start = translator.feed(chunk(role="assistant", content="Hi"))
    during = translator.feed(b": OPENROUTER PROCESSING\n\n")
    end = translator.feed(
        b'data: {"id":"gen-1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n') + translator.finish()
    assert parse_sse(during) == [("ping", {"type": "ping"})]
    events = parse_sse(before + start + during + end)
    validate_events(events)
    assert events[0][1]["message"]["id"] == "gen-1", "the upstream id is kept although a keep-alive came first"
