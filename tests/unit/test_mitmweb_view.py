"""The mitmweb view addon with mitmproxy's own View and test flows (no subprocess; tests/integration/test_mitmweb.py
runs it in a real mitmweb)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.view import View
from mitmproxy.test import taddons, tflow

from anthropic_proxy.addons.mitmweb_view import (
    MARK_CANCELLED,
    MARK_ERROR,
    MARK_TRANSLATED,
    HideInternal,
    MitmwebView,
    client_stream_body,
    describe,
    hide_internal_flows,
)
from anthropic_proxy.addons.webapp import INTERNAL_FLOW
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.model import Attempt, HttpRequestPart, Metrics, Record, RecordError, Usage


def make_record(**kwargs) -> Record:
    defaults = dict(timestamp=datetime.now(UTC), request=HttpRequestPart(method="POST", path="/v1/messages"),
                    model="claude-sonnet-4-5", status="success", stop_reason="end_turn",
                    usage=Usage(input_tokens=25, output_tokens=42), cost_usd=0.000705,
                    metrics=Metrics(duration_ms=1234.0))
    return Record(**{**defaults, **kwargs})


def test_describe_success():
    comment, mark = describe(make_record())
    first, second = comment.splitlines()
    assert first == "claude-sonnet-4-5 · anthropic · end_turn · in 25 / out 42 tok · $0.000705 · 1.23 s"
    assert second.startswith("record ") and mark == ""


def test_describe_openrouter_error_cancel_and_unknown_cost():
    translated, mark = describe(make_record(provider="openrouter", upstream_model="anthropic/claude-sonnet-4.5",
                                            upstream_request={"model": "anthropic/claude-sonnet-4.5"}, cost_usd=0.25,
                                            attempts=[Attempt(provider="anthropic", model="claude-sonnet-4-5",
                                                              status=529),
                                                      Attempt(provider="openrouter", status=200)]))
    assert translated.startswith("claude-sonnet-4-5 → anthropic/claude-sonnet-4.5 via OpenRouter · end_turn")
    assert "$0.2500" in translated and "translated: the request shown is what went to OpenRouter" in translated
    assert "after 2 attempts: anthropic 529, openrouter 200" in translated and mark == MARK_TRANSLATED
    third_party, mark = describe(make_record(provider="deepseek", upstream_model="deepseek-chat"))
    assert third_party.startswith("claude-sonnet-4-5 → deepseek-chat via deepseek · end_turn") and mark == ""
    error, mark = describe(make_record(status="error", error=RecordError(type="overloaded_error", message="busy"),
                                       cost_usd=None))
    assert "error overloaded_error: busy" in error and "cost unknown" in error and mark == MARK_ERROR
    cancelled, mark = describe(make_record(status="cancelled", usage=Usage(input_tokens=1,
                                                                           cache_read_input_tokens=200)))
    assert "cancelled (the client left)" in cancelled and "(cache read 200, write 0)" in cancelled
    assert mark == MARK_CANCELLED
    counted, _ = describe(make_record(request=HttpRequestPart(method="POST", path="/v1/messages/count_tokens")))
    assert " · count_tokens · " in counted


def test_client_stream_body_is_the_bytes_the_client_received():
    capture = Capture(id="r", started=0.0, method="POST", path="/v1/messages", request_headers={}, request=b"",
                      client_log=[(1.0, b'event: message_start\ndata: {"type": "message_start"}\n'),
                                  (2.5, b'\nevent: ping\r\ndata: {"type":"ping"}\r\n\r\n')])
    assert client_stream_body(capture) == (b'event: message_start\ndata: {"type": "message_start"}\n'
                                          b'\nevent: ping\r\ndata: {"type":"ping"}\r\n\r\n')


def internal_flow():
    flow = tflow.tflow(resp=True, live=False)
    flow.metadata[INTERNAL_FLOW] = True
    return flow


def test_hidden_internal_flows_survive_a_view_filter_change():
    view = View()
    with taddons.context(view) as tctx:
        hide_internal_flows(view)
        hide_internal_flows(view)  # a script reload runs it again: still one wrapper
        assert isinstance(view.filter, HideInternal) and not isinstance(view.filter.inner, HideInternal)
        shown, hidden = tflow.tflow(resp=True), internal_flow()
        view.add([shown, hidden])
        assert list(view) == [shown] and view.store_count() == 2
        tctx.configure(view, view_filter="~m GET")  # the user's own filter, combined with ours
        assert list(view) == [shown] and isinstance(view.filter, HideInternal)
        tctx.configure(view, view_filter=None)
        assert list(view) == [shown]


def test_cap_drops_the_oldest_finished_flows_never_live_or_internal_ones():
    view, addon = View(), MitmwebView()
    with taddons.context(view, addon) as tctx:
        tctx.configure(addon, web_max_flows=3)
        live = tflow.tflow(resp=True, live=True)
        old = [tflow.tflow(resp=True, live=False) for _ in range(3)]
        view.add([live, *old])
        addon.requestheaders(tflow.tflow())  # room for one more: two must go, the live one stays
        assert view.get_by_id(live.id) is live
        assert {f.id for f in view} == {live.id, old[2].id}
        internal = internal_flow()
        addon.requestheaders(internal)
        view.add([internal])
        assert view.get_by_id(live.id) is live and view.get_by_id(old[2].id) is old[2], "internal flows do not count"
        with pytest.raises(exceptions.OptionsError, match="web_max_flows"):
            tctx.configure(addon, web_max_flows=-1)
        tctx.configure(addon, web_max_flows=0)
        for _ in range(5):
            addon.requestheaders(tflow.tflow())
            view.add([tflow.tflow(resp=True, live=False)])
        assert view.store_count() == 8


def test_without_a_view_nothing_happens():
    addon = MitmwebView()
    with taddons.context(addon):
        flow = tflow.tflow(resp=True)
        addon.requestheaders(flow)
        addon.request(flow)
        addon.response(flow)
        assert flow.comment == "" and flow.marked == ""


def test_keys_are_masked_once_the_request_has_gone_and_only_when_asked():
    key = "sk-ant-api03-" + "x" * 40 + "-AbCd"
    view = View()
    addon = MitmwebView()
    with taddons.context(view, addon) as tctx:
        for mask, expected in ((True, f"{key[:10]}...{key[-4:]}"), (False, key)):
            tctx.configure(addon, web_mask_keys=mask)
            flow = tflow.tflow(resp=True)
            flow.request.headers["x-api-key"] = key
            flow.request.headers["authorization"] = f"Bearer {key}"
            addon.responseheaders(flow)
            addon.responseheaders(flow)  # (a second pass must not mask the masked key into ***)
            assert flow.request.headers["x-api-key"] == expected
            assert flow.request.headers["authorization"] == f"Bearer {expected}"
