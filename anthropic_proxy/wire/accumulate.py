"""Rebuild the final Anthropic message from its stream events, the way the client sees it.

Used by the recorder (on the bytes the client received, in both proxy modes) and by the tests.
The accumulator never raises on odd input: a proxy must keep recording whatever passes through.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

# Delta type -> the block's string field its pieces extend.
_STRING_DELTAS = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}
# How far past the last block a content_block_start may place its block (the places between stay empty). Indexes
# come one after another; a start far beyond is ignored rather than filling memory with empty blocks.
MAX_INDEX_GAP = 64


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

    def add_all(self, events: Iterable[Any]) -> None:
        """`add` each event that is a dict (anything else is not an event)."""
        add = self.add
        for event in events:
            if isinstance(event, dict):
                add(event)

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":  # nearly every event: tested first
            self._apply_delta(event.get("index", -1), _object(event.get("delta")))
        elif kind == "message_start":
            self._join_pieces()  # into the blocks of the message being replaced, which a reader may still hold
            message = self._message = dict(_object(event.get("message")))
            content = message.get("content")
            message["content"] = list(content) if isinstance(content, list) else []
            message["usage"] = dict(_object(message.get("usage")))
        elif kind == "error":
            error = event.get("error")
            self.error = error if isinstance(error, dict) and error else {"type": "api_error",
                                                                          "message": json.dumps(event)}
        elif self._message is None:
            return
        elif kind == "content_block_start":
            content = self._message["content"]
            index = event.get("index", len(content))
            if index.__class__ is not int or not 0 <= index <= len(content) + MAX_INDEX_GAP:
                return
            self._join_pieces()  # the pieces' indexes must keep pointing at the blocks they belong to
            while len(content) <= index:
                content.append({})
            content[index] = dict(_object(event.get("content_block")))
        elif kind == "content_block_stop":
            self._close_block(event.get("index", -1))
        elif kind == "message_delta":
            delta = _object(event.get("delta"))
            for key in ("stop_reason", "stop_sequence", "stop_details"):
                if key in delta:
                    self._message[key] = delta[key]
            # message_delta's usage is cumulative and authoritative (it may even revise input_tokens).
            usage = _object(event.get("usage"))
            self._message["usage"].update({k: v for k, v in usage.items() if v is not None})
        elif kind == "message_stop":
            self.stopped = True

    def _block(self, index: Any) -> dict[str, Any] | None:
        """The block at `index`, if there is one, and it is an object (a message_start can carry anything)."""
        content = self._message["content"] if self._message else []
        block = content[index] if index.__class__ is int and 0 <= index < len(content) else None
        return block if isinstance(block, dict) else None

    def _apply_delta(self, index: Any, delta: dict[str, Any]) -> None:
        if index.__class__ is not int:  # (a list would not hash, a float would not index)
            return
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
            citations = block.setdefault("citations", [])
            if isinstance(citations, list):
                citations.append(delta.get("citation"))

    def _join_pieces(self) -> None:
        # Pieces belong to blocks of the current message, which stay at their index until the next
        # content_block_start or message_start, and both join first.
        content = self._message["content"] if self._message else []
        for (index, field), pieces in self._pieces.items():  # (pieces exist only for blocks that are objects)
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


def _object(value: Any) -> dict[str, Any]:
    """A field that should hold an object: it, or an empty one when it holds anything else."""
    return value if isinstance(value, dict) else {}
