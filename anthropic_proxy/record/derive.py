"""The one place a capture becomes a record: `to_record(capture, prices) -> Record`.

Whoever needs a call's record derives it here from the call's raw facts (`capture.py`): the store's writer before
it writes, `Store.get` for a call not yet written, the live monitor, mitmweb's view and the record-complete hook. So
a record is the same whoever reads it, and whether or not anyone watched the call live. Pure: no I/O, no clock.

What it decides, from the capture alone:
- the call's description (body, model, stream, session: `call.py`), read from the request's bytes;
- a stream's events (`chunks`, and `upstream_chunks` when translated), message, usage, stop reason, event count,
  size and first byte (its first event), read with the one `StreamReader` (`stream_log.py`); a whole answer's body,
  message, usage and stop reason, read from its bytes;
- the outcome: `pending` while the call runs; at its end `success`, or `error` (an error event, an HTTP error
  status, a stream cut short or not in its declared coding, an upstream failure or silence), or `cancelled` (the
  client left). An error event the client already got before the call broke off is what ended it;
- the attempts (the relay's tries, or the single one), and the cost (`pricing.apply_cost`, with the provider's
  reported cost or the catalogue's price that the capture holds).

`to_stored` is the writer's variant: the same record, with its JSON form beside it, where the events go straight
into their JSON form (the writer stores JSON; no `Chunk` objects made to be dumped again).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from anthropic_proxy.record.bodies import parse_body
from anthropic_proxy.record.call import call_facts
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.model import (
    HttpRequestPart,
    HttpResponsePart,
    Record,
    RecordError,
    Status,
    Usage,
    as_text,
    single_attempt,
)
from anthropic_proxy.record.pricing import PriceBook, apply_cost
from anthropic_proxy.record.stream_log import StreamReader
from anthropic_proxy.wire.accumulate import MessageAccumulator
from anthropic_proxy.wire.codings import codings_of


class Call(NamedTuple):
    """What a record says of the client's call: its body as sent (JSON, or text), model, streaming, session."""

    body: Any
    model: str | None
    stream: bool
    session_id: str | None


def describe(capture: Capture) -> Call:
    """The call's description, read from its bytes (a Claude Code body is hundreds of KB: read it once per use)."""
    body = parse_body(capture.request)
    return Call(body, *call_facts(capture.request_headers, body))


def client_reader(capture: Capture, *, as_json: bool = False, keep: bool = True) -> StreamReader:
    """A reader for the stream the client got, which passed with the response's content coding."""
    return StreamReader(as_json=as_json, keep=keep, codings=codings_of(capture.response_headers))


def to_record(capture: Capture, prices: PriceBook | None = None, *, call: Call | None = None,
              client: StreamReader | None = None) -> Record:
    """The record of `capture` as it is now (see the module's docstring); priced when final and given `prices`.

    `call`: its description when the caller has it already (`describe`). `client`: a reader of the client's stream
    that has read part of its log already and goes on from there (the live monitor's progress: it keeps no
    chunks, so neither does the record)."""
    return _derive(capture, prices, call, client, as_json=False)[0]


def to_stored(capture: Capture, prices: PriceBook | None) -> tuple[Record, dict[str, Any]]:
    """`to_record`'s record and its JSON form (`model_dump(mode="json", by_alias=True)`), sharing their bodies. The
    record's `chunks` and `upstream_chunks` are left empty: they are read into the JSON form only."""
    record, chunks, upstream_chunks = _derive(capture, prices, None, None, as_json=True)
    data = record.model_dump(mode="json", by_alias=True, exclude=_BULKY)
    # The bulky parts are JSON already (parsed from JSON, or text): shared, not dumped again; in the model's order.
    data["request"]["body"] = record.request.body
    if record.response is not None:
        data["response"]["body"] = record.response.body
    bulky = {"upstreamRequest": record.upstream_request, "message": record.message, "chunks": chunks,
             "upstreamChunks": upstream_chunks, "upstreamResponse": record.upstream_response}
    return record, {alias: bulky[alias] if alias in bulky else data[alias] for alias in _ALIASES}


_BULKY: Any = {"upstream_request": True, "message": True, "chunks": True, "upstream_chunks": True,
               "upstream_response": True, "request": {"body"}, "response": {"body"}}
_ALIASES = tuple(info.alias or name for name, info in Record.model_fields.items() if not info.exclude)


def _derive(capture: Capture, prices: PriceBook | None, call: Call | None, client: StreamReader | None, *,
            as_json: bool) -> tuple[Record, list[Any], list[Any]]:
    body, model, stream, session = call if call is not None else describe(capture)
    record = Record(
        id=capture.id, timestamp=datetime.fromtimestamp(capture.started, UTC), provider=capture.provider,
        model=model, upstream_model=capture.upstream_model, stream=stream, session_id=session,
        request=HttpRequestPart(method=capture.method, path=capture.path, headers=capture.request_headers, body=body),
        upstream_request=parse_body(capture.upstream_request), route=capture.route_match,
        upstream_response=parse_body(capture.upstream_response))
    metrics = record.metrics
    metrics.request_bytes, metrics.duration_ms = capture.request_bytes, capture.duration_ms
    if capture.status is not None:
        record.response = HttpResponsePart(status=capture.status, headers=capture.response_headers)
    ending = capture.ending
    chunks: list[Any] = []
    upstream_chunks: list[Any] = []
    outcome: tuple[Status, RecordError | None] = ("pending", None)
    error_event: dict[str, Any] | None = None
    if capture.streamed:
        reader = client if client is not None else client_reader(capture, as_json=as_json)
        upstream = StreamReader(as_json=as_json)
        log, upstream_log = list(capture.client_log), list(capture.upstream_log)  # (a running call's log grows)
        if ending is None:  # still flowing: an event without its blank line yet may be half-way
            reader.read(log)
            upstream.read(upstream_log)
        else:
            reader.finish(log)
            upstream.finish(upstream_log)
        chunks, upstream_chunks = reader.chunks, upstream.chunks
        _take_stream(record, reader.accumulator, reader.count, capture.response_bytes, reader.first_event_ms)
        error_event = reader.accumulator.error
        if ending is not None and ending.kind == "completed":
            outcome = _stream_outcome(reader.accumulator, reader.undecodable)
    else:
        metrics.ttfb_ms = capture.ttfb_ms
        if ending is not None and ending.kind == "completed":
            outcome = _take_response(record, capture.response, capture.response_bytes)
    if ending is not None and ending.kind != "completed":
        outcome = _broken_off(ending.kind, ending.message or "", ending.error_type, error_event)
    if not as_json:
        record.chunks, record.upstream_chunks = chunks, upstream_chunks
    record.status, record.error = outcome
    if ending is not None:
        record.attempts = list(capture.attempts) or [single_attempt(record)]
        if prices is not None:
            apply_cost(record, prices, reported_cost=capture.reported_cost, catalog_price=capture.catalog_price)
    return record, chunks, upstream_chunks


def _take_stream(record: Record, accumulator: MessageAccumulator, events: int, size: int,
                 first_event_ms: float | None) -> None:
    """What the client's stream tells of its record: its event count, size, first byte (its first event, from a
    reading that keeps its chunks), and its message's usage and stop reason."""
    metrics = record.metrics
    metrics.chunk_count, metrics.response_bytes, metrics.ttfb_ms = events, size, first_event_ms
    if (message := accumulator.message) is not None:
        record.message = message
        record.usage = Usage.from_anthropic(message.get("usage"))
        record.stop_reason = as_text(message.get("stop_reason"))


def _stream_outcome(accumulator: MessageAccumulator, undecodable: str | None) -> tuple[Status, RecordError | None]:
    """How a stream that passed whole went: as its error event says, cut short (no `message_stop`), unreadable (its
    bytes are not in the content coding it declared: `undecodable` says why), or well."""
    if accumulator.error:
        return "error", RecordError.from_anthropic(accumulator.error)
    if not accumulator.stopped and undecodable is not None:
        return "error", RecordError(type="undecodable_stream", message=f"the stream cannot be read: {undecodable}")
    if not accumulator.stopped:
        return "error", RecordError(type="incomplete_stream", message="the stream ended before message_stop")
    return "success", None


def _take_response(record: Record, content: bytes | None, size: int) -> tuple[Status, RecordError | None]:
    """What a whole (not streamed) answer tells of its record, `record.response` having its status: its body, size,
    message, usage and stop reason; and the outcome."""
    assert record.response is not None  # (the exchange records the status at the latest at the end)
    record.metrics.response_bytes = size
    parsed = record.response.body = parse_body(content)
    status = record.response.status or 0
    if not 200 <= status < 300:
        error = parsed.get("error") if isinstance(parsed, dict) else None
        return "error", (RecordError.from_anthropic(error) if isinstance(error, dict)
                         else RecordError(type="http_error", message=f"upstream answered HTTP {status}"))
    if isinstance(parsed, dict):
        if parsed.get("type") == "message":
            record.message = parsed
            record.stop_reason = as_text(parsed.get("stop_reason"))
            record.usage = Usage.from_anthropic(parsed.get("usage"))
        elif "input_tokens" in parsed:  # count_tokens
            record.usage = Usage.from_anthropic({"input_tokens": parsed.get("input_tokens")})
    return "success", None


def _broken_off(kind: str, message: str, error_type: str | None,
                error_event: dict[str, Any] | None) -> tuple[Status, RecordError | None]:
    """A call that broke off before its answer passed whole: the client left, or the upstream failed. An error event
    the client already got (SDKs close the connection on one) is what ended it, not what came after."""
    if error_event:
        return "error", RecordError.from_anthropic(error_event)
    if kind == "cancelled":
        return "cancelled", RecordError(type="client_disconnected", message=message)
    return "error", RecordError(type=error_type or "upstream_error", message=message)
