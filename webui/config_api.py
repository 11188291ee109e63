"""/api/config*: read and change the proxy's configuration at run time (applies to the next request)."""

from __future__ import annotations

import json

from aiohttp import web

from ..environment import environment
from ..openrouter_api import check_key
from ..proxy_config import ConfigError, model_choices
from ..runtime import RUNTIME_KEY as RUNTIME
from ..runtime import Runtime

routes = web.RouteTableDef()


def model_map(runtime: Runtime) -> dict[str, dict[str, str]]:
    """Per Claude family, the OpenRouter id it maps to now and why (`pinned`, `newest` in OpenRouter's list,
    built-in `fallback`)."""
    choices = model_choices(runtime.config.current.models, runtime.catalog.newest)
    return {family: {"id": model, "source": source} for family, (model, source) in choices.items()}


def config_warnings(runtime: Runtime) -> list[str]:
    """What the configuration as it stands will do that its user may not expect."""
    config, warnings = runtime.config.current, []
    if config.mode == "openrouter" and not environment.get("OPENROUTER_API_KEY"):
        warnings.append("OpenRouter mode, but OPENROUTER_API_KEY is not set: every call is refused (401) until you "
                        "set it in the environment or .env and reload the configuration.")
    for field, pin in runtime.settings.pins.items():
        if getattr(config, field) != pin.value:
            warnings.append(f"The {field} is {getattr(config, field)} only until the proxy restarts: {pin.by} sets "
                            f"it back to {pin.value} at every start. Remove that setting to let this page decide.")
    return warnings


def config_view(runtime: Runtime) -> dict[str, object]:
    """The configuration as the API shows it: whether a key is set, never the key. `models` is what each family
    maps to now (`modelMap` says why); `pinned` holds the values an option or environment variable sets at every
    start (`{"mode": {"value", "by"}}`); `warnings` what the user should know before the next call."""
    config = runtime.config.current
    models = model_map(runtime)
    return {
        "mode": config.mode,
        "models": {family: choice["id"] for family, choice in models.items()},
        "modelMap": models,
        "headers": config.headers,
        "openrouterKeySet": bool(environment.get("OPENROUTER_API_KEY")),
        "openrouterBaseUrl": runtime.settings.openrouter_base_url,
        "anthropicUpstream": runtime.settings.anthropic_upstream,
        "pinned": {field: pin.model_dump() for field, pin in runtime.settings.pins.items()},
        "warnings": config_warnings(runtime),
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
        config = runtime.config.update(patch)
    except ConfigError as exc:
        return _bad_request(str(exc))
    if config.mode == "openrouter":
        runtime.catalog.refresh_soon(runtime.settings.openrouter_base_url)  # the family defaults follow its list
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
