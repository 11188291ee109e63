"""Masking of API keys wherever they could be kept: headers, bodies, log lines, exports.

A masked key keeps its first 10 and last 4 characters (enough to tell two keys apart, too little to use).
Masking is idempotent: a masked key contains "..." and no longer matches the key patterns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie", "set-cookie"})

# Anthropic (sk-ant-...), OpenRouter (sk-or-v1-...), OpenAI-style (sk-...) keys, and any bearer token.
_KEY_PATTERN = re.compile(
    r"(?P<bearer>\b[Bb]earer\s+)?(?P<key>sk-[A-Za-z0-9][A-Za-z0-9_\-]{15,})"
    # a token never contains "..." (that is how a masked one looks), so masking twice changes nothing
    r"|(?P<bearer2>\b[Bb]earer\s+)(?P<token>(?:[A-Za-z0-9_~+/=\-]|\.(?!\.)){16,})"
)


def mask_secret(value: str) -> str:
    if len(value) <= 20:
        return "***"
    return f"{value[:10]}...{value[-4:]}"


def _mask_match(match: re.Match[str]) -> str:
    prefix = match.group("bearer") or match.group("bearer2") or ""
    return prefix + mask_secret(match.group("key") or match.group("token"))


def mask_text(text: str) -> str:
    """Mask every key-like token in free text (bodies, error messages, log lines)."""
    if "sk-" not in text and "earer" not in text:
        return text
    return _KEY_PATTERN.sub(_mask_match, text)


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
