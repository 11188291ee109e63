"""How an OpenAI completion ended, in Anthropic terms: stop_reason and usage."""

from __future__ import annotations

from typing import Any

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: str | None, native_finish_reason: str | None, *, tool_emitted: bool) -> str:
    # Gemini reports `stop` even for tool calls; Claude Code only runs tools when stop_reason says tool_use.
    if tool_emitted:
        return "tool_use"
    if native_finish_reason == "stop_sequence":
        return "stop_sequence"
    reason = _STOP_REASONS.get(finish_reason or "stop", "end_turn")
    # `tool_calls` with no call actually emitted would make Claude Code wait for a tool that is not there.
    return "end_turn" if reason == "tool_use" else reason


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def anthropic_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    """OpenAI usage -> Anthropic's. OpenAI's prompt_tokens includes cache reads and writes; Anthropic's
    input_tokens excludes both (Claude Code adds the three to size the context)."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    cache_read = _int(details.get("cached_tokens"))
    cache_write = _int(details.get("cache_write_tokens"))
    return {
        "input_tokens": max(_int(usage.get("prompt_tokens")) - cache_read - cache_write, 0),
        "output_tokens": _int(usage.get("completion_tokens")),
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
    }
