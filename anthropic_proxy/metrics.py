"""Prometheus metrics of the proxy, served as `GET /metrics` by the web app (prometheus-client's exposition).

Per call, counted from its `CallEnd` (call_end.py) when the store's writer has read the call's outcome: off the
client's path, in the store's receiver thread, for every call, watched or not. Counting one call is a handful of
locked increments on label children cached per (provider, model, operation): a few µs
(bench/bench_observability.py). What the proxy holds right now (calls in flight, the store's queue and errors) is
read when Prometheus scrapes, so it costs the calls nothing.

Every metric lives in the runtime's own `CollectorRegistry`, not prometheus-client's global one: the runtime
outlives mitmproxy's reloads of the addon script, and a second registration in a global registry would fail.

Label values come from clients (the model a request names): past `MAX_MODELS` distinct (provider, model, operation)
series, a new model is counted as `other`, so a client cannot make the scrape grow without bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .call_end import CallEnd

# LLM calls last from a tenth of a second (count_tokens, a short answer) to many minutes (long thinking).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
MAX_MODELS = 200
OTHER_MODEL = "other"
UNKNOWN_MODEL = "unknown"
TOKEN_TYPES = ("input", "output", "cache_read", "cache_creation")


@dataclass(frozen=True, slots=True)
class ProxyState:
    """What the proxy holds at the moment of a scrape."""

    in_flight: int  # exchanges not yet ended
    store_queue: int  # records handed to the store, not yet written
    store_unsaved: int  # records the writer holds while the database refuses writes
    store_write_errors: int  # failed write attempts of the current writer process
    store_degraded: bool  # the last write failed
    store_lost: int  # records given up since start
    writer_restarts: int


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], ProxyState], version: str) -> None:
        self._state = state
        self._version = version

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        info = GaugeMetricFamily("anthropic_proxy_info", "The running anthropic-proxy (always 1).", labels=["version"])
        info.add_metric([self._version], 1)
        yield info
        for name, text, value in (
            ("anthropic_proxy_calls_in_flight", "API calls that have started and not yet ended.", state.in_flight),
            ("anthropic_proxy_store_queue_records", "Records handed to the store and not yet written.",
             state.store_queue),
            ("anthropic_proxy_store_unsaved_records", "Records the store's writer keeps in memory while the database "
             "refuses writes.", state.store_unsaved),
            ("anthropic_proxy_store_write_errors", "Failed write attempts of the store's current writer process.",
             state.store_write_errors),
            ("anthropic_proxy_store_degraded", "1 while the store's last write failed (disk full, database down).",
             int(state.store_degraded)),
        ):
            yield GaugeMetricFamily(name, text, value=value)
        yield CounterMetricFamily("anthropic_proxy_store_records_lost", "Records the store gave up on.",
                                  value=state.store_lost)
        yield CounterMetricFamily("anthropic_proxy_store_writer_restarts", "Times the store's writer process died "
                                  "and was replaced.", value=state.writer_restarts)


class ProxyMetrics:
    """The proxy's registry. `count` takes one ended call (thread-safe); `exposition` is the text a scrape gets."""

    def __init__(self, state: Callable[[], ProxyState], version: str) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        per_model = ["provider", "model", "operation"]
        self.calls = Counter("anthropic_proxy_calls", "API calls that ended, by outcome (success, error, cancelled).",
                             [*per_model, "status", "stream"], registry=registry)
        self.tokens = Counter("anthropic_proxy_tokens", "Tokens the API calls used, by type (input excludes the "
                              "cache reads and writes, as Anthropic counts it).", ["provider", "model", "type"],
                              registry=registry)
        self.cost = Counter("anthropic_proxy_cost_usd", "What the API calls cost, in US dollars (calls of unknown "
                            "price add nothing).", ["provider", "model"], registry=registry)
        self.duration = Histogram("anthropic_proxy_call_duration_seconds", "From an API call's first byte in to its "
                                  "answer's last byte out.", per_model, buckets=LATENCY_BUCKETS, registry=registry)
        self.ttfb = Histogram("anthropic_proxy_time_to_first_byte_seconds", "From an API call's first byte in to the "
                              "upstream's response headers.", per_model, buckets=LATENCY_BUCKETS, registry=registry)
        registry.register(_StateCollector(state, version))
        # (provider, model, operation) -> its label children; only the receiver thread counts, so no lock
        self._series: dict[tuple[str, str, str], _Series] = {}

    def count(self, end: CallEnd) -> None:
        series = self._series_of(end.provider, end.served_model or UNKNOWN_MODEL, end.operation)
        series.calls(end.status, end.stream).inc()
        if end.operation == "chat":  # count_tokens reports the size of a prompt, not tokens used
            series.input.inc(end.input_tokens)
            series.output.inc(end.output_tokens)
            series.cache_read.inc(end.cache_read_tokens)
            series.cache_creation.inc(end.cache_creation_tokens)
        if end.cost_usd:
            series.cost.inc(end.cost_usd)
        if end.duration_ms is not None:
            series.duration.observe(end.duration_ms / 1000)
        if end.ttfb_ms is not None:
            series.ttfb.observe(end.ttfb_ms / 1000)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _series_of(self, provider: str, model: str, operation: str) -> _Series:
        key = (provider, model, operation)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= MAX_MODELS and model != OTHER_MODEL:
                return self._series_of(provider, OTHER_MODEL, operation)
            series = self._series[key] = _Series(self, provider, model, operation)
        return series


class _Series:
    """The label children of one (provider, model, operation): looked up once, not per call."""

    __slots__ = ("_calls", "_key", "_parent", "cache_creation", "cache_read", "cost", "duration", "input", "output",
                 "ttfb")

    def __init__(self, metrics: ProxyMetrics, provider: str, model: str, operation: str) -> None:
        self._parent = metrics.calls
        self._key = (provider, model, operation)
        self._calls: dict[tuple[str, bool], Counter] = {}
        tokens = metrics.tokens
        self.input, self.output, self.cache_read, self.cache_creation = (
            tokens.labels(provider, model, kind) for kind in TOKEN_TYPES)
        self.cost = metrics.cost.labels(provider, model)
        self.duration = metrics.duration.labels(*self._key)
        self.ttfb = metrics.ttfb.labels(*self._key)

    def calls(self, status: str, stream: bool) -> Counter:
        child = self._calls.get((status, stream))
        if child is None:
            child = self._calls[status, stream] = self._parent.labels(*self._key, status, "true" if stream else "false")
        return child
