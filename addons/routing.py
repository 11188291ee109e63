"""Sends each Anthropic API call to its target: the route that matches it (config.json `routes`), else the mode's
provider; Anthropic-type providers get the body as it is, OpenAI-type ones a translation. A call with fallbacks
goes through the failover relay (anthropic_proxy/providers/failover.py), which tries its targets in order."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.net.http import url

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.addons.capture import CAPTURED
from anthropic_proxy.addons.webapp import INTERNAL_FLOW
from anthropic_proxy.environment import environment
from anthropic_proxy.providers.entries import Target
from anthropic_proxy.providers.failover import RELAY_HEADER, Relay
from anthropic_proxy.providers.proxy_config import ProxyConfig
from anthropic_proxy.providers.route import (
    ClientRequest,
    LocalAnswer,
    Route,
    parse_messages_request,
    translate_full_response,
)
from anthropic_proxy.providers.targets import CallFacts, Dispatch, UpstreamCall, select_targets
from anthropic_proxy.runtime import Pin, Runtime
from anthropic_proxy.translate.errors import anthropic_error_body
from anthropic_proxy.translate.reasoning import SIGNATURE_PREFIX, strip_openrouter_reasoning
from anthropic_proxy.translate.tokens import estimate_input_tokens
from anthropic_proxy.webui.common import INTERNAL_HEADER
from anthropic_proxy.wire.media import is_event_stream

logger = logging.getLogger("anthropic_proxy.routing")

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
_OPENROUTER_SIGNATURE = SIGNATURE_PREFIX.encode()
# What a translated stream's response headers become (the body changes): None removes the header.
_STREAM_HEADERS: dict[bytes, bytes | None] = {b"content-length": None, b"content-encoding": None,
                                              b"content-type": b"text/event-stream; charset=utf-8",
                                              b"cache-control": b"no-cache"}
# flow.metadata key set on the calls that are recorded (and translated in openrouter mode): their client path.
API_CALL = "anthropic_proxy.api_call"
PROXY_MODES = ("anthropic", "openrouter")
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""}


def json_response(status: int, body: dict, headers: dict[str, str] | None = None) -> http.Response:
    headers = {"content-type": "application/json", **(headers or {})}
    return http.Response.make(status, json.dumps(body).encode(), headers)


def check_upstream(url: str, option: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise exceptions.OptionsError(f"{option} must be an http(s) URL such as https://api.anthropic.com "
                                      f"(got {url!r})")


def _is_own_address(url: str, listen_host: str, listen_port: int) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    own_hosts = _LOOPBACK_NAMES | {listen_host.lower()}
    return port == listen_port and (host in own_hosts or host.startswith("127."))


def _config_pins(proxy_mode: str) -> dict[str, Pin]:
    """What the proxy_mode option fixes at every start (it is saved in config.json then), and by what."""
    if not proxy_mode:
        return {}
    origin = environment.origin("PROXY_MODE")
    by = f"PROXY_MODE ({origin})" if origin and environment.get("PROXY_MODE") == proxy_mode else "--set proxy_mode"
    return {"mode": Pin(value=proxy_mode, by=by)}


def route_of(flow: http.HTTPFlow) -> Route | None:
    runtime = runtime_module.current_runtime()
    return runtime.inflight.route_of(flow.id) if runtime else None


class Router:
    """Routes the flows Capture marked as Anthropic API traffic; any other flow (another host's, through a
    forward proxy or local capture) goes on to its own host untouched. Its options say where calls go."""

    def load(self, loader: Loader) -> None:
        env = environment
        loader.add_option("anthropic_upstream", str,
                          env.get("ANTHROPIC_UPSTREAM_URL", "https://api.anthropic.com"),
                          "Where Anthropic API calls go in anthropic mode (env ANTHROPIC_UPSTREAM_URL).")
        loader.add_option("openrouter_base_url", str, env.get("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1"),
                          "OpenRouter's API base URL for openrouter mode (env OPENROUTER_BASE_URL).")
        loader.add_option("proxy_mode", str, env.get("PROXY_MODE"),
                          "anthropic: pass calls through to anthropic_upstream; openrouter: translate them to "
                          "OpenRouter. Empty: the mode saved in state_dir/config.json (env PROXY_MODE).",
                          choices=("", *PROXY_MODES))

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        for option in ("anthropic_upstream", "openrouter_base_url"):
            if option in updated:
                check_upstream(getattr(opts, option), option)
        runtime = runtime_module.current_runtime()  # (opened by the Startup addon, which runs first)
        if runtime is None:
            return
        settings = runtime.settings  # its listen address: the Startup addon's, set just before
        host, port = settings.listen_host, settings.listen_port
        if _is_own_address(opts.anthropic_upstream, host, port):
            raise exceptions.OptionsError(
                f"anthropic_upstream {opts.anthropic_upstream} is this proxy's own address ({host}:{port}): "
                "requests would loop forever. Set ANTHROPIC_UPSTREAM_URL (not ANTHROPIC_BASE_URL) to the real API."
            )
        if "proxy_mode" in updated and opts.proxy_mode:
            runtime.config.update({"mode": opts.proxy_mode})
        runtime.settings = settings.model_copy(update={
            "anthropic_upstream": opts.anthropic_upstream.rstrip("/"),
            "openrouter_base_url": opts.openrouter_base_url.rstrip("/"), "pins": _config_pins(opts.proxy_mode)})

    def running(self) -> None:
        runtime = runtime_module.current_runtime()
        if runtime is not None and runtime.relay is None:  # one per process, across script reloads
            runtime.relay = Relay(runtime)
            runtime.spawn(runtime.relay.start())
        if runtime is not None and runtime.config.current.mode == "openrouter":
            # the family defaults follow OpenRouter's model list: have it before the first call if we can
            runtime.catalog.refresh_soon(runtime.settings.openrouter_base_url)

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
        try:
            if api_call and (config.mode != "anthropic" or config.routes or config.fallbacks):
                self._route(flow, runtime, config, api_call)
            else:  # the common case stays byte-exact and parses nothing
                self._to_anthropic(flow, runtime)
        except Exception as exc:  # (a bug: the request may be half-rewritten; it goes nowhere)
            flow.response = _failure(flow, 500, "route this call", exc)

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
        if flow.metadata.get(API_CALL) == MESSAGES_PATH and _OPENROUTER_SIGNATURE in body_of(request):
            _strip_openrouter_reasoning(request)

    def _route(self, flow: http.HTTPFlow, runtime: Runtime, config: ProxyConfig, path: str) -> None:
        """Choose the call's targets once (the route, its fallbacks), then send it to the first, or to the relay."""
        request = flow.request
        # (a list: routes and the record both read the headers)
        route = Route(client=ClientRequest(request.method, request.path, header_pairs(request.headers),
                                           body_of(request)))
        runtime.inflight.route(flow.id, route)
        settings = runtime.settings
        dispatch = Dispatch(config, settings.anthropic_upstream, settings.openrouter_base_url, environment.get,
                            newest=runtime.catalog.newest)
        try:
            body = route.body = parse_messages_request(route.client.content)
            route.requested_model = body["model"]
            selection = select_targets(config, CallFacts(body, route.client.headers),
                                       cooling=runtime.cooldowns.cooling,
                                       resolve_model=lambda target: dispatch.model_for(target, body["model"]))
            route.match = selection.match
            if any(target.provider == "openrouter" for target in selection.targets):
                runtime.catalog.refresh_soon(settings.openrouter_base_url)  # for the calls after this one
            first = selection.targets[0]
            route.provider = first.provider
            if path == COUNT_TOKENS_PATH:
                if dispatch.provider(first.provider).type == "openai":
                    # OpenAI-style APIs have no token counting endpoint: answer from the local estimate.
                    raise LocalAnswer(200, {"input_tokens": estimate_input_tokens(body)})
                self._to_first(flow, runtime, route, dispatch, first, body)
            elif len(selection.targets) > 1 and runtime.relay is not None and runtime.relay.port is not None:
                route.dispatch, route.targets = dispatch, selection.targets
                self._to_relay(flow, runtime, runtime.relay.port)
            else:
                self._to_first(flow, runtime, route, dispatch, first, body)
        except LocalAnswer as answer:
            flow.response = json_response(answer.status, answer.body, answer.headers)

    def _to_first(self, flow: http.HTTPFlow, runtime: Runtime, route: Route, dispatch: Dispatch, target: Target,
                  body: dict) -> None:
        """The call has one target to try: mitmproxy sends it there itself."""
        if target.provider == "anthropic" and target.model == body["model"]:
            route.upstream_model = target.model
            self._to_anthropic(flow, runtime)  # byte-exact, with the client's own headers
        else:
            self._send(flow, dispatch.prepare(route, target, body))

    @staticmethod
    def _send(flow: http.HTTPFlow, call: UpstreamCall) -> None:
        request = flow.request
        request.headers = _headers(call.headers)
        # Setting scheme/host/port also fixes SNI and, for an absolute URL in forward mode, the target.
        request.scheme, request.host, request.port, prefix, request.host_header = _upstream_parts(call.base_url)
        request.path = prefix + call.path
        request.content = call.content

    @staticmethod
    def _to_relay(flow: http.HTTPFlow, runtime: Runtime, port: int) -> None:
        request = flow.request
        # the relay sends each target its own headers (route.client keeps the client's)
        request.headers = _headers([(INTERNAL_HEADER, runtime.internal_token), (RELAY_HEADER, flow.id)])
        request.scheme, request.host, request.port = "http", "127.0.0.1", port
        request.host_header = f"127.0.0.1:{port}"
        request.content = b""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        route = route_of(flow)  # (a relayed call's: filled for the target that answers)
        response = flow.response
        if route is None or route.translator is None or response is None:
            return
        if 200 <= response.status_code < 300 and is_event_stream(response.headers.get("content-type")):
            # The Recorder streams it through route.translator; the body changes, so do these headers.
            replace = dict(_STREAM_HEADERS)
            if response.http_version == "HTTP/1.1" and flow.request.http_version == "HTTP/1.1":
                replace[b"transfer-encoding"] = b"chunked"
            response.headers = _replaced(response.headers, replace)
        else:
            route.translator = None  # an error answer comes whole: the response hook translates it

    def response(self, flow: http.HTTPFlow) -> None:
        route = route_of(flow)
        response = flow.response
        if route is None or response is None or response.stream or route.translated is None:
            return
        content = body_of(response)
        route.upstream_response = content
        try:
            status, body, headers = translate_full_response(route, response.status_code, content,
                                                            dict(response.headers))
        except Exception as exc:  # (a bug)
            flow.response = _failure(flow, 502, "translate the answer", exc)
            return
        flow.response = json_response(status, body, {**_passed_headers(response), **headers})


def _failure(flow: http.HTTPFlow, status: int, doing: str, exc: Exception) -> http.Response:
    """The Anthropic error the client gets when the Router failed to `doing` (a bug), logged with its traceback.
    Caught rather than raised: escaping a hook, it would make mitmproxy skip the Recorder's hook for the event, and
    the call would go unrecorded, or its record stay open."""
    logger.exception("anthropic-proxy could not %s (%s %s)", doing, flow.request.method, flow.request.path)
    return json_response(status, anthropic_error_body(
        "api_error", f"anthropic-proxy could not {doing} ({type(exc).__name__}: {exc})"))


def header_pairs(headers: http.Headers) -> list[tuple[str, str]]:
    """A message's header fields as (name, value) text, each field as it came: `headers.items(multi=True)` as a list,
    in one pass (read for every recorded call)."""
    return [(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in headers.fields]


def body_of(message: http.Message) -> bytes:
    """A message's body with its `Content-Encoding` undone; as it came when it is not in that coding (mitmproxy's
    `content` raises then, and a hook that raised would skip the hooks after it: the call would go unrecorded)."""
    return message.get_content(strict=False) or b""


def _headers(pairs: Iterable[tuple[str, str]]) -> http.Headers:
    """Headers made at once from (name, value) pairs: `Headers.clear()` then `add` for each would rebuild the whole
    header tuple on every step (quadratic in the number of headers)."""
    return http.Headers([(name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
                         for name, value in pairs])


def _replaced(headers: http.Headers, replace: dict[bytes, bytes | None]) -> http.Headers:
    """`headers` with each name in `replace` (lower-case) set to its value, or removed where the value is None, in one
    pass, as `headers[name] = value` and `pop` would leave them: a value set takes the place (and the spelling) of the
    name's first field; a name not there yet comes last."""
    fields: list[tuple[bytes, bytes]] = []
    done: set[bytes] = set()
    for name, value in headers.fields:
        key = name.lower()
        if key not in replace:
            fields.append((name, value))
        elif key not in done:
            done.add(key)
            if replace[key] is not None:
                fields.append((name, replace[key]))
    fields += [(key, value) for key, value in replace.items() if key not in done and value is not None]
    return http.Headers(fields)


@functools.lru_cache(maxsize=64)
def _upstream_parts(upstream: str) -> tuple[str, str, int, str, str]:
    """An upstream's base URL (`anthropic_upstream`, a provider's) as (scheme, host, port, path prefix, Host
    header): parsed once per value, not per call."""
    parts = urlsplit(upstream)
    scheme, host = parts.scheme, parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, host, port, parts.path.rstrip("/"), url.hostport(scheme, host, port)


def _strip_openrouter_reasoning(request: http.Request) -> None:
    """History from openrouter mode carries reasoning signatures Anthropic never issued: drop those blocks
    (the only change passthrough ever makes to a body, and only when such blocks are present)."""
    try:
        body = json.loads(body_of(request))
    except ValueError:
        return
    if isinstance(body, dict) and strip_openrouter_reasoning(body):
        request.content = json.dumps(body, ensure_ascii=False).encode()


def _passed_headers(response: http.Response) -> dict[str, str]:
    """Upstream headers worth keeping on a translated answer (rate limits, retry hints, request ids)."""
    # Lower-cased: the translated error adds its own `retry-after`, which must not come out twice.
    return {k.lower(): v for k, v in response.headers.items()
            if k.lower() in ("retry-after", "x-request-id") or k.lower().startswith("x-ratelimit")}
