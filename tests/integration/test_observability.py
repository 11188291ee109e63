"""Prometheus metrics and OpenTelemetry spans from a real mitmdump running addons/proxy.py.

- `/metrics` is parsed with prometheus_client's own parser and compared with the sums over the proxy's records;
- a real Prometheus server (Debian's `prometheus` package, which bin/test installs) scrapes
  the proxy with the web token and its HTTP API returns the counter;
- an OTLP/HTTP receiver started here (`OtlpReceiver`, decoding with opentelemetry-proto) gets one span per call:
  a stream, a tool call, an error, an OpenRouter call; prompts and answers only where the capture switch is on;
- a collector that accepts connections and never answers changes nothing for the client.
"""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from fakes.anthropic_upstream import FINAL_OUTPUT_TOKENS, FINAL_TEXT, TOOL_INPUT, USAGE_START
from fakes.harness import by_tag, free_port
from fakes.openrouter_upstream import DEFAULT_KEY, FakeOpenRouter, load_recording, recorded_events
from fakes.server import FakeServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

CAPTURE = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # ms between two batches (5 s by default)
TOKEN = "metrics-test-token-0123456789"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
PROMETHEUS = shutil.which("prometheus")


# ---- an OTLP/HTTP receiver -----------------------------------------------------------------------------------
def any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def attributes_of(items: Any) -> dict[str, Any]:
    return {item.key: any_value(item.value) for item in items}


class OtlpReceiver(FakeServer):
    """Takes OTLP/HTTP protobuf exports at /v1/traces and keeps every span with its resource's attributes."""

    name = "OTLP receiver"

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[dict[str, Any], Span]] = []
        self.headers: dict[str, str] = {}  # each span's export request's x-team header (by span id)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path != "/v1/traces" or request.method != "POST":
            return web.Response(status=404)
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        with self._lock:
            for resource_spans in export.resource_spans:
                resource = attributes_of(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [(resource, span) for span in scope_spans.spans]
                    self.headers.update((span.span_id.hex(), request.headers.get("x-team", ""))
                                        for span in scope_spans.spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def span_of(self, record_id: str, timeout: float = 10) -> tuple[dict[str, Any], Span, dict[str, Any]]:
        """The (resource, span, span attributes) of a record's call."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [(resource, span) for resource, span in self.spans
                         if attributes_of(span.attributes).get("anthropic_proxy.record_id") == record_id]
            if found:
                assert len(found) == 1, f"{len(found)} spans for one call"
                resource, span = found[0]
                return resource, span, attributes_of(span.attributes)
            assert time.monotonic() < deadline, f"no span for record {record_id} after {timeout}s"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def proxy(proxy_factory, otlp):
    """Overrides conftest's: anthropic mode, spans to `otlp` with the prompts and answers (the capture switch on)."""
    return proxy_factory(options={"otel_endpoint": otlp.url}, env={**FAST_EXPORT, **CAPTURE})


@pytest.fixture(scope="module")
def fake_openrouter() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter() as fake:
        yield fake


@pytest.fixture(scope="module")
def openrouter_proxy(proxy_factory, otlp, fake_openrouter):
    """Openrouter mode, with a web token (so /metrics needs it too), spans to `otlp` without content, configured by
    the standard variables only (endpoint, headers, service name)."""
    p = proxy_factory(options={"openrouter_base_url": fake_openrouter.base_url, "proxy_mode": "openrouter",
                               "web_token": TOKEN},
                      env={**FAST_EXPORT, "OPENROUTER_API_KEY": DEFAULT_KEY, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
                           "OTEL_EXPORTER_OTLP_HEADERS": "x-team=ml%20research", "OTEL_SERVICE_NAME": "llm-gateway"},
                      wait_ready=False)
    p._http.headers["Authorization"] = f"Bearer {TOKEN}"
    p.wait_ready()
    return p


def timestamp_ns(record: dict[str, Any]) -> int:
    return round(datetime.fromisoformat(record["timestamp"]).timestamp() * 1e6) * 1000


def assert_timed_like(span: Span, record: dict[str, Any]) -> None:
    """The span starts with the request and ends when the answer's last byte went (the record's times, to 1 ms)."""
    assert abs(span.start_time_unix_nano - timestamp_ns(record)) < 1_000_000
    assert abs((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6 - record["metrics"]["durationMs"]) < 1


# ---- spans ---------------------------------------------------------------------------------------------------
def test_stream_span_follows_the_genai_conventions(client, proxy, otlp, test_tag):
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=300, extra_body={"temperature": 0.5},
                                messages=[{"role": "user", "content": "How are you?"}],
                                system="Be brief.", extra_headers={"traceparent": traceparent,
                                                                    "x-claude-code-session-id": "session-42"}) as s:
        assert "".join(s.text_stream) == FINAL_TEXT
    record = proxy.wait_record(by_tag(test_tag))
    resource, span, attributes = otlp.span_of(record["id"])

    assert resource["service.name"] == "anthropic-proxy"
    assert span.name == "chat claude-sonnet-4-5" and span.kind == Span.SPAN_KIND_CLIENT
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID  # the client's trace
    assert span.status.code != Status.STATUS_CODE_ERROR
    assert_timed_like(span, record)
    cache_read, cache_write = USAGE_START["cache_read_input_tokens"], USAGE_START["cache_creation_input_tokens"]
    expected = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.response.model": record["message"]["model"],
        "gen_ai.response.id": record["message"]["id"], "gen_ai.request.max_tokens": 300,
        "gen_ai.request.temperature": 0.5, "gen_ai.request.stream": True,
        "gen_ai.usage.input_tokens": USAGE_START["input_tokens"] + cache_read + cache_write,
        "gen_ai.usage.output_tokens": FINAL_OUTPUT_TOKENS,
        "gen_ai.usage.cache_read.input_tokens": cache_read, "gen_ai.usage.cache_creation.input_tokens": cache_write,
        "gen_ai.response.finish_reasons": ["end_turn"], "session.id": "session-42",
        "anthropic_proxy.cost_usd": record["costUsd"],
    }
    assert {name: attributes.get(name) for name in expected} == expected
    assert record["costUsd"] > 0 and "error.type" not in attributes
    # The capture switch is on for this proxy: the prompt and the answer, in the conventions' shapes.
    assert json.loads(attributes["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be brief."}]
    assert json.loads(attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "How are you?"}]}]
    assert json.loads(attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": FINAL_TEXT}], "finish_reason": "end_turn"}]


def test_tool_call_span(client, proxy, otlp, test_tag):
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=2000, messages=[
            {"role": "user", "content": "Weather in Paris?"}], extra_headers={"x-fake-scenario": "stream_tool"}) as s:
        message = s.get_final_message()
    assert message.stop_reason == "tool_use"
    record = proxy.wait_record(by_tag(test_tag))
    _, span, attributes = otlp.span_of(record["id"])
    assert attributes["gen_ai.response.finish_reasons"] == ["tool_use"]
    assert attributes["gen_ai.usage.output_tokens"] == record["usage"]["outputTokens"] > 0
    parts = json.loads(attributes["gen_ai.output.messages"])[0]["parts"]
    calls = [part for part in parts if part["type"] == "tool_call"]
    assert [(call["name"], call["arguments"]) for call in calls] == [
        (block["name"], TOOL_INPUT) for block in record["message"]["content"] if block["type"] == "tool_use"]
    assert [part["type"] for part in parts] == ["reasoning", "text", "tool_call"]
    assert_timed_like(span, record)


def test_error_span(client, proxy, otlp, test_tag):
    import anthropic

    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                               extra_headers={"x-fake-scenario": "overloaded"})
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "error"
    _, span, attributes = otlp.span_of(record["id"])
    assert span.status.code == Status.STATUS_CODE_ERROR and span.status.message == "overloaded_error"
    assert attributes["error.type"] == "overloaded_error" and attributes["gen_ai.request.stream"] is False
    assert "gen_ai.usage.input_tokens" not in attributes and "gen_ai.output.messages" not in attributes


def test_openrouter_span_has_no_content_without_the_switch(openrouter_proxy, otlp, make_client, test_tag):
    name = "anthropic/simple_streaming.0"
    client = make_client(base_url=openrouter_proxy.url)
    with client.messages.stream(model=f"fake/{name}", max_tokens=400, metadata={"user_id": test_tag},
                                messages=[{"role": "user", "content": "Say hi in Portuguese"}]) as s:
        s.get_final_message()
    record = openrouter_proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "success" and record["provider"] == "openrouter"
    resource, span, attributes = otlp.span_of(record["id"])
    assert resource["service.name"] == "llm-gateway" and otlp.headers[span.span_id.hex()] == "ml research"
    usage = [e for e in recorded_events(load_recording(name, stream=True)) if isinstance(e, dict) and e.get("usage")]
    prompt_tokens = usage[-1]["usage"]["prompt_tokens"]
    assert attributes["gen_ai.provider.name"] == "openrouter"
    assert attributes["gen_ai.request.model"] == record["upstreamModel"] == f"fake/{name}"
    assert attributes["gen_ai.usage.input_tokens"] == prompt_tokens  # OpenRouter's prompt count includes the cache
    assert attributes["gen_ai.usage.output_tokens"] == record["usage"]["outputTokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert not {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions"} & set(attributes)
    assert_timed_like(span, record)


# ---- /metrics ------------------------------------------------------------------------------------------------
def scrape(proxy, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(proxy.url + "/metrics", headers=headers, trust_env=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def sums_of(records: list[dict[str, Any]]) -> dict[str, dict[tuple[str, ...], float]]:
    """What the counters must say, worked out from the records."""
    sums: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
    for r in records:
        model = r["upstreamModel"] or r["model"]
        operation = "count_tokens" if "count_tokens" in r["request"]["path"] else "chat"
        key = (r["provider"], model)
        sums["calls"][(*key, operation, r["status"], str(r["stream"]).lower())] += 1
        sums["duration_count"][(*key, operation)] += 1
        sums["duration_sum"][(*key, operation)] += r["metrics"]["durationMs"] / 1000
        if operation == "chat":
            for kind, field in (("input", "inputTokens"), ("output", "outputTokens"),
                                ("cache_read", "cacheReadInputTokens"), ("cache_creation", "cacheCreationInputTokens")):
                sums["tokens"][(*key, kind)] += r["usage"][field]
        if r["costUsd"]:
            sums["cost"][key] += r["costUsd"]
    return sums


def counters_of(samples: dict) -> dict[str, dict[tuple[str, ...], float]]:
    found: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
    for (name, labels), value in samples.items():
        label = dict(labels)
        key = (label.get("provider"), label.get("model"))
        if name == "anthropic_proxy_calls_total":
            found["calls"][(*key, label["operation"], label["status"], label["stream"])] = value
        elif name == "anthropic_proxy_tokens_total":
            found["tokens"][(*key, label["type"])] = value
        elif name == "anthropic_proxy_cost_usd_total":
            found["cost"][key] = value
        elif name == "anthropic_proxy_call_duration_seconds_count":
            found["duration_count"][(*key, label["operation"])] = value
        elif name == "anthropic_proxy_call_duration_seconds_sum":
            found["duration_sum"][(*key, label["operation"])] = value
    return found


def test_metrics_equal_the_records_sums(client, proxy, test_tag):
    import anthropic

    client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    client.messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}])
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=20, messages=[
            {"role": "user", "content": "hi"}]) as s:
        s.until_done()
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": "x"}],
                               extra_headers={"x-fake-scenario": "rate_limit"})
    proxy.wait_records(by_tag(test_tag), count=4)
    deadline = time.monotonic() + 10
    while True:  # (the counters follow the writer's report: a moment after the record is readable)
        records = proxy.records(limit=500)
        expected, samples = sums_of(records), scrape(proxy)
        found = counters_of(samples)
        tokens_ok = all(found["tokens"].get(k) == v for k, v in expected["tokens"].items())
        if (found["calls"] == expected["calls"] and tokens_ok) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert found["calls"] == expected["calls"]
    assert found["duration_count"] == expected["duration_count"]
    for kind in ("tokens", "cost", "duration_sum"):
        assert set(expected[kind]) <= set(found[kind]), kind
        for key, value in expected[kind].items():
            assert found[kind][key] == pytest.approx(value, rel=1e-6, abs=1e-3), (kind, key)
    assert expected["tokens"][("anthropic", "claude-haiku-4-5", "cache_read")] > 0
    assert any(key[3] == "error" for key in found["calls"]) and any(key[2] == "count_tokens" for key in found["calls"])
    assert samples[("anthropic_proxy_calls_in_flight", ())] == 0
    assert samples[("anthropic_proxy_store_degraded", ())] == 0
    assert ("anthropic_proxy_store_queue_records", ()) in samples
    assert ("anthropic_proxy_store_write_errors", ()) in samples
    ttfb = [value for (name, labels), value in samples.items()
            if name == "anthropic_proxy_time_to_first_byte_seconds_bucket" and dict(labels)["le"] == "600.0"]
    assert sum(ttfb) == len(records)


def test_metrics_need_the_token_where_the_api_does(openrouter_proxy):
    assert httpx.get(openrouter_proxy.url + "/metrics", trust_env=False).status_code == 401
    assert httpx.get(openrouter_proxy.url + "/metrics", headers={"Authorization": "Bearer wrong"},
                     trust_env=False).status_code == 401
    assert ("anthropic_proxy_calls_in_flight", ()) in scrape(openrouter_proxy, Authorization=f"Bearer {TOKEN}")


# ---- a real Prometheus server --------------------------------------------------------------------------------
def test_prometheus_scrapes_the_proxy(openrouter_proxy, make_client, tmp_path, test_tag):
    assert PROMETHEUS is not None, "Debian's prometheus package is needed: bin/test installs it"
    client = make_client(base_url=openrouter_proxy.url)
    for _ in range(2):
        client.messages.create(model="fake/anthropic/simple.0", max_tokens=50, metadata={"user_id": test_tag},
                               messages=[{"role": "user", "content": "hi"}])
    calls = len(openrouter_proxy.wait_records(by_tag(test_tag), count=2))
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: anthropic-proxy\n"
        "    authorization: {credentials: " + TOKEN + "}\n"
        "    static_configs: [{targets: ['127.0.0.1:" + str(openrouter_proxy.port) + "']}]\n")
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                               f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        query = 'sum(anthropic_proxy_calls_total{provider="openrouter",model="fake/anthropic/simple.0"})'
        deadline, value = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, trust_env=False)
                result = answer.json()["data"]["result"] if answer.status_code == 200 else []
            except httpx.HTTPError:
                result = []
            if result and (value := float(result[0]["value"][1])) == calls:
                break
            time.sleep(0.5)
        assert value == calls, (tmp_path / "prometheus.log").read_text()[-3000:]
        targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", trust_env=False).json()["data"]
        assert [t["health"] for t in targets["activeTargets"]] == ["up"]
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def test_shipped_observability_files_are_valid(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool is not None, "Debian's prometheus package (promtool) is needed: bin/test installs it"
    deploy = Path(__file__).resolve().parents[2] / "deploy" / "observability"
    work = tmp_path / "prometheus"
    shutil.copytree(deploy / "prometheus", work)
    (work / "web_token").write_text(TOKEN)  # (the compose file mounts the token there)
    text = (work / "prometheus.yml").read_text().replace("/run/secrets/web_token", str(work / "web_token"))
    (work / "prometheus.yml").write_text(text)
    checked = subprocess.run([promtool, "check", "config", str(work / "prometheus.yml")], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    dashboard = json.loads((deploy / "grafana" / "dashboards" / "anthropic-proxy.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []))
    for name in ("anthropic_proxy_calls_total", "anthropic_proxy_tokens_total", "anthropic_proxy_cost_usd_total",
                 "anthropic_proxy_call_duration_seconds_bucket", "anthropic_proxy_time_to_first_byte_seconds_bucket",
                 "anthropic_proxy_calls_in_flight", "anthropic_proxy_store_queue_records"):
        assert name in exprs, f"the dashboard shows no {name}"
    yaml = YAML(typ="safe")
    for compose in ("docker-compose.metrics.yml", "docker-compose.traces.yml"):
        services = yaml.load((deploy / compose).read_text())["services"]
        assert services["anthropic-proxy"]["extends"] == {"file": "../docker-compose.yml", "service": "anthropic-proxy"}
        for service in services.values():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                assert not source.startswith(".") or (deploy / source).exists(), f"{compose}: {source} is missing"
    yaml.load((deploy / "otel-collector" / "config.yaml").read_text())


# ---- a collector that never answers ------------------------------------------------------------------------
def test_a_dead_collector_changes_nothing_for_the_client(start_proxy, make_client, test_tag):
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # connections are accepted by the kernel; nothing ever reads or answers them
    try:
        proxy = start_proxy(options={"otel_endpoint": f"http://127.0.0.1:{hung.getsockname()[1]}"},
                            env={**FAST_EXPORT, "OTEL_EXPORTER_OTLP_TIMEOUT": "30"})
        client = make_client(base_url=proxy.url)
        for _ in range(3):
            with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                                        messages=[{"role": "user", "content": "hi"}]) as s:
                assert "".join(s.text_stream) == FINAL_TEXT
        records = proxy.wait_records(by_tag(test_tag), count=3)
        assert [r["status"] for r in records] == ["success"] * 3
        assert all(r["usage"]["outputTokens"] == FINAL_OUTPUT_TOKENS for r in records)
        assert proxy.health()["status"] == "ok"
        deadline = time.monotonic() + 10
        while scrape(proxy).get(("anthropic_proxy_calls_total", (
                ("model", "claude-sonnet-4-5"), ("operation", "chat"), ("provider", "anthropic"),
                ("status", "success"), ("stream", "true")))) != 3:
            assert time.monotonic() < deadline, "the calls were not counted"
            time.sleep(0.1)
        # The exporter is stuck on the collector (its timeout is 30 s): stopping still takes no longer than the
        # tracer's shutdown bound, and ends cleanly (ProxyProcess.stop kills after 10 s).
        assert proxy.stop() == 0, proxy.logs()
    finally:
        hung.close()
