"""A long Claude Code session built from a captured request, turn by turn, as Claude Code builds it.

Claude Code resends the whole conversation on every call: system (3 blocks), 24 tools, every earlier
message, then the new turn, with `cache_control` on the last block only (it moves on as the history grows).
`session_records(turns)` yields one finished `Record` per call: request headers and body as captured, the
answer (`message`), its stream chunks, usage. The tool results vary in size (a few hundred bytes to a few KB,
now and then a 12 KB file read) and text, so no two turns compress alike.

Used by the store's size test (tests/unit/test_dedup_store.py) and by bench/bench_store.py.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from anthropic_proxy.record.masking import mask_headers
from anthropic_proxy.record.model import Chunk, HttpRequestPart, HttpResponsePart, Metrics, Record, Usage

CAPTURED = Path(__file__).resolve().parents[1] / "data" / "claude_code" / "claude_code_request_02_tool_result_turn.json"
WORDS = ("parser", "token", "module", "return", "value", "the", "a", "of", "request", "stream", "record", "store",
         "flush", "commit", "index", "query", "session", "message", "tool", "result", "error", "retry", "cache",
         "block", "system", "answer", "line", "file", "path", "test", "assert")


def _text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS) if rng.random() > 0.08 else f"{rng.randrange(10**6):x}\n"
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def _drop_cache_control(message: dict[str, Any]) -> None:
    content = message.get("content")
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                block.pop("cache_control", None)


def _set_cache_control(message: dict[str, Any]) -> None:
    content = message["content"]
    if isinstance(content, list) and content and isinstance(content[-1], dict):
        content[-1]["cache_control"] = {"type": "ephemeral"}


def session_records(turns: int, *, seed: int = 7, session: str | None = None,
                    start: datetime | None = None) -> Iterator[Record]:
    """`turns` records of one growing Claude Code session (each a fresh copy: records share no objects)."""
    rng = random.Random(seed)
    captured = json.loads(CAPTURED.read_text(encoding="utf-8"))
    session = session or str(uuid.UUID(int=rng.getrandbits(128)))
    headers = dict(captured["headers"], **{"x-claude-code-session-id": session})
    body: dict[str, Any] = copy.deepcopy(captured["body"])
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    for turn in range(turns):
        tool_id = f"toolu_{rng.getrandbits(64):016x}"
        said = _text(rng, rng.randrange(80, 600))
        command = _text(rng, rng.randrange(20, 120))
        answer = {"id": f"msg_{rng.getrandbits(64):016x}", "type": "message", "role": "assistant",
                  "model": body["model"],
                  "content": [{"type": "text", "text": said},
                              {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {"command": command}}],
                  "stop_reason": "tool_use", "stop_sequence": None,
                  "usage": {"input_tokens": 3, "output_tokens": 40 + len(said) // 4,
                            "cache_creation_input_tokens": 900, "cache_read_input_tokens": 20_000 + 700 * turn}}
        chunks = [Chunk(t_ms=900.0, event="message_start",
                        data={"type": "message_start", "message": {**answer, "content": [], "stop_reason": None}})]
        for index, block in enumerate(answer["content"]):
            chunks.append(Chunk(t_ms=950.0 + index, event="content_block_start",
                                data={"type": "content_block_start", "index": index,
                                      "content_block": {**block, "text": ""} if block["type"] == "text"
                                      else {**block, "input": {}}}))
            pieces = [said[i:i + 40] for i in range(0, len(said), 40)] if block["type"] == "text" \
                else [json.dumps(block["input"])]
            for piece in pieces:
                delta = {"type": "text_delta", "text": piece} if block["type"] == "text" \
                    else {"type": "input_json_delta", "partial_json": piece}
                chunks.append(Chunk(t_ms=1000.0 + len(chunks), event="content_block_delta",
                                    data={"type": "content_block_delta", "index": index, "delta": delta}))
            chunks.append(Chunk(t_ms=1100.0 + index, event="content_block_stop",
                                data={"type": "content_block_stop", "index": index}))
        chunks.append(Chunk(t_ms=1200.0, event="message_delta",
                            data={"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                  "usage": {"output_tokens": answer["usage"]["output_tokens"]}}))
        chunks.append(Chunk(t_ms=1201.0, event="message_stop", data={"type": "message_stop"}))
        raw = json.dumps(body).encode()
        yield Record(
            id=f"{seed:04x}{turn:06d}" + uuid.UUID(int=rng.getrandbits(128)).hex[:22],
            timestamp=start + timedelta(seconds=20 * turn), provider="anthropic", status="success",
            model=body["model"], stream=True, stop_reason="tool_use", session_id=session,
            request=HttpRequestPart(method="POST", path="/v1/messages?beta=true", headers=mask_headers(headers),
                                    body=copy.deepcopy(body)),
            response=HttpResponsePart(status=200, headers={"content-type": "text/event-stream",
                                                           "request-id": f"req_{rng.getrandbits(64):016x}"}),
            message=answer, usage=Usage.from_anthropic(answer["usage"]), cost_usd=0.01 + turn / 1e4,
            metrics=Metrics(duration_ms=1300.0, ttfb_ms=900.0, chunk_count=len(chunks), request_bytes=len(raw),
                            response_bytes=sum(len(json.dumps(c.data)) for c in chunks)),
            chunks=chunks,
        )
        # Claude Code's next call: the answer, then the tool's result (now and then a long file read),
        # sometimes a user remark too; cache_control moves to the new last block.
        _drop_cache_control(body["messages"][-1])
        body["messages"].append({"role": "assistant", "content": copy.deepcopy(answer["content"])})
        size = 12_000 if rng.random() < 0.1 else rng.randrange(200, 3000)
        result: list[dict[str, Any]] = [{"tool_use_id": tool_id, "type": "tool_result", "content": _text(rng, size),
                                         "is_error": False}]
        if rng.random() < 0.15:
            result.append({"type": "text", "text": _text(rng, rng.randrange(30, 300))})
        body["messages"].append({"role": "user", "content": result})
        _set_cache_control(body["messages"][-1])
