"""Each call's final facts (CallEnd) from the store's writer process, the Prometheus counters made of them, and the
span attributes and tracing configuration (the real thing end to end: tests/integration/test_observability.py)."""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from anthropic_proxy.record.call_end import CallEnd, CallEnds
from anthropic_proxy.record.capture import Capture, Ending
from anthropic_proxy.record.model import Record
from anthropic_proxy.store import DB_NAME, Store
from anthropic_proxy.telemetry.metrics import MAX_MODELS, ProxyMetrics, ProxyState
from anthropic_proxy.telemetry.tracing import TraceConfig, span_attributes, trace_config

from .test_store import make_record
from .test_store_faults import wait_until

STREAM = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
          b'"role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,'
          b'"usage":{"input_tokens":10,"cache_read_input_tokens":1000,"cache_creation_input_tokens":0,'
          b'"output_tokens":1}}}\n\n'
          b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
          b'"content_block":{"type":"text","text":""}}\n\n'
          b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
          b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
          b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
          b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
          b'"usage":{"output_tokens":7}}\n\n'
          b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


REQUEST = b'{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}'


def ended_stream_capture() -> Capture:
    """A passthrough stream that ended, as the Recorder puts it: its record is derived by the writer."""
    return Capture(id=uuid.uuid4().hex, started=time.time(), method="POST", path="/v1/messages",
                   request_headers={"x-api-key": "masked",
                                    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
                   request=REQUEST, status=200, response_headers={"content-type": "text/event-stream"}, streamed=True,
                   client_log=[(100.0, STREAM[:150]), (200.0, STREAM[150:])], duration_ms=1234.5,
                   ending=Ending("completed"))


class Collected:
    def __init__(self) -> None:
        self.ends: list[CallEnd] = []
        self.threads: set[str] = set()

    def __call__(self, end: CallEnd) -> None:
        self.threads.add(threading.current_thread().name)
        self.ends.append(end)


def test_the_writer_reports_the_end_of_a_call_nobody_watched(tmp_path: Path):
    store = Store(tmp_path)
    got = Collected()
    store.call_ends.subscribe(got)
    try:
        record = ended_stream_capture()
        store.put(make_record(id=record.id, status="pending"))  # a pending put brings no end
        store.put(record)
        store.flush()
        wait_until(lambda: got.ends)
        [end] = got.ends
        assert got.threads == {"anthropic-proxy-store-receiver"}
        assert (end.record_id, end.status, end.stream, end.operation) == (record.id, "success", True, "chat")
        assert (end.model, end.response_model, end.response_id) == ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929",
                                                                    "msg_1")
        assert (end.input_tokens, end.output_tokens, end.cache_read_tokens, end.cache_creation_tokens) == (
            10, 7, 1000, 0)
        assert end.max_tokens == 64 and end.stop_reason == "end_turn" and end.traceparent.startswith("00-4bf9")
        stored = store.get(record.id)
        assert end.cost_usd == stored.cost_usd and stored.cost_usd > 0  # priced by the writer, as stored
        # a stream's first byte is its first event (the 2nd log entry completes it), as the writer reads the stream
        assert (end.duration_ms, end.ttfb_ms) == (1234.5, 200.0) == (1234.5, stored.chunks[0].t_ms)
        assert end.started == pytest.approx(record.started, abs=1e-6)
    finally:
        store.close()


def test_the_writers_call_line_is_logged_here_under_the_call_loggers_name(tmp_path: Path, caplog):
    """The writer makes each call's line; the proxy logs it again under `anthropic_proxy.calls`, the name a
    filter (or LOG_LEVEL) picks it out by, and its other lines under their own names."""
    store = Store(tmp_path)
    try:
        with caplog.at_level(logging.INFO):
            record = ended_stream_capture()
            store.put(record)
            store.flush()
            wait_until(lambda: any(r.name == "anthropic_proxy.calls" for r in caplog.records))
        [line] = [r for r in caplog.records if r.name == "anthropic_proxy.calls"]
        assert line.levelno == logging.INFO
        assert line.getMessage().startswith("POST /v1/messages 200 · claude-sonnet-4-5 · anthropic · end_turn")
    finally:
        store.close()


def test_a_restarted_writer_reporting_a_call_again_counts_it_once(tmp_path: Path):
    store = Store(tmp_path, busy_timeout=0.1)
    got = Collected()
    store.call_ends.subscribe(got)
    blocker = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # the write fails: the record stays queued after its end is reported
        record = make_record(status="success")
        store.put(record)
        wait_until(lambda: got.ends and store.last_write_error is not None)
        writer = store._writer
        old_pid = writer._process.pid
        writer._process.kill()  # the next writer is sent the record again, and reports its end again
        wait_until(lambda: writer._process.pid != old_pid and store.writer_restarts == 1)
        blocker.execute("ROLLBACK")
        wait_until(lambda: not writer.queued)
        assert [end.record_id for end in got.ends] == [record.id]
    finally:
        blocker.close()
        store.close()


def test_a_failing_listener_costs_the_others_nothing():
    ends = CallEnds()
    got = Collected()

    def broken(end: CallEnd) -> None:
        raise RuntimeError("bug")

    ends.subscribe(broken)
    ends.subscribe(got)
    ends.deliver([end_of()])
    assert len(got.ends) == 1
    ends.unsubscribe(got)
    ends.deliver([end_of()])
    assert len(got.ends) == 1


def end_of(**fields) -> CallEnd:
    values = dict(record_id="r1", started=1_700_000_000.0, operation="chat", provider="anthropic",
                  model="claude-sonnet-4-5", upstream_model=None, response_model=None, response_id=None, stream=True,
                  status="success", error_type=None, stop_reason="end_turn", session_id=None, max_tokens=100,
                  temperature=None, top_p=None, top_k=None, input_tokens=10, output_tokens=20, cache_read_tokens=300,
                  cache_creation_tokens=40, cost_usd=0.01, duration_ms=1500.0, ttfb_ms=200.0, traceparent=None,
                  tracestate=None)
    return CallEnd(**{**values, **fields})


def samples(metrics: ProxyMetrics) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.exposition().decode()) for s in family.samples}


STATE = ProxyState(in_flight=2, store_queue=5, store_unsaved=1, store_write_errors=3, store_degraded=True,
                   store_lost=4, writer_restarts=1, cooldowns=2)


def test_counters_histograms_and_gauges():
    metrics = ProxyMetrics(lambda: STATE, "9.9")
    metrics.count(end_of())
    metrics.count(end_of(status="error", error_type="overloaded_error", stream=False, output_tokens=0, cost_usd=None,
                         duration_ms=30_000.0))
    metrics.count(end_of(operation="count_tokens", input_tokens=5000, stream=False, cost_usd=None))
    metrics.count(end_of(provider="openrouter", model="claude-sonnet-4-5", upstream_model="google/gemini-2.5-flash"))
    found = samples(metrics)
    chat = (("model", "claude-sonnet-4-5"), ("operation", "chat"), ("provider", "anthropic"))
    assert found[("anthropic_proxy_calls_total", (*chat, ("status", "success"), ("stream", "true")))] == 1
    assert found[("anthropic_proxy_calls_total", (*chat, ("status", "error"), ("stream", "false")))] == 1
    tokens = {dict(labels)["type"]: value for (name, labels), value in found.items()
              if name == "anthropic_proxy_tokens_total" and dict(labels)["provider"] == "anthropic"}
    assert tokens == {"input": 20, "output": 20, "cache_read": 600, "cache_creation": 80}  # not count_tokens' 5000
    assert found[("anthropic_proxy_cost_usd_total", (("model", "google/gemini-2.5-flash"),
                                                     ("provider", "openrouter")))] == pytest.approx(0.01)
    assert found[("anthropic_proxy_call_duration_seconds_bucket", tuple(sorted((*chat, ("le", "2.5")))))] == 1
    assert found[("anthropic_proxy_call_duration_seconds_bucket", tuple(sorted((*chat, ("le", "30.0")))))] == 2
    assert found[("anthropic_proxy_call_duration_seconds_sum", chat)] == pytest.approx(31.5)
    assert found[("anthropic_proxy_time_to_first_byte_seconds_bucket", tuple(sorted((*chat, ("le", "0.25")))))] == 2
    assert found[("anthropic_proxy_calls_in_flight", ())] == 2
    assert found[("anthropic_proxy_store_queue_records", ())] == 5
    assert found[("anthropic_proxy_store_write_errors", ())] == 3
    assert found[("anthropic_proxy_store_degraded", ())] == 1
    assert found[("anthropic_proxy_store_records_lost_total", ())] == 4
    assert found[("anthropic_proxy_info", (("version", "9.9"),))] == 1
    assert found[("anthropic_proxy_cooldowns", ())] == 2


def test_failovers_count_each_try_given_up():
    from anthropic_proxy.record.call_end import call_end
    from anthropic_proxy.record.model import Attempt, HttpRequestPart

    record = Record(status="success", provider="openrouter", model="claude-sonnet-4-5",
                    upstream_model="anthropic/claude-sonnet-4.5",
                    request=HttpRequestPart(method="POST", path="/v1/messages", headers={}),
                    attempts=[Attempt(provider="anthropic", model="claude-sonnet-4-5", status=529),
                              Attempt(provider="local", model="qwen3", status=None, error="connection refused"),
                              Attempt(provider="openrouter", model="anthropic/claude-sonnet-4.5", status=200)])
    metrics = ProxyMetrics(lambda: STATE, "1")
    metrics.count(call_end(record))
    metrics.count(end_of())  # one target: no failover
    failovers = {tuple(sorted(labels)): value for (name, labels), value in samples(metrics).items()
                 if name == "anthropic_proxy_failovers_total"}
    assert failovers == {(("model", "claude-sonnet-4-5"), ("provider", "anthropic"), ("status", "529")): 1,
                         (("model", "qwen3"), ("provider", "local"), ("status", "no_answer")): 1}


def test_histograms_agree_with_prometheus_clients_own():
    from prometheus_client import CollectorRegistry, Histogram

    from anthropic_proxy.telemetry.metrics import LATENCY_BUCKETS

    seconds = [0.05, 0.1, 0.1001, 2.49, 2.5, 2.51, 30.0, 599.9, 600.0, 601.0, 7200.0]
    metrics = ProxyMetrics(lambda: STATE, "1")
    reference = CollectorRegistry()
    histogram = Histogram("anthropic_proxy_call_duration_seconds", "d", buckets=LATENCY_BUCKETS, registry=reference)
    for value in seconds:
        metrics.count(end_of(duration_ms=value * 1000))
        histogram.observe(value)
    ours = {(name, dict(labels).get("le")): value for (name, labels), value in samples(metrics).items()
            if name.startswith("anthropic_proxy_call_duration_seconds_")}
    theirs = {(s.name, s.labels.get("le")): s.value for family in reference.collect() for s in family.samples
              if not s.name.endswith("_created")}
    assert ours == pytest.approx(theirs) and len(theirs) == len(LATENCY_BUCKETS) + 3  # +Inf, _sum, _count


def test_model_labels_are_bounded():
    metrics = ProxyMetrics(lambda: STATE, "1")
    for n in range(MAX_MODELS + 50):
        metrics.count(end_of(model=f"model-{n}"))
    calls = {dict(labels)["model"]: value for (name, labels), value in samples(metrics).items()
             if name == "anthropic_proxy_calls_total"}
    assert len(calls) == MAX_MODELS + 1 and calls["other"] == 50
    assert sum(calls.values()) == MAX_MODELS + 50


def test_span_attributes_of_a_count_tokens_call_carry_no_usage():
    attributes = span_attributes(end_of(operation="count_tokens", input_tokens=5000, stop_reason=None, stream=False))
    assert attributes["gen_ai.operation.name"] == "count_tokens"
    assert not [name for name in attributes if name.startswith("gen_ai.usage.")]
    cancelled = span_attributes(end_of(status="cancelled", error_type="client_disconnected"))
    assert cancelled["error.type"] == "client_disconnected" and cancelled["gen_ai.usage.input_tokens"] == 350


@pytest.mark.parametrize(("option", "env", "expected"), [
    ("", {}, None),
    ("http://c:4318", {}, TraceConfig("http://c:4318/v1/traces", "http/protobuf", False)),
    ("http://c:4318/custom/path", {}, TraceConfig("http://c:4318/custom/path", "http/protobuf", False)),
    ("http://c:4317", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, TraceConfig("http://c:4317", "grpc", False)),
    ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, TraceConfig(None, "http/protobuf", False)),
    ("", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces",
          "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "True"}, TraceConfig(None, "http/protobuf", True)),
    ("http://c:4318", {"OTEL_SDK_DISABLED": "true"}, None),
    ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
])
def test_trace_config(option, env, expected):
    assert trace_config(option, env) == expected


@pytest.mark.parametrize(("option", "env"), [
    ("c:4318", {}), ("http://c:4318", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})])
def test_trace_config_refuses_what_it_cannot_do(option, env):
    with pytest.raises(ValueError):
        trace_config(option, env)


def test_end_of_a_record_unknown_to_the_writer_is_not_reported(tmp_path: Path):
    """Imported records are no calls of this proxy: no end."""
    store = Store(tmp_path)
    got = Collected()
    store.call_ends.subscribe(got)
    try:
        store.import_records([make_record(status="success")])
        store.put(make_record(status="success"))
        store.flush()
        time.sleep(0.1)
        assert len(got.ends) == 1
    finally:
        store.close()


def test_spans_over_grpc_reach_an_otlp_grpc_receiver():
    """The gRPC protocol's exporter, as the writer process runs it, against a real OTLP/gRPC server."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    from anthropic_proxy.telemetry.tracing import Tracer

    received = []

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # (the service's method name)
            received.extend(span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        config = trace_config("", {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                                   "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
        tracer = Tracer(TraceConfig(f"http://127.0.0.1:{port}", config.protocol, False), version="t")
        tracer.on_end(end_of(record_id="over-grpc"), make_record())
        tracer.shutdown(wait=True)  # (sends what is queued)
        [span] = received
        assert span.name == "chat claude-sonnet-4-5"
        assert {kv.key: kv.value.string_value for kv in span.attributes}["anthropic_proxy.record_id"] == "over-grpc"
    finally:
        server.stop(0)


def test_tracing_without_the_extra_says_how_to_get_it(tmp_path: Path, monkeypatch):
    from mitmproxy import exceptions
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.test import taddons

    from anthropic_proxy import runtime as runtime_module
    from anthropic_proxy.addons import all_addons

    addons = all_addons()
    with taddons.context(Proxyserver(), *addons) as tctx:
        tctx.configure(addons[0], state_dir=str(tmp_path))
        monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if the otel extra were missing
        try:
            with pytest.raises(exceptions.OptionsError, match=r"pip install 'anthropic-proxy\[otel\]'"):
                tctx.configure(addons[-1], otel_endpoint="http://127.0.0.1:4318")
            assert runtime_module.current_runtime().store.tracing is None
        finally:
            runtime_module.close_runtime()
