"""Records every Anthropic API exchange: a pending record at the request, filled as the answer streams,
final at its end (success, error or cancelled). Store writes and user hooks run in the background."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.addonmanager import traverse

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.addons.routing import API_CALL
from anthropic_proxy.capture.exchange import Exchange
from anthropic_proxy.providers.route import ClientRequest, Route
from anthropic_proxy.record.bodies import parse_body
from anthropic_proxy.record.hooks import AnthropicRecordCompleteHook
from anthropic_proxy.record.masking import mask_headers
from anthropic_proxy.record.model import HttpRequestPart, Record, single_attempt
from anthropic_proxy.record.pricing import apply_cost
from anthropic_proxy.record.stream_log import read_record
from anthropic_proxy.wire.media import is_event_stream

logger = logging.getLogger("anthropic_proxy.recording")

RECORD_ID = "anthropic_proxy.record_id"


def exchange_of(flow: http.HTTPFlow) -> Exchange | None:
    runtime = runtime_module.current_runtime()
    return runtime.exchanges.get(flow.id) if runtime else None


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
        route = runtime.routes.get(flow.id)
        client = route.client if route else ClientRequest(flow.request.method, flow.request.path,
                                                          flow.request.headers.items(multi=True),
                                                          flow.request.content or b"")
        record = Record(
            timestamp=datetime.fromtimestamp(flow.request.timestamp_start, UTC),
            request=HttpRequestPart(method=client.method, path=client.path, headers=mask_headers(client.headers)),
        )
        if route is not None:
            _take_target(record, route)
        record.metrics.request_bytes = len(client.content)
        # The body's bytes go to the store with the record: its writer parses them (and describes the call from them,
        # unless someone here needed that sooner: Exchange.describe), rather than this event loop parsing and encoding
        # Claude Code's hundreds of KB of JSON.
        exchange = Exchange(record, bus=runtime.bus, on_final=lambda r: self._finished(flow.id, r, client.content),
                            end_watched=_end_watched, request_content=client.content)
        exchange.started -= max(0.0, time.time() - flow.request.timestamp_start)  # count from the first byte in
        exchange.transform = route.translator if route else None
        exchange.abort = lambda: close_upstream(flow)
        runtime.exchanges[flow.id] = exchange
        flow.metadata[RECORD_ID] = record.id
        # Stored and announced in the loop's next turn: the request goes upstream first.
        asyncio.get_running_loop().call_soon(_announce, runtime, exchange, client.content)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        if exchange is None or flow.response is None:
            return
        response = flow.response
        route = runtime_module.current_runtime().routes.get(flow.id)
        if route is not None and route.targets:  # the relay chose the target that answers
            _take_target(exchange.record, route)
            exchange.transform = route.translator
        if not is_event_stream(response.headers.get("content-type")):
            exchange.response_started(response.status_code, {})  # its headers come with its body (`response`)
            exchange.body_received = lambda: body_bytes_received(flow)  # the watchdog's sign of a body arriving
        else:
            exchange.response_started(response.status_code, mask_headers(response.headers.items(multi=True)),
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
        route = runtime_module.current_runtime().routes.get(flow.id)
        if route is not None and route.upstream_response is not None:
            exchange.record.upstream_response = parse_body(route.upstream_response)
        if streamed:  # its headers went to the client before its body: the record has them (responseheaders)
            headers, body = None, None
        else:
            headers, body = mask_headers(response.headers.items(multi=True)), response.content
        exchange.ended(response.status_code, headers, body, streamed)
        # The client's response ends only once this hook returns (mitmproxy sends a stream's last chunk after it):
        # the record's end is worked out in the loop's next turn, off the client's path.
        asyncio.get_running_loop().call_soon(_settle, exchange)

    def error(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        if exchange is not None and flow.error is not None:
            part = exchange.record.response
            if part is not None and not part.headers and flow.response is not None:  # cut during a whole body
                part.headers = mask_headers(flow.response.headers.items(multi=True))
            exchange.fail(flow.error.msg, cancelled=_is_client_gone(flow))

    @staticmethod
    def _finished(flow_id: str, record: Record, request_body: bytes) -> None:
        runtime = runtime_module.current_runtime()
        if runtime is None:
            return
        runtime.exchanges.pop(flow_id, None)
        route = runtime.routes.pop(flow_id, None)
        record.route = route.match if route is not None else None
        if route is not None and route.attempts:  # the relay's tries; a call with one target gets its own once settled
            record.attempts = route.attempts
        if record.status == "ended":  # nobody here takes its end: the store's writer reads its outcome, and prices it
            runtime.store.put(record, request_body=request_body)
            return
        _price(runtime, record, route)
        if not record.attempts:
            record.attempts = [single_attempt(record)]
        runtime.store.put(record, request_body=request_body)
        if runtime.bus.has_subscribers:
            runtime.bus.publish("ended", record.summary())
        if _has_handlers(AnthropicRecordCompleteHook.name):
            runtime.spawn(ctx.master.addons.trigger_event(AnthropicRecordCompleteHook(read_record(record))))


def _take_target(record: Record, route: Route) -> None:
    """What the record says of the target the call went to (the one that answered, once one has)."""
    record.provider, record.upstream_model, record.upstream_request = (route.provider, route.upstream_model,
                                                                       route.upstream_body)


def _end_watched() -> bool:
    """Whether someone in the proxy takes a record's end as it happens: the live monitor, or a record-complete hook
    (they need its outcome now; else the store's writer reads it from what passed, see Exchange.complete)."""
    runtime = runtime_module.current_runtime()
    return (runtime is not None and runtime.bus.has_subscribers) or _has_handlers(AnthropicRecordCompleteHook.name)


def _announce(runtime: runtime_module.Runtime, exchange: Exchange, request_body: bytes) -> None:
    record = exchange.record
    if record.is_final:  # it ended at once (an error hook in the same turn): its final put says it all
        return
    runtime.store.put(record, request_body=request_body)
    if runtime.bus.has_subscribers:  # a summary costs a model dump (and the call's description): only for a watcher
        runtime.bus.publish("started", exchange.describe().summary())


def _settle(exchange: Exchange) -> None:
    try:
        exchange.settle()
    except Exception:  # (outside any hook: mitmproxy would not log it)
        logger.exception("recording the end of record %s failed", exchange.record.id)


def _price(runtime: runtime_module.Runtime, record: Record, route: Route | None) -> None:
    """Set the record's cost, once, at its end (never on the per-chunk path; a pricing bug costs no record)."""
    try:
        reported = route.reported_cost() if route is not None else None
        catalog = runtime.catalog.price_of(record.upstream_model) if route is not None and reported is None \
            and record.upstream_model else None
        apply_cost(record, runtime.prices, reported_cost=reported, catalog_price=catalog)
    except Exception:
        logger.exception("pricing failed for record %s", record.id)


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
