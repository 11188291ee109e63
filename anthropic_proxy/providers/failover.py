"""Failover: a call with fallbacks tries its targets in order until one answers, strictly before any byte of an
answer reaches the client.

mitmproxy cannot re-send a flow to another server once the first one answered, nor give a client the body of a
request an addon made itself (only a stream callable fed by the flow's own server connection reaches the
client), and a connection failure ends in mitmproxy's own 502. So the Router sends a call that has fallbacks to
this relay, a small aiohttp server on a loopback port inside mitmproxy's event loop: it tries each target, and
the first that answers with anything but 429, 529, 500-504 (or the last target, whatever it answers) is passed
back to mitmproxy as it streams, byte for byte. mitmproxy, the stream tap, the translation and the record then
see one ordinary answer. Once the relay has begun passing an answer, it never switches: a failure mid-stream
reaches the client as it is.

A 429 or 529 with `retry-after` (or `retry-after-ms`) puts its target in a cool-down: until then, calls skip it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from anthropic_proxy.providers.entries import Target
from anthropic_proxy.providers.route import Attempt, LocalAnswer
from anthropic_proxy.record.masking import mask_text
from anthropic_proxy.translate.errors import anthropic_error_body

if TYPE_CHECKING:
    from anthropic_proxy.runtime import Runtime

logger = logging.getLogger("anthropic_proxy.failover")

FAILOVER_STATUSES = frozenset({429, 529, 500, 501, 502, 503, 504})
COOL_DOWN_STATUSES = frozenset({429, 529})
MAX_COOL_DOWN = 3600.0  # seconds: a retry-after beyond this is capped
RELAY_HEADER = "x-anthropic-proxy-relay"  # the flow id whose route the relay serves
_ERROR_BODY_LIMIT = 64 * 1024
_NOT_PASSED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection",
                         "upgrade", "te", "trailer"})
_RELAY_REQUEST_HEADERS = ("User-Agent", "Accept-Encoding", "Content-Type", "Accept")


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms`, else `retry-after` (seconds or an HTTP date), as seconds from now; None if absent or
    unreadable."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        if (ms := lowered.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000)
        value = lowered.get("retry-after")
        if value is None:
            return None
        if value.strip().replace(".", "", 1).isdigit():
            return float(value)
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (ValueError, TypeError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class CoolDown:
    target: str
    until: float  # time.time()
    status: int


class CoolDowns:
    """Targets that said "not now" (429/529 with retry-after), until when."""

    def __init__(self) -> None:
        self._until: dict[str, CoolDown] = {}

    def start(self, target: Target, status: int, seconds: float) -> None:
        key = str(target)
        self._until[key] = CoolDown(key, time.time() + min(seconds, MAX_COOL_DOWN), status)
        logger.info("target %s cools down for %.1f s (HTTP %d)", key, seconds, status)

    def cooling(self, target: Target) -> bool:
        entry = self._until.get(str(target))
        if entry is None:
            return False
        if entry.until <= time.time():
            del self._until[entry.target]
            return False
        return True

    def view(self) -> list[dict[str, Any]]:
        """The cool-downs in force (for /health and the config page)."""
        now = time.time()
        return [{"target": e.target, "status": e.status, "until": datetime.fromtimestamp(e.until, UTC).isoformat(),
                 "remainingS": round(e.until - now, 1)} for e in list(self._until.values()) if e.until > now]

    def clear(self) -> None:
        self._until.clear()


def attempt_error(status: int, body: bytes, encoding: str) -> str:
    """The failed attempt's status and the start of its error body (keys masked), for the record."""
    if encoding.lower() in ("gzip", "deflate"):  # (the relay asks with the client's accept-encoding)
        try:
            body = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(body, 4096)
        except zlib.error:
            body = b"(a compressed body)"
    text = body[:400].decode("utf-8", "replace").strip()
    return mask_text(f"HTTP {status}: {text}" if text else f"HTTP {status}")


class Relay:
    """The loopback server that tries a routed call's targets in order (see the module's docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: when mitmproxy drops the call (the client left, the watchdog), the upstream goes too
        runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True)
        await site.start()
        self._runner, self.port = runner, runner.addresses[0][1]
        # The upstream's bytes as they are (no decompression), and no headers of aiohttp's own making.
        self._session = aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=_RELAY_REQUEST_HEADERS,
                                              timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        runtime = self._runtime
        if request.headers.get("x-anthropic-proxy-internal") != runtime.internal_token:
            return web.Response(status=403, text="forbidden")
        route = runtime.inflight.route_of(request.headers.get(RELAY_HEADER, ""))
        if route is None or route.dispatch is None or route.body is None:
            return _local(LocalAnswer(502, anthropic_error_body("api_error", "anthropic-proxy lost this call's route")))
        targets = route.targets
        last: LocalAnswer | None = None
        for position, target in enumerate(targets):
            final = position == len(targets) - 1
            started = time.monotonic()
            attempt = Attempt(provider=target.provider, model=target.model)
            route.attempts.append(attempt)
            try:
                call = route.dispatch.prepare(route, target, route.body)
            except LocalAnswer as answer:  # this target cannot be asked (no key, untranslatable request)
                attempt.status, attempt.error = None, str(answer.body.get("error", {}).get("message"))
                attempt.duration_ms = _ms(started)
                if answer.status == 400:
                    return _local(answer)  # the request itself is wrong: no other target will take it
                last = answer
                continue
            timeout = route.dispatch.provider(target.provider).timeout or runtime.settings.request_timeout
            try:
                async with asyncio.timeout(timeout):
                    upstream = await self._session.request(  # type: ignore[union-attr]
                        "POST", call.url, headers=call.headers, data=call.content, allow_redirects=False)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                attempt.error = mask_text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                attempt.duration_ms = _ms(started)
                last = LocalAnswer(502, anthropic_error_body(
                    "api_error", f"anthropic-proxy could not reach {target}: {attempt.error}"))
                continue
            attempt.status, attempt.duration_ms = upstream.status, _ms(started)
            if upstream.status in COOL_DOWN_STATUSES:
                seconds = retry_after_seconds(upstream.headers)
                if seconds:
                    runtime.cooldowns.start(target, upstream.status, seconds)
            if upstream.status in FAILOVER_STATUSES and not final:
                try:
                    attempt.error = attempt_error(upstream.status, await upstream.content.read(_ERROR_BODY_LIMIT),
                                                upstream.headers.get("content-encoding", ""))
                except (aiohttp.ClientError, OSError):
                    attempt.error = f"HTTP {upstream.status}"
                upstream.release()
                continue
            return await self._pass(request, upstream, attempt)
        assert last is not None
        # the proxy's own answer: nothing to translate back
        route.translated = route.translator = route.upstream_content = None
        return _local(last)

    @staticmethod
    async def _pass(request: web.Request, upstream: aiohttp.ClientResponse, attempt: Attempt) -> web.StreamResponse:
        """The answer, as it streams (from here on, whatever happens reaches the client as it is)."""
        if upstream.status >= 400:
            attempt.error = f"HTTP {upstream.status}"
        out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.raw_headers:
            text = name.decode("latin-1")
            if text.lower() not in _NOT_PASSED:
                out.headers.add(text, value.decode("latin-1"))
        try:
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
        finally:
            upstream.release()
        return out


def _local(answer: LocalAnswer) -> web.Response:
    return web.json_response(answer.body, status=answer.status, headers=answer.headers)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
