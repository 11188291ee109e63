"""Anthropic-shaped JSON instead of mitmproxy's HTML error pages.

When mitmproxy itself answers (the upstream cannot be reached, it closed the connection before answering,
a body is too large) it sends an HTML page that an API client cannot read. No hook can replace that
answer (the `error` hook runs, but its flow.response is ignored), so this addon swaps the one function
that renders it for HTTP/1 clients, which Claude Code is. The exchange's record keeps the exact reason.
"""

from __future__ import annotations

import json

from mitmproxy import http, version
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from anthropic_proxy.translate.errors import anthropic_error_body, error_type_for_status


def anthropic_error_response(status_code: int, message: str = "") -> bytes:
    reason = message or "no details"
    if status_code == 502:
        reason = f"anthropic-proxy could not get an answer from the upstream: {reason}"
    body = anthropic_error_body(error_type_for_status(status_code), reason)
    response = http.Response.make(status_code, json.dumps(body).encode(), {
        "Server": version.MITMPROXY, "Connection": "close", "Content-Type": "application/json"})
    return http1.assemble_response(response)


class ErrorPages:
    def load(self, loader: object) -> None:
        # Idempotent, so a script reload leaves exactly this renderer in place.
        _http1.make_error_response = anthropic_error_response
