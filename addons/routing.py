"""Sends each Anthropic API call to its upstream."""

from __future__ import annotations

from urllib.parse import urlsplit

from mitmproxy import http

from anthropic_proxy import runtime as runtime_module

from .webapp import INTERNAL_FLOW


class Router:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or flow.metadata.get(INTERNAL_FLOW):
            return
        runtime = runtime_module.current_runtime()
        if runtime is None:
            return
        upstream = urlsplit(runtime.settings.anthropic_upstream)
        request = flow.request
        # Setting scheme/host/port also fixes the Host header and SNI; the path and query stay byte-exact.
        request.scheme = upstream.scheme
        request.host = upstream.hostname or ""
        request.port = upstream.port or (443 if upstream.scheme == "https" else 80)
        if upstream.path.rstrip("/"):
            request.path = upstream.path.rstrip("/") + request.path
