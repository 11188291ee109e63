"""Tool call ids that the Anthropic API accepts, kept reversible.

Anthropic requires `tool_use.id` to match `^[a-zA-Z0-9_-]+$`; some OpenRouter models use other characters
(Kimi: `functions.add:0`). Such an id reaches the client as `toolu_or_` + base64url(id), a conversation that
goes back to Anthropic stays valid, and the history sent to OpenRouter carries the model's own id again (its
chat template may rely on it). Ids that already fit pass unchanged.
"""

from __future__ import annotations

import base64
import binascii
import re

PREFIX = "toolu_or_"
_ANTHROPIC_ID = re.compile(r"[a-zA-Z0-9_-]+")


def anthropic_tool_id(upstream_id: str) -> str:
    if _ANTHROPIC_ID.fullmatch(upstream_id) and not upstream_id.startswith(PREFIX):
        return upstream_id
    return PREFIX + base64.urlsafe_b64encode(upstream_id.encode()).decode("ascii").rstrip("=")


def upstream_tool_id(anthropic_id: str) -> str:
    if not anthropic_id.startswith(PREFIX):
        return anthropic_id
    encoded = anthropic_id[len(PREFIX):]
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return anthropic_id  # not one of ours after all: pass it on as it is
