"""/api/config*: read and change the proxy's configuration at run time (applies to the next request)."""

from __future__ import annotations

import json

from aiohttp import web

from ..environment import environment
from ..openrouter_api import check_key
from ..proxy_config import ConfigError
from ..runtime import RUNTIME_KEY as RUNTIME
from ..runtime import Runtime

routes = web.RouteTableDef()


def config_view(runtime: Runtime) -> dict[str, object]:
    """The configuration as the API shows it: whether a key is set, never the key."""
    config = runtime.config.current
    return {
        "mode": config.mode,
        "models": config.models.model_dump(),
        "headers": config.headers,
        "openrouterKeySet": bool(environment.get("OPENROUTER_API_KEY")),
        "openrouterBaseUrl": runtime.settings.openrouter_base_url,
        "anthropicUpstream": runtime.settings.anthropic_upstream,
    }


def _bad_request(message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": "invalid_request_error", "message": message}},
                             status=400)


@routes.get("/api/config")
async def get_config(request: web.Request) -> web.Response:
    return web.json_response(config_view(request.app[RUNTIME]))


@routes.post("/api/config")
async def update_config(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    try:
        patch = json.loads(await request.read() or b"null")
    except ValueError:
        return _bad_request("the body is not valid JSON")
    try:
        runtime.config.update(patch)
    except ConfigError as exc:
        return _bad_request(str(exc))
    return web.json_response(config_view(runtime))


@routes.post("/api/config/reset")
async def reset_config(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    runtime.config.reset()
    return web.json_response(config_view(runtime))


@routes.post("/api/config/reload")
async def reload_config(request: web.Request) -> web.Response:
    """Re-read config.json, the environment and the .env files (a new OPENROUTER_API_KEY applies now)."""
    runtime = request.app[RUNTIME]
    environment.reload()
    runtime.config.reload()
    return web.json_response(config_view(runtime))


@routes.get("/api/config/models")
async def list_models(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    refresh = request.query.get("refresh") in ("1", "true")
    return web.json_response(await runtime.catalog.models(runtime.settings.openrouter_base_url, refresh=refresh))


@routes.post("/api/config/test-openrouter")
async def test_openrouter(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.json_response(await check_key(runtime.settings.openrouter_base_url,
                                             environment.get("OPENROUTER_API_KEY")))
