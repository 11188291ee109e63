"""Incremental OpenAI/OpenRouter chat-completion stream -> Anthropic Messages stream.

Bytes in, bytes out, any chunk boundaries. The translator is a state machine:

    BEFORE_START --first chunk--> STREAMING --finish_reason + usage / [DONE] / finish()--> FINISHED
          |                           |
          +--------- error -----------+--> FINISHED (an `event: error`, no message_stop)

While STREAMING at most one content block is open (`_open`); a block of another kind closes it first, so
indexes are strictly increasing and blocks never overlap. Exactly one message_start and one message_delta
are written, nothing after message_stop or error. The invariants hold by construction; the tests check
every output with an independent grammar validator.

Parallel tool calls: OpenRouter sends them one after the other (index 0, then 1), but the API allows
interleaving. A call that starts while the open call's arguments are not yet complete JSON waits in
`_pending` (its fragments buffered) and is written when the open one finishes, so interleaved upstream
calls still come out as sequential, whole blocks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

from anthropic_proxy.translate.errors import anthropic_error_body, error_type_for_code, upstream_error_message
from anthropic_proxy.translate.finish import anthropic_usage, stop_reason
from anthropic_proxy.translate.reasoning import (
    detail_text,
    encode_details,
    is_text_detail,
    merge_detail,
    plain_reasoning,
    thinking_signature,
)
from anthropic_proxy.translate.tool_ids import anthropic_tool_id
from anthropic_proxy.translate.tool_names import original_tool_name
from anthropic_proxy.wire import fastjson
from anthropic_proxy.wire.sse import SSEDecoder, encode_event

logger = logging.getLogger("anthropic_proxy.translate")


_TEXT_DELTA = frozenset({"content", "role"})  # the keys of a delta that holds text alone (or nothing)
# The delta that carries a block's pieces, by the kind of block: (delta type, its string field).
_PIECE_DELTAS = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking"),
                 "tool_use": ("input_json_delta", "partial_json")}


def _piece_template(index: int, delta_type: str, field: str) -> tuple[bytes, bytes]:
    """The content_block_delta event of block `index` that carries a piece of its `field`, cut around the piece: the
    event for a piece `p` is `prefix + fastjson.dumps(p) + suffix`, byte for byte what `encode_event` writes (it
    writes keys in order, so the piece, the last value, is the last string in the event)."""
    event = encode_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                 "delta": {"type": delta_type, field: ""}})
    cut = event.rindex(b'""')
    return event[:cut], event[cut + 2:]


class _State(Enum):
    BEFORE_START = auto()
    STREAMING = auto()
    FINISHED = auto()


@dataclass(slots=True)
class _ToolCall:
    id: str
    name: str
    fragments: list[str] = field(default_factory=list)
    written: bool = False  # its block has been opened (it may be open now, or closed)


def _json_complete(text: str) -> bool:
    try:
        fastjson.loads_event(text)
    except ValueError:
        return False
    return True


class StreamTranslator:
    def __init__(self, *, requested_model: str, tool_names: dict[str, str], message_id: str | None = None):
        self._requested_model = requested_model
        self._tool_names = tool_names
        self._message_id = message_id
        self._decoder = SSEDecoder(keep_comments=True)
        self._state = _State.BEFORE_START
        self._out: list[bytes] = []
        self._next_index = 0
        self._open: str | None = None  # kind of the open block: "text" / "thinking" / "tool_use"
        self._template = (b"", b"")  # the open block's `_piece_template`
        self._open_tool: _ToolCall | None = None
        self._tools: dict[Any, _ToolCall] = {}
        self._tool_ids: set[str] = set()
        self._last_tool_key: Any = None
        self._pending: list[_ToolCall] = []
        self._tool_emitted = False
        self._thinking_parts: list[str] = []
        self._thinking_details: list[dict[str, Any]] = []
        self._detail_position = 0  # reasoning details already written in earlier blocks of this message
        self._finish_reason: str | None = None
        self._native_finish_reason: str | None = None
        self.upstream_usage: dict[str, Any] | None = None

    # -- public API -------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        if self._state is _State.FINISHED:
            return b""
        try:
            for event in self._decoder.feed(chunk):
                if event.comment:
                    self._keepalive()
                else:
                    self._on_data(event.data)
                if self._state is _State.FINISHED:
                    break
        except Exception:  # a translator bug must end the stream visibly, never crash the proxy
            logger.exception("stream translation failed")
            self._error("api_error", "the proxy failed to translate the upstream stream")
        return self._take()

    def finish(self) -> bytes:
        if self._state is _State.FINISHED:
            return b""
        try:
            for event in self._decoder.flush():
                self._on_data(event.data)
                if self._state is _State.FINISHED:
                    break
            self._end_of_stream()
        except Exception:
            logger.exception("stream translation failed")
            self._error("api_error", "the proxy failed to translate the upstream stream")
        return self._take()

    def keepalive(self) -> bytes:
        """What keeps the client's connection open while the upstream is silent (b"" once the stream ended);
        always whole events, so it may go out between any two outputs of `feed`."""
        self._keepalive()
        return self._take()

    def fail(self, message: str, error_type: str = "api_error") -> bytes:
        if self._state is not _State.FINISHED:
            self._error(error_type, message)
        return self._take()

    # -- upstream chunks --------------------------------------------------------------------------

    def _take(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        data = {"type": event, **payload}
        self._out.append(encode_event(event, data))

    def _piece(self, text: str) -> None:
        """The open block's next piece (text, thinking or tool input JSON): the event `_delta` would write, made
        from the block's template (see `_piece_template`); nearly every event of a stream is one."""
        prefix, suffix = self._template
        self._out.append(prefix + fastjson.dumps(text) + suffix)

    def _on_data(self, data: str) -> None:
        if data == "[DONE]":
            self._end_of_stream()
            return
        try:
            chunk = fastjson.loads_event(data)
        except ValueError:
            logger.warning("dropped an upstream stream event that is not JSON: %.200s", data)
            return
        if not isinstance(chunk, dict):
            logger.warning("dropped an upstream stream event that is not an object: %.200s", data)
            return
        error = chunk.get("error")
        if isinstance(error, dict):
            self._error(error_type_for_code(error.get("code")), upstream_error_message(error))
            return
        if self._state is _State.BEFORE_START:
            self._start(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.upstream_usage = usage
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._on_choice(choice)
                if self._state is _State.FINISHED:
                    return
        # OpenRouter repeats finish_reason and puts usage in the last chunk only: wait for it.
        if self._finish_reason is not None and self.upstream_usage is not None:
            self._finalize()

    def _on_choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if delta.keys() <= _TEXT_DELTA:  # nearly every chunk: `_on_delta` would look for the other keys in vain
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._text(text)
        else:
            self._on_delta(delta)
        finish_reason = choice.get("finish_reason")
        if finish_reason == "error":
            self._error("api_error", "the upstream model stopped with an error")
        elif isinstance(finish_reason, str) and finish_reason:
            self._finish_reason = finish_reason
            native = choice.get("native_finish_reason")
            self._native_finish_reason = native if isinstance(native, str) else None

    def _on_delta(self, delta: dict[str, Any]) -> None:
        details = delta.get("reasoning_details")
        # OpenRouter sends the same reasoning as `reasoning` and `reasoning_details`: read it once.
        if isinstance(details, list) and details:
            for detail in details:
                if isinstance(detail, dict):
                    self._reasoning_detail(detail)
        elif reasoning := plain_reasoning(delta):
            self._thinking(reasoning, None)
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                self._text(text)
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._tool_call(call)

    def _keepalive(self) -> None:
        """OpenRouter's `: OPENROUTER PROCESSING` comments keep a quiet connection open; the client must get
        something too. Once the message has begun that is a `ping` event; before it, an SSE comment (every SSE
        parser skips it), since message_start must come first and carry the upstream's id, not yet known."""
        if self._state is _State.BEFORE_START:
            self._out.append(b": keep-alive\n\n")
        elif self._state is _State.STREAMING:
            self._emit("ping", {})

    # -- message and blocks -----------------------------------------------------------------------

    def _start(self, chunk: dict[str, Any]) -> None:
        message_id = self._message_id or str(chunk.get("id") or "msg_openrouter")
        self._message_id = message_id
        usage = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        self._emit("message_start", {"message": {
            "id": message_id, "type": "message", "role": "assistant",
            # Claude Code sizes its context window from this name: it must be the model it asked for.
            "model": self._requested_model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage,
        }})
        self._emit("ping", {})
        self._state = _State.STREAMING

    def _open_block(self, kind: str, content_block: dict[str, Any]) -> None:
        self._emit("content_block_start", {"index": self._next_index, "content_block": content_block})
        self._open = kind
        if kind in _PIECE_DELTAS:
            self._template = _piece_template(self._next_index, *_PIECE_DELTAS[kind])

    def _delta(self, delta: dict[str, Any]) -> None:
        self._emit("content_block_delta", {"index": self._next_index, "delta": delta})

    def _close_block(self) -> None:
        if self._open == "thinking":
            signature = thinking_signature(self._thinking_details, "".join(self._thinking_parts),
                                           self._detail_position)
            if signature:
                self._delta({"type": "signature_delta", "signature": signature})
            self._detail_position += len(self._thinking_details)
            self._thinking_parts, self._thinking_details = [], []
        if self._open is not None:
            self._emit("content_block_stop", {"index": self._next_index})
            self._next_index += 1
            self._open, self._open_tool = None, None

    def _settle(self) -> None:
        """Before a block of another kind: close the open block and write every waiting tool call."""
        self._close_block()
        while self._pending:
            self._write_tool(self._pending.pop(0))
            self._close_block()

    def _text(self, text: str) -> None:
        if self._open != "text":
            self._settle()
            self._open_block("text", {"type": "text", "text": ""})
        self._piece(text)

    def _thinking(self, text: str, detail: dict[str, Any] | None) -> None:
        if self._open != "thinking":
            self._settle()
            self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if detail is not None:
            merge_detail(self._thinking_details, detail)
        if text:
            self._thinking_parts.append(text)
            self._piece(text)

    def _reasoning_detail(self, detail: dict[str, Any]) -> None:
        if self._open == "thinking" or is_text_detail(detail):
            self._thinking(detail_text(detail), detail)
            return
        # Encrypted reasoning with no thinking text to attach it to: a redacted_thinking block.
        self._settle()
        self._open_block("redacted_thinking", {"type": "redacted_thinking", "data": encode_details([detail])})
        self._detail_position += 1
        self._close_block()

    def _tool_call(self, call: dict[str, Any]) -> None:
        key = call.get("index")
        if key is None:
            # Some OpenAI-compatible servers omit the index: a new id starts a call, else it continues one.
            call_id = call.get("id")
            key = call_id if call_id and call_id not in self._tool_ids else self._last_tool_key
        function = call.get("function") or {}
        tool = self._tools.get(key)
        if tool is None:
            name = function.get("name") or ""
            if not name:
                logger.warning("upstream tool call without a name: %.200s", json.dumps(call))
            upstream_id = str(call.get("id") or f"toolu_{self._message_id}_{len(self._tools)}")
            tool = _ToolCall(id=anthropic_tool_id(upstream_id), name=original_tool_name(name, self._tool_names))
            self._tools[key] = tool
            self._tool_ids.add(upstream_id)
            self._last_tool_key = key
            self._pending.append(tool)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            if tool.written and tool is not self._open_tool:
                logger.warning("dropped arguments for tool call %s that came after its block closed", tool.id)
                return
            tool.fragments.append(arguments)
            if tool is self._open_tool:
                self._piece(arguments)
        if self._pending:
            self._advance_tools()

    def _advance_tools(self) -> None:
        """Write waiting tool calls while the open block does not need them to wait.

        The last call written stays open so its next fragments stream live."""
        while self._pending:
            if self._open_tool is not None and not _json_complete("".join(self._open_tool.fragments)):
                return
            self._close_block()
            self._write_tool(self._pending.pop(0))

    def _write_tool(self, tool: _ToolCall) -> None:
        self._open_block("tool_use", {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}})
        self._open_tool = tool
        tool.written = True
        self._tool_emitted = True
        for fragment in tool.fragments:
            self._piece(fragment)

    # -- the end ----------------------------------------------------------------------------------

    def _end_of_stream(self) -> None:
        if self._state is _State.FINISHED:
            return
        if self._finish_reason is None:
            self._error("api_error", "the upstream stream ended before the model finished its answer")
        else:
            self._finalize()

    def _finalize(self) -> None:
        self._settle()
        reason = stop_reason(self._finish_reason, self._native_finish_reason, tool_emitted=self._tool_emitted)
        self._emit("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": None},
                                     "usage": anthropic_usage(self.upstream_usage)})
        self._emit("message_stop", {})
        self._state = _State.FINISHED

    def _error(self, error_type: str, message: str) -> None:
        # Anthropic ends a failed stream with the error event alone; Claude Code then retries the request.
        body = anthropic_error_body(error_type, message)
        self._out.append(encode_event("error", body))
        self._state = _State.FINISHED
