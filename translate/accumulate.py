"""Rebuild the final Anthropic message from its stream events, the way the client sees it.

Used by the recorder (on the bytes the client received, in both proxy modes) and by the tests.
The accumulator never raises on odd input: a proxy must keep recording whatever passes through.
"""

from __future__ import annotations

import json
from typing import Any

# Delta type -> the block's string field its pieces extend.
_STRING_DELTAS = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}


class MessageAccumulator:
    """Feed parsed Anthropic stream events (`type` plus payload); read `.message` at any time."""

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self.stopped = False
        self.error: dict[str, Any] | None = None
        # String deltas not yet joined into their block, by (block index, field): appending to the block's string
        # on each event would copy the whole text every time (quadratic over a long answer).
        self._pieces: dict[tuple[int, str], list[str]] = {}
        self._partial_json: dict[int, list[str]] = {}

    @property
    def message(self) -> dict[str, Any] | None:
        """The message so far (the same dict each time, brought up to date by every read)."""
        if self._pieces:
            self._join_pieces()
        return self._message

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":  # nearly every event: tested first
            self._apply_delta(event.get("index", -1), event.get("delta") or {})
        elif kind == "message_start":
            self._join_pieces()  # into the blocks of the message being replaced, which a reader may still hold
            self._message = dict(event.get("message") or {})
            self._message.setdefault("content", [])
            self._message["content"] = list(self._message["content"])
            self._message["usage"] = dict(self._message.get("usage") or {})
        elif kind == "error":
            self.error = event.get("error") or {"type": "api_error", "message": json.dumps(event)}
        elif self._message is None:
            return
        elif kind == "content_block_start":
            self._join_pieces()  # the pieces' indexes must keep pointing at the blocks they belong to
            index = event.get("index", len(self._message["content"]))
            block = dict(event.get("content_block") or {})
            content = self._message["content"]
            while len(content) <= index:
                content.append({})
            content[index] = block
        elif kind == "content_block_stop":
            self._close_block(event.get("index", -1))
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            for key in ("stop_reason", "stop_sequence", "stop_details"):
                if key in delta:
                    self._message[key] = delta[key]
            # message_delta's usage is cumulative and authoritative (it may even revise input_tokens).
            usage = event.get("usage") or {}
            self._message["usage"].update({k: v for k, v in usage.items() if v is not None})
        elif kind == "message_stop":
            self.stopped = True

    def _block(self, index: int) -> dict[str, Any] | None:
        content = self._message["content"] if self._message else []
        return content[index] if 0 <= index < len(content) else None

    def _apply_delta(self, index: int, delta: dict[str, Any]) -> None:
        kind = delta.get("type")
        field = _STRING_DELTAS.get(kind) if isinstance(kind, str) else None  # (a list there would not hash)
        if field is not None:
            piece = delta.get(field, "")
            if not isinstance(piece, str):  # cannot extend a string: ignored rather than raising
                return
            pieces = self._pieces.get((index, field))
            if pieces is None:  # the block's first piece for this field (pieces exist only for existing blocks)
                block = self._block(index)
                if block is None:
                    return
                block.setdefault(field, "")  # the field takes its place among the block's keys now, as it always did
                pieces = self._pieces[index, field] = []
            pieces.append(piece)
            return
        block = self._block(index)
        if block is None:
            return
        if kind == "input_json_delta":
            piece = delta.get("partial_json", "")
            if isinstance(piece, str):  # anything else cannot extend a string: ignored rather than raising
                self._partial_json.setdefault(index, []).append(piece)
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))

    def _join_pieces(self) -> None:
        # Pieces belong to blocks of the current message, which stay at their index until the next
        # content_block_start or message_start, and both join first.
        content = self._message["content"] if self._message else []
        for (index, field), pieces in self._pieces.items():
            value = content[index].get(field, "")
            if isinstance(value, str):  # a field that is not a string cannot be extended (it never could)
                content[index][field] = value + "".join(pieces)
        self._pieces.clear()

    def _close_block(self, index: int) -> None:
        block = self._block(index)
        if block is None or index not in self._partial_json:
            return
        raw = "".join(self._partial_json.pop(index))
        try:
            block["input"] = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            # Keep what arrived rather than inventing an object: the record must show the truth.
            block["input"] = raw

    def finish(self) -> dict[str, Any] | None:
        """Close blocks left open by a cut stream so their tool inputs are still visible."""
        for index in list(self._partial_json):
            self._close_block(index)
        return self.message
