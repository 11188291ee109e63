"""Anthropic `messages` (as Claude Code really sends them) -> OpenAI `messages`.

OpenAI-style APIs are stricter about history than Anthropic:
- every assistant `tool_calls` entry must be answered by a `tool` message, and those must come right after
  the assistant message. Anthropic puts tool_result blocks inside the next user message, next to the user's
  own text; Claude Code may also put a `role: "system"` message in between. So results are emitted first,
  in call order, the user's text after them, and other messages wait until every call is answered.
- a call whose result never came (the user pressed Esc, a session resumed mid-tool) gets a placeholder
  result instead of a 400.
- reasoning from earlier turns goes back as the `reasoning_details` OpenRouter produced (see reasoning.py).
"""

from __future__ import annotations

import json
from typing import Any

from anthropic_proxy.translate.content import Dropped, Parts
from anthropic_proxy.translate.reasoning import details_from_redacted, details_from_thinking
from anthropic_proxy.translate.tool_ids import upstream_tool_id
from anthropic_proxy.translate.tool_names import shorten_tool_name

MISSING_RESULT = "[No result: the tool call was interrupted before it returned.]"
_ROLES = ("user", "assistant", "system")


class HistoryError(ValueError):
    """A message shape no translation can make sense of."""


class History:
    def __init__(self, *, keep_cache_control: bool, dropped: Dropped) -> None:
        self._keep_cache_control = keep_cache_control
        self._dropped = dropped
        self.messages: list[dict[str, Any]] = []
        self._unanswered: list[str] = []  # tool_call ids of the last assistant message still without a result
        self._deferred: list[dict[str, Any]] = []  # system messages waiting for those results

    def _parts(self) -> Parts:
        return Parts(keep_cache_control=self._keep_cache_control, dropped=self._dropped)

    def add(self, position: int, message: Any) -> None:
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise HistoryError(f"messages.{position}: expected an object with role user, assistant or system")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise HistoryError(f"messages.{position}.content: expected a string or a list of content blocks")
        blocks = [block for block in content if isinstance(block, dict)]
        if len(blocks) != len(content):
            self._dropped.add(f"messages.{position}: content entries that are not objects")
        where = f"messages.{position}"
        if message["role"] == "user":
            self._user(blocks, where)
        elif message["role"] == "assistant":
            self._answer_missing()
            self._assistant(blocks, where)
        else:
            self._system(blocks, where)

    def finish(self) -> list[dict[str, Any]]:
        self._answer_missing()
        return self.messages

    def _answer_missing(self) -> None:
        self._answer({}, self._parts(), "")

    def _answer(self, results: dict[Any, dict[str, Any]], follow_up: Parts, where: str) -> None:
        """Tool messages for the open calls, in call order (a placeholder for a missing result), then the
        system messages that waited for them. Used results are removed from `results`."""
        for call_id in self._unanswered:
            result = results.pop(call_id, None)
            if result is None:
                self._dropped.add("tool_use without a tool_result: answered with a placeholder result")
                self.messages.append({"role": "tool", "tool_call_id": call_id, "content": MISSING_RESULT})
            else:
                self.messages.append(self._tool_message(call_id, result, follow_up, where))
        self._unanswered = []
        self.messages.extend(self._deferred)
        self._deferred = []

    def _system(self, blocks: list[dict[str, Any]], where: str) -> None:
        parts = self._parts()
        for block in blocks:
            parts.block(block, where)
        if parts.parts:
            message = {"role": "system", "content": parts.content()}
            (self._deferred if self._unanswered else self.messages).append(message)

    def _user(self, blocks: list[dict[str, Any]], where: str) -> None:
        results = {upstream_tool_id(str(b.get("tool_use_id"))): b for b in blocks if b.get("type") == "tool_result"}
        follow_up = self._parts()
        self._answer(results, follow_up, where)
        parts = self._parts()
        parts.parts.extend(follow_up.parts)
        for block in blocks:
            if block.get("type") != "tool_result":
                parts.block(block, where)
            elif upstream_tool_id(str(block.get("tool_use_id"))) in results:
                # A result for a call that is not in the previous assistant turn: OpenAI would reject a
                # tool message for it, so its content goes to the model as user text instead.
                self._dropped.add("tool_result without a matching tool_use: sent as user text")
                parts.text(f"[Result of tool call {block.get('tool_use_id')}]")
                self._result_content(block, parts, where)
        if parts.parts:
            self.messages.append({"role": "user", "content": parts.content()})

    def _tool_message(
        self, call_id: str, result: dict[str, Any], follow_up: Parts, where: str
    ) -> dict[str, Any]:
        parts = self._parts()
        self._result_content(result, parts, where)
        # Tool messages carry text only; images of a result follow in the user message.
        images = [part for part in parts.parts if part["type"] != "text"]
        if images:
            follow_up.text(f"[Images returned by tool call {call_id}]")
            follow_up.parts.extend(images)
            parts.parts = [part for part in parts.parts if part["type"] == "text"]
        if not parts.parts:
            parts.text("[Empty result]")
        if result.get("is_error") is True:
            # OpenAI has no error flag on tool results: the model must read it from the text.
            parts.parts[0]["text"] = f"Error: {parts.parts[0]['text']}"
        return {"role": "tool", "tool_call_id": call_id, "content": parts.content()}

    def _result_content(self, result: dict[str, Any], parts: Parts, where: str) -> None:
        content = result.get("content")
        if isinstance(content, str):
            parts.text(content, result)
            return
        for block in content or ():
            if isinstance(block, dict):
                parts.block(block, f"{where} tool_result")
        # cache_control on the tool_result itself marks the end of its content.
        if result.get("cache_control") is not None and parts.parts:
            parts.apply_cache_control(parts.parts[-1], result)

    def _assistant(self, blocks: list[dict[str, Any]], where: str) -> None:
        parts = self._parts()
        tool_calls: list[dict[str, Any]] = []
        details: list[dict[str, Any]] = []
        unsigned_thinking: list[str] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "text":
                parts.text(str(block.get("text") or ""), block)
            elif kind == "tool_use":
                tool_input = block.get("input")
                arguments = tool_input if isinstance(tool_input, str) else json.dumps(tool_input or {})
                tool_calls.append({"id": upstream_tool_id(str(block.get("id"))), "type": "function", "function": {
                    "name": shorten_tool_name(str(block.get("name") or "")), "arguments": arguments}})
            elif kind in ("thinking", "redacted_thinking"):
                restore = details_from_thinking if kind == "thinking" else details_from_redacted
                restored = restore(block, len(details))
                if restored is not None:
                    details.extend(restored)
                elif block.get("thinking"):
                    unsigned_thinking.append(str(block["thinking"]))
            else:
                self._dropped.add(f"{where}: unsupported assistant block type {kind!r}")
        if not parts.parts and not tool_calls:
            # OpenAI-style APIs reject an assistant message with nothing in it (e.g. thinking only).
            self._dropped.add(f"{where}: assistant message with no text or tool call")
            return
        message: dict[str, Any] = {"role": "assistant"}
        if parts.parts:
            message["content"] = parts.content()
        if tool_calls:
            message["tool_calls"] = tool_calls
        if details:
            message["reasoning_details"] = details
        elif unsigned_thinking:
            message["reasoning"] = "".join(unsigned_thinking)
        self.messages.append(message)
        self._unanswered = [call["id"] for call in tool_calls]
