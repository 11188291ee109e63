"""Non-streaming OpenAI/OpenRouter chat completion -> Anthropic Message.

A body carrying a top-level `error` (or `finish_reason: "error"`) is not a message: the proxy sends it
through errors.translate_error; this function refuses it with a ValueError rather than dress it up as an
assistant answer.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from anthropic_proxy.translate.finish import anthropic_usage, stop_reason
from anthropic_proxy.translate.reasoning import plain_reasoning, reasoning_blocks
from anthropic_proxy.translate.tool_ids import anthropic_tool_id
from anthropic_proxy.translate.tool_names import original_tool_name

logger = logging.getLogger("anthropic_proxy.translate")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(str(text or "") for text in texts)
    return ""


def _tool_input(arguments: Any, call_id: str) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        logger.warning("tool call %s: arguments are not a JSON object: %.200s", call_id, arguments)
        return {}
    return parsed


def translate_response(
    openai_body: dict[str, Any], *, requested_model: str, tool_names: dict[str, str]
) -> dict[str, Any]:
    if openai_body.get("error") is not None:
        raise ValueError("an OpenRouter error body: translate it with errors.translate_error")
    choices = openai_body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    if choice.get("finish_reason") == "error":
        raise ValueError("the upstream completion finished with an error")
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    details = message.get("reasoning_details")
    if isinstance(details, list) and details:
        content.extend(reasoning_blocks([d for d in details if isinstance(d, dict)]))
    elif reasoning := plain_reasoning(message):
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _text(message.get("content")) or _text(message.get("refusal"))
    if text:
        content.append({"type": "text", "text": text})
    for position, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        call_id = anthropic_tool_id(str(call.get("id") or f"toolu_{openai_body.get('id')}_{position}"))
        content.append({"type": "tool_use", "id": call_id,
                        "name": original_tool_name(str(function.get("name") or ""), tool_names),
                        "input": _tool_input(function.get("arguments"), call_id)})
    tool_emitted = any(block["type"] == "tool_use" for block in content)
    native = choice.get("native_finish_reason")
    return {
        "id": str(openai_body.get("id") or "msg_openrouter"),
        "type": "message",
        "role": "assistant",
        "model": requested_model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), native if isinstance(native, str) else None,
                                   tool_emitted=tool_emitted),
        "stop_sequence": None,
        "usage": anthropic_usage(openai_body.get("usage")),
    }
