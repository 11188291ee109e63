"""OpenTelemetry traces: one span per API call, following the GenAI semantic conventions (optional extra `otel`).

Spans are made in the store's writer process (store/writer.py), from each final record and its `CallEnd`
(record/call_end.py), where the call's outcome, usage and cost are read anyway: making and encoding a span takes
the OpenTelemetry SDK far more CPU than the proxy spends on a call (bench/RESULTS.md), which the proxy's event
loop would otherwise pay in its own process (GIL). A span is timed from the record, not from when it is made: it
starts when the request's first byte arrived and ends when the answer's last byte left (`start_time`/`end_time`
given explicitly). A client that sends a W3C `traceparent` gets the span as a child of its own trace.

Export is the SDK's: a `BatchSpanProcessor` queues spans and a thread of its own sends them with the OTLP exporter
(HTTP/protobuf by default, gRPC when `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL=grpc`), configured by the standard
`OTEL_*` variables (the writer process inherits the proxy's environment). A collector that is down or slow costs
the calls nothing: the queue is bounded (the SDK drops spans beyond it), the exporter retries in its own thread,
and shutdown waits at most `SHUTDOWN_SECONDS`. A writer process that dies is replaced and takes the records not
yet written again: a call whose span the dead one had made gets a second span then (a rare double, never a loss).

Prompt and answer content go into a span only when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` is `true`
(the conventions' switch).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from anthropic_proxy.record.call_end import CallEnd
from anthropic_proxy.record.model import Record

logger = logging.getLogger("anthropic_proxy.tracing")

_EXPORTERS = {"http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
              "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"}
PROTOCOLS = tuple(_EXPORTERS)
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_CAPTURE_VALUES = frozenset({"true", "span_only", "span_and_event"})
SERVICE_NAME = "anthropic-proxy"
SHUTDOWN_SECONDS = 3.0
TRACES_PATH = "/v1/traces"


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """Where spans go. `endpoint` None: the exporter reads `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` itself."""

    endpoint: str | None
    protocol: str
    capture_content: bool


def trace_config(option_endpoint: str, env: Mapping[str, str]) -> TraceConfig | None:
    """The tracing wanted by the `otel_endpoint` option and the standard OpenTelemetry variables in `env`, or None
    (no endpoint anywhere, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`). ValueError when they are wrong.

    `option_endpoint` is a base URL like `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://collector:4318`): over HTTP the
    spans go to its `/v1/traces`, unless it already names a path."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" \
            or env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol not in PROTOCOLS:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be one of {', '.join(PROTOCOLS)} (got {protocol!r})")
    endpoint: str | None = option_endpoint.strip()
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"otel_endpoint must be an http(s) URL such as http://127.0.0.1:4318 (got {endpoint!r})")
        if protocol == "http/protobuf" and parts.path in ("", "/"):
            endpoint = endpoint.rstrip("/") + TRACES_PATH
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = None
    else:
        return None
    capture = env.get(CAPTURE_CONTENT_ENV, "").strip().lower() in _CAPTURE_VALUES
    return TraceConfig(endpoint=endpoint, protocol=protocol, capture_content=capture)


def span_name(end: CallEnd) -> str:
    """`{gen_ai.operation.name} {gen_ai.request.model}`, as the conventions name a client span."""
    model = end.served_model
    return f"{end.operation} {model}" if model else end.operation


def span_attributes(end: CallEnd) -> dict[str, Any]:
    """The span's attributes (GenAI semantic conventions, plus the proxy's own under `anthropic_proxy.`).

    `gen_ai.request.model` is the model the provider was asked for (OpenRouter's id in openrouter mode; the
    client's own name is `anthropic_proxy.client_model`). `gen_ai.usage.input_tokens` counts every input token,
    the cache reads and writes included, as the conventions ask; the cache counts are also given apart."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": end.operation,
        "gen_ai.provider.name": end.provider,
        "gen_ai.system": end.provider,  # (the conventions' older name, which some backends still read)
        "gen_ai.request.stream": end.stream,
        "anthropic_proxy.record_id": end.record_id,
        "anthropic_proxy.status": end.status,
    }
    optional = {
        "gen_ai.request.model": end.served_model,
        "anthropic_proxy.client_model": end.model,
        "gen_ai.response.model": end.response_model,
        "gen_ai.response.id": end.response_id,
        "gen_ai.request.max_tokens": end.max_tokens,
        "gen_ai.request.temperature": end.temperature,
        "gen_ai.request.top_p": end.top_p,
        "gen_ai.request.top_k": end.top_k,
        "session.id": end.session_id,
        "gen_ai.conversation.id": end.session_id,
        "anthropic_proxy.cost_usd": end.cost_usd,
        "anthropic_proxy.ttfb_ms": end.ttfb_ms,
    }
    attributes.update((name, value) for name, value in optional.items() if value is not None)
    if end.stop_reason:
        attributes["gen_ai.response.finish_reasons"] = [end.stop_reason]
    if end.operation == "chat" and (end.status == "success" or end.input_tokens or end.output_tokens):
        attributes["gen_ai.usage.input_tokens"] = end.input_tokens + end.cache_read_tokens + end.cache_creation_tokens
        attributes["gen_ai.usage.output_tokens"] = end.output_tokens
        attributes["gen_ai.usage.cache_read.input_tokens"] = end.cache_read_tokens
        attributes["gen_ai.usage.cache_creation.input_tokens"] = end.cache_creation_tokens
    if end.status != "success":
        attributes["error.type"] = end.error_type or end.status
    return attributes


def content_attributes(record: Record) -> dict[str, str]:
    """The call's system instructions, input messages and answer, in the conventions' JSON shapes (opt-in only)."""
    body = record.request.body if isinstance(record.request.body, dict) else {}
    attributes: dict[str, str] = {}
    if system := body.get("system"):
        attributes["gen_ai.system_instructions"] = _json(_parts(system))
    if isinstance(messages := body.get("messages"), list):
        attributes["gen_ai.input.messages"] = _json([
            {"role": message.get("role"), "parts": _parts(message.get("content"))}
            for message in messages if isinstance(message, dict)])
    if isinstance(answer := record.message, dict) and answer.get("content") is not None:
        output = {"role": answer.get("role") or "assistant", "parts": _parts(answer.get("content"))}
        if record.stop_reason:
            output["finish_reason"] = record.stop_reason
        attributes["gen_ai.output.messages"] = _json([output])
    return attributes


def _parts(content: Any) -> list[dict[str, Any]]:
    """Anthropic content (a string or blocks) as the conventions' message parts."""
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "content": block.get("text")})
        elif kind == "thinking":
            parts.append({"type": "reasoning", "content": block.get("thinking")})
        elif kind in ("tool_use", "server_tool_use"):
            parts.append({"type": "tool_call", "id": block.get("id"), "name": block.get("name"),
                          "arguments": block.get("input")})
        elif kind == "tool_result":
            parts.append({"type": "tool_call_response", "id": block.get("tool_use_id"),
                          "response": block.get("content")})
        else:  # images, documents, redacted thinking: named, not copied (they can be megabytes)
            parts.append({"type": kind})
    return parts


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def check_installed(config: TraceConfig) -> None:
    """ImportError unless the SDK and the exporter `config` needs can be imported (the `otel` extra)."""
    importlib.import_module("opentelemetry.sdk.trace")
    importlib.import_module(_EXPORTERS[config.protocol])


class Tracer:
    """Makes and exports the spans, in the store's writer process (`on_end` never blocks)."""

    def __init__(self, config: TraceConfig, *, version: str) -> None:
        # Imported here: the `otel` extra is optional (ImportError tells the caller it is missing).
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        exporter_class = importlib.import_module(_EXPORTERS[config.protocol]).OTLPSpanExporter
        self.config = config
        resource = {"service.version": version}
        if not _names_service(os.environ):
            resource["service.name"] = SERVICE_NAME
        # (shut down by `shutdown`, bounded: the SDK's own exit hook would wait for a dead collector's timeout)
        self._provider = TracerProvider(resource=Resource.create(resource), shutdown_on_exit=False)
        exporter = exporter_class(endpoint=config.endpoint) if config.endpoint else exporter_class()
        self._processor = BatchSpanProcessor(exporter)
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer("anthropic_proxy", version)
        self._propagator = TraceContextTextMapPropagator()
        self._client_kind = trace.SpanKind.CLIENT
        self._status, self._error_code = trace.Status, trace.StatusCode.ERROR

    def on_end(self, end: CallEnd, record: Record) -> None:
        """The span of a call that has ended (`record`: its final record, read for content if that is captured)."""
        attributes = span_attributes(end)
        if self.config.capture_content:
            attributes.update(content_attributes(record))
        parent = None
        if end.traceparent:
            carrier = {"traceparent": end.traceparent, "tracestate": end.tracestate or ""}
            parent = self._propagator.extract(carrier)
        start = int(end.started * 1e9)
        span = self._tracer.start_span(span_name(end), context=parent, kind=self._client_kind, attributes=attributes,
                                       start_time=start)
        if end.status != "success":
            span.set_status(self._status(self._error_code, end.error_type or end.status))
        span.end(end_time=start + int((end.duration_ms or 0) * 1e6))

    def shutdown(self, *, wait: bool) -> None:
        """Send what is queued and stop, in the background; with `wait`, wait for that at most SHUTDOWN_SECONDS.

        The SDK's shutdown exports in the calling thread and waits for the exporter's own timeout (10 s by default,
        and retries) when the collector does not answer: a stop must not wait that long. What is not sent by then
        is dropped (the SDK's threads are daemons)."""
        stopping = threading.Thread(target=self._provider.shutdown, name="anthropic-proxy-trace-shutdown", daemon=True)
        stopping.start()
        if wait:
            stopping.join(SHUTDOWN_SECONDS)
            if stopping.is_alive():
                logger.warning("OpenTelemetry: the collector did not take the last spans within %.0f s; they are "
                               "dropped", SHUTDOWN_SECONDS)


def _names_service(env: Mapping[str, str]) -> bool:
    """Whether the environment names the service (`OTEL_SERVICE_NAME`, or `service.name=` in the resource)."""
    return bool(env.get("OTEL_SERVICE_NAME")) or any(
        item.split("=", 1)[0].strip() == "service.name" for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","))
