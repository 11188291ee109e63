"""Masking of API keys wherever they could be kept: headers, bodies, log lines, exports.

A masked key keeps its first 10 and last 4 characters (enough to tell two keys apart, too little to use).
Masking is idempotent: a masked key contains "..." and no longer matches the key patterns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie", "set-cookie"})

# Anthropic (sk-ant-...), OpenRouter (sk-or-v1-...), OpenAI-style (sk-...) keys, and any bearer token.
# Both patterns begin with a literal so the regex engine can skip ahead: mask_text runs over every record
# (100 KB bodies from Claude Code), in the store's writer process, and over web-app answers and exports.
_KEY = re.compile(r"sk-[A-Za-z0-9][A-Za-z0-9_\-]{15,}")
# A token never contains "..." (that is how a masked one looks), so masking twice changes nothing.
_BEARER = re.compile(r"earer(\s+)((?:[A-Za-z0-9_~+/=\-]|\.(?!\.)){16,})")


def mask_secret(value: str) -> str:
    if len(value) <= 20:
        return "***"
    return f"{value[:10]}...{value[-4:]}"


def _mask_bearer(match: re.Match[str]) -> str:
    if match.start() == 0 or match.string[match.start() - 1] not in "Bb":
        return match.group(0)
    return f"earer{match.group(1)}{mask_secret(match.group(2))}"


def mask_text(text: str) -> str:
    """Mask every key-like token in free text (bodies, error messages, log lines)."""
    if "sk-" in text:
        text = _KEY.sub(lambda m: mask_secret(m.group(0)), text)
    if "earer" in text:
        text = _BEARER.sub(_mask_bearer, text)
    return text


def mask_bytes(data: bytes) -> bytes:
    """`mask_text` over bytes (a body, a stream's chunk); bytes that are not UTF-8 pass through as they are."""
    if b"sk-" not in data and b"earer" not in data:
        return data
    return mask_text(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


def mask_header_value(name: str, value: str) -> str:
    if name.lower() not in SECRET_HEADERS:
        return mask_text(value)
    scheme, sep, token = value.partition(" ")
    if sep and scheme.lower() in ("bearer", "basic", "token"):
        return f"{scheme} {mask_secret(token)}"
    return mask_secret(value)


def mask_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as a dict with secrets masked; repeated names are joined with ", " as HTTP allows."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    masked: dict[str, str] = {}
    for name, value in items:
        value = mask_header_value(name, value)
        masked[name] = f"{masked[name]}, {value}" if name in masked else value
    return masked
