"""How one Anthropic API call becomes an OpenRouter call and back (pure: no mitmproxy, no I/O).

The Router addon builds a `Route` when it re-targets a call; the Recorder reads it to record the
client's original request beside the translated one, and the raw upstream answer beside the
translated answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .proxy_config import ProxyConfig
from .translate.errors import AnthropicError, anthropic_error_body, translate_error
from .translate.models import ModelMapping, map_model
from .translate.request import RequestTranslationError, TranslatedRequest, translate_request
from .translate.response import translate_response
from .translate.stream import StreamTranslator

MISSING_KEY_MESSAGE = (
    "anthropic-proxy is in openrouter mode but OPENROUTER_API_KEY is not set. Export it (or add it to .env), "
    "then POST /api/config/reload or restart the proxy; or switch back to anthropic mode in /config."
)


class LocalAnswer(Exception):
    """The proxy answers the call itself (an error, or a local count_tokens) without calling upstream."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(body)
        self.status, self.body, self.headers = status, body, headers or {}


def bad_request(message: str) -> LocalAnswer:
    return LocalAnswer(400, anthropic_error_body("invalid_request_error", message))


@dataclass
class ClientRequest:
    """The call as the client sent it, kept for the record before the Router rewrites it."""

    method: str
    path: str
    headers: Iterable[tuple[str, str]]  # as they were when the call came in (read once, by the Recorder)
    content: bytes


@dataclass
class Route:
    client: ClientRequest
    requested_model: str | None = None
    upstream_model: str | None = None
    translated: TranslatedRequest | None = None
    translator: StreamTranslator | None = None
    upstream_response: bytes | None = field(default=None, repr=False)

    @property
    def upstream_body(self) -> dict[str, Any] | None:
        return self.translated.body if self.translated else None

    def reported_cost(self) -> float | None:
        """The cost in USD OpenRouter reported for this call (`usage.cost`), streamed or not."""
        usage = self.translator.upstream_usage if self.translator else None
        if usage is None and self.upstream_response:
            try:
                body = json.loads(self.upstream_response)
            except (ValueError, UnicodeDecodeError):
                body = None
            usage = body.get("usage") if isinstance(body, dict) else None
        cost = usage.get("cost") if isinstance(usage, dict) else None
        return float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None


def parse_messages_request(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request("model: a model name is required")
    return body


def plan_messages_call(route: Route, body: dict[str, Any], models: ModelMapping) -> None:
    """Fill `route` with the translated request for OpenRouter, its model mapped with `models` (raises LocalAnswer
    for bad input)."""
    route.requested_model = body["model"]
    route.upstream_model = map_model(body["model"], models)
    try:
        route.translated = translate_request(body, upstream_model=route.upstream_model)
    except RequestTranslationError as exc:
        raise bad_request(str(exc)) from None
    if route.translated.stream:
        route.translator = StreamTranslator(requested_model=body["model"], tool_names=route.translated.tool_names)


def upstream_headers(config: ProxyConfig, api_key: str, stream: bool) -> dict[str, str]:
    """The only headers OpenRouter gets: never the client's Anthropic key or anthropic-* headers."""
    return {
        **config.headers,
        "authorization": f"Bearer {api_key}",
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        "accept-encoding": "identity",  # the translator reads the bytes as they come
    }


def translate_full_response(route: Route, status: int, content: bytes, headers: dict[str, str]) -> tuple[
        int, dict[str, Any], dict[str, str]]:
    """A whole (non-streamed) OpenRouter answer -> (status, Anthropic JSON body, extra headers)."""
    if not 200 <= status < 300:
        error: AnthropicError = translate_error(status, content, headers)
        return error.status, error.body, error.headers
    try:
        body = json.loads(content)
        error_info = body.get("error")
        if error_info is not None:  # OpenRouter can report an error with HTTP 200
            code = error_info.get("code") if isinstance(error_info, dict) else None
            error = translate_error(code if isinstance(code, int) and 400 <= code < 600 else 502, content, headers)
            return error.status, error.body, error.headers
        assert route.translated is not None
        return 200, translate_response(body, requested_model=route.requested_model or "",
                                       tool_names=route.translated.tool_names), {}
    except (ValueError, TypeError, AttributeError) as exc:
        return 502, anthropic_error_body("api_error", f"OpenRouter sent an answer that could not be read: {exc}"), {}
