"""Sends each Anthropic API call to its upstream: Anthropic unchanged, or OpenRouter translated."""

from __future__ import annotations

import functools
import json
from urllib.parse import urlsplit

from mitmproxy import http
from mitmproxy.net.http import url

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.environment import environment
from anthropic_proxy.media import is_event_stream
from anthropic_proxy.openrouter_route import (
    MISSING_KEY_MESSAGE,
    ClientRequest,
    LocalAnswer,
    Route,
    parse_messages_request,
    plan_messages_call,
    translate_full_response,
    upstream_headers,
)
from anthropic_proxy.proxy_config import ProxyConfig
from anthropic_proxy.runtime import Runtime
from anthropic_proxy.translate import fastjson
from anthropic_proxy.translate.errors import anthropic_error_body
from anthropic_proxy.translate.reasoning import SIGNATURE_PREFIX, strip_openrouter_reasoning
from anthropic_proxy.translate.tokens import estimate_input_tokens

from .capture import CAPTURED
from .webapp import INTERNAL_FLOW

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
_OPENROUTER_SIGNATURE = SIGNATURE_PREFIX.encode()
# flow.metadata key set on the calls that are recorded (and translated in openrouter mode): their client path.
API_CALL = "anthropic_proxy.api_call"


def json_response(status: int, body: dict, headers: dict[str, str] | None = None) -> http.Response:
    headers = {"content-type": "application/json", **(headers or {})}
    return http.Response.make(status, json.dumps(body).encode(), headers)


def route_of(flow: http.HTTPFlow) -> Route | None:
    runtime = runtime_module.current_runtime()
    return runtime.routes.get(flow.id) if runtime else None


class Router:
    """Routes the flows Capture marked as Anthropic API traffic; any other flow (another host's, through a
    forward proxy or local capture) goes on to its own host untouched."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.get(CAPTURED):
            return
        path = flow.request.path.split("?", 1)[0]
        if flow.request.method == "POST" and path in (MESSAGES_PATH, COUNT_TOKENS_PATH):
            flow.metadata[API_CALL] = path

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or flow.metadata.get(INTERNAL_FLOW) \
                or not flow.metadata.get(CAPTURED):
            return
        runtime = runtime_module.current_runtime()
        if runtime is None:
            return
        config = runtime.config.current  # this call keeps this snapshot, whatever changes meanwhile
        api_call = flow.metadata.get(API_CALL)
        if config.mode == "openrouter" and api_call:
            self._to_openrouter(flow, runtime, config, api_call)
        else:
            self._to_anthropic(flow, runtime)

    @staticmethod
    def _to_anthropic(flow: http.HTTPFlow, runtime: Runtime) -> None:
        scheme, host, port, prefix, hostport = _upstream_parts(runtime.settings.anthropic_upstream)
        request = flow.request
        if (request.scheme, request.host, request.port) == (scheme, host, port):  # reverse mode to the upstream
            request.host_header = hostport  # (the client's, kept by keep_host_header)
        else:
            # Setting scheme/host/port also fixes the Host header and SNI; the path and query stay byte-exact.
            request.scheme, request.host, request.port = scheme, host, port
        if prefix:
            request.path = prefix + request.path
        if flow.metadata.get(API_CALL) == MESSAGES_PATH and _OPENROUTER_SIGNATURE in (request.content or b""):
            _strip_openrouter_reasoning(request)

    @staticmethod
    def _to_openrouter(flow: http.HTTPFlow, runtime: Runtime, config: ProxyConfig, path: str) -> None:
        request = flow.request
        route = Route(client=ClientRequest(request.method, request.path, request.headers.items(multi=True),
                                           request.content or b""))
        runtime.routes[flow.id] = route
        try:
            body = parse_messages_request(route.client.content)
            if path == COUNT_TOKENS_PATH:
                # OpenRouter has no token counting endpoint: answer from the local estimate.
                raise LocalAnswer(200, {"input_tokens": estimate_input_tokens(body)})
            api_key = environment.get("OPENROUTER_API_KEY")
            if not api_key:
                raise LocalAnswer(401, anthropic_error_body("authentication_error", MISSING_KEY_MESSAGE))
            plan_messages_call(route, body, config)
        except LocalAnswer as answer:
            flow.response = json_response(answer.status, answer.body, answer.headers)
            return
        assert route.translated is not None
        target = f"{runtime.settings.openrouter_base_url}/chat/completions"
        request.headers.clear()
        request.headers.update(upstream_headers(config, api_key, route.translated.stream))
        request.host_header = urlsplit(target).netloc
        request.url = target
        request.content = fastjson.dumps(route.translated.body)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        route = route_of(flow)
        response = flow.response
        if route is None or route.translator is None or response is None:
            return
        if 200 <= response.status_code < 300 and is_event_stream(response.headers.get("content-type")):
            # The Recorder streams it through route.translator; the body changes, so do these headers.
            for name in ("content-length", "content-encoding"):
                response.headers.pop(name, None)
            response.headers["content-type"] = "text/event-stream; charset=utf-8"
            response.headers["cache-control"] = "no-cache"
            if response.http_version == "HTTP/1.1" and flow.request.http_version == "HTTP/1.1":
                response.headers["transfer-encoding"] = "chunked"
        else:
            route.translator = None  # an error answer comes whole: the response hook translates it

    def response(self, flow: http.HTTPFlow) -> None:
        route = route_of(flow)
        response = flow.response
        if route is None or response is None or response.stream or route.translated is None:
            return
        content = response.content or b""
        route.upstream_response = content
        status, body, headers = translate_full_response(route, response.status_code, content,
                                                        dict(response.headers))
        flow.response = json_response(status, body, {**_passed_headers(response), **headers})


@functools.lru_cache(maxsize=8)
def _upstream_parts(upstream: str) -> tuple[str, str, int, str, str]:
    """`anthropic_upstream` as (scheme, host, port, path prefix, Host header): parsed once per value, not per call."""
    parts = urlsplit(upstream)
    scheme, host = parts.scheme, parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, host, port, parts.path.rstrip("/"), url.hostport(scheme, host, port)


def _strip_openrouter_reasoning(request: http.Request) -> None:
    """History from openrouter mode carries reasoning signatures Anthropic never issued: drop those blocks
    (the only change passthrough ever makes to a body, and only when such blocks are present)."""
    try:
        body = json.loads(request.content or b"")
    except ValueError:
        return
    if isinstance(body, dict) and strip_openrouter_reasoning(body):
        request.content = json.dumps(body, ensure_ascii=False).encode()


def _passed_headers(response: http.Response) -> dict[str, str]:
    """Upstream headers worth keeping on a translated answer (rate limits, retry hints, request ids)."""
    # Lower-cased: the translated error adds its own `retry-after`, which must not come out twice.
    return {k.lower(): v for k, v in response.headers.items()
            if k.lower() in ("retry-after", "x-request-id") or k.lower().startswith("x-ratelimit")}
