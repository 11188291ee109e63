"""The one registry of calls in flight: by flow id and by record id, each call's route and exchange."""

from __future__ import annotations

from anthropic_proxy.capture.exchange import Exchange
from anthropic_proxy.capture.live import LiveBus
from anthropic_proxy.capture.registry import InFlight
from anthropic_proxy.providers.route import ClientRequest, Route
from anthropic_proxy.record.capture import Capture


def exchange(record_id: str) -> Exchange:
    capture = Capture(id=record_id, started=0.0, method="POST", path="/v1/messages", request_headers={}, request=b"")
    return Exchange(capture, bus=LiveBus(), on_end=lambda _: None)


def test_a_call_is_found_by_flow_and_by_record_until_it_ends():
    inflight = InFlight()
    route = Route(client=ClientRequest("POST", "/v1/messages", [], b""))
    inflight.route("flow-1", route)
    assert inflight.route_of("flow-1") is route and inflight.exchange_of("flow-1") is None and len(inflight) == 0
    first, second = exchange("rec-1"), exchange("rec-2")
    inflight.begin("flow-1", first)
    inflight.begin("flow-2", second)
    assert inflight.exchange_of("flow-1") is first and inflight.by_record("rec-2") is second
    assert inflight.exchanges() == [first, second] and len(inflight) == 2
    ended = inflight.end("flow-1")
    assert ended is not None and (ended.route, ended.exchange) == (route, first)
    assert inflight.route_of("flow-1") is None and inflight.by_record("rec-1") is None
    assert inflight.exchanges() == [second] and len(inflight) == 1
    assert inflight.end("flow-1") is None and inflight.take_ended("flow-1") is None, "not kept: nobody asked"


def test_ended_calls_are_kept_for_a_late_reader_once():
    inflight = InFlight()
    inflight.keep_ended = True
    inflight.begin("flow-1", first := exchange("rec-1"))
    inflight.end("flow-1")
    assert len(inflight) == 0 and inflight.exchange_of("flow-1") is None
    kept = inflight.take_ended("flow-1")
    assert kept is not None and kept.exchange is first
    assert inflight.take_ended("flow-1") is None
