"""Incremental Server-Sent Events decoding and encoding.

The decoder is fed arbitrary byte chunks (split lines, split UTF-8 characters, CRLF or LF) and yields
complete events. It keeps the undecoded tail as bytes so a multi-byte character cut between two
chunks is never mangled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import fastjson


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str
    comment: bool = False

    def json(self) -> Any:
        return fastjson.loads(self.data)


class SSEDecoder:
    """Turns a byte stream into `SSEEvent`s; comment lines (`: ...`) are skipped."""

    __slots__ = ("_buffer", "_data", "_event", "_keep_comments")

    def __init__(self, *, keep_comments: bool = False) -> None:
        # Comments are keep-alives (`: OPENROUTER PROCESSING`); a translator may want to pass them on.
        self._keep_comments = keep_comments
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by `chunk` (runs once per received chunk on the proxy's hot path)."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\n" not in buffer:
            self._buffer = buffer
            return []
        # Lines split on b"\n" only: a UTF-8 character never contains that byte, so none is cut in two.
        *lines, self._buffer = buffer.split(b"\n")
        events = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: a last line without its newline and a pending event are still delivered."""
        lines, self._buffer = ([self._buffer] if self._buffer else []), b""
        return [event for event in map(self._line, [*lines, b""]) if event is not None]

    def _line(self, line: bytes) -> SSEEvent | None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if not self._data and self._event is None:
                return None
            event = SSEEvent(self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return event
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))
        elif line == b"data":  # a field name alone means an empty value
            self._data.append("")
        elif line.startswith(b"event:"):
            value = line[6:]
            self._event = (value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace")
        elif line.startswith(b":") and self._keep_comments:
            return SSEEvent(None, line[1:].strip().decode("utf-8", "replace"), comment=True)
        return None  # other fields (id, retry) mean nothing here


def encode_event(event: str, data: Any) -> bytes:
    """One Anthropic-style SSE event: `event: NAME` plus a compact JSON `data:` line."""
    return b"event: " + event.encode() + b"\ndata: " + fastjson.dumps(data) + b"\n\n"
