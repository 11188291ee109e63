"""Media types (`Content-Type`), compared as HTTP defines them: type and subtype case-insensitive, parameters
(`; charset=utf-8`) apart."""

from __future__ import annotations


def is_event_stream(content_type: str | None) -> bool:
    """Whether a `Content-Type` value names Server-Sent Events (`Text/Event-Stream; charset=utf-8` does)."""
    return (content_type or "").split(";", 1)[0].strip().lower() == "text/event-stream"
