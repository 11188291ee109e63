"""Shared test tools: fixture paths, an independent SSE parser and the Anthropic event grammar validator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "data"
OPENROUTER = DATA / "openrouter"
STREAMS = sorted(OPENROUTER.glob("**/*.response.sse.txt"))


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parse our output: `event:` + one `data:` line per event (independent of translate.sse)."""
    events = []
    for block in raw.decode("utf-8").split("\n\n"):
        if not block or block.startswith(":"):  # an SSE comment (keep-alive): clients skip it
            continue
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        events.append((lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])))
    return events


_DELTA_FOR_BLOCK = {
    "text": {"text_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
    "redacted_thinking": set(),
}


def validate_events(events: list[tuple[str, dict[str, Any]]], *, cache_fields: bool = True) -> None:
    """Assert the sequence is one the Anthropic API could have sent (raises AssertionError otherwise).

    `cache_fields`: message_start usage must carry the cache counters (we always send them; some real
    Anthropic streams omit them)."""
    assert events, "no events at all"
    for name, data in events:
        assert data.get("type") == name, (name, data)
    names = [name for name, _ in events]
    if names[0] == "error":
        assert len(events) == 1, names
        assert set(events[0][1]["error"]) == {"type", "message"}
        return
    assert names[0] == "message_start" and names.count("message_start") == 1, names
    usage = events[0][1]["message"]["usage"]
    required = ("input_tokens", "output_tokens") + (
        ("cache_creation_input_tokens", "cache_read_input_tokens") if cache_fields else ()
    )
    for key in required:
        assert isinstance(usage[key], int), usage
    assert events[0][1]["message"]["content"] == []
    open_index: int | None = None
    open_kind: str | None = None
    next_index = 0
    signed = False
    tool_json: dict[int, str] = {}
    kinds: list[str] = []
    state = "blocks"
    for name, data in events[1:]:
        assert state != "stopped", f"{name} after the end"
        if name == "error":
            state = "stopped"
            continue
        if name == "ping":
            continue
        if name == "content_block_start":
            assert state == "blocks" and open_index is None, f"block started while {open_index} open"
            assert data["index"] == next_index, (data["index"], next_index)
            open_index, open_kind, signed = data["index"], data["content_block"]["type"], False
            assert open_kind in _DELTA_FOR_BLOCK, open_kind
            if open_kind == "thinking":
                assert data["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
            if open_kind == "tool_use":
                assert data["content_block"]["input"] == {} and data["content_block"]["id"]
                tool_json[open_index] = ""
            kinds.append(open_kind)
        elif name == "content_block_delta":
            assert data["index"] == open_index, (data["index"], open_index)
            kind = data["delta"]["type"]
            assert kind in _DELTA_FOR_BLOCK[open_kind], (open_kind, kind)
            assert not signed, "delta after signature_delta"
            signed = kind == "signature_delta"
            if kind == "input_json_delta":
                tool_json[open_index] += data["delta"]["partial_json"]
        elif name == "content_block_stop":
            assert data["index"] == open_index, (data["index"], open_index)
            if open_kind == "tool_use" and tool_json[open_index]:
                assert isinstance(json.loads(tool_json[open_index]), dict)
            open_index, open_kind = None, None
            next_index += 1
        elif name == "message_delta":
            assert state == "blocks" and open_index is None, "message_delta with a block open"
            state = "delta"
            stop = data["delta"]["stop_reason"]
            assert stop in {"end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal", "pause_turn"}
            assert (stop == "tool_use") == ("tool_use" in kinds), (stop, kinds)
            assert isinstance(data["usage"]["output_tokens"], int)
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
                assert data["usage"].get(key) is None or data["usage"][key] >= 0, key
        elif name == "message_stop":
            assert state == "delta", "message_stop without message_delta"
            state = "stopped"
        else:
            raise AssertionError(f"unknown event {name}")
    assert state == "stopped", f"stream not terminated: {names[-3:]}"


def upstream_chunks(raw: bytes) -> list[dict[str, Any]]:
    """The recording's JSON chunks, parsed with the simplest reading of the format (one `data:` per event)."""
    chunks = []
    for line in raw.decode("utf-8").splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(json.loads(line[len("data: ") :]))
    return chunks
