"""Anthropic-shaped errors built from OpenRouter errors (before or during a stream).

Claude Code decides whether to retry, back off or give up from the HTTP status and `error.type`, so an
upstream failure must keep its meaning: a 429 stays a rate_limit_error with its `retry-after`, a 503 stays
an overload (retried), a 400 stays an invalid request (not retried).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

# HTTP status -> Anthropic error type (https://docs.anthropic.com/en/api/errors).
_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# Mid-stream errors may carry a string code (OpenRouter's docs show `"code": "server_error"`).
_TYPE_BY_CODE_WORD: tuple[tuple[str, str], ...] = (
    ("rate", "rate_limit_error"),
    ("overload", "overloaded_error"),
    ("timeout", "timeout_error"),
    ("auth", "authentication_error"),
    ("credit", "billing_error"),
    ("billing", "billing_error"),
    ("moderation", "permission_error"),
    ("invalid", "invalid_request_error"),
)


class AnthropicError(BaseModel):
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = {}


def anthropic_error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_type_for_status(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_type_for_code(code: Any) -> str:
    """An OpenRouter `error.code`, numeric (an HTTP status) or a word, as an Anthropic error type."""
    if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
        return error_type_for_status(int(code))
    word = str(code or "").lower()
    return next((kind for key, kind in _TYPE_BY_CODE_WORD if key in word), "api_error")


def upstream_error_message(error: Mapping[str, Any]) -> str:
    """OpenRouter's message plus the provider detail it hides in `metadata` (what the user needs to act)."""
    message = str(error.get("message") or "upstream error")
    metadata = error.get("metadata")
    if isinstance(metadata, Mapping):
        details = [str(metadata[key]) for key in ("provider_name", "raw", "reasons") if metadata.get(key)]
        if details:
            message = f"{message} ({'; '.join(details)})"
    return message


def translate_error(status: int, body: bytes, headers: Mapping[str, str]) -> AnthropicError:
    """An OpenRouter error response (non-2xx, or a 2xx whose body is only an error) -> Anthropic's."""
    error: Mapping[str, Any] = {}
    try:
        parsed = json.loads(body)
        if isinstance(parsed, Mapping) and isinstance(parsed.get("error"), Mapping):
            error = parsed["error"]
    except (ValueError, UnicodeDecodeError):
        pass
    code = error.get("code")
    if status < 400 and isinstance(code, int) and code >= 400:
        status = code
    elif status < 400:
        status = 500
    fallback = body.decode("utf-8", "replace")[:500] or f"HTTP {status}"
    message = upstream_error_message(error) if error else fallback
    out_headers: dict[str, str] = {}
    retry_after = next((value for key, value in headers.items() if key.lower() == "retry-after"), None)
    if retry_after:
        out_headers["retry-after"] = retry_after
    return AnthropicError(status=status, body=anthropic_error_body(error_type_for_status(status), message),
                          headers=out_headers)
