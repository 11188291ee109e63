"""One recorded API exchange in flight: the record plus the state that fills it as bytes pass.

Pure (no mitmproxy): the Recorder addon feeds it request and response facts, and hands its
`stream_tap` to mitmproxy as the streaming callable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from anthropic_proxy.capture.live import LiveBus
from anthropic_proxy.record.call import describe_call
from anthropic_proxy.record.model import HttpResponsePart, Record, RecordError
from anthropic_proxy.record.stream_log import (
    StreamReader,
    client_reader,
    log_size,
    stream_outcome,
    take_response,
    take_stream,
)
from anthropic_proxy.wire.accumulate import MessageAccumulator

logger = logging.getLogger("anthropic_proxy.exchange")

_PROGRESS_INTERVAL = 0.5  # seconds between two live "progressed" events of one record


class StreamTransform(Protocol):
    """Turns upstream stream bytes into the client's Anthropic stream (the OpenAI-style translator). It keeps the
    outline of what it wrote (`outline`: the message's own events; `events`: how many), so the exchange's end does
    not read the client's stream again."""

    outline: MessageAccumulator
    events: int

    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...
    def keepalive(self) -> bytes: ...
    def fail(self, message: str, error_type: str = "api_error") -> bytes: ...


def _always() -> bool:
    return True


class Exchange:
    def __init__(self, record: Record, *, bus: LiveBus, on_final: Callable[[Record], None],
                 end_watched: Callable[[], bool] = _always, request_content: bytes | None = None) -> None:
        self.record = record
        # The call's bytes, while what the record says of the call is still to be read from them (see `describe`).
        self._undescribed = request_content
        self.started = time.monotonic()
        self.last_activity = self.started  # the request, the response headers, the last chunk or body bytes
        # A whole body's bytes received so far (set by the Recorder): it arrives with no call to the stream tap, so
        # the watchdog asks this whether the upstream is still sending.
        self.body_received: Callable[[], int | None] | None = None
        self._body_seen: int | None = None
        self.abort: Callable[[], None] | None = None  # closes the upstream connection (set by the Recorder)
        # writes bytes to the client outside mitmproxy's stream callable (set by the Recorder when it can)
        self.send_to_client: Callable[[bytes], None] | None = None
        self.last_keepalive = self.started
        self.transform: StreamTransform | None = None
        self._bus = bus
        self._on_final = on_final
        # Whether someone in the proxy takes the record's end as it happens (the live monitor, a record-complete
        # hook). When nobody does, a passthrough stream's outcome is left to the store's writer (`ended`).
        self._end_watched = end_watched
        # What the exchange's end needs of the client's stream (no chunks), read from its log only then (and for live
        # progress); made on first use: an end left to the store's writer never reads it.
        self._reader: StreamReader | None = None
        self._stream_ended = False
        self._ended_at: float | None = None
        self._client_bytes = 0  # the size of the client's stream so far
        self._ending: tuple[int, dict[str, str] | None, bytes | None, bool] | None = None  # for `complete`
        self._last_progress = 0.0

    def describe(self) -> Record:
        """The record, with what it says of the client's call (body, model, stream, session) read from the call's
        bytes first if that is still to be done. Only for whoever shows the record or decides its end here: a Claude
        Code body is hundreds of KB of JSON, and a record left to the store's writer (`ended`) is described there."""
        if (content := self._undescribed) is not None:
            self._undescribed = None
            describe_call(self.record, content)
        return self.record

    def elapsed_ms(self) -> float:
        """Since the request began; once the response has ended, until then."""
        return round(((self._ended_at or time.monotonic()) - self.started) * 1000, 2)

    def ended(self, status: int, headers: dict[str, str] | None, body: bytes | None, streamed: bool) -> None:
        """The last byte of the response passed: `complete` with these, in a moment (`settle`)."""
        self._ended_at = time.monotonic()
        self._ending = (status, headers, body, streamed)

    def settle(self) -> None:
        """Complete an ended exchange now, if that has not happened yet."""
        ending, self._ending = self._ending, None
        if ending is not None:
            self.complete(*ending)

    # --- response -------------------------------------------------------------------------------

    def response_started(self, status: int, headers: dict[str, str], *, stream: bool = False) -> None:
        """The response's headers arrived. A whole answer's first byte is now; a stream's is its first event, where
        its timeline begins, read with the stream (`stream_log.take_stream`): OpenRouter sends its headers, then SSE
        comments, well before that."""
        self.last_activity = time.monotonic()
        if not stream:
            self.record.metrics.ttfb_ms = self.elapsed_ms()
        self.record.response = HttpResponsePart(status=status, headers=headers)

    def stream_tap(self, data: bytes) -> bytes | Iterable[bytes]:
        """mitmproxy's streaming callable: forward (or translate) each chunk, logging what passes (see stream_log.py:
        nothing here parses the events).

        Returning b"" mid-stream would end a chunked HTTP/1.1 response, so "nothing yet" is `[]`.
        """
        end = not data
        self.last_activity = now = time.monotonic()
        if end and self._stream_ended:
            return b""  # HTTP/2 upstreams can signal the end twice
        self._stream_ended = end
        t_ms = round((now - self.started) * 1000, 2)
        transform = self.transform
        if transform is None:
            out = data
        else:
            if data:
                self.record.upstream_stream.append((t_ms, data))
            try:
                out = transform.finish() if end else transform.feed(data)
            except Exception as exc:  # a translator bug ends the client's stream with an error event, not a hang
                logger.exception("stream translation failed for record %s", self.record.id)
                out = transform.fail(f"anthropic-proxy failed to translate the stream: {exc}")
        self._log_client_bytes(t_ms, out)
        if end:
            return out
        return out if out else []

    def _log_client_bytes(self, t_ms: float, out: bytes) -> None:
        if not out:
            return
        self.record.client_stream.append((t_ms, out))
        self._client_bytes += len(out)
        if self._bus.has_subscribers and self.last_activity - self._last_progress > _PROGRESS_INTERVAL:
            self._last_progress = self.last_activity
            try:
                self._refresh_from_stream()
                self._bus.publish("progressed", self.describe().summary())
            except Exception:  # a recording bug must never cost the client a byte
                logger.exception("live progress failed for record %s", self.record.id)

    def _refresh_from_stream(self, *, finished: bool = False) -> StreamReader:
        reader, log = self._reader, self.record.client_stream
        if reader is None:
            reader = self._reader = client_reader(self.record, keep=False)
        if finished:
            reader.finish(log)
        else:
            reader.read(log)
        take_stream(self.record, reader.accumulator, reader.count, log_size(log))
        return reader

    # --- endings --------------------------------------------------------------------------------

    def complete(self, status: int, headers: dict[str, str] | None, body: bytes | None, streamed: bool) -> None:
        """The whole response passed. Decide the record's final state from what the client received.
        `headers`: the response's (masked), or None to keep those recorded when it started."""
        record = self.record
        if record.is_final:
            return
        if record.response is None:
            self.response_started(status, headers or {})
        assert record.response is not None
        if headers is not None:
            record.response.headers = headers
        if record.provider == "anthropic" and not self._end_watched():
            # Its outcome is read with the rest of what passed, off the proxy: by the store's writer, which reads
            # every event and body anyway, or by `read_record` for whoever is shown the record sooner.
            if not streamed:
                record.response_content = body or b""
            self._end("ended")
            return
        if streamed and (transform := self.transform) is not None:
            # Its translator wrote every event the client got, and kept their outline as it went: nothing to reread.
            take_stream(record, transform.outline, transform.events, self._client_bytes)
            self._end(*stream_outcome(transform.outline))
            return
        if streamed:
            reader = self._refresh_from_stream(finished=True)
            self._end(*stream_outcome(reader.accumulator, reader.undecodable))
            return
        self._end(*take_response(record, body))

    def fail(self, message: str, *, cancelled: bool, error_type: str = "upstream_error") -> None:
        """The exchange broke off: the client left (`cancelled`) or the upstream failed (`error`). Not once the
        response has ended: then `complete` decides (the client leaving during the last chunk changes nothing)."""
        if self._ending is not None:
            self.settle()
        if self.record.is_final:
            return
        if error := self._refresh_from_stream(finished=True).accumulator.error:
            # The client already got an error event (SDKs close the connection on it): that error ended the
            # exchange, not the client leaving or the upstream going away afterwards.
            self._end("error", RecordError.from_anthropic(error))
            return
        if cancelled:
            self._end("cancelled", RecordError(type="client_disconnected", message=message))
        else:
            self._end("error", RecordError(type=error_type, message=message))

    def silent_for(self, now: float) -> float:
        """Seconds since the upstream last sent anything: a header, a chunk, a byte of a whole body."""
        if self.body_received is not None and (received := self.body_received()) != self._body_seen:
            self._body_seen = received
            self.last_activity = now
        return now - self.last_activity

    def keep_alive(self, now: float) -> None:
        """The upstream is quiet: send the client a keep-alive (a `ping` once the message has begun)."""
        self.last_keepalive = now
        if self.transform is None or self.send_to_client is None or self.record.is_final or self._stream_ended:
            return
        data = self.transform.keepalive()
        if data:
            self.send_to_client(data)
            self._log_client_bytes(self.elapsed_ms(), data)

    def _end(self, status: str, error: RecordError | None = None) -> None:
        record = self.record if status == "ended" else self.describe()
        record.status = status  # type: ignore[assignment]
        record.error = error
        record.metrics.duration_ms = self.elapsed_ms()
        self._on_final(record)
