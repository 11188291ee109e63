"""Keeps quiet streams alive and fails exchanges whose upstream stays silent longer than `request_timeout`.

A translated (openrouter) stream whose upstream says nothing for `stream_keepalive` seconds gets a keep-alive
(`ping`, or an SSE comment before message_start) written to the client, so neither the client nor anything in
between drops an idle connection; the upstream's silence still counts towards `request_timeout`.

Silence is no byte from the upstream: not its headers, a stream's chunk, nor a byte of a whole body still
arriving (`Exchange.silent_for`).

mitmproxy has no upstream read timeout of its own, and `flow.kill()` cannot stop a flow in transit,
so the watchdog ends the record with the reason and closes the upstream connection (the exchange's
`abort`); mitmproxy then finishes the client side as for any upstream failure.
"""

from __future__ import annotations

import asyncio
import logging
import time

from anthropic_proxy.runtime import Runtime

logger = logging.getLogger("anthropic_proxy.watchdog")


def expire_silent(runtime: Runtime, now: float) -> int:
    timeout = runtime.settings.request_timeout
    keepalive = runtime.settings.stream_keepalive
    expired = 0
    for exchange in runtime.inflight.exchanges():
        if exchange.is_over:
            continue
        silent = exchange.silent_for(now)
        if silent <= timeout:
            if keepalive and silent >= keepalive and now - exchange.last_keepalive >= keepalive:
                exchange.keep_alive(now)
            continue
        logger.warning("record %s: the upstream sent nothing for %g s, giving up", exchange.capture.id, timeout)
        exchange.fail(f"the upstream sent nothing for {timeout:g} s (request_timeout)", cancelled=False,
                      error_type="timeout_error")
        if exchange.abort is not None:
            exchange.abort()
        expired += 1
    return expired


async def watch(runtime: Runtime) -> None:
    while True:
        settings = runtime.settings
        await asyncio.sleep(min(1.0, settings.request_timeout / 4, (settings.stream_keepalive or 4) / 4))
        expire_silent(runtime, time.monotonic())
