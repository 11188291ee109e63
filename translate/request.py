"""Anthropic Messages request -> OpenRouter chat/completions request."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from anthropic_proxy.translate.content import Dropped, Parts
from anthropic_proxy.translate.history import History, HistoryError
from anthropic_proxy.translate.tool_names import shorten_tool_name

logger = logging.getLogger("anthropic_proxy.translate")

# Claude Code's first system block changes on every request (`cc_version=<version>.<per-request hash>`);
# sent upstream it would break prompt caching of everything after it, and it means nothing to the model.
BILLING_LINE_PREFIX = "x-anthropic-billing-header:"

# Fields with a direct OpenAI counterpart (or handled below); the rest are dropped with a reason.
_HANDLED = frozenset((
    "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p", "top_k",
    "metadata", "stream", "tools", "tool_choice", "thinking", "output_config",
))
_REASONING_EFFORTS = ("minimal", "low", "medium", "high")
_TOOL_FIELDS = frozenset(("name", "description", "input_schema", "type", "cache_control"))  # the rest: dropped


class RequestTranslationError(ValueError):
    """The request cannot be translated; the proxy answers 400 invalid_request_error with this message."""


@dataclass(slots=True)
class TranslatedRequest:
    body: dict[str, Any]
    tool_names: dict[str, str]  # shortened name -> original, for names over OpenAI's limit
    requested_model: str
    stream: bool
    dropped: list[str]


def _system(system: Any, parts: Parts, dropped: Dropped) -> None:
    blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system
    if not isinstance(blocks, list):
        raise RequestTranslationError("system: expected a string or a list of text blocks")
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") != "text":
            dropped.add("system: a block that is not text")
            continue
        text = str(block.get("text") or "")
        if BILLING_LINE_PREFIX in text:  # (only then split: Claude Code's system prompt is tens of KB of lines)
            lines = text.split("\n")
            kept = [line for line in lines if not line.startswith(BILLING_LINE_PREFIX)]
            if len(kept) != len(lines):
                dropped.add("system: Claude Code's per-request billing line (it would defeat prompt caching)")
            text = "\n".join(kept)
        parts.text(text.strip("\n"), block)


def _tools(tools: Any, dropped: Dropped) -> tuple[list[dict[str, Any]], dict[str, str]]:
    if not isinstance(tools, list):
        raise RequestTranslationError("tools: expected a list")
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for position, tool in enumerate(tools):
        if not isinstance(tool, dict) or not tool.get("name"):
            raise RequestTranslationError(f"tools.{position}: expected an object with a name")
        if "input_schema" not in tool:
            # Server tools (web_search_2025..., bash_2025..., ...) run inside Anthropic's API only.
            dropped.add(f"tools: server tool {tool['name']!r} ({tool.get('type')}) has no OpenAI equivalent")
            continue
        if extra := tool.keys() - _TOOL_FIELDS:
            dropped.add(f"tools: Anthropic-only tool fields {', '.join(sorted(extra))}")
        name = str(tool["name"])
        short = shorten_tool_name(name)
        if short != name:
            names[short] = name
        function: dict[str, Any] = {"name": short, "parameters": tool["input_schema"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out, names


def _tool_choice(choice: Any, body: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        raise RequestTranslationError("tool_choice: expected an object")
    kind = choice.get("type")
    if kind == "auto":
        body["tool_choice"] = "auto"
    elif kind == "any":
        body["tool_choice"] = "required"
    elif kind == "none":
        body["tool_choice"] = "none"
    elif kind == "tool":
        name = shorten_tool_name(str(choice.get("name")))
        body["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise RequestTranslationError(f"tool_choice.type: unknown value {kind!r}")
    if choice.get("disable_parallel_tool_use") is True:
        body["parallel_tool_calls"] = False


def _reasoning(thinking: Any, output_config: dict[str, Any], dropped: Dropped) -> dict[str, Any] | None:
    if not isinstance(thinking, dict):
        return None
    kind = thinking.get("type")
    if thinking.get("display") is not None:
        dropped.add("thinking.display: reasoning is shown as OpenRouter returns it")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        return {"max_tokens": budget} if isinstance(budget, int) else {"enabled": True}
    if kind == "adaptive":
        effort = output_config.get("effort")
        # Anthropic also has `max`; OpenRouter's highest effort is `high`.
        effort = "high" if effort == "max" else effort
        return {"effort": effort} if effort in _REASONING_EFFORTS else {"enabled": True}
    if kind == "disabled":
        # `reasoning: {enabled: false}` is a 400 on models whose reasoning cannot be turned off; leaving the
        # model at its default keeps the request valid (any reasoning still comes back as thinking blocks).
        dropped.add("thinking disabled: the model's default reasoning applies")
        return None
    dropped.add(f"thinking.type: unknown value {kind!r}")
    return None


def _response_format(output_config: dict[str, Any], dropped: Dropped) -> dict[str, Any] | None:
    fmt = output_config.get("format")
    if fmt is None:
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {"name": "output", "strict": True, "schema": fmt["schema"]}
        return {"type": "json_schema", "json_schema": schema}
    dropped.add("output_config.format: only json_schema is supported")
    return None


def translate_request(body: Any, *, upstream_model: str) -> TranslatedRequest:
    if not isinstance(body, dict):
        raise RequestTranslationError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestTranslationError("messages: expected a non-empty list")
    dropped = Dropped()
    for key in sorted(set(body) - _HANDLED):
        dropped.add(f"{key}: not supported by OpenAI-style APIs")
    keep_cache_control = upstream_model.startswith("anthropic/")

    out: dict[str, Any] = {"model": upstream_model}
    system = Parts(keep_cache_control=keep_cache_control, dropped=dropped)
    if body.get("system") is not None:
        _system(body["system"], system, dropped)
    history = History(keep_cache_control=keep_cache_control, dropped=dropped)
    if system.parts:
        history.messages.append({"role": "system", "content": system.content()})
    try:
        for position, message in enumerate(messages):
            history.add(position, message)
    except HistoryError as error:
        raise RequestTranslationError(str(error)) from error
    out["messages"] = history.finish()

    tool_names: dict[str, str] = {}
    if body.get("tools"):
        out["tools"], tool_names = _tools(body["tools"], dropped)
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], out)
    # Never clamped: a limit the upstream model cannot honour must come back as its own 400.
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = str(metadata["user_id"])
    output_config = body.get("output_config") if isinstance(body.get("output_config"), dict) else {}
    reasoning = _reasoning(body.get("thinking"), output_config, dropped)
    if reasoning is not None:
        out["reasoning"] = reasoning
    response_format = _response_format(output_config, dropped)
    if response_format is not None:
        out["response_format"] = response_format
    stream = body.get("stream") is True
    if stream:
        out["stream"] = True
    # OpenRouter then reports the real token counts and cost (in the last chunk when streaming).
    out["usage"] = {"include": True}
    return TranslatedRequest(body=out, tool_names=tool_names, requested_model=str(body.get("model") or ""),
                             stream=stream, dropped=dropped.reasons)
