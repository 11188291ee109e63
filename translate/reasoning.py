"""OpenRouter `reasoning_details` carried through Claude Code inside thinking blocks.

Claude Code sends every thinking block back on later turns exactly as it received it, with its
`signature`. The signature is therefore where the details OpenRouter produced are kept, so the next request
can hand them back unchanged (Anthropic signatures, Gemini's and xAI's encrypted reasoning are verified
upstream and must never be altered or invented):

- one `reasoning.text` detail in the `anthropic-claude-v1` format whose text is the block's thinking: the
  signature is Anthropic's own signature, unchanged. A block that came from the real Anthropic API looks the
  same, so it also goes back as an `anthropic-claude-v1` detail.
- anything else (GLM/Kimi text without signature, xAI summaries plus encrypted data, Gemini encrypted data):
  `SIGNATURE_PREFIX` + base64url of the details' JSON. Encrypted-only reasoning (no text to show) becomes a
  `redacted_thinking` block whose `data` is that same encoding.

Details are restored with the same `index` OpenRouter gave them; the raw-signature form is used only when
that index equals the detail's position in the message, so decoding reproduces it exactly.
"""

from __future__ import annotations

import base64
import json
from typing import Any

SIGNATURE_PREFIX = "openrouter.reasoning_details.v1:"
ANTHROPIC_FORMAT = "anthropic-claude-v1"
_RAW_SIGNATURE_KEYS = frozenset(("type", "text", "signature", "format", "index"))


def plain_reasoning(message: dict[str, Any]) -> str:
    """Reasoning sent as plain text in a message or delta: OpenRouter's `reasoning`, or `reasoning_content` as
    DeepSeek, vLLM, llama.cpp and other OpenAI-compatible servers spell it ("" when there is none)."""
    for key in ("reasoning", "reasoning_content"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def detail_text(detail: dict[str, Any]) -> str:
    """The human-readable part of a detail (`reasoning.text` text or `reasoning.summary` summary)."""
    text = detail.get("text") if detail.get("type") == "reasoning.text" else detail.get("summary")
    return text if isinstance(text, str) else ""


def is_text_detail(detail: dict[str, Any]) -> bool:
    return detail.get("type") in ("reasoning.text", "reasoning.summary")


def merge_detail(details: list[dict[str, Any]], delta: dict[str, Any]) -> None:
    """Fold one streamed detail into the list: fragments of the same (type, index) are concatenated."""
    last = details[-1] if details else None
    if last is None or last.get("type") != delta.get("type") or last.get("index") != delta.get("index"):
        details.append(dict(delta))
        return
    for key, value in delta.items():
        if key in ("text", "summary", "data", "signature") and isinstance(value, str):
            last[key] = (last.get(key) or "") + value
        elif key not in last or last[key] is None:
            last[key] = value


def _is_raw_signature(details: list[dict[str, Any]], thinking: str, position: int) -> bool:
    if len(details) != 1:
        return False
    detail = details[0]
    return (
        set(detail) == _RAW_SIGNATURE_KEYS
        and detail["type"] == "reasoning.text"
        and detail["format"] == ANTHROPIC_FORMAT
        and detail["text"] == thinking
        and detail["index"] == position
        and isinstance(detail["signature"], str)
        and bool(detail["signature"])
        and not detail["signature"].startswith(SIGNATURE_PREFIX)
    )


def encode_details(details: list[dict[str, Any]]) -> str:
    payload = json.dumps(details, ensure_ascii=False, separators=(",", ":")).encode()
    return SIGNATURE_PREFIX + base64.urlsafe_b64encode(payload).decode("ascii")


def thinking_signature(details: list[dict[str, Any]], thinking: str, position: int) -> str:
    """The signature of a thinking block holding `details`; "" when there is nothing to carry."""
    if not details:
        return ""
    if _is_raw_signature(details, thinking, position):
        return details[0]["signature"]
    return encode_details(details)


def _decode(value: str) -> list[dict[str, Any]] | None:
    try:
        details = json.loads(base64.urlsafe_b64decode(value[len(SIGNATURE_PREFIX) :].encode("ascii")))
    except (ValueError, UnicodeError):
        return None
    return details if isinstance(details, list) and all(isinstance(d, dict) for d in details) else None


def details_from_thinking(block: dict[str, Any], position: int) -> list[dict[str, Any]] | None:
    """reasoning_details for a history thinking block; None when it carries none (no signature)."""
    signature = block.get("signature")
    if not isinstance(signature, str) or not signature:
        return None
    if signature.startswith(SIGNATURE_PREFIX):
        return _decode(signature)
    return [{"type": "reasoning.text", "text": block.get("thinking") or "", "signature": signature,
             "format": ANTHROPIC_FORMAT, "index": position}]


def details_from_redacted(block: dict[str, Any], position: int) -> list[dict[str, Any]] | None:
    data = block.get("data")
    if not isinstance(data, str) or not data:
        return None
    if data.startswith(SIGNATURE_PREFIX):
        return _decode(data)
    # Redacted thinking from the real Anthropic API: OpenRouter's name for it is an encrypted detail.
    return [{"type": "reasoning.encrypted", "data": data, "format": ANTHROPIC_FORMAT, "index": position}]


def reasoning_blocks(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Complete reasoning_details (a non-streaming response) -> thinking / redacted_thinking blocks.

    Grouped the way the stream translator groups them as they arrive: text details open a thinking
    block that also takes the details after them; encrypted details with no text before them become
    redacted_thinking."""
    blocks: list[dict[str, Any]] = []
    segment: list[dict[str, Any]] = []
    position = 0

    def close_segment() -> None:
        nonlocal segment, position
        if segment:
            thinking = "".join(detail_text(d) for d in segment)
            blocks.append({"type": "thinking", "thinking": thinking,
                           "signature": thinking_signature(segment, thinking, position)})
            position += len(segment)
            segment = []

    for detail in details:
        if segment or is_text_detail(detail):
            segment.append(detail)
        else:
            blocks.append({"type": "redacted_thinking", "data": encode_details([detail])})
            position += 1
    close_segment()
    return blocks


def strip_openrouter_reasoning(body: dict[str, Any]) -> int:
    """Remove the thinking blocks this proxy made from OpenRouter reasoning (their signature or data carries
    `SIGNATURE_PREFIX`) from a Messages request's history; returns how many were removed.

    The real Anthropic API rejects a signature it did not issue, so a conversation that started in
    openrouter mode and goes on in anthropic mode must not send them. A block whose signature Anthropic
    issued (it passed through OpenRouter unchanged) is kept.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):  # (the API refuses such a body: it goes on as it is)
        return 0
    removed = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        kept = [block for block in content if not _is_openrouter_reasoning(block)]
        removed += len(content) - len(kept)
        message["content"] = kept
    return removed


def _is_openrouter_reasoning(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    value = block.get("signature") if block.get("type") == "thinking" else (
        block.get("data") if block.get("type") == "redacted_thinking" else None)
    return isinstance(value, str) and value.startswith(SIGNATURE_PREFIX)
