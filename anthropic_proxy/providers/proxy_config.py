"""The user's proxy configuration: mode, model mapping, extra OpenRouter headers, providers, routes and
fallbacks (see entries.py), kept in config.json.

Never a secret: the OpenRouter key stays in the environment. Each `ProxyConfig` is immutable, so a
request keeps the snapshot it started with however the configuration changes meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from anthropic_proxy.providers.entries import RoutingConfig, check_headers
from anthropic_proxy.translate.models import ModelMapping

logger = logging.getLogger("anthropic_proxy.config")

CONFIG_FILE = "config.json"
ProxyMode = Literal["anthropic", "openrouter"]


MAPPED_FAMILIES = ("sonnet", "opus", "haiku", "default")  # "default": every other model name
CONFIG_VERSION = 2
# What every config.json held before the family defaults followed OpenRouter's list (files without "version"
# saved the whole mapping, defaults included): read as "not chosen", so those files follow the list too.
_LEGACY_DEFAULTS = {"sonnet": "anthropic/claude-sonnet-4.5", "opus": "anthropic/claude-opus-4.5",
                    "haiku": "anthropic/claude-haiku-4.5", "default": "anthropic/claude-sonnet-4.5"}
ModelSource = Literal["pinned", "newest", "fallback"]


class ModelMap(BaseModel):
    """The OpenRouter model the user pinned for each Claude family; None follows the newest one OpenRouter lists."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sonnet: str | None = None
    opus: str | None = None
    haiku: str | None = None
    default: str | None = None

    @field_validator(*MAPPED_FAMILIES)
    @classmethod
    def _model_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value or any(c.isspace() for c in value):
            raise ValueError("a model id is a non-empty name without spaces, e.g. anthropic/claude-sonnet-4.5 "
                             "(null follows the newest model of the family)")
        return value


def model_choices(pinned: ModelMap, newest: Mapping[str, str]) -> dict[str, tuple[str, ModelSource]]:
    """Per family, the OpenRouter id it maps to and why: `pinned` in config.json, the `newest` of the family in
    OpenRouter's model list (`ModelCatalog.newest`), or the built-in `fallback` while that list is not known."""
    fallback = ModelMapping()
    choices: dict[str, tuple[str, ModelSource]] = {}
    for family in MAPPED_FAMILIES:
        if (chosen := getattr(pinned, family)) is not None:
            choices[family] = (chosen, "pinned")
        elif family in newest:
            choices[family] = (newest[family], "newest")
        else:
            choices[family] = (getattr(fallback, family), "fallback")
    return choices


def effective_models(pinned: ModelMap, newest: Mapping[str, str]) -> ModelMapping:
    """The mapping a call is translated with (see `model_choices`)."""
    return ModelMapping(**{family: model for family, (model, _) in model_choices(pinned, newest).items()})


def _default_headers() -> dict[str, str]:
    return {"HTTP-Referer": "https://github.com/anthropic-proxy/anthropic-proxy", "X-Title": "anthropic-proxy"}


class ProxyConfig(RoutingConfig):
    """`mode` and `models` are the shorthand for the common case: what a call goes to when no route matches."""

    mode: ProxyMode = "anthropic"
    models: ModelMap = Field(default_factory=ModelMap)
    headers: dict[str, str] = Field(default_factory=_default_headers)

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return check_headers(headers)


class ConfigError(ValueError):
    """An update that does not validate; the message says why, field by field."""


def describe_error(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors())


class ConfigStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / CONFIG_FILE
        self.current = self._read()

    def _read(self) -> ProxyConfig:
        if not self.path.is_file():
            return ProxyConfig()
        try:
            data = json.loads(self.path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.pop("version", None) != CONFIG_VERSION and isinstance(data.get("models"), dict):
                data["models"] = {family: None if model == _LEGACY_DEFAULTS.get(family) else model
                                  for family, model in data["models"].items()}
            return ProxyConfig.model_validate(data)
        except (ValueError, OSError) as exc:  # (pydantic's ValidationError is a ValueError)
            logger.error("ignoring %s, it is not a valid configuration: %s", self.path, exc)
            return ProxyConfig()

    def update(self, patch: Any) -> ProxyConfig:
        """Apply a partial update (`{"models": {"haiku": ...}}` changes only haiku; `providers`, `routes` and
        `fallbacks` are replaced whole) and save it. Nothing changes unless the whole result is valid."""
        if not isinstance(patch, dict):
            raise ConfigError("the body must be a JSON object such as {\"mode\": \"openrouter\"}")
        merged = self.current.model_dump(by_alias=True)
        for key, value in patch.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict) and key == "models":
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        try:
            config = ProxyConfig.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(describe_error(exc)) from None
        self._save(config)
        return config

    def reset(self) -> ProxyConfig:
        self._save(ProxyConfig())
        return self.current

    def reload(self) -> ProxyConfig:
        self.current = self._read()
        return self.current

    def _save(self, config: ProxyConfig) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".config-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            data = {"version": CONFIG_VERSION, **config.model_dump(by_alias=True, exclude_none=True)}
            for unused in [k for k in ("providers", "routes", "fallbacks") if not data[k]]:
                del data[unused]  # a file without them reads the same, and stays as older versions wrote it
            json.dump(data, file, indent=2)
        os.replace(tmp, self.path)
        self.current = config
