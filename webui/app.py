"""The web app's aiohttp application: route tables, safety middlewares, health.

The addon re-targets the flows of the reverse listener whose path is one of this app's routes (`WebRoutes`) to
it; it runs on a private loopback port inside mitmproxy's own event loop, and its responses stream back through
mitmproxy (so live events work). Every other path belongs to the upstream.

Routes live in one table per module: `pages` (/, /monitor, /config, /static), `monitor_api`
(/api/monitor/*), `config_api` (/api/config*), `metrics_api` (/metrics) and this module's own (/health).
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from anthropic_proxy.runtime import RUNTIME_KEY as RUNTIME
from anthropic_proxy.runtime import Runtime
from anthropic_proxy.webui import config_api, metrics_api, monitor_api, pages
from anthropic_proxy.webui.common import INTERNAL_HEADER, error_response
from anthropic_proxy.webui.outgoing import masked_answers
from anthropic_proxy.webui.security import add_security_headers, check_request, only_through_proxy

__all__ = ["INTERNAL_HEADER", "RUNTIME", "WebRoutes", "create_app", "error_response", "routes"]

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    store = await asyncio.to_thread(runtime.store.stats)
    settings = runtime.settings
    mode = runtime.config.current.mode
    upstream = settings.openrouter_base_url if mode == "openrouter" else settings.anthropic_upstream
    # Degraded: the store refuses writes (disk full, locked) or reads, its file was re-created under the proxy, or
    # one of its threads had died.
    reason = store["lastWriteError"] or store["readError"] or store["notice"] or store["lastThreadError"]
    return web.json_response({"status": "degraded" if reason else "ok", "reason": reason, "mode": mode,
                              "upstream": upstream, "version": runtime.version, "inFlight": len(runtime.inflight),
                              "store": store, "coolDowns": runtime.cooldowns.view()})


def create_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[only_through_proxy, check_request, masked_answers])
    app[RUNTIME] = runtime
    app.on_response_prepare.append(add_security_headers)
    app.add_routes(routes)
    app.add_routes(pages.routes)
    monitor_api.install(app)
    app.add_routes(config_api.routes)
    app.add_routes(metrics_api.routes)
    return app


class WebRoutes:
    """The paths an app answers, read from its router: plain routes, `{name}` patterns and static prefixes."""

    def __init__(self, app: web.Application) -> None:
        exact: set[str] = set()
        patterns: list[re.Pattern[str]] = []
        prefixes: list[str] = []
        for resource in app.router.resources():
            info = resource.get_info()
            if "path" in info:
                exact.add(info["path"])
            elif "pattern" in info:
                patterns.append(info["pattern"])
            elif "prefix" in info:
                prefixes.append(info["prefix"].rstrip("/") + "/")
            else:
                raise TypeError(f"the web app has a route of a kind WebRoutes cannot match: {resource!r}")
        self._exact = frozenset(exact)
        self._patterns = tuple(patterns)
        self._prefixes = tuple(prefixes)

    def __contains__(self, path: str) -> bool:
        """Whether the app has a route for this request path (query string ignored, matched as sent)."""
        path = path.split("?", 1)[0]
        return path in self._exact or path.startswith(self._prefixes) or any(
            pattern.fullmatch(path) for pattern in self._patterns)
