"""Records every Anthropic API call: its capture (the raw facts, record/capture.py) begins at the request, is filled as
the answer passes and is handed to the store at its end; a call still running a moment later is stored pending.
Whoever watches live (the monitor, a record-complete hook) gets the record derived from the capture
(`derive.to_record`), in the background, after the client has its answer."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.addonmanager import traverse

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.addons.routing import API_CALL, body_of, header_pairs
from anthropic_proxy.capture.exchange import Exchange
from anthropic_proxy.providers.route import ClientRequest, Route
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.hooks import AnthropicRecordCompleteHook
from anthropic_proxy.record.masking import mask_headers
from anthropic_proxy.wire.media import is_event_stream

logger = logging.getLogger("anthropic_proxy.recording")

RECORD_ID = "anthropic_proxy.record_id"


def exchange_of(flow: http.HTTPFlow) -> Exchange | None:
    runtime = runtime_module.current_runtime()
    return runtime.inflight.exchange_of(flow.id) if runtime else None


def close_upstream(flow: http.HTTPFlow) -> None:
    """Close the flow's upstream connection from outside any hook (`flow.kill()` cannot stop a flow in
    transit, mitmproxy issue 4711); mitmproxy then ends the flow as for an upstream cut."""
    io = _connection_io(flow, flow.server_conn)
    if io is not None and io.writer is not None:
        io.writer.close()


def _connection_io(flow: http.HTTPFlow, connection: object) -> Any:
    """mitmproxy's I/O for one of the flow's connections, reached from outside any hook (internal API)."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(flow.client_conn.id) if proxyserver else None
    return handler.transports.get(connection) if handler else None


def body_bytes_received(flow: http.HTTPFlow) -> int | None:
    """How much of a whole (not streamed) response body mitmproxy has received so far: it gathers the body with no
    hook until the end, so its HTTP stream's buffer is the only sign that the upstream is still sending (internal
    API, like `close_upstream`; None when it cannot be reached)."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(flow.client_conn.id) if proxyserver else None
    layer = handler.layer if handler else None
    while layer is not None:  # down the connection's layer stack to the HTTP layer that carries this flow
        for stream in (getattr(layer, "streams", None) or {}).values():
            if getattr(stream, "flow", None) is flow:
                buffer = getattr(stream, "response_body_buf", None)
                return len(buffer) if buffer is not None else None
        layer = getattr(layer, "layer", None) or getattr(layer, "child_layer", None)  # (NextLayer: .layer)
    return None


def send_chunk_to_client(flow: http.HTTPFlow, data: bytes) -> None:
    """One HTTP/1.1 chunk straight to the client, between two of mitmproxy's own (both run in the one event
    loop, and each write is a whole chunk, so the framing stays valid)."""
    io = _connection_io(flow, flow.client_conn)
    if io is not None and io.writer is not None and flow.live:
        io.writer.write(b"%x\r\n%s\r\n" % (len(data), data))


def _is_client_gone(flow: http.HTTPFlow) -> bool:
    message = flow.error.msg.lower() if flow.error else ""
    return "client disconnected" in message or ("client" in message and "closed" in message)


class Recorder:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.error or not flow.live or not flow.metadata.get(API_CALL):
            return
        runtime = runtime_module.current_runtime()
        if runtime is None:
            return
        route = runtime.inflight.route_of(flow.id)
        request = flow.request
        client = route.client if route else ClientRequest(request.method, request.path, header_pairs(request.headers),
                                                          body_of(request))
        # The call's bytes as they are: whoever needs what they say reads them (derive.py), rather than this event
        # loop parsing Claude Code's hundreds of KB of JSON on the client's path.
        capture = Capture(id=uuid.uuid4().hex, started=request.timestamp_start, method=client.method,
                          path=client.path, request_headers=mask_headers(client.headers), request=client.content)
        if route is not None:
            _take_target(capture, route)
        exchange = Exchange(capture, bus=runtime.bus, on_end=lambda ended: self._finished(flow.id, ended))
        exchange.started -= max(0.0, time.time() - flow.request.timestamp_start)  # count from the first byte in
        exchange.transform = route.translator if route else None
        exchange.abort = lambda: close_upstream(flow)
        runtime.inflight.begin(flow.id, exchange)
        flow.metadata[RECORD_ID] = capture.id
        # Stored and announced in the loop's next turn: the request goes upstream first.
        asyncio.get_running_loop().call_soon(_announce, runtime, exchange)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        if exchange is None or flow.response is None:
            return
        response = flow.response
        route = runtime_module.current_runtime().inflight.route_of(flow.id)
        if route is not None and route.targets:  # the relay chose the target that answers
            _take_target(exchange.capture, route)
            exchange.transform = route.translator
        if not is_event_stream(response.headers.get("content-type")):
            exchange.response_started(response.status_code, {})  # its headers come with its body (`response`)
            exchange.body_received = lambda: body_bytes_received(flow)  # the watchdog's sign of a body arriving
        else:
            exchange.response_started(response.status_code, mask_headers(header_pairs(response.headers)),
                                      stream=True)
            response.stream = exchange.stream_tap
            if exchange.transform is not None and response.headers.get("transfer-encoding", "").lower() == "chunked":
                exchange.send_to_client = lambda data: send_chunk_to_client(flow, data)

    def response(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        if exchange is None or flow.response is None:
            return
        response = flow.response
        streamed = bool(response.stream)
        route = runtime_module.current_runtime().inflight.route_of(flow.id)
        if route is not None and route.upstream_response is not None:
            exchange.capture.upstream_response = route.upstream_response
        if streamed:  # its headers went to the client before its body: the capture has them (responseheaders)
            headers, body = None, None
        else:
            headers, body = mask_headers(header_pairs(response.headers)), body_of(response)
        exchange.ended(response.status_code, headers, body, streamed)
        # The client's response ends only once this hook returns (mitmproxy sends a stream's last chunk after it):
        # the capture is handed on in the loop's next turn, off the client's path.
        asyncio.get_running_loop().call_soon(_settle, exchange)

    def error(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        if exchange is not None and flow.error is not None:
            capture = exchange.capture
            if capture.status is not None and not capture.response_headers and flow.response is not None:
                capture.response_headers = mask_headers(header_pairs(flow.response.headers))  # cut in a body
            exchange.fail(flow.error.msg, cancelled=_is_client_gone(flow))

    @staticmethod
    def _finished(flow_id: str, exchange: Exchange) -> None:
        runtime = runtime_module.current_runtime()
        if runtime is None:
            return
        ended = runtime.inflight.end(flow_id)
        route = ended.route if ended is not None else None
        capture = exchange.capture
        if route is not None:
            _take_route_end(runtime, capture, route)
        runtime.store.put(capture)
        watched = runtime.bus.has_subscribers
        hooked = _has_handlers(AnthropicRecordCompleteHook.name)
        if watched or hooked:  # someone here takes the end as it happens: derive the record for them
            record = exchange.record(runtime.prices)
            if watched:
                runtime.bus.publish("ended", record.summary())
            if hooked:
                runtime.spawn(ctx.master.addons.trigger_event(AnthropicRecordCompleteHook(record)))


def _take_target(capture: Capture, route: Route) -> None:
    """What the capture says of the target the call went to (the one that answered, once one has)."""
    capture.provider, capture.upstream_model, capture.upstream_request = (route.provider, route.upstream_model,
                                                                          route.upstream_content)


def _take_route_end(runtime: runtime_module.Runtime, capture: Capture, route: Route) -> None:
    """What the route knows at the call's end: the route that matched, the relay's tries, and the prices only the
    proxy can look up (the provider's reported cost, else the model catalogue's price; a lookup bug costs no
    record)."""
    capture.route_match, capture.attempts = route.match, route.attempts
    try:
        capture.reported_cost = route.reported_cost()
        if capture.reported_cost is None and capture.upstream_model:
            capture.catalog_price = runtime.catalog.price_of(capture.upstream_model)
    except Exception:
        logger.exception("pricing failed for record %s", capture.id)


def _announce(runtime: runtime_module.Runtime, exchange: Exchange) -> None:
    if exchange.is_over:  # it ended at once (an error hook in the same turn): its final put says it all
        return
    runtime.store.put(exchange.capture)
    if runtime.bus.has_subscribers:  # a summary costs the call's description and a model dump: only for a watcher
        runtime.bus.publish("started", exchange.record().summary())


def _settle(exchange: Exchange) -> None:
    try:
        exchange.settle()
    except Exception:  # (outside any hook: mitmproxy would not log it)
        logger.exception("recording the end of record %s failed", exchange.capture.id)


_handlers_seen: dict[str, tuple[tuple[int, ...], bool]] = {}  # hook -> (the addons looked at, any implements it)


def _has_handlers(hook_name: str) -> bool:
    """Whether any loaded addon implements the hook: triggering walks every addon, so skip it when none does.
    The answer holds until an addon comes or goes (a script loaded or reloaded changes mitmproxy's lookup)."""
    addons = ctx.master.addons
    key = tuple(map(id, addons.lookup.values()))
    seen = _handlers_seen.get(hook_name)
    if seen is None or seen[0] != key:
        seen = _handlers_seen[hook_name] = (key, any(hasattr(a, hook_name) for a in traverse(addons.chain)))
    return seen[1]
