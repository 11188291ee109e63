"""Incremental Server-Sent Events decoding and encoding.

The decoder is fed arbitrary byte chunks (split lines, split UTF-8 characters, CRLF or LF) and yields
complete events. It keeps the undecoded tail as bytes so a multi-byte character cut between two
chunks is never mangled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str
    comment: bool = False

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    """Turns a byte stream into `SSEEvent`s; comment lines (`: ...`) are skipped."""

    __slots__ = ("_buffer", "_data", "_event", "_keep_comments")

    def __init__(self, *, keep_comments: bool = False) -> None:
        # Comments are keep-alives (`: OPENROUTER PROCESSING`); a translator may want to pass them on.
        self._keep_comments = keep_comments
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                yield event
        self._buffer = buffer[start:]

    def flush(self) -> Iterator[SSEEvent]:
        """End of stream: a last line without its newline and a pending event are still delivered."""
        if self._buffer:
            line, self._buffer = self._buffer.rstrip(b"\r"), b""
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                yield event
        event = self._line("")
        if event is not None:
            yield event

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data and self._event is None:
                return None
            event = SSEEvent(self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return event
        if line.startswith(":"):
            return SSEEvent(None, line[1:].strip(), comment=True) if self._keep_comments else None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def encode_event(event: str, data: Any) -> bytes:
    """One Anthropic-style SSE event: `event: NAME` plus a compact JSON `data:` line."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()
