"""What a record says of the client's call besides its body: its model, whether it streams, its session."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from anthropic_proxy.record.model import as_text

SESSION_HEADER = "x-claude-code-session-id"


def session_of(headers: Mapping[str, str], body: Any) -> str | None:
    """Claude Code's session: its header, else the session inside `metadata.user_id` (a JSON string)."""
    if session := next((value for name, value in headers.items() if name.lower() == SESSION_HEADER), None):
        return session
    user_id = (body.get("metadata") or {}).get("user_id") if isinstance(body, dict) else None
    if isinstance(user_id, str) and user_id.startswith("{"):
        try:
            return as_text(json.loads(user_id).get("session_id"))
        except (ValueError, AttributeError):
            return None
    return None


def call_facts(headers: Mapping[str, str], body: Any) -> tuple[str | None, bool, str | None]:
    """What a record says of the client's call besides its body: its model, whether it streams, its session (read
    from the body as `parse_body` made it, and the call's headers)."""
    model, stream = (as_text(body.get("model")), bool(body.get("stream"))) if isinstance(body, dict) else (None, False)
    return model, stream, session_of(headers, body)
