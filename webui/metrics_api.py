"""`GET /metrics`: the proxy's Prometheus metrics (anthropic_proxy/telemetry/metrics.py), behind the web app's
safety rules (beyond loopback, the token: Prometheus sends it as `authorization: {credentials: ...}`, see
docs/observability.md)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from anthropic_proxy.runtime import RUNTIME_KEY as RUNTIME

routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[RUNTIME].metrics.exposition(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})
