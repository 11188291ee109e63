"""The addons' hooks with mitmproxy's own test helpers (no network, no subprocess)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy import flow as flow_module
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.addons import all_addons, routing
from anthropic_proxy.addons.capture import Capture
from anthropic_proxy.addons.errorpages import ErrorPages
from anthropic_proxy.addons.mitmweb_view import MitmwebView
from anthropic_proxy.addons.recording import RECORD_ID, Recorder
from anthropic_proxy.addons.routing import API_CALL, Router
from anthropic_proxy.addons.startup import Startup
from anthropic_proxy.addons.telemetry import Telemetry
from anthropic_proxy.addons.webapp import WebApp
from anthropic_proxy.capture import exchange as exchange_module
from anthropic_proxy.webui.app import WebRoutes, create_app
from anthropic_proxy.wire.sse import encode_event

KEY = "sk-ant-api03-" + "K3yM1ddl3" * 6 + "-Tail"


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[taddons.context, list]]:
    addons = all_addons()
    # Proxyserver declares the mitmproxy options the Startup addon sets (mode, connection_strategy, ...).
    with taddons.context(Proxyserver(), *addons) as tctx:
        tctx.configure(addons[0], state_dir=str(tmp_path), anthropic_upstream="https://upstream.test:8443/base")
        yield tctx, addons
    runtime_module.close_runtime()


def reverse_flow() -> tflow.HTTPFlow:
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:https://upstream.test:8443")
    return flow


def api_flow(body: dict, path: str = "/v1/messages?beta=true") -> tflow.HTTPFlow:
    flow = reverse_flow()
    flow.request = tutils.treq(method=b"POST", path=path.encode(), host="127.0.0.1", port=8082,
                               headers=[(b"host", b"127.0.0.1:8082"), (b"x-api-key", KEY.encode()),
                                        (b"content-type", b"application/json"),
                                        (b"x-claude-code-session-id", b"session-1")],
                               content=json.dumps(body).encode())
    # What reverse mode makes of it: the target is the reverse upstream; the Host header stays the client's
    # (keep_host_header).
    flow.request.data.scheme, flow.request.data.host, flow.request.data.port = b"https", "upstream.test", 8443
    return flow


async def run_request(addons: list, flow: tflow.HTTPFlow) -> None:
    for addon in addons:
        for hook in ("requestheaders", "request"):
            if hasattr(addon, hook):
                result = getattr(addon, hook)(flow)
                if hasattr(result, "__await__"):
                    await result


def run_response(addons: list, flow: tflow.HTTPFlow, hook: str) -> None:
    for addon in addons:
        if hasattr(addon, hook):
            getattr(addon, hook)(flow)


def test_invalid_options_are_refused(proxy):
    tctx, addons = proxy
    with pytest.raises(exceptions.OptionsError, match="http"):
        tctx.configure(addons[0], anthropic_upstream="ftp://example.com")
    with pytest.raises(exceptions.OptionsError, match="request_timeout"):
        tctx.configure(addons[0], request_timeout=0)


# The options each addon declares, in hook order: its own and no other's, as mitmproxy's addons do.
OWN_OPTIONS: dict[type, set[str]] = {
    Startup: {"state_dir", "store_url", "max_records", "retention_days", "memory_budget", "request_timeout",
              "stream_keepalive"},
    ErrorPages: set(),
    WebApp: {"web_token", "web_hosts"},
    Capture: {"capture_hosts"},
    Router: {"anthropic_upstream", "openrouter_base_url", "proxy_mode"},
    Recorder: set(),
    MitmwebView: {"web_max_flows", "web_mask_keys"},
    Telemetry: {"otel_endpoint"},
}


@pytest.mark.parametrize("addon_type", OWN_OPTIONS)
def test_each_addon_declares_its_own_options(addon_type: type):
    assert [type(addon) for addon in all_addons()] == list(OWN_OPTIONS)
    # Proxyserver: mitmproxy's own options the Startup addon reads (mode, listen_host, ...)
    with taddons.context(Proxyserver()) as tctx:
        before = set(tctx.options.keys())
        tctx.master.addons.add(addon_type())
        assert set(tctx.options.keys()) - before == OWN_OPTIONS[addon_type]


@pytest.mark.parametrize(("addon_type", "option", "value", "message"), [
    (Startup, "request_timeout", 0, "request_timeout must be a positive number"),
    (Startup, "stream_keepalive", -1, "stream_keepalive must be 0"),
    (Startup, "retention_days", 0, "max_records and retention_days must be at least 1"),
    (Startup, "memory_budget", 10, "memory_budget must be at least 100"),
    (Router, "anthropic_upstream", "ftp://example.com", "anthropic_upstream must be an http"),
    (Router, "openrouter_base_url", "openrouter.ai/api/v1", "openrouter_base_url must be an http"),
    (WebApp, "web_hosts", "proxy.test, http://proxy.test", "web_hosts: 'http://proxy.test' is not a host name"),
    (Capture, "capture_hosts", ["https://api.anthropic.com"], "bare host names"),
    (MitmwebView, "web_max_flows", -1, "web_max_flows must be 0"),
])
def test_a_bad_value_is_refused_by_the_addon_that_owns_it(addon_type: type, option: str, value: object,
                                                         message: str):
    try:
        with taddons.context(Proxyserver()) as tctx:  # the owner alone: nobody else could refuse it
            addon = addon_type()
            tctx.master.addons.add(addon)
            with pytest.raises(exceptions.OptionsError, match=message):
                tctx.configure(addon, **{option: value})
    finally:
        runtime_module.close_runtime()  # (the Startup addon opens it again as the options roll back)


def test_a_new_runtime_gets_every_addons_settings(proxy, tmp_path: Path):
    tctx, addons = proxy
    tctx.configure(addons[0], web_hosts="proxy.test", openrouter_base_url="https://or.test/api/v1/")
    first = runtime_module.current_runtime()
    tctx.configure(addons[0], state_dir=str(tmp_path / "elsewhere"))  # a runtime of its own, fresh settings
    runtime = runtime_module.current_runtime()
    assert runtime is not first
    assert (runtime.settings.anthropic_upstream, runtime.settings.openrouter_base_url) == \
        ("https://upstream.test:8443/base", "https://or.test/api/v1")
    assert runtime.settings.web_hosts == ("proxy.test",)
    assert runtime.settings.listen_port == addons[0].listen_address()[1]


def test_own_address_as_upstream_is_a_loop(proxy):
    tctx, addons = proxy
    startup: Startup = addons[0]
    _, port = startup.listen_address()
    with pytest.raises(exceptions.OptionsError, match="loop"):
        tctx.configure(startup, anthropic_upstream=f"http://localhost:{port}")


async def test_streamed_call_is_routed_recorded_and_passed_through_unchanged(proxy):
    _, addons = proxy
    body = {"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}
    flow = api_flow(body)
    await run_request(addons, flow)
    assert flow.metadata[API_CALL] == "/v1/messages"
    assert (flow.request.scheme, flow.request.host, flow.request.port) == ("https", "upstream.test", 8443)
    assert flow.request.headers["host"] == "upstream.test:8443", "the upstream's Host, not the proxy's"
    assert flow.request.path == "/base/v1/messages?beta=true"
    assert flow.request.content == json.dumps(body).encode(), "passthrough must not touch the body"
    runtime = runtime_module.current_runtime()
    exchange = runtime.inflight.exchange_of(flow.id)
    assert not exchange.is_over and exchange.capture.id == flow.metadata[RECORD_ID]

    flow.response = tutils.tresp(headers=[(b"content-type", b"text/event-stream")], content=None)
    run_response(addons, flow, "responseheaders")
    tap = flow.response.stream
    assert callable(tap)
    events = [
        encode_event("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
            "usage": {"input_tokens": 7, "output_tokens": 1, "cache_read_input_tokens": 3}}}),
        encode_event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
        encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": "héllo"}}),
        encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        encode_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                       "usage": {"output_tokens": 5}}),
        encode_event("message_stop", {"type": "message_stop"}),
    ]
    stream = b"".join(events)
    cut = stream.index("é".encode()) + 1  # split inside a UTF-8 character
    out = [tap(stream[:cut]), tap(stream[cut:]), tap(b"")]
    assert out[0] == stream[:cut] and out[1] == stream[cut:], "the tap must forward bytes unchanged"
    run_response(addons, flow, "response")
    assert runtime.inflight.exchange_of(flow.id) is not None, "the capture is handed on off the client's path"
    await asyncio.sleep(0)

    assert exchange.is_over and exchange._call is None, \
        "nobody here watched: the call's body is read where its record is derived (the store's writer)"
    record = runtime.store.get(exchange.capture.id)  # not written yet: derived from the capture
    assert record.status == "success" and record.stop_reason == "end_turn"
    assert record.message["content"] == [{"type": "text", "text": "héllo"}]
    assert (record.usage.input_tokens, record.usage.output_tokens, record.usage.cache_read_input_tokens) == (7, 5, 3)
    assert record.chunks[0].event == "message_start" and record.metrics.chunk_count == 6
    assert (record.session_id, record.model, record.stream, record.request.body) == \
        ("session-1", "claude-sonnet-4-5", True, body)
    assert record.cost_usd, "priced as the writer will, the call described first"
    assert record.request.headers["x-api-key"] == KEY[:10] + "..." + KEY[-4:]
    assert runtime.inflight.exchange_of(flow.id) is None
    runtime.store.flush()
    stored = runtime.store.get(record.id)
    assert (stored.status, stored.session_id, stored.model, stored.stream) == ("success", "session-1",
                                                                               "claude-sonnet-4-5", True)
    assert stored.cost_usd, "priced by the writer"


async def test_mid_stream_return_is_never_empty_bytes(proxy):
    _, addons = proxy
    flow = api_flow({"model": "m", "stream": True, "messages": []})
    await run_request(addons, flow)
    flow.response = tutils.tresp(headers=[(b"content-type", b"text/event-stream")], content=None)
    run_response(addons, flow, "responseheaders")
    # b"" mid-stream would end a chunked HTTP/1.1 response; an empty chunk must become [].
    assert flow.response.stream(b"") == b""  # the real end
    assert flow.response.stream(b"") == b""  # HTTP/2 may signal the end twice


async def test_client_disconnect_cancels_and_upstream_cut_errors(proxy):
    _, addons = proxy
    runtime = runtime_module.current_runtime()
    for message, expected in (("Client disconnected.", "cancelled"), ("peer closed connection", "error")):
        flow = api_flow({"model": "m", "messages": []})
        await run_request(addons, flow)
        exchange = runtime.inflight.exchange_of(flow.id)
        flow.error = tflow.terr(message)
        run_response(addons, flow, "error")
        record = exchange.record()
        assert record.status == expected and record.error.message == message


async def test_web_app_paths_are_not_api_calls(proxy):
    _, addons = proxy
    runtime = runtime_module.current_runtime()
    runtime.web_port = 1  # pretend the web app runs
    addons[2]._routes = WebRoutes(create_app(runtime))
    flow = reverse_flow()
    flow.request.path = "/api/monitor/requests"
    await run_request(addons, flow)
    assert API_CALL not in flow.metadata and runtime.inflight.exchange_of(flow.id) is None
    assert (flow.request.host, flow.request.port) == ("127.0.0.1", 1)
    assert flow.request.headers["x-anthropic-proxy-internal"] == runtime.internal_token


async def test_forward_proxy_flows_are_refused_until_reverse_mode_is_up(proxy):
    _, addons = proxy
    flow = tflow.tflow()  # a regular (forward) proxy flow, as in the moment before the addon moves the server
    await run_request(addons, flow)
    assert not flow.live and flow.error is not None
    assert len(runtime_module.current_runtime().inflight) == 0


def test_record_complete_handlers_are_looked_up_again_when_addons_change():
    from anthropic_proxy.addons.recording import _has_handlers
    from anthropic_proxy.record.hooks import AnthropicRecordCompleteHook

    class Listener:
        def anthropic_record_complete(self, record):
            pass

    name = AnthropicRecordCompleteHook.name
    with taddons.context() as tctx:
        assert not _has_handlers(name)
        assert not _has_handlers(name)  # (from the cache)
        listener = Listener()
        tctx.master.addons.add(listener)
        assert _has_handlers(name)
        tctx.master.addons.remove(listener)
        assert not _has_handlers(name)


async def test_a_body_with_odd_field_types_is_still_recorded(proxy):
    """A model or session that is not a string (the upstream will refuse the call) must not cost the record."""
    _, addons = proxy
    flow = api_flow({"model": 5, "stream": "yes", "metadata": {"user_id": json.dumps({"session_id": 7})},
                     "messages": [{"role": "user", "content": "hi"}]})
    del flow.request.headers["x-claude-code-session-id"]
    await run_request(addons, flow)
    record = runtime_module.current_runtime().inflight.exchange_of(flow.id).record()
    assert (record.model, record.session_id, record.stream) == (None, None, True)
    assert record.request.body["model"] == 5, "the body itself is recorded as sent"


async def test_the_call_is_parsed_only_where_the_record_is_shown_or_its_end_decided(proxy, monkeypatch):
    """Parsing a body (hundreds of KB from Claude Code) is left to the store's writer unless someone here needs the
    record's account of the call: never on the client's path, at most once."""
    _, addons = proxy
    runtime = runtime_module.current_runtime()
    described: list[str] = []
    original = exchange_module.describe
    monkeypatch.setattr(exchange_module, "describe", lambda capture: (described.append(capture.id),
                                                                      original(capture))[1])
    flow = api_flow({"model": "claude-sonnet-4-5", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    await run_request(addons, flow)
    await asyncio.sleep(0)  # (stored pending, unwatched)
    exchange = runtime.inflight.exchange_of(flow.id)
    assert described == []
    record = exchange.record()
    assert (record.model, record.session_id, record.stream, record.request.body["messages"][0]["content"]) == \
        ("claude-sonnet-4-5", "session-1", True, "hi")
    exchange.record()
    assert described == [record.id], "described once"

    watcher = runtime.bus.subscribe()
    try:
        watched = api_flow({"model": "claude-haiku-4-5", "messages": []})
        await run_request(addons, watched)
        assert described == [record.id], "not on the client's path"
        await asyncio.sleep(0)
        started = watcher.get_nowait()
        assert started["type"] == "started" and started["record"]["model"] == "claude-haiku-4-5"
    finally:
        runtime.bus.unsubscribe(watcher)
    assert len(described) == 2


def use_openrouter(proxy: tuple[taddons.context, list], monkeypatch: pytest.MonkeyPatch) -> list:
    """openrouter mode, with a key in the environment; the addons."""
    tctx, addons = proxy
    tctx.configure(addons[0], proxy_mode="openrouter")
    monkeypatch.setattr(routing.environment, "get",
                        lambda name, default="": "sk-or-v1-" + "0" * 40 if name == "OPENROUTER_API_KEY" else default)
    return addons


async def answered_whole(addons: list, content: bytes) -> tflow.HTTPFlow:
    """A call through the hooks, answered by the upstream with a whole JSON body `content` in an HTTP 200."""
    flow = api_flow({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    await run_request(addons, flow)
    flow.response = tutils.tresp(status_code=200, headers=[(b"content-type", b"application/json")], content=content)
    run_response(addons, flow, "responseheaders")
    run_response(addons, flow, "response")
    return flow


async def test_openrouter_mode_records_the_clients_session_header(proxy, monkeypatch):
    """The Router replaces the call's headers with OpenRouter's before the Recorder runs: the session comes from
    the headers the client sent."""
    addons = use_openrouter(proxy, monkeypatch)
    flow = api_flow({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    await run_request(addons, flow)
    assert "x-claude-code-session-id" not in flow.request.headers, "the call to OpenRouter has its own headers"
    record = runtime_module.current_runtime().inflight.exchange_of(flow.id).record()
    assert record.provider == "openrouter" and record.session_id == "session-1"
    assert record.request.headers["x-api-key"] == KEY[:10] + "..." + KEY[-4:], "the client's headers, masked"


async def test_a_whole_body_cut_off_keeps_its_response_headers(proxy):
    """A JSON answer's headers are recorded with its body; an upstream that cuts the body still leaves them."""
    _, addons = proxy
    flow = api_flow({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    await run_request(addons, flow)
    exchange = runtime_module.current_runtime().inflight.exchange_of(flow.id)
    flow.response = tutils.tresp(status_code=529, headers=[(b"content-type", b"application/json"),
                                                           (b"request-id", b"req_1"), (b"set-cookie", KEY.encode())])
    run_response(addons, flow, "responseheaders")
    assert exchange.record().response.status == 529 and exchange.record().response.headers == {}
    flow.error = flow_module.Error("server disconnected")
    run_response(addons, flow, "error")
    record = exchange.record()
    assert record.status == "error" and record.error.type == "upstream_error"
    assert record.response.headers["request-id"] == "req_1"
    assert record.response.headers["set-cookie"] == KEY[:10] + "..." + KEY[-4:]


async def test_an_error_right_after_the_response_ends_the_record_as_the_response_did(proxy, monkeypatch):
    """The record's end waits for the loop's next turn; an error before then (the client leaving during the last
    chunk, or shutdown) completes it from the response, once, rather than calling it cancelled."""
    _, addons = proxy
    flow = api_flow({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    await run_request(addons, flow)
    runtime = runtime_module.current_runtime()
    exchange = runtime.inflight.exchange_of(flow.id)
    finals: list[str] = []
    put = runtime.store.put
    monkeypatch.setattr(runtime.store, "put", lambda capture: (finals.append(capture.ending.kind) if capture.ending
                                                               else None, put(capture)))
    flow.response = tutils.tresp(status_code=200, headers=[(b"content-type", b"application/json")],
                                 content=json.dumps({"type": "message", "stop_reason": "end_turn",
                                                     "usage": {"input_tokens": 3, "output_tokens": 4}}).encode())
    run_response(addons, flow, "responseheaders")
    run_response(addons, flow, "response")
    assert runtime.inflight.exchange_of(flow.id) is not None and finals == []
    flow.error = flow_module.Error("client disconnected")
    run_response(addons, flow, "error")
    assert runtime.inflight.exchange_of(flow.id) is None and finals == ["completed"]
    read = exchange.record()
    assert (read.status, read.stop_reason, read.usage.output_tokens) == ("success", "end_turn", 4)
    await asyncio.sleep(0)  # the deferred end finds the capture handed on and does nothing more
    assert finals == ["completed"]
    runtime.store.flush()
    stored = runtime.store.get(read.id)
    assert (stored.status, stored.stop_reason, stored.usage.output_tokens, stored.response.body["type"]) == \
        ("success", "end_turn", 4, "message")
    assert stored.cost_usd, "priced by the writer"


async def test_a_body_in_a_coding_it_is_not_in_is_still_recorded(proxy):
    """A request whose `Content-Encoding` does not match its body, and an answer whose does not match its own, are
    passed on as they are and recorded: mitmproxy's decoding of them fails, and that must not cost the record (nor
    leave it pending)."""
    _, addons = proxy
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    flow = api_flow(body)
    flow.request.headers["content-encoding"] = "gzip"  # (the body is plain JSON)
    await run_request(addons, flow)
    runtime = runtime_module.current_runtime()
    exchange = runtime.inflight.exchange_of(flow.id)
    assert exchange is not None, "the call is recorded"
    assert flow.request.raw_content == json.dumps(body).encode(), "passed on as it came"
    answer = json.dumps({"type": "message", "stop_reason": "end_turn", "content": [],
                         "usage": {"input_tokens": 3, "output_tokens": 4}}).encode()
    flow.response = tutils.tresp(status_code=200, headers=[(b"content-type", b"application/json"),
                                                           (b"content-encoding", b"br")], content=None)
    flow.response.raw_content = answer  # (not brotli)
    run_response(addons, flow, "responseheaders")
    run_response(addons, flow, "response")
    await asyncio.sleep(0)
    assert exchange.is_over and runtime.inflight.exchange_of(flow.id) is None, "the record ended with the answer"
    record = runtime.store.get(exchange.capture.id)
    assert record.status != "pending" and record.metrics.response_bytes == len(answer)
    assert record.request.body == body


async def test_a_routing_bug_answers_an_anthropic_error_and_the_call_is_still_recorded(proxy, monkeypatch):
    """An exception in the Router's request hook would send a half-rewritten request on, and (escaping into
    mitmproxy) skip the Recorder's hook: the client gets an Anthropic-shaped 500 instead, and the call its record."""
    _, addons = proxy

    def broken(upstream: str) -> None:
        raise RuntimeError("a routing bug")

    monkeypatch.setattr(routing, "_upstream_parts", broken)
    flow = api_flow({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    await run_request(addons, flow)
    assert flow.response is not None and flow.response.status_code == 500
    error = json.loads(flow.response.content)
    assert error["type"] == "error" and error["error"]["type"] == "api_error" and "a routing bug" in \
        error["error"]["message"]
    runtime = runtime_module.current_runtime()
    exchange = runtime.inflight.exchange_of(flow.id)
    assert exchange is not None, "the call is recorded"
    run_response(addons, flow, "response")
    await asyncio.sleep(0)
    record = runtime.store.get(exchange.capture.id)
    assert (record.status, record.response.status, record.error.type) == ("error", 500, "api_error")


async def test_a_translation_bug_answers_an_anthropic_error_and_ends_the_record(proxy, monkeypatch):
    """An exception translating a whole OpenRouter answer would escape the Router's response hook and skip the
    Recorder's, leaving the record open: the client gets an Anthropic-shaped 502, and the record ends with it."""
    addons = use_openrouter(proxy, monkeypatch)

    def broken(*args: object) -> None:
        raise KeyError("choices")

    monkeypatch.setattr(routing, "translate_full_response", broken)
    flow = await answered_whole(addons, b'{"id": "gen-1"}')
    assert flow.response.status_code == 502
    error = json.loads(flow.response.content)["error"]
    assert error["type"] == "api_error" and "KeyError" in error["message"]
    await asyncio.sleep(0)
    runtime = runtime_module.current_runtime()
    assert runtime.inflight.exchange_of(flow.id) is None, "the record ended with the answer"
    record = runtime.store.get(flow.metadata[RECORD_ID])
    assert (record.status, record.response.status) == ("error", 502)


async def test_an_error_openrouter_sends_in_a_200_is_recorded_as_the_error_the_client_got(proxy, monkeypatch):
    """OpenRouter reports some errors in an HTTP 200 answer; the client gets them as Anthropic errors with their
    status, and the record says what the client got (it said success, 200)."""
    flow = await answered_whole(use_openrouter(proxy, monkeypatch),
                                b'{"error": {"code": 429, "message": "Rate limited upstream"}}')
    assert flow.response.status_code == 429
    await asyncio.sleep(0)
    record = runtime_module.current_runtime().store.get(flow.metadata[RECORD_ID])
    assert (record.status, record.response.status) == ("error", 429)
    assert (record.error.type, record.error.message) == ("rate_limit_error", "Rate limited upstream")
