"""The web app's route table and its aiohttp application.

The addon re-targets every non-API flow to this app, which runs on a private loopback port inside
mitmproxy's own event loop; responses stream back through mitmproxy (so live events work).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..runtime import Runtime
from ..store import RecordFilter, parse_time_range, record_json

routes = web.RouteTableDef()
RUNTIME = web.AppKey("runtime", Runtime)
INTERNAL_HEADER = "x-anthropic-proxy-internal"


def error_response(status: int, message: str, error_type: str = "invalid_request_error") -> web.Response:
    return web.json_response({"type": "error", "error": {"type": error_type, "message": message}}, status=status)


@web.middleware
async def only_through_proxy(request: web.Request, handler: Any) -> web.StreamResponse:
    """The private port is reachable by any local process: serve only what came through the proxy."""
    if request.headers.get(INTERNAL_HEADER) != request.app[RUNTIME].internal_token:
        return error_response(403, "this port is internal to anthropic-proxy", "permission_error")
    return await handler(request)


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number", content_type="text/plain") from None
    return max(lo, min(hi, value))


def record_filter(request: web.Request) -> RecordFilter:
    query = request.query
    try:
        since = parse_time_range(query.get("timeRange"))
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc), content_type="text/plain") from None
    return RecordFilter(status=query.get("status") or None, model=query.get("model") or None,
                        provider=query.get("provider") or None, session=query.get("session") or None,
                        q=query.get("q") or None, since=since)


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    store = await asyncio.to_thread(runtime.store.stats)
    settings = runtime.settings
    upstream = settings.openrouter_base_url if settings.proxy_mode == "openrouter" else settings.anthropic_upstream
    return web.json_response({"status": "ok", "mode": settings.proxy_mode, "upstream": upstream,
                              "version": runtime.version, "inFlight": len(runtime.exchanges), "store": store})


@routes.get("/api/monitor/requests")
async def list_requests(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    page = _int_param(request, "page", 1, 1, 1_000_000)
    limit = _int_param(request, "limit", 50, 1, 500)
    data, total = await asyncio.to_thread(runtime.store.query, record_filter(request), page=page, limit=limit)
    return web.json_response({"data": data, "total": total, "page": page, "limit": limit})


@routes.get("/api/monitor/requests/{id}")
async def get_request(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    record_id = request.match_info["id"]
    # A record still in flight is fresher in memory than in the store.
    exchange = next((e for e in runtime.exchanges.values() if e.record.id == record_id), None)
    record = exchange.record if exchange else await asyncio.to_thread(runtime.store.get, record_id)
    if record is None:
        return error_response(404, f"no record with id {record_id!r}", "not_found_error")
    return web.Response(text=record_json(record), content_type="application/json")


def create_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[only_through_proxy])
    app[RUNTIME] = runtime
    app.add_routes(routes)
    return app
