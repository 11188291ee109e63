"""One recorded API call in flight: its capture (the raw facts, `record/capture.py`) and the machinery that fills it
as bytes pass: the stream tap, the watchdog's facts, keep-alives, the abort.

Pure (no mitmproxy): the Recorder addon feeds it request and response facts, and hands its `stream_tap` to mitmproxy
as the streaming callable. It decides nothing about the call's outcome: at its end it records how the call ended
(`ended`, `fail`) and hands the capture on (`on_end`); the record is derived from the capture wherever it is needed
(`derive.to_record`). For the live monitor it publishes the record's progress as the stream flows, read with one
incremental reader so that what was read is not read again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from anthropic_proxy.capture.live import LiveBus
from anthropic_proxy.record.capture import Capture, Ending
from anthropic_proxy.record.derive import Call, client_reader, describe, to_record
from anthropic_proxy.record.model import Record
from anthropic_proxy.record.pricing import PriceBook
from anthropic_proxy.record.stream_log import StreamReader

logger = logging.getLogger("anthropic_proxy.exchange")

_PROGRESS_INTERVAL = 0.5  # seconds between two live "progressed" events of one record


class StreamTransform(Protocol):
    """Turns upstream stream bytes into the client's Anthropic stream (the OpenAI-style translator)."""

    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...
    def keepalive(self) -> bytes: ...
    def fail(self, message: str, error_type: str = "api_error") -> bytes: ...


class Exchange:
    def __init__(self, capture: Capture, *, bus: LiveBus, on_end: Callable[[Exchange], None]) -> None:
        self.capture = capture
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
        self._on_end = on_end
        self._call: Call | None = None  # the call's description, read from its bytes on first use
        self._progress: StreamReader | None = None  # the live monitor's reading of the client's stream
        self._stream_ended = False
        self._handed_on = False
        self._last_progress = 0.0

    @property
    def is_over(self) -> bool:
        """The call has ended (its capture says how); the hand-over may still be a moment away (`settle`)."""
        return self.capture.ending is not None

    def call(self) -> Call:
        """What the record says of the client's call, read from its bytes once, when someone here first needs it (a
        Claude Code body is hundreds of KB of JSON: never on the client's path, and not at all when nobody here
        shows the record)."""
        if self._call is None:
            self._call = describe(self.capture)
        return self._call

    def record(self, prices: PriceBook | None = None) -> Record:
        """The call's record as it is now (`derive.to_record`)."""
        return to_record(self.capture, prices, call=self.call())

    def elapsed_ms(self) -> float:
        """Since the request began."""
        return round((time.monotonic() - self.started) * 1000, 2)

    # --- response -------------------------------------------------------------------------------

    def response_started(self, status: int, headers: dict[str, str], *, stream: bool = False) -> None:
        """The response's headers arrived (`headers` masked). A whole answer's first byte is now; a stream's is its
        first event, where its timeline begins, read from its log: OpenRouter sends its headers, then SSE comments,
        well before that."""
        self.last_activity = time.monotonic()
        capture = self.capture
        capture.status, capture.response_headers, capture.streamed = status, headers, stream
        if not stream:
            capture.ttfb_ms = self.elapsed_ms()

    def stream_tap(self, data: bytes) -> bytes | Iterable[bytes]:
        """mitmproxy's streaming callable: forward (or translate) each chunk, logging what passes (nothing here
        parses the events).

        Returning b"" mid-stream would end a chunked HTTP/1.1 response, so "nothing yet" is `[]`.
        """
        self.last_activity = now = time.monotonic()
        t_ms = round((now - self.started) * 1000, 2)
        if data and self.transform is None:  # a chunk passed through as it came: the one path run per chunk
            self._log_client_bytes(t_ms, data)
            return data
        end = not data
        if end and self._stream_ended:
            return b""  # HTTP/2 upstreams can signal the end twice
        self._stream_ended = end
        transform = self.transform
        if transform is None:
            out = data
        else:
            if data:
                self.capture.upstream_log.append((t_ms, data))
            try:
                out = transform.finish() if end else transform.feed(data)
            except Exception as exc:  # a translator bug ends the client's stream with an error event, not a hang
                logger.exception("stream translation failed for record %s", self.capture.id)
                out = transform.fail(f"anthropic-proxy failed to translate the stream: {exc}")
        self._log_client_bytes(t_ms, out)
        if end:
            return out
        return out if out else []

    def _log_client_bytes(self, t_ms: float, out: bytes) -> None:
        if not out:
            return
        self.capture.client_log.append((t_ms, out))
        if self._bus.has_subscribers and self.last_activity - self._last_progress > _PROGRESS_INTERVAL:
            self._last_progress = self.last_activity
            try:
                if self._progress is None:
                    self._progress = client_reader(self.capture, keep=False)
                progress = to_record(self.capture, call=self.call(), client=self._progress)
                self._bus.publish("progressed", progress.summary())
            except Exception:  # a recording bug must never cost the client a byte
                logger.exception("live progress failed for record %s", self.capture.id)

    # --- endings --------------------------------------------------------------------------------

    def ended(self, status: int, headers: dict[str, str] | None, body: bytes | None, streamed: bool) -> None:
        """The whole response passed: record how (`status`: the answer's the client got; `headers`: the response's,
        masked, or None to keep those recorded when it started; `body`: a whole answer's bytes). The capture is handed
        on in a moment (`settle`), off the client's path."""
        capture = self.capture
        if capture.ending is not None:
            return
        if capture.status is None:  # (an answer the proxy made itself: no response headers hook before it)
            self.response_started(status, headers or {})
        capture.status = status  # the client's: a translated answer's may not be the upstream's (an error in a 200)
        if headers is not None:
            capture.response_headers = headers
        if not streamed:
            capture.response = body or b""
        self._end(Ending("completed"))

    def fail(self, message: str, *, cancelled: bool, error_type: str = "upstream_error") -> None:
        """The call broke off: the client left (`cancelled`) or the upstream failed. Not once the response has ended:
        then that is how it ended (the client leaving during the last chunk changes nothing)."""
        if self.capture.ending is None:
            self._end(Ending("cancelled", message) if cancelled else Ending("failed", message, error_type))
        self.settle()

    def settle(self) -> None:
        """Hand an ended call's capture on now, if that has not happened yet."""
        if self.capture.ending is not None and not self._handed_on:
            self._handed_on = True
            self._on_end(self)

    def silent_for(self, now: float) -> float:
        """Seconds since the upstream last sent anything: a header, a chunk, a byte of a whole body."""
        if self.body_received is not None and (received := self.body_received()) != self._body_seen:
            self._body_seen = received
            self.last_activity = now
        return now - self.last_activity

    def keep_alive(self, now: float) -> None:
        """The upstream is quiet: send the client a keep-alive (a `ping` once the message has begun)."""
        self.last_keepalive = now
        if self.transform is None or self.send_to_client is None or self.is_over or self._stream_ended:
            return
        data = self.transform.keepalive()
        if data:
            self.send_to_client(data)
            self._log_client_bytes(self.elapsed_ms(), data)

    def _end(self, ending: Ending) -> None:
        self.capture.duration_ms = self.elapsed_ms()
        self.capture.ending = ending
