"""How one Anthropic API call goes to its provider and back (pure: no mitmproxy, no I/O).

The Router addon builds a `Route` when it routes a call (targets.py fills it for the target that is tried);
the Recorder reads it to record the client's original request beside the upstream one, the raw upstream
answer beside the translated answer, and every attempt made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anthropic_proxy.providers.entries import Target
from anthropic_proxy.record.model import Attempt
from anthropic_proxy.translate.errors import AnthropicError, anthropic_error_body, translate_error
from anthropic_proxy.translate.request import TranslatedRequest
from anthropic_proxy.translate.response import translate_response
from anthropic_proxy.translate.stream import StreamTranslator
from anthropic_proxy.wire import fastjson

if TYPE_CHECKING:
    from anthropic_proxy.providers.targets import Dispatch


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
    headers: list[tuple[str, str]]  # as they were when the call came in
    content: bytes


@dataclass
class Route:
    """A routed call: the client's request, the target that answers it (set for each target tried), the targets
    the failover relay tries in order when the first has fallbacks (`targets`), and what was tried."""

    client: ClientRequest
    provider: str = "anthropic"
    requested_model: str | None = None
    upstream_model: str | None = None
    translated: TranslatedRequest | None = None
    translator: StreamTranslator | None = None
    upstream_content: bytes | None = field(default=None, repr=False)  # the translated request's body, as sent
    upstream_response: bytes | None = field(default=None, repr=False)
    match: dict[str, Any] | None = None  # the route that matched ({"index", "when"}), None: the mode's default
    targets: list[Target] = field(default_factory=list)  # in order, when the failover relay tries them
    attempts: list[Attempt] = field(default_factory=list)
    body: dict[str, Any] | None = field(default=None, repr=False)  # the client's, parsed (to prepare fallbacks)
    dispatch: Dispatch | None = field(default=None, repr=False)

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
        body = fastjson.loads(content)  # (a Claude Code body is hundreds of KB: orjson)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request("model: a model name is required")
    return body


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
