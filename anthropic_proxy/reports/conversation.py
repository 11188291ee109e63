"""A session as a conversation: each call of it as one turn (what the call added, what came back, what it cost).

`turns(records)` reads the records of one session, oldest first, into short turns for the monitor's session view:
the user text and tool results the call added to the conversation (`bodies.new_turn`), the answer's text and tool
calls, per-turn input / cache / output tokens, the context size (every prompt token), cost, latency and the cache
break (`cache_break.py`). Texts are cut to a page's worth: the record itself holds the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from anthropic_proxy.record.bodies import new_turn
from anthropic_proxy.record.model import Record
from anthropic_proxy.record.pricing import counts_tokens

TEXT_LIMIT = 2000
INPUT_LIMIT = 300
# What a call added sits at the end of its messages: reading this many of them (not the whole history, nor the
# system prompt and tools) is enough for a turn (`Store.iter_records(tail=...)`), and keeps a long live
# session's view from re-reading every history.
TAIL_MESSAGES = 12


def _cut(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


def _blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _added(record: Record) -> dict[str, Any]:
    """What this call added to the conversation: user texts (system reminders left out) and tool results."""
    body = record.request.body
    messages = body.get("messages") if isinstance(body, dict) else None
    texts: list[str] = []
    results = 0
    for message in new_turn(messages) if isinstance(messages, list) else ():
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        for block in _blocks(message.get("content")):
            if block.get("type") == "tool_result":
                results += 1
            elif block.get("type") == "text" and isinstance(block.get("text"), str) \
                    and not block["text"].startswith("<system-reminder>"):
                texts.append(_cut(block["text"]))
    return {"userText": texts, "toolResults": results}


def _answer(record: Record) -> dict[str, Any]:
    content = record.message.get("content") if isinstance(record.message, dict) else None
    texts, calls, thinking = [], [], False
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append({"name": str(block.get("name")), "input": _cut(json.dumps(block.get("input"),
                                                                                   ensure_ascii=False), INPUT_LIMIT)})
        elif kind in ("thinking", "redacted_thinking"):
            thinking = True
    return {"answer": _cut("\n\n".join(texts)), "toolCalls": calls, "thinking": thinking}


def turns(records: Iterable[Record]) -> list[dict[str, Any]]:
    """The session's calls as turns, in the order given (oldest first); token counts are not turns."""
    out = []
    for record in records:
        if counts_tokens(record.request.path):
            continue
        usage = record.usage
        out.append({
            "id": record.id, "timestamp": record.timestamp.isoformat(), "model": record.model,
            "status": record.status, "stopReason": record.stop_reason,
            "durationMs": record.metrics.duration_ms, "costUsd": record.cost_usd, "costNote": record.cost_note,
            "inputTokens": usage.input_tokens, "cacheReadTokens": usage.cache_read_input_tokens,
            "cacheWriteTokens": usage.cache_creation_input_tokens, "outputTokens": usage.output_tokens,
            "contextTokens": usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens,
            "cacheBreak": record.cache_break.model_dump(mode="json", by_alias=True) if record.cache_break else None,
            **_added(record), **_answer(record),
            "error": record.error.message if record.error else None,
        })
    return out
