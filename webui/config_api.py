"""/api/config*: read and change the proxy's configuration at run time (applies to the next request)."""

from __future__ import annotations

import dataclasses
import json

from aiohttp import web
from pydantic import ValidationError

from anthropic_proxy.environment import environment
from anthropic_proxy.providers.check import try_provider
from anthropic_proxy.providers.entries import BUILTIN_PROVIDERS, ProviderEntry, resolve_provider
from anthropic_proxy.providers.openrouter_api import check_key
from anthropic_proxy.providers.proxy_config import ConfigError, describe_error, model_choices
from anthropic_proxy.runtime import RUNTIME_KEY as RUNTIME
from anthropic_proxy.runtime import Runtime

routes = web.RouteTableDef()
UNSAVED = " unsaved"  # no provider can have this name (a space)


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
    routing = config.model_dump(by_alias=True, exclude_none=True, include={"providers", "routes", "fallbacks"})
    return {
        "mode": config.mode,
        "models": {family: choice["id"] for family, choice in models.items()},
        "modelMap": models,
        "headers": config.headers,
        **routing,
        "openrouterKeySet": bool(environment.get("OPENROUTER_API_KEY")),
        "openrouterBaseUrl": runtime.settings.openrouter_base_url,
        "anthropicUpstream": runtime.settings.anthropic_upstream,
        "builtinProviders": list(BUILTIN_PROVIDERS),
        # per provider with a key variable: whether it is set (never the key)
        "providerKeys": {name: bool(environment.get(entry.api_key_env))
                         for name, entry in config.providers.items() if entry.api_key_env},
        "coolDowns": runtime.cooldowns.view(),
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


@routes.post("/api/config/test-provider")
async def test_provider_call(request: web.Request) -> web.Response:
    """One real tiny call: `{"provider": name, "model": id}`, or `{"entry": {...}, "model": id}` (and the name
    the page shows as `provider`) for an entry not saved yet."""
    runtime = request.app[RUNTIME]
    try:
        body = json.loads(await request.read() or b"null")
    except ValueError:
        return _bad_request("the body is not valid JSON")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"].strip():
        return _bad_request("give the provider (or an entry) and a model to ask, e.g. "
                            "{\"provider\": \"local\", \"model\": \"qwen3\"}")
    config, settings = runtime.config.current, runtime.settings
    if isinstance(body.get("entry"), dict):
        try:
            entry = ProviderEntry.model_validate(body["entry"])
        except ValidationError as exc:
            return _bad_request(describe_error(exc))
        config = config.model_copy(update={"providers": {**config.providers, UNSAVED: entry}})
        name = UNSAVED
    else:
        name = body.get("provider")
        if name not in BUILTIN_PROVIDERS and name not in config.providers:
            return _bad_request(f"unknown provider {name!r}")
        if name == "anthropic":
            return _bad_request("the anthropic provider uses each client's own key: there is no key here to test")
    provider = resolve_provider(str(name), config, anthropic_upstream=settings.anthropic_upstream,
                                openrouter_base_url=settings.openrouter_base_url,
                                openrouter_headers=dict(config.headers))
    if name == UNSAVED:  # named as the page shows it
        provider = dataclasses.replace(provider, name=str(body.get("provider") or "the provider"))
    key = environment.get(provider.api_key_env) if provider.api_key_env else ""
    return web.json_response(await try_provider(provider, body["model"].strip(), key))
