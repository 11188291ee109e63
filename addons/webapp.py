"""Serves the web app (health, monitor, config, JSON API) on the reverse listener's port.

A flow of the reverse listener whose path is one of the web app's routes (read from its router: `WebRoutes`)
is re-targeted to the web app, an aiohttp server on a private loopback port inside mitmproxy's event loop.
Its responses stream through mitmproxy, so Server-Sent Events reach the browser live (mitmproxy's ASGIApp
would buffer them). Every other path (Claude Code's `/api/claude_code/settings`, ...) goes to the upstream,
and on any other listener (forward proxy, local capture) nothing of ours answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from aiohttp import web
from mitmproxy import http
from mitmproxy.proxy import mode_specs

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.webui.app import INTERNAL_HEADER, WebRoutes, create_app

logger = logging.getLogger("anthropic_proxy.webapp")

INTERNAL_FLOW = "anthropic_proxy.internal"
ORIGINAL_HOST_HEADER = "x-anthropic-proxy-host"


def is_api_path(path: str) -> bool:
    return path == "/v1" or path.startswith(("/v1/", "/v1?"))


class WebApp:
    def __init__(self) -> None:
        self._ready = asyncio.Event()
        self._routes: WebRoutes | None = None  # set with _ready

    def running(self) -> None:
        runtime = runtime_module.current_runtime()
        if runtime is not None and runtime.web_runner is not None:  # started before a script reload; still serving
            self._routes = WebRoutes(runtime.web_runner.app)
            self._ready.set()
            return
        asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        runtime = runtime_module.current_runtime()
        assert runtime is not None, "Startup.configure opens the runtime before running()"
        app = create_app(runtime)
        # handler_cancellation: a live-event stream stops as soon as its browser leaves
        runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True)
        await site.start()
        runtime.web_port = runner.addresses[0][1]
        runtime.web_runner = runner
        self._routes = WebRoutes(app)
        self._ready.set()
        logger.debug("web app on internal port %d", runtime.web_port)

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # Sync on purpose: API calls (the hot path) must not pay for a coroutine; only a request that
        # arrives before the web app has started waits for it (to know whether its path is the app's).
        if flow.response or flow.error or not flow.live or is_api_path(flow.request.path) \
                or not isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
            return None
        if self._routes is None:
            return self._retarget_when_ready(flow)
        if flow.request.path in self._routes:
            self._retarget(flow)
        return None

    async def _retarget_when_ready(self, flow: http.HTTPFlow) -> None:
        await self._ready.wait()
        assert self._routes is not None
        if flow.request.path in self._routes:
            self._retarget(flow)

    @staticmethod
    def _retarget(flow: http.HTTPFlow) -> None:
        runtime = runtime_module.current_runtime()
        assert runtime is not None and runtime.web_port is not None
        flow.metadata[INTERNAL_FLOW] = True
        flow.marked = ""
        flow.comment = "anthropic-proxy web app"
        request = flow.request
        request.headers[ORIGINAL_HOST_HEADER] = request.host_header or ""
        request.headers[INTERNAL_HEADER] = runtime.internal_token
        request.scheme, request.host, request.port = "http", "127.0.0.1", runtime.web_port

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(INTERNAL_FLOW) and flow.response is not None:
            flow.response.stream = True  # live events must not wait for the end of the response
