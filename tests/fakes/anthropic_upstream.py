"""A fake Anthropic Messages API (aiohttp) for integration tests.

It runs on an ephemeral 127.0.0.1 port in a background thread with its own event loop, so synchronous tests
(the `anthropic` SDK, httpx) and async tests can both use it:

    with FakeAnthropic() as fake:
        ...  # point the proxy at fake.url
        ex = fake.wait_for(lambda ex: ex.header("x-test-tag") == tag)
        ex.body            # the exact request body bytes received
        ex.sent            # the exact response body bytes written back

Every request is kept as an `Exchange` (method, raw path, query string, raw headers in order, raw body bytes,
and what was answered: status, headers, body bytes, SSE event names, whether the client went away).

A request header `x-fake-response-<name>: value` adds the response header `<name>: value` to any answer.

The answer ("scenario") is chosen by, in order: the header `x-fake-scenario`; a model name `fake-<scenario>`;
the path (`/v1/messages/count_tokens` -> `count_tokens`); the body's `stream` flag (`stream` or `message`).

Scenarios (headers that tune them in brackets):
- `message`        non-streaming message JSON with request-id and anthropic-ratelimit-* headers
- `stream`         streamed text (message_start with cache usage, ping, text deltas, message_delta, stop)
- `stream_tool`    streamed thinking (thinking_delta + signature_delta), text (a multi-byte character split
                   across two writes) and tool_use (input_json_delta fragments, one event split mid-line)
- `message_gzip`   `message`, gzip-compressed with content-encoding: gzip (as api.anthropic.com may answer)
- `count_tokens`   {"input_tokens": len(body) // 4}
- `rate_limit`     429 rate_limit_error with retry-after [x-fake-retry-after, default "7"]
- `overloaded`     529 overloaded_error
- `flaky`          fails the first N requests carrying the same x-fake-flaky-id with 429 (retry-after-ms: 10),
                   then behaves like `stream`/`message` [x-fake-flaky-id, x-fake-fail-times default 1]
- `cut`            streams N events then closes the connection without message_stop [x-fake-cut-after, 4]
- `error_event`    a few events, then an SSE `error` event (overloaded_error); the body ends cleanly
- `slow`           a long text stream, one event every interval [x-fake-events 200, x-fake-interval-ms 50]
- `hold`           sends message_start + first text delta, then waits until `fake.release(hold_id)` (or a
                   timeout) before sending the rest [x-fake-hold-id, x-fake-hold-timeout seconds, default 10]
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .server import FakeServer

FINAL_TEXT = "Hello! I'm doing well, thanks for asking."
TOOL_INPUT = {"location": "Paris, France", "unit": "celsius"}
# Fragments the tool input JSON is streamed in (they join to json.dumps(TOOL_INPUT)).
TOOL_INPUT_FRAGMENTS = ['{"locat', 'ion": "Par', 'is, France"', ', "unit": "cel', 'sius"}']
THINKING_TEXT = "The user wants the weather; I should call the tool."
THINKING_SIGNATURE = "EqQBCkYIARgCKkB" + "x" * 40 + "fakeSignature=="
STREAM_TOOL_TEXT = "Checking the weather in Paris — ☀️ one moment."

USAGE_START = {
    "input_tokens": 25,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 200,
    "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 1,
    "service_tier": "standard",
}
FINAL_OUTPUT_TOKENS = 42


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event exactly as Anthropic frames it."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


@dataclass
class Exchange:
    seq: int
    method: str
    path: str
    raw_path: str
    query_string: str
    raw_headers: list[tuple[str, str]]
    body: bytes
    received_at: float
    scenario: str = ""
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    sent: bytearray = field(default_factory=bytearray)
    writes: list[tuple[float, bytes]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    completed: bool = False  # the whole answer was written
    cut: bool = False  # the `cut` scenario closed the connection on purpose
    client_disconnected: bool = False  # the peer (the proxy) went away while we were answering
    finished: threading.Event = field(default_factory=threading.Event)  # the handler is done, however

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.raw_headers if k.lower() == name]

    def response_header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.response_headers if k.lower() == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


class FakeAnthropic(FakeServer):
    name = "fake Anthropic upstream"

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        super().__init__(host, tls)
        self._flaky: dict[str, int] = {}

    def tagged(self, tag: str) -> list[Exchange]:
        """Exchanges whose request carried `x-test-tag: <tag>`."""
        return self.find(lambda ex: ex.header("x-test-tag") == tag)

    # ---- request handling ----------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        ex = Exchange(
            seq=next(self._seq),
            method=request.method,
            path=request.path,
            raw_path=request.raw_path,
            query_string=request.query_string,
            raw_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body=body,
            received_at=time.monotonic(),
        )
        with self._lock:
            self.exchanges.append(ex)
        try:
            ex.scenario = self._scenario(request, ex)
            handler = getattr(self, "_scenario_" + ex.scenario, None)
            if handler is None:
                return self._json(ex, 400, _error("invalid_request_error", f"unknown scenario {ex.scenario}"))
            return await handler(request, ex)
        except (ConnectionError, asyncio.CancelledError):
            if not ex.cut:
                ex.client_disconnected = True
            raise
        finally:
            ex.finished.set()

    def _describe(self, ex: Exchange) -> Any:
        return (ex.method, ex.raw_path, ex.scenario)

    def _scenario(self, request: web.Request, ex: Exchange) -> str:
        if name := request.headers.get("x-fake-scenario"):
            return name
        if not request.path.startswith("/v1/"):
            return "not_found"
        if request.path == "/v1/messages/count_tokens":
            return "count_tokens"
        payload = _try_json(ex.body)
        model = payload.get("model", "") if isinstance(payload, dict) else ""
        if isinstance(model, str) and model.startswith("fake-"):
            return model.removeprefix("fake-")
        stream = isinstance(payload, dict) and payload.get("stream") is True
        return "stream" if stream else "message"

    # ---- plain answers -------------------------------------------------------------------------------------
    def _base_headers(self, ex: Exchange) -> dict[str, str]:
        return {
            "request-id": f"req_fake_{ex.seq:06d}",
            "anthropic-organization-id": "00000000-0000-4000-8000-00000000fake",
            "anthropic-ratelimit-requests-limit": "4000",
            "anthropic-ratelimit-requests-remaining": "3999",
            "anthropic-ratelimit-requests-reset": "2030-01-01T00:00:01Z",
            "anthropic-ratelimit-input-tokens-limit": "400000",
            "anthropic-ratelimit-input-tokens-remaining": "399000",
            "anthropic-ratelimit-input-tokens-reset": "2030-01-01T00:00:01Z",
            "anthropic-ratelimit-output-tokens-limit": "80000",
            "anthropic-ratelimit-output-tokens-remaining": "80000",
            "anthropic-ratelimit-output-tokens-reset": "2030-01-01T00:00:01Z",
            "x-fake-echo-seq": str(ex.seq),
            # `x-fake-response-<name>: value` on the request answers with the header `<name>: value`
            **{name.lower().removeprefix("x-fake-response-"): value for name, value in ex.raw_headers
               if name.lower().startswith("x-fake-response-")},
        }

    def _json(
        self, ex: Exchange, status: int, payload: Any, headers: dict[str, str] | None = None,
        reason: str | None = None, compress: bool = False,
    ) -> web.Response:
        body = json.dumps(payload, ensure_ascii=False).encode()
        all_headers = {**self._base_headers(ex), **(headers or {}), "content-type": "application/json"}
        if compress:
            body = gzip.compress(body, mtime=0)
            all_headers["content-encoding"] = "gzip"
        resp = web.Response(status=status, reason=reason, body=body, headers=all_headers)
        ex.status = status
        ex.response_headers = list(all_headers.items())
        ex.sent += body
        ex.completed = True
        return resp

    def _model(self, ex: Exchange, default: str = "claude-sonnet-4-5-20250929") -> str:
        payload = _try_json(ex.body)
        model = payload.get("model") if isinstance(payload, dict) else None
        return model if isinstance(model, str) else default

    async def _scenario_not_found(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        return self._json(ex, 404, _error("not_found_error", f"Not found: {request.path}"))

    async def _scenario_message_gzip(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        return await self._scenario_message(request, ex, compress=True)

    async def _scenario_message(
        self, request: web.Request, ex: Exchange, compress: bool = False
    ) -> web.StreamResponse:
        message = {
            "model": self._model(ex),
            "id": f"msg_fake_{ex.seq:06d}",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": FINAL_TEXT}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 3,
                "cache_read_input_tokens": 5,
                "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 29,
                "service_tier": "standard",
            },
        }
        return self._json(ex, 200, message, compress=compress)

    async def _scenario_count_tokens(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        return self._json(ex, 200, {"input_tokens": len(ex.body) // 4})

    async def _scenario_rate_limit(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        retry_after = request.headers.get("x-fake-retry-after", "7")
        return self._json(
            ex, 429, _error("rate_limit_error", "Number of request tokens has exceeded your rate limit"),
            headers={"retry-after": retry_after, "anthropic-ratelimit-requests-remaining": "0"},
        )

    async def _scenario_overloaded(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        return self._json(ex, 529, _error("overloaded_error", "Overloaded"), reason="Site Overloaded")

    async def _scenario_flaky(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        key = request.headers.get("x-fake-flaky-id", "default")
        fail_times = int(request.headers.get("x-fake-fail-times", "1"))
        with self._lock:
            seen = self._flaky.get(key, 0)
            self._flaky[key] = seen + 1
        if seen < fail_times:
            return self._json(
                ex, 429, _error("rate_limit_error", "Rate limited, try again"),
                headers={"retry-after": "1", "retry-after-ms": "10"},
            )
        payload = _try_json(ex.body)
        if isinstance(payload, dict) and payload.get("stream") is True:
            return await self._scenario_stream(request, ex)
        return await self._scenario_message(request, ex)

    # ---- streamed answers ----------------------------------------------------------------------------------
    def _message_start(self, ex: Exchange) -> bytes:
        return sse("message_start", {
            "type": "message_start",
            "message": {
                "model": self._model(ex), "id": f"msg_fake_{ex.seq:06d}", "type": "message",
                "role": "assistant", "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": USAGE_START,
            },
        })

    @staticmethod
    def _message_end(stop_reason: str, output_tokens: int = FINAL_OUTPUT_TOKENS) -> list[bytes]:
        return [
            sse("message_delta", {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            }),
            sse("message_stop", {"type": "message_stop"}),
        ]

    @staticmethod
    def _text_block(index: int, pieces: list[str]) -> list[bytes]:
        out = [sse("content_block_start", {
            "type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""},
        })]
        out += [
            sse("content_block_delta", {
                "type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": p},
            })
            for p in pieces
        ]
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        return out

    def stream_text_events(self, ex: Exchange) -> list[bytes]:
        pieces = ["Hello", "! I'm doing", " well, thanks", " for asking."]
        assert "".join(pieces) == FINAL_TEXT
        return [
            self._message_start(ex),
            sse("ping", {"type": "ping"}),
            *self._text_block(0, pieces),
            *self._message_end("end_turn"),
        ]

    async def _start_stream(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        headers = {
            **self._base_headers(ex),
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
        }
        resp = web.StreamResponse(status=200, headers=headers)
        resp.enable_chunked_encoding()
        ex.status = 200
        ex.response_headers = list(headers.items())
        await resp.prepare(request)
        return resp

    async def _write(self, resp: web.StreamResponse, ex: Exchange, data: bytes) -> None:
        try:
            await resp.write(data)
        except ConnectionError:
            ex.client_disconnected = True
            raise
        ex.sent += data
        ex.writes.append((time.monotonic(), data))
        if data.startswith(b"event: "):
            ex.events.append(data[7:data.index(b"\n")].decode())

    async def _stream_writes(
        self, request: web.Request, ex: Exchange, writes: list[bytes], delay: float = 0.005
    ) -> web.StreamResponse:
        resp = await self._start_stream(request, ex)
        for data in writes:
            await self._write(resp, ex, data)
            await asyncio.sleep(delay)
        await resp.write_eof()
        ex.completed = True
        return resp

    async def _scenario_stream(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        return await self._stream_writes(request, ex, self.stream_text_events(ex))

    def stream_tool_writes(self, ex: Exchange) -> list[bytes]:
        events = [self._message_start(ex), sse("ping", {"type": "ping"})]
        # thinking block with a signature
        events.append(sse("content_block_start", {
            "type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        }))
        half = len(THINKING_TEXT) // 2
        for piece in (THINKING_TEXT[:half], THINKING_TEXT[half:]):
            events.append(sse("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "thinking_delta", "thinking": piece},
            }))
        events.append(sse("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": THINKING_SIGNATURE},
        }))
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        # text block (with multi-byte characters)
        events += self._text_block(1, ["Checking the weather in Paris — ", "☀️ one moment."])
        # tool_use block, input streamed as JSON fragments
        events.append(sse("content_block_start", {
            "type": "content_block_start", "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_fake_01", "name": "get_weather", "input": {}},
        }))
        for fragment in TOOL_INPUT_FRAGMENTS:
            events.append(sse("content_block_delta", {
                "type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": fragment},
            }))
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 2}))
        events += self._message_end("tool_use")
        # Split two events across writes: one in the middle of a UTF-8 character ("☀" is 3 bytes), one in the
        # middle of a data line, so a proxy that parses per network chunk is exercised.
        writes: list[bytes] = []
        for ev in events:
            if "☀".encode() in ev:
                cut = ev.index("☀".encode()) + 1
                writes += [ev[:cut], ev[cut:]]
            elif b'"partial_json":"ion' in ev:
                cut = ev.index(b"partial_json")
                writes += [ev[:cut], ev[cut:]]
            else:
                writes.append(ev)
        return writes

    async def _scenario_stream_tool(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        return await self._stream_writes(request, ex, self.stream_tool_writes(ex))

    async def _scenario_error_event(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        events = [*self.stream_text_events(ex)[:4], sse("error", error)]
        return await self._stream_writes(request, ex, events)

    async def _scenario_cut(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        cut_after = int(request.headers.get("x-fake-cut-after", "4"))
        resp = await self._start_stream(request, ex)
        for data in self.stream_text_events(ex)[:cut_after]:
            await self._write(resp, ex, data)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)  # let the proxy forward everything before the cut
        assert request.transport is not None
        ex.cut = True
        request.transport.close()  # no terminating chunk, no message_stop
        await asyncio.sleep(0.05)
        raise asyncio.CancelledError  # nothing more to send; stops aiohttp from finishing the response

    async def _scenario_slow(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        count = int(request.headers.get("x-fake-events", "200"))
        interval = int(request.headers.get("x-fake-interval-ms", "50")) / 1000
        pieces = [f"word{i} " for i in range(count)]
        events = self._text_block(0, pieces)
        resp = await self._start_stream(request, ex)
        await self._write(resp, ex, self._message_start(ex))
        for data in events:
            if self._stopping.is_set():
                break
            await self._write(resp, ex, data)
            await asyncio.sleep(interval)
        for data in self._message_end("end_turn"):
            await self._write(resp, ex, data)
        await resp.write_eof()
        ex.completed = True
        return resp

    async def _scenario_silent(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        """Says nothing at all (no status line) for `x-fake-delay-ms`, then answers normally."""
        delay = int(request.headers.get("x-fake-delay-ms", "5000")) / 1000
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self._stopping.is_set():
            await asyncio.sleep(0.01)
        return await self._scenario_message(request, ex)

    async def _scenario_hold(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        hold_id = request.headers.get("x-fake-hold-id", f"hold-{ex.seq}")
        timeout = float(request.headers.get("x-fake-hold-timeout", "10"))
        events = self.stream_text_events(ex)
        first, rest = events[:4], events[4:]  # message_start, ping, content_block_start, first text delta
        resp = await self._start_stream(request, ex)
        for data in first[:-1]:
            await self._write(resp, ex, data)
        self._mark_holding(hold_id)
        await self._write(resp, ex, first[-1])
        await self._hold(hold_id, timeout)
        for data in rest:
            await self._write(resp, ex, data)
            await asyncio.sleep(0.002)
        await resp.write_eof()
        ex.completed = True
        return resp


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _try_json(body: bytes) -> Any:
    with contextlib.suppress(ValueError):
        return json.loads(body)
    return None
