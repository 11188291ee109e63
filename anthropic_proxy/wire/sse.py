"""Incremental Server-Sent Events decoding and encoding.

The decoder is fed arbitrary byte chunks (split lines, split UTF-8 characters, any of the line ends the SSE
specification allows: LF, CRLF or a bare CR; a leading byte order mark) and yields complete events. It keeps the
undecoded tail as bytes so a multi-byte character cut between two chunks is never mangled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from anthropic_proxy.wire import fastjson

# Nearly every event on the wire has one of two plain shapes: Anthropic's (and the translator's) `event:` line,
# `data:` line, blank line; and OpenAI's (OpenRouter's) `data:` line, blank line. LF only: the decoder turns every
# other line end into LF before it looks at the text (`[^\n]` scans several times faster than `[^\r\n]`).
_NAMED = r"event: ?([^\n]*)\ndata: ?([^\n]*)\n\n"
_UNNAMED = r"data: ?([^\n]*)\n\n"
_NAMED_RUN, _UNNAMED_RUN = (re.compile(rf"(?:{shape})*+") for shape in (_NAMED, _UNNAMED))
_NAMED_FIELDS, _UNNAMED_FIELDS = re.compile(_NAMED), re.compile(_UNNAMED)
_ASCII_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips: a comment keeps any other (Unicode) space
BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark: a stream may begin with one, which is not part of its first line


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str
    comment: bool = False

    def json(self) -> Any:
        return fastjson.loads_event(self.data)


class SSEDecoder:
    """Turns a byte stream into `SSEEvent`s; comment lines (`: ...`) are skipped."""

    __slots__ = ("_after_cr", "_at_start", "_buffer", "_data", "_event", "_keep_comments")

    def __init__(self, *, keep_comments: bool = False) -> None:
        # Comments are keep-alives (`: OPENROUTER PROCESSING`); a translator may want to pass them on.
        self._keep_comments = keep_comments
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []
        self._at_start = True  # a byte order mark may still come (the stream's first bytes are not all in)
        self._after_cr = False  # the last chunk ended with a CR: an LF opening the next one belongs to that line end

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by `chunk` (runs once per received chunk on the proxy's hot path).

        Between two events, a run of plain events is taken at once (`_plain_run`); anything else (an event begun
        in an earlier chunk, comments, multi-line data, other fields) goes through `_line`, which defines the
        semantics.
        """
        if self._at_start:
            chunk, self._buffer = self._buffer + chunk, b""
            if len(chunk) < len(BOM) and BOM.startswith(chunk):
                self._buffer = chunk  # perhaps a byte order mark cut short: wait for the rest
                return []
            self._at_start = False
            chunk = chunk.removeprefix(BOM)
        if self._after_cr or b"\r" in chunk:
            chunk = self._to_lf(chunk)
        buffer = self._buffer + chunk if self._buffer else chunk
        # Lines end at b"\n" only: a UTF-8 character never contains that byte, so decoding all whole lines at once
        # cuts none (and replaces invalid bytes exactly as line by line would); the unfinished line waits as bytes.
        whole = buffer.rfind(b"\n") + 1
        self._buffer = buffer[whole:]
        if not whole:
            return []
        text = buffer[:whole].decode("utf-8", "replace")
        events: list[SSEEvent] = []
        start = 0
        while start < len(text):
            if self._event is None and not self._data:
                run_end, run = _plain_run(text, start)
                if run:
                    events += run
                    start = run_end
                    continue
            end = text.index("\n", start)
            event = self._line(text[start:end])
            if event is not None:
                events.append(event)
            start = end + 1
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: a last line without its newline and a pending event are still delivered."""
        lines, self._buffer = ([self._buffer.decode("utf-8", "replace")] if self._buffer else []), b""
        self._at_start = self._after_cr = False
        return [event for event in map(self._line, [*lines, ""]) if event is not None]

    def _to_lf(self, chunk: bytes) -> bytes:
        """`chunk` with each line end (CRLF, or a CR alone) as LF; a CRLF cut between two chunks counts once."""
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data and self._event is None:
                return None
            event = SSEEvent(self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return event
        if line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        elif line == "data":  # a field name alone means an empty value
            self._data.append("")
        elif line.startswith("event:"):
            value = line[6:]
            self._event = value[1:] if value.startswith(" ") else value
        elif line.startswith(":") and self._keep_comments:
            return SSEEvent(None, line[1:].strip(_ASCII_SPACE), comment=True)
        return None  # other fields (id, retry) mean nothing here


def _plain_run(text: str, start: int) -> tuple[int, list[SSEEvent]]:
    """The run of plain events of one shape at `start`: where it ends, and its events (one regex pass to find the
    end, one to take the fields; a single pass when the rest of the text is one event, as a chunk on the wire
    usually is)."""
    # (A plain event ends at its first blank line: the rest of the text is one event at most when that is its end.)
    single = text.find("\n\n", start) == len(text) - 2
    if text.startswith("event:", start):
        if single and (one := _NAMED_FIELDS.fullmatch(text, start)):
            return len(text), [SSEEvent(one[1], one[2])]
        end = _NAMED_RUN.match(text, start).end()
        return end, [SSEEvent(name, data) for name, data in _NAMED_FIELDS.findall(text, start, end)]
    if single and (one := _UNNAMED_FIELDS.fullmatch(text, start)):
        return len(text), [SSEEvent(None, one[1])]
    end = _UNNAMED_RUN.match(text, start).end()
    return end, [SSEEvent(None, data) for data in _UNNAMED_FIELDS.findall(text, start, end)]


def plain_events(data: bytes) -> list[tuple[str, str]] | None:
    """A whole stream's events as (event, data) pairs, when it holds nothing but plain named events (Anthropic's
    streams, the translator's): one regex pass, no decoder. None for anything else (other line ends, a byte order
    mark, unnamed events...), which an `SSEDecoder` reads."""
    text = data.decode("utf-8", "replace")  # (the decoder decodes whole lines alike: no character spans a b"\n")
    if "\r" in text or _NAMED_RUN.match(text).end() != len(text):
        return None
    return _NAMED_FIELDS.findall(text)


def encode_event(event: str, data: Any) -> bytes:
    """One Anthropic-style SSE event: `event: NAME` plus a compact JSON `data:` line."""
    return b"event: " + event.encode() + b"\ndata: " + fastjson.dumps(data) + b"\n\n"
