"""Tool ids the Anthropic API accepts, reversibly (Kimi's `functions.add:0` must survive a round trip)."""

import re

from helpers import STREAMS, parse_sse
from hypothesis import given
from hypothesis import strategies as st

from anthropic_proxy.translate.request import translate_request
from anthropic_proxy.translate.stream import StreamTranslator
from anthropic_proxy.translate.tool_ids import PREFIX, anthropic_tool_id, upstream_tool_id

ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


@given(st.text(min_size=1, max_size=80))
def test_any_upstream_id_becomes_a_valid_anthropic_id_and_comes_back(upstream_id):
    encoded = anthropic_tool_id(upstream_id)
    assert ANTHROPIC_ID.match(encoded)
    assert upstream_tool_id(encoded) == upstream_id


def test_ids_that_fit_pass_unchanged():
    for upstream_id in ("call_abc123", "toolu_01XyZ", "tool_0_get_weather"):
        assert anthropic_tool_id(upstream_id) == upstream_id == upstream_tool_id(upstream_id)
    assert anthropic_tool_id(PREFIX + "x").startswith(PREFIX) and upstream_tool_id(anthropic_tool_id(PREFIX + "x")) \
        == PREFIX + "x", "an upstream id that happens to look encoded is encoded again, so it round-trips"


def test_every_recorded_stream_yields_valid_ids_and_the_model_gets_its_own_back():
    for path in STREAMS:
        translator = StreamTranslator(requested_model="claude-sonnet-4-5", tool_names={})
        events = parse_sse(translator.feed(path.read_bytes()) + translator.finish())
        tool_uses = [data["content_block"] for name, data in events
                     if name == "content_block_start" and data["content_block"]["type"] == "tool_use"]
        for block in tool_uses:
            assert ANTHROPIC_ID.match(block["id"]), (path, block["id"])
        if not tool_uses:
            continue
        history = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{**b, "input": {}} for b in tool_uses]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": b["id"], "content": "ok"}
                                         for b in tool_uses]},
        ]}
        body = translate_request(history, upstream_model="x/y").body
        calls = next(m for m in body["messages"] if m.get("tool_calls"))["tool_calls"]
        answers = [m["tool_call_id"] for m in body["messages"] if m["role"] == "tool"]
        originals = [upstream_tool_id(b["id"]) for b in tool_uses]
        assert [c["id"] for c in calls] == originals == answers
