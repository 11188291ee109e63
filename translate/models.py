"""Which OpenRouter model answers a request for a Claude model.

Claude Code asks for Claude names (`claude-opus-4-8`, `claude-haiku-4-5-20251001`, ...). The user configures
one OpenRouter model per Claude family; a name that already is an OpenRouter id (`vendor/model`) is taken
as an explicit choice and passed through untouched.
"""

from __future__ import annotations

from pydantic import BaseModel

FAMILIES = ("opus", "sonnet", "haiku")


class ModelMapping(BaseModel):
    """One OpenRouter model per family. The defaults are only the fallback for when OpenRouter's model list is not
    known; the proxy follows the newest model of each family that the list has (see proxy_config.model_choices)."""

    sonnet: str = "anthropic/claude-sonnet-4.5"
    opus: str = "anthropic/claude-opus-4.5"
    haiku: str = "anthropic/claude-haiku-4.5"
    default: str = "anthropic/claude-sonnet-4.5"


def model_family(requested: str) -> str | None:
    """`opus` / `sonnet` / `haiku` when the name says so, else None."""
    lowered = requested.lower()
    return next((family for family in FAMILIES if family in lowered), None)


def map_model(requested: str, mapping: ModelMapping) -> str:
    if "/" in requested:
        return requested
    family = model_family(requested)
    return getattr(mapping, family) if family else mapping.default
