"""Non-streaming responses, and the reasoning round trip: response -> Claude Code history -> next request.

The follow-up requests recorded next to each response (`*.1.request.json`) show the assistant message a
client must send back; our translation of the next request must carry the same tool calls and the
reasoning_details exactly as OpenRouter produced them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from anthropic.types import Message
from helpers import OPENROUTER, parse_sse, upstream_chunks

from anthropic_proxy.translate.request import translate_request
from anthropic_proxy.translate.response import translate_response
from anthropic_proxy.translate.stream import StreamTranslator
from anthropic_proxy.translate.tool_ids import anthropic_tool_id
from anthropic_proxy.wire.accumulate import MessageAccumulator

RESPONSES = sorted(OPENROUTER.glob("**/*.response.json"))
FOLLOW_UPS = sorted(
    p
    for p in OPENROUTER.glob("**/*.1.request.json")
    if p.with_name(p.name.replace(".1.request.json", ".0.response.json")).exists()
    or p.with_name(p.name.replace(".1.request.json", ".0.response.sse.txt")).exists()
)


@pytest.mark.parametrize("path", RESPONSES, ids=lambda p: str(p.relative_to(OPENROUTER)))
def test_non_streaming_response(path):
    body = json.loads(path.read_text())
    message = translate_response(body, requested_model="claude-haiku-4-5", tool_names={})
    Message.model_validate(message)
    upstream = body["choices"][0]["message"]
    kinds = [b["type"] for b in message["content"]]
    assert kinds == sorted(kinds, key=["thinking", "redacted_thinking", "text", "tool_use"].index)
    assert "".join(b["text"] for b in message["content"] if b["type"] == "text") == (upstream["content"] or "")
    assert [(b["id"], b["name"], b["input"]) for b in message["content"] if b["type"] == "tool_use"] == [
        (anthropic_tool_id(c["id"]), c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in upstream.get("tool_calls") or []
    ]
    thinking = "".join(b["thinking"] for b in message["content"] if b["type"] == "thinking")
    assert thinking == (upstream.get("reasoning") or "")
    assert message["stop_reason"] == ("tool_use" if upstream.get("tool_calls") else "end_turn")
    assert message["id"] == body["id"] and message["model"] == "claude-haiku-4-5"
    usage = body["usage"]
    assert message["usage"]["output_tokens"] == usage["completion_tokens"]
    assert message["usage"]["input_tokens"] + message["usage"]["cache_read_input_tokens"] == usage["prompt_tokens"]


def _first_turn_message(follow_up: Path) -> dict:
    stem = follow_up.name.replace(".1.request.json", ".0")
    json_path = follow_up.with_name(f"{stem}.response.json")
    if json_path.exists():
        return translate_response(json.loads(json_path.read_text()), requested_model="claude", tool_names={})
    translator = StreamTranslator(requested_model="claude", tool_names={})
    raw = follow_up.with_name(f"{stem}.response.sse.txt").read_bytes()
    accumulator = MessageAccumulator()
    for _, data in parse_sse(translator.feed(raw) + translator.finish()):
        accumulator.add(data)
    return accumulator.finish()


def _upstream_details(follow_up: Path) -> list[dict]:
    """What OpenRouter produced in the first turn, merged per (type, index) run for a stream."""
    stem = follow_up.name.replace(".1.request.json", ".0")
    json_path = follow_up.with_name(f"{stem}.response.json")
    if json_path.exists():
        return json.loads(json_path.read_text())["choices"][0]["message"].get("reasoning_details") or []
    merged: list[dict] = []
    raw = follow_up.with_name(f"{stem}.response.sse.txt").read_bytes()
    for chunk in upstream_chunks(raw):
        for choice in chunk["choices"]:
            for detail in choice["delta"].get("reasoning_details") or []:
                same = merged and (merged[-1]["type"], merged[-1]["index"]) == (
                    detail["type"],
                    detail["index"],
                )
                if not same:
                    merged.append(dict(detail))
                    continue
                for key, value in detail.items():
                    if key in ("text", "summary", "data", "signature"):
                        merged[-1][key] = merged[-1].get(key, "") + value
    return merged


@pytest.mark.parametrize("follow_up", FOLLOW_UPS, ids=lambda p: str(p.relative_to(OPENROUTER)))
def test_reasoning_and_tool_calls_round_trip(follow_up):
    recorded = json.loads(follow_up.read_text())["body"]
    assistant = _first_turn_message(follow_up)
    recorded_assistant = next(m for m in recorded["messages"] if m["role"] == "assistant")
    results = [m for m in recorded["messages"] if m["role"] == "tool"]
    anthropic_request = {
        "model": "claude",
        "messages": [
            {
                "role": "user",
                "content": next(m["content"] for m in recorded["messages"] if m["role"] == "user"),
            },
            {"role": "assistant", "content": assistant["content"]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": m["content"]} for m in results
                ],
            },
        ],
    }
    out = translate_request(anthropic_request, upstream_model=recorded["model"]).body
    sent = next(m for m in out["messages"] if m["role"] == "assistant")
    calls = [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in sent["tool_calls"]]
    assert calls == [  # the model gets its own ids back, whatever the client saw
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in recorded_assistant["tool_calls"]
    ]
    assert [m for m in out["messages"] if m["role"] == "tool"] == results
    expected = _upstream_details(follow_up)
    assert sent.get("reasoning_details", []) == expected
    recorded_details = recorded_assistant.get("reasoning_details") or []
    if any(d.get("format") in ("anthropic-claude-v1", "google-gemini-v1") for d in recorded_details):
        # Formats the recording client passed back verbatim: our request must equal what it sent.
        assert sent["reasoning_details"] == recorded_details
