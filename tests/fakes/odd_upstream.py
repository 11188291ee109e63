"""A fake Anthropic upstream whose answers are odd but legal: how a stream is framed and coded, and how a whole
body arrives, are chosen per request by headers (the record must not care; the client gets the bytes as sent).

Headers (all optional):
- `x-odd-line-end`     `lf` (default), `crlf` or `cr`: the stream's line ends
- `x-odd-encoding`     `gzip`, `deflate`, `br` or `zstd`: the stream is sent with that Content-Encoding
- `x-odd-content-type` the stream's Content-Type (default `text/event-stream; charset=utf-8`)
- `x-odd-bom`          `1`: the stream begins with a UTF-8 byte order mark
- `x-odd-unnamed`      `1`: no `event:` lines (the type is in each event's JSON, as SSE allows)
- `x-odd-hold`         seconds to wait after the first piece of the stream (the client must have it by then)
- `x-odd-trickle`      seconds over which a whole (JSON) answer is sent, a few bytes at a time
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import brotli
from aiohttp import web

from .server import FakeServer

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # Python < 3.14: mitmproxy's own dependency
    from backports import zstd

TEXT = "Odd but legal."
USAGE = {"input_tokens": 11, "output_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
ENCODERS = {"gzip": lambda d: gzip.compress(d, mtime=0), "deflate": zlib.compress, "br": brotli.compress,
            "zstd": zstd.compress}
LINE_ENDS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def events(model: str) -> list[dict[str, Any]]:
    return [
        {"type": "message_start", "message": {"id": "msg_odd", "type": "message", "role": "assistant",
                                              "model": model, "content": [], "stop_reason": None,
                                              "usage": {**USAGE, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
          for piece in ("Odd ", "but ", "legal.")),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": USAGE["output_tokens"]}},
        {"type": "message_stop"},
    ]


def message(model: str) -> dict[str, Any]:
    return {"id": "msg_odd", "type": "message", "role": "assistant", "model": model, "stop_reason": "end_turn",
            "content": [{"type": "text", "text": TEXT}], "usage": USAGE}


@dataclass
class OddExchange:
    path: str
    headers: dict[str, str]
    body: bytes
    sent: bytes = b""
    pieces: list[bytes] = field(default_factory=list)


class OddAnthropic(FakeServer):
    name = "odd Anthropic upstream"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        ex = OddExchange(request.path, dict(request.headers), body)
        with self._lock:
            self.exchanges.append(ex)
        payload = json.loads(body or b"{}")
        model = payload.get("model") or "claude-sonnet-4-5"
        headers = request.headers
        if not payload.get("stream"):
            return await self._whole(request, ex, model, float(headers.get("x-odd-trickle") or 0))
        end = LINE_ENDS[headers.get("x-odd-line-end") or "lf"]
        unnamed = headers.get("x-odd-unnamed") == "1"
        text = "".join(("" if unnamed else f"event: {e['type']}\n") + f"data: {json.dumps(e)}\n\n"
                       for e in events(model))
        data = (b"\xef\xbb\xbf" if headers.get("x-odd-bom") == "1" else b"") + text.encode().replace(b"\n", end)
        response_headers = {"content-type": headers.get("x-odd-content-type") or "text/event-stream; charset=utf-8"}
        if coding := headers.get("x-odd-encoding"):
            data = ENCODERS[coding](data)
            response_headers["content-encoding"] = coding
        response = web.StreamResponse(status=200, headers=response_headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        size = max(1, len(data) // 5)
        hold = float(headers.get("x-odd-hold") or 0)
        for n, start in enumerate(range(0, len(data), size)):
            piece = data[start:start + size]
            await response.write(piece)
            ex.sent += piece
            ex.pieces.append(piece)
            await asyncio.sleep(hold if n == 0 and hold else 0.005)
        await response.write_eof()
        return response

    async def _whole(self, request: web.Request, ex: OddExchange, model: str, trickle: float) -> web.StreamResponse:
        data = json.dumps(message(model)).encode()
        response = web.StreamResponse(status=200, headers={"content-type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        pieces = 12 if trickle else 1
        size = -(-len(data) // pieces)
        for start in range(0, len(data), size):
            await response.write(data[start:start + size])
            ex.sent += data[start:start + size]
            if trickle:
                await asyncio.sleep(trickle / pieces)
        await response.write_eof()
        return response
