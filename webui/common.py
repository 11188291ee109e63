"""Small helpers shared by the web app's modules."""

from __future__ import annotations

from aiohttp import web

INTERNAL_HEADER = "x-anthropic-proxy-internal"
# The Host the client sent to the proxy (the addon copies it here; keep_host_header is on).
ORIGINAL_HOST_HEADER = "x-anthropic-proxy-host"


def error_response(status: int, message: str, error_type: str = "invalid_request_error") -> web.Response:
    return web.json_response({"type": "error", "error": {"type": error_type, "message": message}}, status=status)
