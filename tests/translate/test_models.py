"""Requested Claude model -> configured OpenRouter model."""

from __future__ import annotations

import pytest

from anthropic_proxy.translate.models import ModelMapping, map_model

MAPPING = ModelMapping(sonnet="s/sonnet", opus="o/opus", haiku="h/haiku", default="d/default")


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("claude-opus-4-8", "o/opus"),
        ("claude-haiku-4-5-20251001", "h/haiku"),
        ("claude-sonnet-4-5-20250929", "s/sonnet"),
        ("Claude-3-OPUS-latest", "o/opus"),
        ("claude-mystery-9", "d/default"),
        ("", "d/default"),
        ("moonshotai/kimi-k2.5", "moonshotai/kimi-k2.5"),
        ("anthropic/claude-haiku-4.5", "anthropic/claude-haiku-4.5"),
    ],
)
def test_map_model(requested, expected):
    assert map_model(requested, MAPPING) == expected
