"""A call's final facts (`CallEnd`) and how they reach the proxy: metrics, traces and anything else that needs the
outcome, tokens and cost of every call as it ends.

Where they come from. The proxy hands each call's capture (its raw facts) to the store's writer process, which
derives the record (`derive.to_record`) anyway before it writes it: so the writer is where every call's final state
is known, watched or not, without the proxy's event loop parsing a byte of it. The writer makes a `CallEnd` of each
final record it takes (`call_end`) and sends it back in its next report (the span, when tracing is on, it makes
itself: tracing.py); the store's receiver thread hands it to `CallEnds.deliver`, which calls every listener (the
Prometheus counters).

Contract for listeners (`CallEnds.subscribe`):
- one `CallEnd` per call that ended in this proxy, once (a writer restart sends a record again: the store drops
  the second report, see `store.writer.WriterProcess`), shortly after the call's end (the writer's next batch);
  whether or not the database accepted the write (facts come from the record, not from the disk);
- called in the store's receiver thread, not the event loop: be quick (the receiver acknowledges writes after
  it), thread-safe, and never block; an exception is logged and the other listeners still run;
- records imported from a file and those closed at start-up (a crash's orphans) are not calls of this proxy and
  bring no `CallEnd`.

A record the proxy could not hand over at all (unserialisable: `store.lost`) brings none either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from anthropic_proxy.record.model import Record

logger = logging.getLogger("anthropic_proxy.call_end")


class CallEnd(NamedTuple):
    """What a finished call was, as the store will keep it. A named tuple: it comes back from the writer process
    pickled in its reports, and a tuple unpickles far faster than a frozen dataclass (bench/RESULTS.md)."""

    record_id: str
    started: float  # seconds since the epoch: when the request's first byte arrived
    operation: str  # "chat" (/v1/messages) or "count_tokens" (/v1/messages/count_tokens)
    provider: str  # "anthropic" or "openrouter"
    model: str | None  # as the client asked
    upstream_model: str | None  # what it was sent upstream as (openrouter mode), else None
    response_model: str | None  # as the answer says (message.model)
    response_id: str | None
    stream: bool
    status: str  # success | error | cancelled
    error_type: str | None
    stop_reason: str | None
    session_id: str | None
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    input_tokens: int  # Anthropic's meaning: not counting the cache reads and writes below
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    cost_usd: float | None
    duration_ms: float | None
    ttfb_ms: float | None
    traceparent: str | None  # the client's W3C trace context, if it sent one
    tracestate: str | None
    # The tries given up for the next target (failover), in order: (provider, model, HTTP status or None when the
    # target did not answer). Empty for a call that went to one target.
    failovers: tuple[tuple[str, str | None, int | None], ...] = ()

    @property
    def served_model(self) -> str | None:
        """The model that answered: the upstream's in openrouter mode, else the one asked for."""
        return self.upstream_model or self.model


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def call_end(record: Record) -> CallEnd:
    """The facts of a final record (its body parsed, its outcome, usage and cost read)."""
    body = record.request.body if isinstance(record.request.body, dict) else {}
    message = record.message or {}
    headers = record.request.headers
    usage = record.usage
    error = record.error
    return CallEnd(
        record_id=record.id,
        started=record.timestamp.timestamp(),
        operation="count_tokens" if "/count_tokens" in record.request.path else "chat",
        provider=record.provider,
        model=record.model,
        upstream_model=record.upstream_model,
        response_model=_text(message.get("model")),
        response_id=_text(message.get("id")),
        stream=record.stream,
        status=record.status,
        error_type=error.type if error is not None else None,
        stop_reason=record.stop_reason,
        session_id=record.session_id,
        max_tokens=_whole(body.get("max_tokens")),
        temperature=_number(body.get("temperature")),
        top_p=_number(body.get("top_p")),
        top_k=_whole(body.get("top_k")),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_input_tokens,
        cache_creation_tokens=usage.cache_creation_input_tokens,
        cost_usd=record.cost_usd,
        duration_ms=record.metrics.duration_ms,
        ttfb_ms=record.metrics.ttfb_ms,
        traceparent=_header(headers, "traceparent"),
        tracestate=_header(headers, "tracestate"),
        failovers=tuple((a.provider, a.model, a.status) for a in record.attempts[:-1]),
    )


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((value for key, value in headers.items() if key.lower() == name), None)


Listener = Callable[[CallEnd], None]


class CallEnds:
    """Hands each call's `CallEnd` to the listeners (see the module's contract)."""

    def __init__(self) -> None:
        self._listeners: tuple[Listener, ...] = ()  # replaced, never changed in place: delivery runs in a thread

    def subscribe(self, listener: Listener) -> None:
        self._listeners = (*self._listeners, listener)

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners = tuple(known for known in self._listeners if known != listener)

    def deliver(self, ends: Iterable[CallEnd]) -> None:
        listeners = self._listeners
        for end in ends:
            for listener in listeners:
                try:
                    listener(end)
                except Exception:  # one listener's bug must not cost the others (nor the store's receiver)
                    logger.exception("a call-end listener failed for record %s", end.record_id)
