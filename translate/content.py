"""Anthropic content blocks -> OpenAI message content parts (text, images, documents).

One `Parts` collector per OpenAI message: it knows whether `cache_control` survives (only Anthropic
models on OpenRouter read it) and records why anything was left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("anthropic_proxy.translate")


@dataclass(slots=True)
class Dropped:
    """Human-readable reasons for everything the translation left out, logged once each."""

    reasons: list[str] = field(default_factory=list)

    def add(self, reason: str) -> None:
        if reason not in self.reasons:
            logger.info("dropped: %s", reason)
            self.reasons.append(reason)


@dataclass(slots=True)
class Parts:
    keep_cache_control: bool
    dropped: Dropped
    parts: list[dict[str, Any]] = field(default_factory=list)

    def text(self, text: str, block: dict[str, Any] | None = None) -> None:
        # Empty text parts are rejected by several OpenAI-style providers (and by Anthropic itself).
        if not text:
            return
        part: dict[str, Any] = {"type": "text", "text": text}
        self.apply_cache_control(part, block)
        self.parts.append(part)

    def apply_cache_control(self, part: dict[str, Any], block: dict[str, Any] | None) -> None:
        cache_control = (block or {}).get("cache_control")
        if cache_control is None:
            return
        if self.keep_cache_control:
            part["cache_control"] = cache_control
        else:
            self.dropped.add("cache_control: only Anthropic models on OpenRouter use it")

    def block(self, block: dict[str, Any], where: str) -> None:
        """A user-side block (text / image / document); anything else is dropped with its reason."""
        kind = block.get("type")
        if kind == "text":
            self.text(str(block.get("text") or ""), block)
        elif kind == "image":
            self._image(block, where)
        elif kind == "document":
            self._document(block, where)
        elif kind == "search_result":
            inner = [b for b in block.get("content") or () if isinstance(b, dict)]
            body = "\n".join(str(b.get("text") or "") for b in inner)
            self.text(f"{block.get('title') or ''}\n{block.get('source') or ''}\n{body}".strip(), block)
        else:
            self.dropped.add(f"{where}: unsupported content block type {kind!r}")

    def _image(self, block: dict[str, Any], where: str) -> None:
        source = block.get("source") or {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type') or 'image/png'};base64,{source.get('data') or ''}"
        elif source.get("type") == "url":
            url = str(source.get("url") or "")
        else:
            self.dropped.add(f"{where}: image source {source.get('type')!r} is not supported")
            return
        part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
        self.apply_cache_control(part, block)
        self.parts.append(part)

    def _document(self, block: dict[str, Any], where: str) -> None:
        source = block.get("source") or {}
        kind = source.get("type")
        title = str(block.get("title") or "")
        if kind == "text":
            self.text(f"{title}\n{source.get('data') or ''}".lstrip("\n"), block)
        elif kind == "content":
            for inner in source.get("content") or ():
                if isinstance(inner, dict):
                    self.block(inner, where)
        elif kind in ("base64", "url"):
            # OpenRouter reads PDFs from `file` parts, inline (data URL) or by URL.
            data = (
                f"data:{source.get('media_type') or 'application/pdf'};base64,{source.get('data') or ''}"
                if kind == "base64"
                else str(source.get("url") or "")
            )
            file = {"filename": title or "document.pdf", "file_data": data}
            part: dict[str, Any] = {"type": "file", "file": file}
            self.apply_cache_control(part, block)
            self.parts.append(part)
        else:
            self.dropped.add(f"{where}: document source {kind!r} is not supported")

    def content(self) -> str | list[dict[str, Any]]:
        """A lone plain text part as a string (the form every provider accepts), else the parts."""
        if len(self.parts) == 1 and self.parts[0]["type"] == "text" and "cache_control" not in self.parts[0]:
            return self.parts[0]["text"]
        return self.parts
