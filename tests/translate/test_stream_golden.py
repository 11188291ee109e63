"""Every recorded OpenRouter stream -> a valid Anthropic stream whose message says what the recording says.

The expected values are read from the recording's chunks directly (`delta.content`, `delta.reasoning`,
`tool_calls` by index, the final `usage`), not through the translator's code paths.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import STREAMS, parse_sse, upstream_chunks, validate_events
from sdk import sdk_message

from anthropic_proxy.translate.reasoning import details_from_redacted, details_from_thinking
from anthropic_proxy.translate.stream import StreamTranslator
from anthropic_proxy.translate.tool_ids import anthropic_tool_id
from anthropic_proxy.wire.accumulate import MessageAccumulator

REQUESTED = "claude-sonnet-4-5-20250929"


def expected_from(raw: bytes) -> dict[str, Any]:
    text, reasoning, encrypted, signatures = [], [], [], []
    tools: dict[int, dict[str, Any]] = {}
    usage = None
    finish = None
    for chunk in upstream_chunks(raw):
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            finish = choice.get("finish_reason") or finish
            if delta.get("content"):
                text.append(delta["content"])
            if delta.get("reasoning"):
                reasoning.append(delta["reasoning"])
            for detail in delta.get("reasoning_details") or []:
                if detail["type"] == "reasoning.encrypted":
                    encrypted.append(detail["data"])
                if detail.get("signature"):
                    signatures.append(detail["signature"])
            for call in delta.get("tool_calls") or []:
                tool = tools.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                tool["id"] = tool["id"] or call.get("id")
                tool["name"] = tool["name"] or call.get("function", {}).get("name")
                tool["arguments"] += call.get("function", {}).get("arguments") or ""
    details = usage["prompt_tokens_details"]
    return {
        "text": "".join(text),
        "reasoning": "".join(reasoning),
        "encrypted": encrypted,
        "signatures": signatures,
        "tools": [
            # ids the Anthropic API would refuse (Kimi's `functions.add:0`) come through reversibly encoded
            {"id": anthropic_tool_id(t["id"]), "name": t["name"], "input": json.loads(t["arguments"] or "{}")}
            for _, t in sorted(tools.items())
        ],
        "stop_reason": "tool_use" if tools else {"stop": "end_turn", "length": "max_tokens"}[finish],
        "usage": {
            "input_tokens": usage["prompt_tokens"] - details["cached_tokens"] - details["cache_write_tokens"],
            "output_tokens": usage["completion_tokens"],
            "cache_read_input_tokens": details["cached_tokens"],
            "cache_creation_input_tokens": details["cache_write_tokens"],
        },
        "id": upstream_chunks(raw)[0]["id"],
    }


def translate(raw: bytes) -> bytes:
    translator = StreamTranslator(requested_model=REQUESTED, tool_names={})
    out = translator.feed(raw) + translator.finish()
    assert translator.finish() == b"", "finish() must be idempotent"
    return out


def summarize(content: list[dict[str, Any]]) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    for block in content:
        if block["type"] == "thinking":
            details += details_from_thinking(block, len(details)) or []
        elif block["type"] == "redacted_thinking":
            details += details_from_redacted(block, len(details)) or []
    return {
        "text": "".join(b["text"] for b in content if b["type"] == "text"),
        "reasoning": "".join(b["thinking"] for b in content if b["type"] == "thinking"),
        "tools": [{"id": b["id"], "name": b["name"], "input": b["input"]} for b in content if b["type"] == "tool_use"],
        "encrypted": [d["data"] for d in details if d["type"] == "reasoning.encrypted"],
        "signatures": [d["signature"] for d in details if d.get("signature")],
        "detail_text": "".join(d.get("text") or d.get("summary") or "" for d in details),
    }


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_recording_translates_faithfully(path):
    raw = path.read_bytes()
    expected = expected_from(raw)
    events = parse_sse(translate(raw))
    validate_events(events)

    accumulator = MessageAccumulator()
    for _, data in events:
        accumulator.add(data)
    message = accumulator.finish()
    assert accumulator.stopped and accumulator.error is None
    got = summarize(message["content"])
    assert got["text"] == expected["text"]
    assert got["reasoning"] == expected["reasoning"]
    assert got["tools"] == expected["tools"]
    assert got["encrypted"] == expected["encrypted"]
    assert got["signatures"] == expected["signatures"]
    if expected["reasoning"]:
        assert got["detail_text"] == expected["reasoning"]
    assert message["stop_reason"] == expected["stop_reason"]
    assert message["model"] == REQUESTED
    assert message["id"] == expected["id"]
    for key, value in expected["usage"].items():
        assert message["usage"][key] == value, key

    sdk = sdk_message(events)
    assert [b.model_dump(exclude_none=True) for b in sdk.content] == [
        {k: v for k, v in block.items() if v is not None} for block in message["content"]
    ]
    assert sdk.stop_reason == expected["stop_reason"]
    assert sdk.usage.input_tokens == expected["usage"]["input_tokens"]
    assert sdk.usage.output_tokens == expected["usage"]["output_tokens"]


def test_upstream_usage_is_kept_raw():
    raw = STREAMS[0].read_bytes()
    translator = StreamTranslator(requested_model=REQUESTED, tool_names={})
    translator.feed(raw)
    assert translator.upstream_usage == [c for c in upstream_chunks(raw) if "usage" in c][-1]["usage"]
    assert "cost" in translator.upstream_usage
