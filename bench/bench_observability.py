"""What metrics and traces cost per call, and what the design saves (see anthropic_proxy/record/call_end.py).

Every figure is CPU time per call on the proxy's side (its threads share the event loop's GIL) unless it says
"writer" (the store's writer process, on another core):

1. writer: making the call's `CallEnd` from its final record (`call_end`);
2. proxy: taking it from the writer's report (unpickling it with the report, `_first_reports`);
3. proxy: counting it in the Prometheus registry (`ProxyMetrics.count`): the per-call counting cost (target < 20 µs);
4. writer: making its span (`Tracer.on_end`, the SDK's BatchSpanProcessor queueing it) and exporting it (the
   SDK's OTLP protobuf encoding, in its own thread; the network is not measured): what the proxy would pay if the
   spans were made there;
5. the alternative not taken, settling every call in the proxy: describing a Claude Code call (parsing its request
   body, 126 KB) and reading a 100-event stream as the exchange does.

    .venv/bin/python bench/bench_observability.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "tests"))

from fakes.anthropic_upstream import sse  # noqa: E402

from anthropic_proxy.record.call import describe_call  # noqa: E402
from anthropic_proxy.record.call_end import CallEnd, call_end  # noqa: E402
from anthropic_proxy.record.model import HttpRequestPart, Metrics, Record, Usage  # noqa: E402
from anthropic_proxy.record.stream_log import StreamReader  # noqa: E402
from anthropic_proxy.store.writer import Report, WriterProcess, _Put  # noqa: E402
from anthropic_proxy.telemetry.metrics import ProxyMetrics, ProxyState  # noqa: E402

CLAUDE_CODE_REQUEST = ROOT / "tests" / "data" / "claude_code" / "claude_code_request_03_haiku_thinking_roundtrip.json"
MODELS = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]


def per_call(label: str, calls: int, run: Callable[[], None], repeat: int = 5) -> float:
    best = min(_timed(run) for _ in range(repeat)) / calls * 1e6
    print(f"{label:<78} {best:8.2f} µs")
    return best


def _timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def final_record(n: int, body: dict) -> Record:
    record = Record(request=HttpRequestPart(method="POST", path="/v1/messages", headers={"traceparent": "00-" + "a" * 32
                                                                                       + "-" + "b" * 16 + "-01"},
                                            body=body),
                    status="success", model=MODELS[n % 3], stream=True, stop_reason="end_turn", session_id="s",
                    usage=Usage(input_tokens=10, output_tokens=300, cache_read_input_tokens=50_000,
                                cache_creation_input_tokens=800), cost_usd=0.0123,
                    metrics=Metrics(duration_ms=4200.0 + n % 1000, ttfb_ms=900.0))
    record.message = {"id": f"msg_{n}", "model": record.model + "-20250929", "usage": {}}
    return record


def stream_log() -> list[tuple[float, bytes]]:
    events = [sse("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}})]
    events += [sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": f"word {i} "}}) for i in range(96)]
    events += [sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
               sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                     "usage": {"output_tokens": 300}}),
               sse("message_stop", {"type": "message_stop"})]
    return [(float(i), event) for i, event in enumerate(events)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    calls = parser.parse_args().calls
    request = json.loads(CLAUDE_CODE_REQUEST.read_text())["body"]
    request_bytes = json.dumps(request).encode()
    small_body = {"model": "claude-sonnet-4-5", "max_tokens": 32000, "temperature": 1, "messages": []}
    records = [final_record(n, small_body) for n in range(calls)]
    print(f"{calls} calls; Python {sys.version.split()[0]}; best of 5, per call\n")

    ends: list[CallEnd] = []
    per_call("writer: CallEnd of a final record (call_end)", calls,
             lambda: ends.__setitem__(slice(None), [call_end(r) for r in records]))

    reports = [pickle.dumps(Report(ends=ends[i:i + 50]), pickle.HIGHEST_PROTOCOL) for i in range(0, calls, 50)]
    taking = per_call("proxy: unpickle the writer's reports (50 ends each), ends only", calls,
             lambda: [pickle.loads(data) for data in reports])

    writer = WriterProcess.__new__(WriterProcess)  # only its bookkeeping: no process started

    def first_reports() -> None:
        writer.queued = {r.id: _Put(1, r, None) for r in records}
        for i in range(0, calls, 50):
            writer._first_reports(ends[i:i + 50])

    taking += per_call("proxy: drop ends reported before (_first_reports, incl. building `queued`)", calls,
                       first_reports)

    state = ProxyState(0, 0, 0, 0, False, 0, 0)
    metrics = ProxyMetrics(lambda: state, "bench")
    counting = per_call("proxy: count a call in Prometheus (ProxyMetrics.count)", calls,
                        lambda: [metrics.count(end) for end in ends])
    per_call("  (the same with prometheus-client's Counter/Histogram children, for comparison)", calls,
             library_counting(ends))
    per_call("proxy: one scrape of /metrics (generate_latest), per scrape", 1, metrics.exposition)

    try:
        tracer_figures(ends, records)
    except ImportError:
        print("(the otel extra is not installed: no span figures)")

    print("\nthe alternative not taken: settling every call in the proxy")
    describe_calls = max(1, calls // 20)
    bare = [Record(request=HttpRequestPart(method="POST", path="/v1/messages", headers={}))
            for _ in range(describe_calls)]
    per_call(f"proxy: describe a Claude Code call ({len(request_bytes) // 1024} KB body: model, session, params)",
             describe_calls, lambda: [describe_call(r, request_bytes) for r in bare])
    log = stream_log()

    def reads() -> None:
        for _ in range(describe_calls):
            StreamReader(keep=False).read(log)

    per_call("proxy: read a 100-event stream's end (the exchange's reading: no chunks kept)", describe_calls, reads)
    print(f"\nper-call counting cost in the proxy (taking the end + counting it): {taking + counting:.2f} µs "
          "(target < 20 µs)")


def library_counting(ends: list[CallEnd]) -> Callable[[], None]:
    """ProxyMetrics.count's eight updates done with prometheus-client's own metric children (looked up once)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from anthropic_proxy.telemetry.metrics import LATENCY_BUCKETS

    registry = CollectorRegistry()
    calls = Counter("calls", "", ["status", "stream"], registry=registry).labels("success", "true")
    tokens = [Counter(f"tokens_{kind}", "", registry=registry) for kind in range(4)]
    cost = Counter("cost", "", registry=registry)
    duration, ttfb = (Histogram(name, "", buckets=LATENCY_BUCKETS, registry=registry) for name in ("d", "t"))

    def count() -> None:
        for end in ends:
            calls.inc()
            for counter, value in zip(tokens, (end.input_tokens, end.output_tokens, end.cache_read_tokens,
                                               end.cache_creation_tokens), strict=True):
                counter.inc(value)
            cost.inc(end.cost_usd)
            duration.observe(end.duration_ms / 1000)
            ttfb.observe(end.ttfb_ms / 1000)

    return count


def tracer_figures(ends: list[CallEnd], records: list[Record]) -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from anthropic_proxy.telemetry.tracing import TraceConfig, Tracer

    class Encoding(SpanExporter):
        """Encodes each batch as the OTLP exporter does, and sends nothing."""

        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans) -> SpanExportResult:
            encode_spans(spans).SerializePartialToString()
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    tracer = Tracer(TraceConfig("http://127.0.0.1:9/v1/traces", "http/protobuf", False), version="bench")
    exporter = Encoding()
    tracer._processor._batch_processor._exporter = exporter  # (the SDK's own processor, measured without a network)
    spans = min(len(ends), 2048)  # (the SDK's queue holds 2048 by default; more would be dropped, not measured)
    per_call("writer: make a call's span (Tracer.on_end, queued for export)", spans,
             lambda: [tracer.on_end(end, record) for end, record in zip(ends[:spans], records, strict=False)],
             repeat=1)
    start = time.perf_counter()
    tracer._processor.force_flush()
    print(f"{'writer (exporter thread): encode its span as OTLP protobuf':<78} "
          f"{(time.perf_counter() - start) / max(1, exporter.spans) * 1e6:8.2f} µs")
    tracer.shutdown(wait=True)


if __name__ == "__main__":
    main()
