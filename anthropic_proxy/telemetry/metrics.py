"""Prometheus metrics of the proxy, served as `GET /metrics` by the web app (prometheus-client's exposition).

Per call, counted from its `CallEnd` (record/call_end.py) when the store's writer has read the call's outcome:
off the client's path, in the store's receiver thread, for every call, watched or not. The counts are kept in
plain numbers per (provider, model, operation) under one lock, and handed to prometheus-client as metric families
when Prometheus scrapes (a custom collector, prometheus-client's own exposition): prometheus-client's
`Counter`/`Histogram` children take a lock and Python checks per increment and a Python loop per histogram
observation, several times the cost of these plain updates (bench/RESULTS.md). What the proxy
holds right now (calls in flight, the store's queue and errors) is read at the scrape too, so it costs the calls
nothing.

Every metric lives in the runtime's own `CollectorRegistry`, not prometheus-client's global one: the runtime
outlives mitmproxy's reloads of the addon script, and a second registration in a global registry would fail.

Label values come from clients (the model a request names): past `MAX_MODELS` distinct (provider, model, operation)
series, a new model is counted as `other`, so a client cannot make the scrape grow without bound.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from anthropic_proxy.record.call_end import CallEnd

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
    cooldowns: int = 0  # failover targets skipped for now (a 429/529 with retry-after)



class _Histogram:
    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket (not cumulative), the last one +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(LATENCY_BUCKETS, value)] += 1  # (the first bound >= value: Prometheus's `le`)
        self.sum += value

    def exposed(self) -> tuple[list[tuple[str, float]], float]:
        cumulative, total = [], 0
        for bound, count in zip((*_BOUNDS, "+Inf"), self.buckets, strict=True):
            total += count
            cumulative.append((bound, total))
        return cumulative, self.sum


_BOUNDS = tuple(floatToGoString(bound) for bound in LATENCY_BUCKETS)


class _Series:
    """The counts of one (provider, model, operation)."""

    __slots__ = ("calls", "cost", "duration", "tokens", "ttfb")

    def __init__(self) -> None:
        self.calls: dict[tuple[str, bool], int] = {}  # by (status, stream)
        self.tokens = [0, 0, 0, 0]  # in TOKEN_TYPES' order
        self.cost = 0.0
        self.duration = _Histogram()
        self.ttfb = _Histogram()


class ProxyMetrics:
    """The proxy's registry. `count` takes one ended call (thread-safe); `exposition` is the text a scrape gets."""

    def __init__(self, state: Callable[[], ProxyState], version: str) -> None:
        self._state = state
        self._version = version
        self._series: dict[tuple[str, str, str], _Series] = {}  # by (provider, model, operation)
        self._failovers: dict[tuple[str, str, str], int] = {}  # tries given up, by (provider, model, status)
        self._lock = threading.Lock()  # counts change in the store's receiver thread, scrapes read on the event loop
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))

    def count(self, end: CallEnd) -> None:
        with self._lock:
            series = self._series_of(end.provider, end.served_model or UNKNOWN_MODEL, end.operation)
            key = (end.status, end.stream)
            series.calls[key] = series.calls.get(key, 0) + 1
            if end.operation == "chat":  # count_tokens reports the size of a prompt, not tokens used
                tokens = series.tokens
                tokens[0] += end.input_tokens
                tokens[1] += end.output_tokens
                tokens[2] += end.cache_read_tokens
                tokens[3] += end.cache_creation_tokens
            if end.cost_usd:
                series.cost += end.cost_usd
            if end.duration_ms is not None:
                series.duration.observe(end.duration_ms / 1000)
            if end.ttfb_ms is not None:
                series.ttfb.observe(end.ttfb_ms / 1000)
            for provider, model, status in end.failovers:
                key = (provider, model or UNKNOWN_MODEL, str(status) if status is not None else "no_answer")
                if key not in self._failovers and len(self._failovers) >= MAX_MODELS:  # (bounded, as the calls)
                    key = (provider, OTHER_MODEL, key[2])
                self._failovers[key] = self._failovers.get(key, 0) + 1

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _series_of(self, provider: str, model: str, operation: str) -> _Series:
        key = (provider, model, operation)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= MAX_MODELS and model != OTHER_MODEL:
                return self._series_of(provider, OTHER_MODEL, operation)
            series = self._series[key] = _Series()
        return series

    def families(self) -> Iterator[Metric]:
        """The per-call metrics, as they stand."""
        per_model = ["provider", "model", "operation"]
        calls = CounterMetricFamily("anthropic_proxy_calls", "API calls that ended, by outcome (success, error, "
                                    "cancelled).", labels=[*per_model, "status", "stream"])
        tokens = CounterMetricFamily("anthropic_proxy_tokens", "Tokens the API calls used, by type (input excludes "
                                     "the cache reads and writes, as Anthropic counts it).",
                                     labels=["provider", "model", "type"])
        cost = CounterMetricFamily("anthropic_proxy_cost_usd", "What the API calls cost, in US dollars (calls of "
                                   "unknown price add nothing).", labels=["provider", "model"])
        duration = HistogramMetricFamily("anthropic_proxy_call_duration_seconds", "From an API call's first byte in "
                                         "to its answer's last byte out.", labels=per_model)
        ttfb = HistogramMetricFamily("anthropic_proxy_time_to_first_byte_seconds", "From an API call's first byte in "
                                     "to the upstream's response headers.", labels=per_model)
        failovers = CounterMetricFamily("anthropic_proxy_failovers", "Tries given up for the next target before "
                                        "the client got a byte (HTTP status, or no_answer), by the target tried.",
                                        labels=["provider", "model", "status"])
        by_model: dict[tuple[str, str], tuple[list[int], list[float]]] = {}  # tokens, [cost] (over operations)
        with self._lock:
            for labels, count in self._failovers.items():
                failovers.add_metric(list(labels), count)
            for (provider, model, operation), series in self._series.items():
                for (status, stream), count in series.calls.items():
                    calls.add_metric([provider, model, operation, status, "true" if stream else "false"], count)
                duration.add_metric([provider, model, operation], *series.duration.exposed())
                ttfb.add_metric([provider, model, operation], *series.ttfb.exposed())
                summed, spent = by_model.setdefault((provider, model), ([0, 0, 0, 0], [0.0]))
                for index, count in enumerate(series.tokens):
                    summed[index] += count
                spent[0] += series.cost
        for (provider, model), (summed, spent) in by_model.items():
            for kind, count in zip(TOKEN_TYPES, summed, strict=True):
                tokens.add_metric([provider, model, kind], count)
            cost.add_metric([provider, model], spent[0])
        yield from (calls, tokens, cost, duration, ttfb, failovers)

    def state_families(self) -> Iterator[Metric]:
        """What the proxy holds at this moment."""
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
            ("anthropic_proxy_cooldowns", "Failover targets skipped for now: they answered 429/529 with a "
             "retry-after that has not passed.", state.cooldowns),
        ):
            yield GaugeMetricFamily(name, text, value=value)
        yield CounterMetricFamily("anthropic_proxy_store_records_lost", "Records the store gave up on.",
                                  value=state.store_lost)
        yield CounterMetricFamily("anthropic_proxy_store_writer_restarts", "Times the store's writer process died "
                                  "and was replaced.", value=state.writer_restarts)


class _Collector(Collector):
    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics.families()
        yield from self._metrics.state_families()
