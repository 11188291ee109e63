"""Where one call goes: the route that matches it, its targets in order (fallbacks after the first), and the
upstream request each target gets (pure: no mitmproxy, no I/O).

The Router evaluates this once per call, in its `request` hook; the failover relay (failover.py) prepares the
next target's request with the same `Dispatch` when one fails.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from anthropic_proxy.providers.entries import Provider, RouteRule, RouteWhen, Target, resolve_provider
from anthropic_proxy.providers.proxy_config import ProxyConfig, effective_models
from anthropic_proxy.providers.route import LocalAnswer, Route, bad_request
from anthropic_proxy.translate.errors import anthropic_error_body
from anthropic_proxy.translate.models import ModelMapping, map_model, model_family
from anthropic_proxy.translate.reasoning import SIGNATURE_PREFIX, strip_openrouter_reasoning
from anthropic_proxy.translate.request import RequestTranslationError, translate_request
from anthropic_proxy.translate.stream import StreamTranslator
from anthropic_proxy.translate.tokens import estimate_input_tokens
from anthropic_proxy.wire import fastjson

# Hop-by-hop and framing headers, and the client's Host: never forwarded as they are.
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                          "proxy-connection", "upgrade", "te", "trailer"})
# The client's credentials, and Anthropic's beta flags: third parties get neither (some refuse unknown betas).
_CLIENT_ONLY_HEADERS = frozenset({"x-api-key", "authorization", "anthropic-beta"})
_OPENROUTER_SIGNATURE = SIGNATURE_PREFIX.encode()


def missing_key_message(provider: Provider) -> str:
    return (f"anthropic-proxy sends this call to provider {provider.name!r}, but {provider.api_key_env} is not set. "
            "Export it (or add it to .env), then POST /api/config/reload or restart the proxy; or change the "
            "route in /config.")


# ---- what the call asks for ---------------------------------------------------------------------------------
class CallFacts:
    """What routes look at in a call, each read once and only when a route asks."""

    def __init__(self, body: dict[str, Any], headers: Iterable[tuple[str, str]]) -> None:
        self.body = body
        self._headers = headers
        self.model: str = body["model"]

    @cached_property
    def headers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, value in self._headers:
            out.setdefault(name.lower(), []).append(value)
        return out

    @cached_property
    def family(self) -> str | None:
        return model_family(self.model)

    @cached_property
    def input_tokens(self) -> int:
        return estimate_input_tokens(self.body)

    @cached_property
    def thinking(self) -> bool:
        thinking = self.body.get("thinking")
        return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")

    @cached_property
    def images(self) -> bool:
        def has_image(content: Any) -> bool:
            if not isinstance(content, list):
                return False
            return any(isinstance(b, dict) and (b.get("type") == "image" or (
                b.get("type") == "tool_result" and has_image(b.get("content")))) for b in content)
        return any(isinstance(m, dict) and has_image(m.get("content")) for m in self.body.get("messages") or ())

    @cached_property
    def tools(self) -> list[str]:
        """Each tool's name and, for server tools, its type (`web_search_20250305`)."""
        names = []
        for tool in self.body.get("tools") or ():
            if isinstance(tool, dict):
                names += [str(tool[key]) for key in ("name", "type") if isinstance(tool.get(key), str)]
        return names


def matches(when: RouteWhen, facts: CallFacts) -> bool:
    """Every condition of `when` holds (the cheap ones are looked at first)."""
    if when.model is not None and not fnmatch.fnmatchcase(facts.model, when.model):
        return False
    if when.family is not None and facts.family != when.family:
        return False
    if when.thinking is not None and facts.thinking != when.thinking:
        return False
    if when.header is not None and not any(fnmatch.fnmatchcase(v, when.header.value)
                                           for v in facts.headers.get(when.header.name, ())):
        return False
    if when.tool is not None and not any(fnmatch.fnmatchcase(t, when.tool) for t in facts.tools):
        return False
    if when.images is not None and facts.images != when.images:
        return False
    return when.min_input_tokens is None or facts.input_tokens >= when.min_input_tokens


def match_route(routes: list[RouteRule], facts: CallFacts) -> tuple[int, RouteRule] | None:
    return next(((index, rule) for index, rule in enumerate(routes) if matches(rule.when, facts)), None)


# ---- where it goes --------------------------------------------------------------------------------------------
@dataclass
class Selection:
    targets: list[Target]
    match: dict[str, Any] | None = None  # the route that matched: {"index": ..., "when": ...}


def select_targets(config: ProxyConfig, facts: CallFacts, *, cooling: Callable[[Target], bool] = lambda t: False,
                   resolve_model: Callable[[Target], str]) -> Selection:
    """The route that matches (else the mode's provider), then its fallbacks, each with its model resolved;
    targets in a cool-down are left out, unless that would leave none."""
    found = match_route(config.routes, facts)
    if found is None:
        first, match = Target(config.mode), None
    else:
        index, rule = found
        first = Target(rule.provider, rule.model)
        match = {"index": index, "when": rule.when.model_dump(by_alias=True, exclude_none=True)}
    first = Target(first.provider, resolve_model(first))
    key = str(first)
    listed = config.fallbacks.get(key) or config.fallbacks.get(first.provider) or []
    targets = [first]
    for text in listed:
        target = Target.parse(text)
        target = Target(target.provider, resolve_model(target))
        if target not in targets:
            targets.append(target)
    ready = [t for t in targets if not cooling(t)]
    return Selection(ready or targets, match)


# ---- what each target gets ------------------------------------------------------------------------------------
@dataclass
class UpstreamCall:
    base_url: str  # the provider's (parsed once per value where it is used, not once per call)
    path: str  # after it, query included
    headers: list[tuple[str, str]]
    content: bytes

    @property
    def url(self) -> str:
        return self.base_url + self.path


@dataclass
class Dispatch:
    """Everything a call's targets need, fixed when the call came in (a config change applies to the next)."""

    config: ProxyConfig
    anthropic_upstream: str
    openrouter_base_url: str
    env: Callable[[str], str]
    newest: Mapping[str, str] = field(default_factory=dict)  # ModelCatalog.newest: where unpinned families go
    providers: dict[str, Provider] = field(default_factory=dict)

    @cached_property
    def models(self) -> ModelMapping:
        """The family mapping for OpenRouter: the pinned ids, else the newest of each family OpenRouter lists."""
        return effective_models(self.config.models, self.newest)

    def provider(self, name: str) -> Provider:
        if name not in self.providers:
            self.providers[name] = resolve_provider(
                name, self.config, anthropic_upstream=self.anthropic_upstream,
                openrouter_base_url=self.openrouter_base_url, openrouter_headers=dict(self.config.headers))
        return self.providers[name]

    def model_for(self, target: Target, requested: str) -> str:
        """The model a target is asked for: its own, else the requested one (through the family mapping for
        OpenRouter, whose ids are not Anthropic's)."""
        if target.model:
            return target.model
        return map_model(requested, self.models) if target.provider == "openrouter" else requested

    def prepare(self, route: Route, target: Target, body: dict[str, Any]) -> UpstreamCall:
        """Fill `route` for `target` (provider, model, translation) and return the request it sends. Raises
        LocalAnswer when the proxy must answer itself (a request it cannot translate, a key not set)."""
        provider = self.provider(target.provider)
        model = target.model or body["model"]
        route.provider, route.upstream_model = provider.name, model
        route.translated = route.translator = route.upstream_content = None
        key = self.env(provider.api_key_env) if provider.api_key_env else ""
        if provider.api_key_env and not key:
            raise LocalAnswer(401, anthropic_error_body("authentication_error", missing_key_message(provider)))
        if provider.type == "anthropic":
            return self._anthropic(route, provider, model, key, body)
        return self._openai(route, provider, model, key, body)

    def _anthropic(self, route: Route, provider: Provider, model: str, key: str,
                   body: dict[str, Any]) -> UpstreamCall:
        client = route.client
        content = client.content
        changed = dict(body) if model != body["model"] else None
        if changed is not None:
            changed["model"] = model
        if provider.uses_client_key and _OPENROUTER_SIGNATURE in content:
            # History from an OpenAI-type provider carries reasoning signatures Anthropic never issued.
            changed = changed if changed is not None else json.loads(content)
            strip_openrouter_reasoning(changed)
        if changed is not None:
            content = json.dumps(changed, ensure_ascii=False).encode()
        dropped = _HOP_HEADERS if provider.uses_client_key else _HOP_HEADERS | _CLIENT_ONLY_HEADERS
        headers = [(k, v) for k, v in client.headers if k.lower() not in dropped]
        headers += list(provider.headers.items())
        if key:
            headers += [("x-api-key", key), ("authorization", f"Bearer {key}")]
        return UpstreamCall(provider.base_url, client.path, headers, content)

    def _openai(self, route: Route, provider: Provider, model: str, key: str, body: dict[str, Any]) -> UpstreamCall:
        try:
            translated = translate_request(body, upstream_model=model)
        except RequestTranslationError as exc:
            raise bad_request(str(exc)) from None
        if provider.name != "openrouter":
            openai_dialect(translated.body)
        route.translated = translated
        if translated.stream:
            route.translator = StreamTranslator(requested_model=body["model"], tool_names=translated.tool_names)
        headers = [*provider.headers.items(), ("content-type", "application/json"),
                   ("accept", "text/event-stream" if translated.stream else "application/json"),
                   ("accept-encoding", "identity")]  # the translator reads the bytes as they come
        if key:
            headers.append(("authorization", f"Bearer {key}"))
        route.upstream_content = fastjson.dumps(translated.body)
        return UpstreamCall(provider.base_url, "/chat/completions", headers, route.upstream_content)


def openai_dialect(body: dict[str, Any]) -> None:
    """OpenRouter's extensions in a translated body, in the spelling other OpenAI-compatible servers accept:
    usage comes with `stream_options.include_usage` (an unknown `usage` field is a 400 at OpenAI), reasoning
    with `reasoning_effort` (a thinking budget becomes the effort whose usual budget it is nearest)."""
    body.pop("usage", None)
    if body.get("stream"):
        body["stream_options"] = {"include_usage": True}
    reasoning = body.pop("reasoning", None)
    if not isinstance(reasoning, dict):
        return
    effort = reasoning.get("effort")
    budget = reasoning.get("max_tokens")
    if not isinstance(effort, str) and isinstance(budget, int):
        effort = "low" if budget < 4096 else "medium" if budget < 16384 else "high"
    if isinstance(effort, str):
        body["reasoning_effort"] = effort

