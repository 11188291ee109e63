"""The grammar validator itself, checked on real Anthropic streams (must pass) and on the broken proxy
outputs from vercel/ai's regression fixtures (must fail); plus the OpenAI-compatible fixture whose tool
indexes start at 1."""

from __future__ import annotations

import json

import pytest
from helpers import DATA, parse_sse, validate_events

from anthropic_proxy.translate.stream import StreamTranslator
from anthropic_proxy.wire.accumulate import MessageAccumulator

ANTHROPIC = DATA / "anthropic_sse" / "anthropic"
REAL = [
    "anthropic-text",
    "anthropic-json-tool.1",
    "anthropic-tool-no-args",
    "anthropic-message-delta-input-tokens",
    "anthropic-claude-sonnet-5-reasoning-summarized",
    "anthropic-claude-sonnet-5-reasoning-generic",
]


def _events(name: str) -> list:
    lines = (ANTHROPIC / f"{name}.chunks.txt").read_text().splitlines()
    return [(event["type"], event) for event in map(json.loads, filter(None, lines))]


@pytest.mark.parametrize("name", REAL)
def test_real_anthropic_streams_pass(name):
    validate_events(_events(name), cache_fields=False)


@pytest.mark.parametrize("name", ["duplicate-message-start", "spliced-message-start"])
def test_broken_proxy_streams_fail(name):
    with pytest.raises(AssertionError):
        validate_events(_events(name), cache_fields=False)


def test_tool_indexes_starting_at_one():
    raw = (DATA / "anthropic_sse" / "openai_compatible" / "anthropic-fallback-tool-call.sse").read_bytes()
    translator = StreamTranslator(requested_model="claude-haiku-4-5", tool_names={})
    events = parse_sse(translator.feed(raw) + translator.finish())
    validate_events(events)
    accumulator = MessageAccumulator()
    for _, data in events:
        accumulator.add(data)
    message = accumulator.finish()
    assert message["content"] == [
        {"type": "text", "text": "Reading it."},
        {"type": "tool_use", "id": "toolu_sanitized", "name": "read_file", "input": {"path": "a.txt"}},
    ]
    assert message["stop_reason"] == "tool_use"
