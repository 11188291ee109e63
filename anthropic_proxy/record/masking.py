"""Masking of API keys wherever they could be kept: headers, bodies, log lines, exports, the journal.

A masked key keeps its first 10 and last 4 characters (enough to tell two keys apart, too little to use).
Masking is idempotent: a masked key contains "..." and no longer matches the key patterns.

Bodies are searched by hand-written code rather than `re.sub` over the whole text: every key pattern begins with a
literal, which `str.find`/`bytes.find` locate at memory speed, and the pattern is then matched only there. `re`
itself would step through a Claude Code body of hundreds of KB a character at a time, and such bodies do contain
"sk-" and "earer" ("clearer") in their prose; the proxy's journal checks every entry it writes, and the store's
writer every record. Bytes are masked as bytes (no decoding): every pattern is ASCII.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie", "set-cookie"})


def mask_secret(value: str) -> str:
    if len(value) <= 20:
        return "***"
    return f"{value[:10]}...{value[-4:]}"


@dataclass(frozen=True, slots=True)
class _Search[T: (str, bytes)]:
    """A key pattern in one form (str or bytes): `literal` starts every match; one of `after` must come just
    before it ("": anything may); group `secret` of the match is masked, what comes before it is kept."""

    literal: T
    pattern: re.Pattern[T]
    after: T
    secret: int

    def mask(self, text: T, mask: Callable[[T], T]) -> T:
        """`text` with each match masked; `text` itself (the same object) when nothing matched."""
        pieces: list[T] = []
        done = 0
        at = text.find(self.literal)
        while at >= 0:
            match = self.pattern.match(text, at) if not self.after or (at and text[at - 1:at] in self.after) else None
            if match is None:
                at = text.find(self.literal, at + 1)
                continue
            pieces += (text[done:match.start(self.secret)], mask(match[self.secret]))
            done = match.end()
            at = text.find(self.literal, done)
        if not pieces:
            return text
        pieces.append(text[done:])
        return text[:0].join(pieces)


def _searches(literal: str, pattern: str, *, secret: int = 0, after: str = "") -> tuple[_Search[str], _Search[bytes]]:
    """A key pattern's str and bytes forms (`re.ASCII`: `\\s` is the same in both)."""
    return (_Search(literal, re.compile(pattern, re.ASCII), after, secret),
            _Search(literal.encode(), re.compile(pattern.encode(), re.ASCII), after.encode(), secret))


# Anthropic (sk-ant-...), OpenRouter (sk-or-v1-...), OpenAI-style (sk-...) keys, and any bearer token. A token
# never contains "..." (that is how a masked one looks), so masking twice changes nothing.
_KEY = _searches("sk-", r"sk-[A-Za-z0-9][A-Za-z0-9_\-]{15,}")
_BEARER = _searches("earer", r"earer\s+((?:[A-Za-z0-9_~+/=\-]|\.(?!\.)){16,})", secret=1, after="Bb")


def _mask_ascii(secret: bytes) -> bytes:
    return mask_secret(secret.decode("ascii")).encode("ascii")


def mask_text(text: str) -> str:
    """Mask every key-like token in free text (bodies, error messages, log lines); the same object if none."""
    if "sk-" not in text and "earer" not in text:  # (most text: two scans, and no call per pattern)
        return text
    return _BEARER[0].mask(_KEY[0].mask(text, mask_secret), mask_secret)


def mask_bytes(data: bytes) -> bytes:
    """`mask_text` over bytes (a body, a stream's chunk), byte for byte as the text would be; the same object if
    there is no key. Bytes that are not UTF-8 pass through as they are."""
    return _BEARER[1].mask(_KEY[1].mask(data, _mask_ascii), _mask_ascii)


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
