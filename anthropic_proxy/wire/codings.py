"""HTTP content codings (`Content-Encoding`) undone incrementally, for a response read as it streams.

A whole answer is decoded by mitmproxy (`response.content`); a stream passes to the client as it came, so what
reads its events from the log undoes the coding itself, piece by piece: gzip (and x-gzip), deflate (zlib, or the
raw deflate some servers send), br and zstd, applied in the order the header lists them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import brotli

try:  # (mitmproxy depends on these: the standard library's from Python 3.14, the backport before)
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python < 3.14
    from backports import zstd


class DecodingError(ValueError):
    """The bytes are not in the coding the response declared, or the coding is not one this module knows."""


def codings_of(headers: Mapping[str, str] | None) -> list[str]:
    """The content codings a response's headers declare, in the order they were applied (identity left out).
    Header names and coding names are case-insensitive."""
    value = next((v for k, v in (headers or {}).items() if k.lower() == "content-encoding"), "")
    return [c for c in (part.strip().lower() for part in value.split(",")) if c and c != "identity"]


class ContentDecoder:
    """Feed the coded bytes as they come; get the decoded bytes so far. Raises `DecodingError` (from the
    constructor for a coding it does not know, from `feed`/`flush` for bytes that are not in the coding)."""

    __slots__ = ("_steps",)

    def __init__(self, codings: list[str]) -> None:
        unknown = [c for c in codings if c not in _STEPS]
        if unknown:
            raise DecodingError(f"unsupported content-encoding {', '.join(unknown)}")
        self._steps = [_STEPS[c]() for c in reversed(codings)]  # the last coding applied is undone first

    def feed(self, data: bytes) -> bytes:
        for step in self._steps:
            data = step.feed(data)
        return data

    def flush(self) -> bytes:
        data = b""
        for step in self._steps:
            data = step.feed(data) + step.flush()
        return data


class _Zlib:
    """gzip (several members may follow each other) or deflate: zlib's format, or raw deflate when the first two
    bytes are not a zlib header (some servers send that; browsers and mitmproxy accept both)."""

    __slots__ = ("_decompressor", "_head", "_name", "_started", "_wbits")

    def __init__(self, wbits: int) -> None:
        self._name = "gzip" if wbits > zlib.MAX_WBITS else "deflate"
        self._wbits = wbits
        self._decompressor = zlib.decompressobj(wbits) if self._name == "gzip" else None
        self._head = b""  # deflate: the first bytes, until there are two to tell zlib's format from raw deflate
        self._started = False

    def feed(self, data: bytes) -> bytes:
        if self._decompressor is None:
            data, self._head = self._head + data, b""
            if len(data) < 2:
                self._head = data
                return b""
            if not (data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0):  # no zlib header
                self._wbits = -zlib.MAX_WBITS
            self._decompressor = zlib.decompressobj(self._wbits)
        out = b""
        while data:
            self._started = True
            try:
                out += self._decompressor.decompress(data)
            except zlib.error as exc:
                raise DecodingError(f"the body is not valid {self._name}: {exc}") from None
            data = b""
            if self._decompressor.eof and (data := self._decompressor.unused_data):  # another member
                self._decompressor = zlib.decompressobj(self._wbits)
        return out

    def flush(self) -> bytes:
        if self._head or (self._started and not self._decompressor.eof):  # type: ignore[union-attr]
            raise DecodingError(f"the {self._name} body ended before its end")
        return b""


class _Brotli:
    __slots__ = ("_decompressor", "_started")

    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()
        self._started = False

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        self._started = True
        try:
            return self._decompressor.process(data)
        except brotli.error as exc:
            raise DecodingError(f"the body is not valid br: {exc}") from None

    def flush(self) -> bytes:
        if self._started and not self._decompressor.is_finished():
            raise DecodingError("the br body ended before its end")
        return b""


class _Zstd:
    """zstd; several frames may follow each other."""

    __slots__ = ("_decompressor", "_started")

    def __init__(self) -> None:
        self._decompressor = zstd.ZstdDecompressor()
        self._started = False

    def feed(self, data: bytes) -> bytes:
        out = b""
        while data:
            self._started = True
            if self._decompressor.eof:  # another frame
                self._decompressor = zstd.ZstdDecompressor()
            try:
                out += self._decompressor.decompress(data)
            except zstd.ZstdError as exc:
                raise DecodingError(f"the body is not valid zstd: {exc}") from None
            data = self._decompressor.unused_data if self._decompressor.eof else b""
        return out

    def flush(self) -> bytes:
        if self._started and not self._decompressor.eof:
            raise DecodingError("the zstd body ended before its end")
        return b""


_STEPS: dict[str, Callable[[], _Zlib | _Brotli | _Zstd]] = {
    "gzip": lambda: _Zlib(16 + zlib.MAX_WBITS), "x-gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "deflate": lambda: _Zlib(zlib.MAX_WBITS), "br": _Brotli, "zstd": _Zstd,
}
