"""What passed the proxy in an exchange's answer (a stream's log, or a whole answer's body), and what is read from it.

On its hot path the proxy keeps only each network chunk's bytes and the time they passed (a `StreamLog`): decoding,
parsing and keeping every event there took about a third of the proxy's CPU per stream. The events are read from
the log where someone needs them:

- the end of an exchange that someone in the proxy takes as it happens (the live monitor, a record-complete hook;
  and every translated one) reads it there, keeping no chunks: its final state needs the message's usage, stop
  reason, an error event, whether `message_stop` came;
- otherwise the proxy does not read the stream at all: the record is `ended`, and its outcome is read with the
  rest of the stream (`settle_ended`); so is a whole passthrough answer's, from its body (`take_response`, which
  the exchange also uses when someone takes the end as it happens);
- the store's writer process reads the whole log into `chunks` and `message` (and an `ended` record's outcome and
  cost) before writing the record;
- in the proxy, what shows a record to someone (`Store.get` of a record not yet written, the record-complete hook,
  mitmweb's view) reads it with `read_record`.

Every one of them reads with a `StreamReader`: one decoding (content coding, any SSE line end, a byte order mark;
events told apart by their data's `type`, as Anthropic's SDKs do, not by `event:` lines, which are optional), so a
record is the same whoever reads it and whether anyone watches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from anthropic_proxy.record.bodies import parse_body
from anthropic_proxy.record.model import Chunk, Record, RecordError, Status, Usage, as_text, single_attempt
from anthropic_proxy.record.pricing import PriceBook, apply_cost
from anthropic_proxy.wire import fastjson
from anthropic_proxy.wire.accumulate import MessageAccumulator
from anthropic_proxy.wire.codings import ContentDecoder, DecodingError, codings_of
from anthropic_proxy.wire.sse import SSEDecoder, SSEEvent, plain_events

StreamLog = list[tuple[float, bytes]]  # (ms after the request, bytes) per network chunk, in order


def event_data(data: str) -> Any:
    """An event's payload: its JSON, or its text when it is not JSON (the record shows what was sent)."""
    try:
        return fastjson.loads_event(data)
    except ValueError:
        return data


def events_data(texts: list[str]) -> list[Any]:
    """`event_data` of each, in one C loop while orjson reads them all (nearly always)."""
    try:
        return list(map(orjson.loads, texts))
    except orjson.JSONDecodeError:
        return list(map(event_data, texts))


class StreamReader:
    """Reads a stream's events from its log, incrementally: `read` takes the entries added since the last call.
    Each event is counted, kept as a chunk (timed by the network chunk that completed it; unless `keep` is False)
    and added to the message. The one reading of a stream, whoever asks: the exchange's end, the live monitor, the
    record-complete hook, the store's writer.

    `codings`: the response's content codings (`codings.codings_of`): the log holds the bytes as they passed, and
    they are decoded here. Bytes that are not in the declared coding end the reading (`undecodable` says why).
    """

    __slots__ = ("_as_json", "_content", "_decoder", "_done", "_keep_chunks", "accumulator", "chunks", "count",
                 "undecodable")

    def __init__(self, *, as_json: bool = False, keep: bool = True, codings: list[str] | None = None) -> None:
        self._as_json = as_json  # keep each event as a Chunk, or (for the store's writer) as a Chunk's JSON form
        self._keep_chunks = keep  # the exchange's own reading needs the message and the count, not the chunks
        self._decoder = SSEDecoder()
        self._done = 0  # log entries read
        self.accumulator = MessageAccumulator()
        self.chunks: list[Any] = []
        self.count = 0
        self.undecodable: str | None = None
        self._content: ContentDecoder | None = None
        if codings:
            try:
                self._content = ContentDecoder(codings)
            except DecodingError as exc:
                self.undecodable = str(exc)

    @property
    def first_event_ms(self) -> float | None:
        """When the stream's first event arrived (ms after the request), where its timeline begins: its first byte,
        as the record tells it (`Metrics.ttfb_ms`). None before that, and for a reading that keeps no chunks
        (`keep=False`: the exchange's own; `read_record` and the store's writer read the stream with its chunks)."""
        if not self.chunks:
            return None
        first = self.chunks[0]
        return first["tMs"] if self._as_json else first.t_ms

    def read(self, log: StreamLog) -> None:
        new, self._done = self._decoded(log[self._done:]), len(log)
        for t_ms, data in new:
            self._take(t_ms, self._decoder.feed(data))

    def finish(self, log: StreamLog) -> None:
        """The stream ended: read the rest, then a last event left without its blank line."""
        fresh, new = self._done == 0, self._decoded(log[self._done:], end=log[-1][0] if log else None)
        self._done = len(log)
        if not (fresh and self._read_plain(new)):
            for t_ms, data in new:
                self._take(t_ms, self._decoder.feed(data))
            self._take(log[-1][0] if log else 0.0, self._decoder.flush())
        self.accumulator.finish()

    def _decoded(self, entries: StreamLog, *, end: float | None = None) -> StreamLog:
        """The entries with their content coding undone; at the stream's `end` (the time of its last entry), with
        what the decoder still held."""
        if self.undecodable is not None:
            return []
        content = self._content
        if content is None:
            return entries
        decoded: StreamLog = []
        try:
            for t_ms, data in entries:
                decoded.append((t_ms, content.feed(data)))
            if end is not None:
                decoded.append((end, content.flush()))
        except DecodingError as exc:
            self.undecodable = str(exc)
        return decoded

    def _read_plain(self, log: StreamLog) -> bool:
        """A whole log read at once, when it is nothing but plain named events (nearly always): what `read` would
        make of it, in a few C-speed passes. False, having read nothing, when the log holds anything else."""
        data = b"".join(entry for _, entry in log)
        pairs = plain_events(data)
        if pairs is None:
            return False
        values = events_data([value for _, value in pairs])
        if self._keep_chunks:
            # Each event ends at its blank line, the only b"\n\n" in a plain event, and is timed by the entry it
            # ends in.
            times: list[float] = []
            searched = end = 0
            for t_ms, entry in log:
                end += len(entry)
                if ended := data.count(b"\n\n", searched, end):
                    times += [t_ms] * ended
                    searched = data.rfind(b"\n\n", searched, end) + 2
            self._keep(zip(times, (name for name, _ in pairs), values, strict=True))
        self.count = len(pairs)
        self.accumulator.add_all(values)
        return True

    def _take(self, t_ms: float, events: list[SSEEvent]) -> None:
        self.count += len(events)
        values = events_data([event.data for event in events])
        if self._keep_chunks:
            self._keep((t_ms, event.event, value) for event, value in zip(events, values, strict=True))
        self.accumulator.add_all(values)

    def _keep(self, events: Iterable[tuple[float, str | None, Any]]) -> None:
        """Keep (time, event name, data) as chunks: `Chunk`s, or for the store's writer their JSON form."""
        if self._as_json:
            self.chunks += [{"tMs": t_ms, "event": name, "data": value} for t_ms, name, value in events]
        else:
            self.chunks += [Chunk(t_ms, name, value) for t_ms, name, value in events]


def client_reader(record: Record, *, as_json: bool = False, keep: bool = True) -> StreamReader:
    """A reader for the stream the client got, which passed with the record's response's content coding."""
    return StreamReader(as_json=as_json, keep=keep, codings=codings_of(record.response and record.response.headers))


def take_stream(record: Record, accumulator: MessageAccumulator, events: int, size: int, *,
                first_event_ms: float | None = None) -> None:
    """What the client's stream tells of its record (its message so far in `accumulator`, its number of `events`,
    its `size` in bytes and, from a reading that keeps its chunks, when its first event came: `first_event_ms`):
    those counts, the first byte, and the message's usage and stop reason."""
    metrics = record.metrics
    metrics.chunk_count, metrics.response_bytes = events, size
    if first_event_ms is not None:
        metrics.ttfb_ms = first_event_ms
    if (message := accumulator.message) is not None:
        record.message = message
        record.usage = Usage.from_anthropic(message.get("usage"))
        record.stop_reason = as_text(message.get("stop_reason"))


def log_size(log: StreamLog) -> int:
    return sum(len(data) for _, data in log)


def stream_outcome(accumulator: MessageAccumulator,
                   undecodable: str | None = None) -> tuple[Status, RecordError | None]:
    """How a stream that has ended went: as its error event says, cut short (no `message_stop`), unreadable (its
    bytes are not in the content coding it declared: `undecodable` says why), or well."""
    if accumulator.error:
        return "error", RecordError.from_anthropic(accumulator.error)
    if not accumulator.stopped and undecodable is not None:
        return "error", RecordError(type="undecodable_stream", message=f"the stream cannot be read: {undecodable}")
    if not accumulator.stopped:
        return "error", RecordError(type="incomplete_stream", message="the stream ended before message_stop")
    return "success", None


def take_response(record: Record, content: bytes | None) -> tuple[Status, RecordError | None]:
    """What a whole (not streamed) response tells of its record, `record.response` having its status: its body,
    bytes, message, usage and stop reason; and the outcome."""
    assert record.response is not None
    record.metrics.response_bytes = len(content or b"")
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


def settle_ended(record: Record, client: StreamReader, log: StreamLog, prices: PriceBook | None) -> None:
    """Give an `ended` record (a passthrough exchange whose end nobody in the proxy took) the outcome and, given
    `prices`, the cost its response says (its whole body, or its stream, `client` having read all of `log`): what
    `Exchange.complete` and the Recorder would have given it."""
    if record.response_content is not None:
        content, record.response_content = record.response_content, None
        record.status, record.error = take_response(record, content)
    else:
        take_stream(record, client.accumulator, client.count, log_size(log), first_event_ms=client.first_event_ms)
        record.status, record.error = stream_outcome(client.accumulator, client.undecodable)
    if not record.attempts:
        record.attempts = [single_attempt(record)]
    if prices is not None:
        apply_cost(record, prices)


def read_record(record: Record, prices: PriceBook | None = None) -> Record:
    """The record as it will be stored: its `chunks`, `upstream_chunks`, `message`, counts and usage read from its
    logged streams, and an `ended` record's outcome (and, given `prices`, its cost) from them or from its whole
    answer's body: always a copy, the record itself untouched. A record without logs (not streamed, or loaded from
    the store, where they have been read already) keeps its own."""
    if not record.client_stream and not record.upstream_stream and record.status != "ended":
        return record.model_copy()
    client, upstream = client_reader(record), StreamReader()
    client_log = list(record.client_stream)  # (a snapshot: a live stream's log is still growing)
    if record.is_final:
        client.finish(client_log)
        upstream.finish(list(record.upstream_stream))
    else:  # still flowing: an event without its blank line yet may be half-way
        client.read(client_log)
        upstream.read(list(record.upstream_stream))
    read = record.model_copy(update={"chunks": client.chunks, "upstream_chunks": upstream.chunks,  # (its own parts,
                                     "metrics": record.metrics.model_copy(),  # to change)
                                     "response": record.response and record.response.model_copy()})
    if record.status == "ended":
        settle_ended(read, client, client_log, prices)
    elif client_log:
        take_stream(read, client.accumulator, client.count, log_size(client_log),
                    first_event_ms=client.first_event_ms)
    return read
