"""Serves the web app (health, monitor, config, JSON API) on the reverse listener's port.

A flow of the reverse listener whose path is one of the web app's routes (read from its router: `WebRoutes`)
is re-targeted to the web app, an aiohttp server on a private loopback port inside mitmproxy's event loop.
Its responses stream through mitmproxy, so Server-Sent Events reach the browser live (mitmproxy's ASGIApp
would buffer them). Every other path (Claude Code's `/api/claude_code/settings`, ...) goes to the upstream,
and on any other listener (forward proxy, local capture) nothing of ours answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import socket
from collections.abc import Awaitable

from aiohttp import web
from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import mode_specs

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.environment import environment
from anthropic_proxy.runtime import ProxySettings
from anthropic_proxy.webui.app import INTERNAL_HEADER, WebRoutes, create_app
from anthropic_proxy.webui.security import is_loopback, is_unspecified, public_url, split_host

logger = logging.getLogger("anthropic_proxy.webapp")

INTERNAL_FLOW = "anthropic_proxy.internal"
ORIGINAL_HOST_HEADER = "x-anthropic-proxy-host"


def is_api_path(path: str) -> bool:
    return path == "/v1" or path.startswith(("/v1/", "/v1?"))


@functools.cache
def machine_names() -> tuple[str, ...]:
    """This machine's address on its default route, host name and other addresses: the names a browser on
    another machine uses when the proxy listens on all interfaces (loopback ones are allowed anyway)."""
    names: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # (UDP: nothing is sent; the kernel only picks the outgoing address)
        names.append(probe.getsockname()[0])
    hostname = socket.gethostname()  # (not getfqdn(): a reverse DNS lookup can stall start-up for seconds)
    names.append(hostname)
    with contextlib.suppress(OSError):
        names += [info[4][0] for info in socket.getaddrinfo(hostname, None)]
    return tuple(dict.fromkeys(name.lower() for name in names if name and not is_loopback(name)))


class WebApp:
    """The web app, and the options that guard it: `web_token` and `web_hosts`."""

    def __init__(self) -> None:
        self._ready = asyncio.Event()
        self._routes: WebRoutes | None = None  # set with _ready
        self._generated_token: str | None = None

    def load(self, loader: Loader) -> None:
        env = environment
        loader.add_option("web_token", str, env.get("WEB_TOKEN"),
                          "Token the web pages and API require (env WEB_TOKEN). Listening beyond loopback without "
                          "one, the proxy makes one up and prints it at start-up.")
        loader.add_option("web_hosts", str, env.get("WEB_HOSTS"),
                          "More host names the web pages answer to, comma-separated: name (with the listen port, "
                          "or none behind a reverse proxy) or name:port. Listening on all interfaces, the "
                          "machine's own names and addresses are allowed too (env WEB_HOSTS).")

    def configure(self, updated: set[str]) -> None:
        given = tuple(entry.strip() for entry in ctx.options.web_hosts.split(",") if entry.strip())
        for entry in given:
            try:
                split_host(entry)
            except ValueError:
                raise exceptions.OptionsError(f"web_hosts: {entry!r} is not a host name, address or name:port "
                                              "(such as proxy.example.com or 192.168.1.5:8082)") from None
        runtime = runtime_module.current_runtime()  # (opened by the Startup addon, which runs first)
        if runtime is None:
            return
        settings = runtime.settings  # its listen address: the Startup addon's, set just before
        settings = settings.model_copy(update={"web_hosts": self._web_hosts(given, settings)})
        runtime.settings = settings.model_copy(update={"web_token": self._web_token(settings)})

    @staticmethod
    def _web_hosts(given: tuple[str, ...], settings: ProxySettings) -> tuple[str, ...]:
        """web_hosts as given, then (listening on all interfaces) the machine's own names with the port."""
        if not is_unspecified(settings.listen_host):
            return given
        port = settings.listen_port
        return given + tuple(f"[{name}]:{port}" if ":" in name else f"{name}:{port}" for name in machine_names())

    def _web_token(self, settings: ProxySettings) -> str | None:
        if ctx.options.web_token:
            return ctx.options.web_token
        if is_loopback(settings.listen_host):
            return None
        if self._generated_token is None:
            self._generated_token = secrets.token_urlsafe(24)
            logger.warning("anthropic-proxy listens beyond loopback: the web pages need a token. Open "
                           "%s/monitor?token=%s (or set web_token / WEB_TOKEN)", public_url(settings),
                           self._generated_token)
        return self._generated_token

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
