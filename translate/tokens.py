"""Offline estimate of `input_tokens` for a Messages request (the count_tokens endpoint).

Claude Code calls count_tokens to decide when to compact; with OpenRouter there is no Anthropic endpoint to
ask, and no tokenizer may be downloaded at run time. The estimate is deterministic and cheap:

- text everywhere (system, text blocks, thinking, tool_result text, tool_use name + JSON input, tool
  definitions as JSON): characters / CHARS_PER_TOKEN, rounded up per piece;
- a fixed overhead per message and per tool_use / tool_result block (the role and block framing);
- TOOLS_OVERHEAD once when tools are present (the tool-use system prompt the API adds);
- images: Anthropic's formula width * height / 750 when the PNG/GIF header gives the size, else
  IMAGE_TOKENS_DEFAULT (the cost of an image at the API's maximum size); PDFs: PDF_PAGE_TOKENS per page.

Accuracy, measured against the real `usage.prompt_tokens` OpenRouter returned for the recorded requests to
anthropic/claude-haiku-4.5 in tests/data/openrouter (tests/translate/test_tokens.py keeps the bound):
18 requests without reasoning: mean absolute error 2.0 %, worst 6.5 % (under); the 3 with reasoning
enabled: mean 9.8 %, worst 14.4 % under (the API adds a reasoning prompt not modelled here). Caveats: the
overhead constants were fitted on those same small requests (16-871 tokens), so this is in-sample; on large
Claude Code prompts the character ratio dominates and code/JSON-heavy text tokenizes denser than prose, so
expect roughly ±10-15 % — good enough to trigger compaction, not for billing.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

CHARS_PER_TOKEN = 3.5
MESSAGE_OVERHEAD = 2
BASE_OVERHEAD = 0
TOOL_BLOCK_OVERHEAD = 30  # each tool_use and tool_result block
TOOLS_OVERHEAD = 495
IMAGE_TOKENS_DEFAULT = 1600
PDF_PAGE_TOKENS = 2000


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _image_size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    return None


def _decoded_head(source: dict[str, Any], length: int) -> bytes:
    data = source.get("data")
    if source.get("type") != "base64" or not isinstance(data, str):
        return b""
    try:
        return base64.b64decode(data[: length * 4 // 3 + 4] if length else data)
    except (binascii.Error, ValueError):
        return b""


def _image_tokens(block: dict[str, Any]) -> int:
    size = _image_size(_decoded_head(block.get("source") or {}, 32))
    if size is None:
        return IMAGE_TOKENS_DEFAULT
    width, height = size
    return min(math.ceil(width * height / 750), IMAGE_TOKENS_DEFAULT)


def _document_tokens(block: dict[str, Any]) -> int:
    source = block.get("source") or {}
    if source.get("type") == "text":
        return _text_tokens(str(source.get("data") or ""))
    if source.get("type") == "content":
        return sum(_block_tokens(b) for b in source.get("content") or () if isinstance(b, dict))
    pdf = _decoded_head(source, 0)
    pages = pdf.count(b"/Type /Page") - pdf.count(b"/Type /Pages") if pdf else 1
    return max(pages, 1) * PDF_PAGE_TOKENS


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return _text_tokens(content)
    if isinstance(content, list):
        return sum(_block_tokens(b) for b in content if isinstance(b, dict))
    return 0


def _block_tokens(block: dict[str, Any]) -> int:
    kind = block.get("type")
    if kind == "text":
        return _text_tokens(str(block.get("text") or ""))
    if kind == "thinking":
        return _text_tokens(str(block.get("thinking") or ""))
    if kind == "image":
        return _image_tokens(block)
    if kind == "document":
        return _document_tokens(block)
    if kind == "tool_use":
        payload = str(block.get("name") or "") + json.dumps(block.get("input") or {}, ensure_ascii=False)
        return TOOL_BLOCK_OVERHEAD + _text_tokens(payload)
    if kind == "tool_result":
        return TOOL_BLOCK_OVERHEAD + _content_tokens(block.get("content"))
    # Unknown or opaque blocks (redacted_thinking, server tool results): count their JSON.
    return _text_tokens(json.dumps(block, ensure_ascii=False))


def estimate_input_tokens(body: dict[str, Any]) -> int:
    total = BASE_OVERHEAD + _content_tokens(body.get("system"))
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            total += MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
    tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
    if tools:
        total += TOOLS_OVERHEAD
        for tool in tools:
            definition = {k: tool.get(k) for k in ("name", "description", "input_schema") if k in tool}
            total += _text_tokens(json.dumps(definition, ensure_ascii=False))
    return total
