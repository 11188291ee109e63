"""The web app's aiohttp application: route tables, safety middlewares, health.

The addon re-targets every non-API flow to this app, which runs on a private loopback port inside
mitmproxy's own event loop; responses stream back through mitmproxy (so live events work).

Routes live in one table per module: `pages` (/, /monitor, /config, /static), `monitor_api`
(/api/monitor/*), `config_api` (/api/config*) and this module's own (/health).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..runtime import RUNTIME_KEY as RUNTIME
from ..runtime import Runtime
from . import config_api, monitor_api, pages
from .common import INTERNAL_HEADER, error_response
from .security import add_security_headers, check_request, only_through_proxy

__all__ = ["INTERNAL_HEADER", "RUNTIME", "create_app", "error_response", "routes"]

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    store = await asyncio.to_thread(runtime.store.stats)
    settings = runtime.settings
    mode = runtime.config.current.mode
    upstream = settings.openrouter_base_url if mode == "openrouter" else settings.anthropic_upstream
    status = "degraded" if store["lastWriteError"] else "ok"  # the store refuses writes (disk full, locked)
    return web.json_response({"status": status, "mode": mode, "upstream": upstream,
                              "version": runtime.version, "inFlight": len(runtime.exchanges), "store": store,
                              "coolDowns": runtime.cooldowns.view()})


def create_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[only_through_proxy, check_request])
    app[RUNTIME] = runtime
    app.on_response_prepare.append(add_security_headers)
    app.add_routes(routes)
    app.add_routes(pages.routes)
    monitor_api.install(app)
    app.add_routes(config_api.routes)
    return app
