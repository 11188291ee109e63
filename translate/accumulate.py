"""Rebuild the final Anthropic message from its stream events, the way the client sees it.

Used by the recorder (on the bytes the client received, in both proxy modes) and by the tests.
The accumulator never raises on odd input: a proxy must keep recording whatever passes through.
"""

from __future__ import annotations

import json
from typing import Any


class MessageAccumulator:
    """Feed parsed Anthropic stream events (`type` plus payload); read `.message` at any time."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.stopped = False
        self.error: dict[str, Any] | None = None
        self._partial_json: dict[int, str] = {}

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self.message = dict(event.get("message") or {})
            self.message.setdefault("content", [])
            self.message["content"] = list(self.message["content"])
            self.message["usage"] = dict(self.message.get("usage") or {})
        elif kind == "error":
            self.error = event.get("error") or {"type": "api_error", "message": json.dumps(event)}
        elif self.message is None:
            return
        elif kind == "content_block_start":
            index = event.get("index", len(self.message["content"]))
            block = dict(event.get("content_block") or {})
            content = self.message["content"]
            while len(content) <= index:
                content.append({})
            content[index] = block
        elif kind == "content_block_delta":
            self._apply_delta(event.get("index", -1), event.get("delta") or {})
        elif kind == "content_block_stop":
            self._close_block(event.get("index", -1))
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            for key in ("stop_reason", "stop_sequence", "stop_details"):
                if key in delta:
                    self.message[key] = delta[key]
            # message_delta's usage is cumulative and authoritative (it may even revise input_tokens).
            usage = event.get("usage") or {}
            self.message["usage"].update({k: v for k, v in usage.items() if v is not None})
        elif kind == "message_stop":
            self.stopped = True

    def _block(self, index: int) -> dict[str, Any] | None:
        content = self.message["content"] if self.message else []
        return content[index] if 0 <= index < len(content) else None

    def _apply_delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._block(index)
        if block is None:
            return
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta.get("text", "")
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif kind == "signature_delta":
            block["signature"] = block.get("signature", "") + delta.get("signature", "")
        elif kind == "input_json_delta":
            self._partial_json[index] = self._partial_json.get(index, "") + delta.get("partial_json", "")
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))

    def _close_block(self, index: int) -> None:
        block = self._block(index)
        if block is None or index not in self._partial_json:
            return
        raw = self._partial_json.pop(index)
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
