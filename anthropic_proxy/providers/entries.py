"""Providers, routes and fallbacks as config.json holds them (`providers`, `routes`, `fallbacks`).

A provider is an upstream that answers Anthropic calls: `anthropic` type (it speaks the Messages API; the body
passes as it is) or `openai` type (chat completions, reached through translate/). Two are built in: `anthropic`
(`anthropic_upstream`, the client's own key, byte-faithful) and `openrouter` (`openrouter_base_url`,
OPENROUTER_API_KEY). A route sends the calls that match its `when` to a provider and model; `fallbacks` says
which targets to try, in order, when a target is overloaded, rate limited or unreachable.

Never a secret: an entry names the environment variable that holds its key (`apiKeyEnv`), and a value that
looks like a key is refused there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

ProviderType = Literal["anthropic", "openai"]
BUILTIN_PROVIDERS = ("anthropic", "openrouter")
OPENROUTER_KEY_ENV = "OPENROUTER_API_KEY"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
# Environment variable names are written in capitals by convention; a key is not (sk-..., AIza..., gsk_...).
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}$")
_FORBIDDEN_HEADERS = frozenset({"authorization", "x-api-key", "host", "content-length", "transfer-encoding"})
FAMILIES = ("haiku", "sonnet", "opus")


def check_glob(pattern: str, what: str) -> str:
    """A glob (`*`, `?`, `[...]`): non-empty, brackets closed (an open `[` silently matches itself in fnmatch)."""
    if not pattern:
        raise ValueError(f"{what}: an empty pattern matches nothing; leave the field out instead")
    depth = 0
    for char in pattern:
        if char == "[":
            if depth:
                raise ValueError(f"{what}: bad glob {pattern!r} (a '[' inside brackets)")
            depth = 1
        elif char == "]" and depth:
            depth = 0
    if depth:
        raise ValueError(f"{what}: bad glob {pattern!r} (a '[' is never closed)")
    return pattern


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not name or any(c in name for c in " :\r\n") or "\r" in value or "\n" in value:
            raise ValueError(f"invalid header {name!r}: names have no spaces or colons, values no line breaks")
        if name.lower() in _FORBIDDEN_HEADERS:
            raise ValueError(f"header {name!r} is set by the proxy itself (a key belongs in apiKeyEnv)")
    return headers


def _model_id(value: str, what: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{what}: a model id is a non-empty name without spaces")
    return value


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class ProviderEntry(_Entry):
    type: ProviderType
    base_url: str
    api_key_env: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, description="seconds to wait for the answer to begin")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("baseUrl must be an http(s) URL such as https://api.deepseek.com/anthropic")
        return value.strip().rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        value = value.strip()
        if value and not _ENV_NAME.match(value):
            # Never echo the value: it may be a key pasted in the wrong field.
            raise ValueError("apiKeyEnv is the NAME of the environment variable that holds the key (capitals, "
                             "digits and _, e.g. DEEPSEEK_API_KEY), never the key itself; leave it empty for a "
                             "keyless local server")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return check_headers(headers)


class HeaderMatch(_Entry):
    name: str
    value: str = "*"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or any(c in value for c in " :\r\n"):
            raise ValueError("a header name has no spaces or colons")
        return value.lower()

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        return check_glob(value, "header.value")


class RouteWhen(_Entry):
    """Every condition given must hold; none given matches every call."""

    model: str | None = None  # glob on the requested model
    family: Literal["haiku", "sonnet", "opus"] | None = None
    min_input_tokens: int | None = Field(default=None, ge=0)
    thinking: bool | None = None
    images: bool | None = None
    tool: str | None = None  # a tool name (or type, e.g. web_search_20250305) in the request, glob
    header: HeaderMatch | None = None

    @field_validator("model", "tool")
    @classmethod
    def _glob(cls, value: str | None, info) -> str | None:
        return None if value is None else check_glob(value, info.field_name)


class RouteRule(_Entry):
    when: RouteWhen = Field(default_factory=RouteWhen)
    provider: str
    model: str | None = None  # None: the requested model (through the family mapping for openrouter)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return None if value is None else _model_id(value, "model")


@dataclass(frozen=True, slots=True)
class Target:
    """One place a call can go: a provider and, when it differs from the requested one, a model."""

    provider: str
    model: str | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        provider, _, model = text.partition(":")
        return cls(provider, model or None)

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}" if self.model else self.provider


class RoutingConfig(_Entry):
    """The part of the configuration that says where calls go (mixed into ProxyConfig)."""

    providers: dict[str, ProviderEntry] = Field(default_factory=dict)
    routes: list[RouteRule] = Field(default_factory=list)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("providers")
    @classmethod
    def _names(cls, providers: dict[str, ProviderEntry]) -> dict[str, ProviderEntry]:
        for name in providers:
            if name in BUILTIN_PROVIDERS:
                raise ValueError(f"{name!r} is built in: choose another name")
            if not _NAME.match(name):
                raise ValueError(f"provider name {name!r}: lower-case letters, digits, '-', '_' or '.', "
                                 "at most 40 characters")
        return providers

    @model_validator(mode="after")
    def _references(self) -> RoutingConfig:
        known = set(BUILTIN_PROVIDERS) | set(self.providers)

        def check(target: str, where: str) -> None:
            parsed = Target.parse(target)
            if parsed.provider not in known:
                raise ValueError(f"{where}: unknown provider {parsed.provider!r} (known: {', '.join(sorted(known))})")
            if parsed.model is not None:
                _model_id(parsed.model, where)

        for index, rule in enumerate(self.routes):
            check(rule.provider, f"routes.{index}.provider")
        for source, targets in self.fallbacks.items():
            check(source, f"fallbacks key {source!r}")
            if not targets:
                raise ValueError(f"fallbacks.{source}: list at least one target, or remove the entry")
            for position, target in enumerate(targets):
                check(target, f"fallbacks.{source}.{position}")
        return self


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider as a call uses it: built-in ones filled in from the proxy's options."""

    name: str
    type: ProviderType
    base_url: str
    api_key_env: str
    headers: dict[str, str]
    timeout: float | None = None

    @property
    def uses_client_key(self) -> bool:
        """Only the built-in `anthropic` gets the client's own credentials."""
        return self.name == "anthropic"


def resolve_provider(name: str, routing: RoutingConfig, *, anthropic_upstream: str, openrouter_base_url: str,
                     openrouter_headers: dict[str, str]) -> Provider:
    if name == "anthropic":
        return Provider("anthropic", "anthropic", anthropic_upstream, "", {})
    if name == "openrouter":
        return Provider("openrouter", "openai", openrouter_base_url, OPENROUTER_KEY_ENV, openrouter_headers)
    entry = routing.providers[name]
    return Provider(name, entry.type, entry.base_url, entry.api_key_env, dict(entry.headers), entry.timeout)
