"""A stream as it passed the proxy (a `StreamLog`), and the one reader of its events.

On its hot path the proxy keeps only each network chunk's bytes and the time they passed: decoding, parsing and
keeping every event there would cost the client's path CPU that nobody there needs. The events are read from the
log where someone needs them, always with a `StreamReader` (`derive.to_record` for the record; the live monitor's
progress with one that goes on where it stopped): one decoding (content coding, any SSE line end, a byte order
mark; events told apart by their data's `type`, as Anthropic's SDKs do, not by `event:` lines, which are
optional), so a record is the same whoever reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from anthropic_proxy.record.model import Chunk
from anthropic_proxy.wire import fastjson
from anthropic_proxy.wire.accumulate import MessageAccumulator
from anthropic_proxy.wire.codings import ContentDecoder, DecodingError
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
    and added to the message. The one reading of a stream, whoever asks.

    `codings`: the response's content codings (`codings.codings_of`): the log holds the bytes as they passed, and
    they are decoded here. Bytes that are not in the declared coding end the reading (`undecodable` says why).
    """

    __slots__ = ("_as_json", "_content", "_decoder", "_done", "_keep_chunks", "accumulator", "chunks", "count",
                 "undecodable")

    def __init__(self, *, as_json: bool = False, keep: bool = True, codings: list[str] | None = None) -> None:
        self._as_json = as_json  # keep each event as a Chunk, or (for the store's writer) as a Chunk's JSON form
        self._keep_chunks = keep  # the live progress needs the message and the count, not the chunks
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
        (`keep=False`: the live monitor's progress)."""
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


def log_size(log: StreamLog) -> int:
    return sum(len(data) for _, data in log)
