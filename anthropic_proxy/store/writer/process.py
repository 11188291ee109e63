"""The proxy's side of the store's writer: `WriterProcess` starts the writer process (child.py) and feeds it.

    put(capture or record) -> `queued` (what `Store.get` answers from); a final put encoded at once (protocol.py),
      a pending one by the sender only if its call still runs `PENDING_DELAY` later (a short call writes one row)
    sender thread: gathers `BATCH_SECONDS` of puts into one `Puts` message; `Flush`, `Trace`, `Stop`
    receiver thread: applies each `Report`: drops what was written from `queued`, hands each call's `CallEnd` on
      once (call_end.py), logs the writer's lines

No record is lost to the hand-over: a put stays in `queued` until the writer reports it written (or dropped:
unserialisable, or beyond the writer's `MAX_UNSAVED` while the disk refuses writes). If the writer process dies, the
receiver starts a new one and sends it everything still queued. The threads' log lines go through a guard (mitmproxy's
terminal log calls `sys.exit(1)` when it cannot print), and a thread that ends anyway is started again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection as Channel
from typing import Any

from anthropic_proxy.record.call_end import CallEnd
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.model import Record
from anthropic_proxy.store.writer.protocol import (
    Flush,
    Message,
    Put,
    Puts,
    Report,
    Stop,
    Trace,
    WriterSettings,
    encode,
)
from anthropic_proxy.telemetry.tracing import TraceConfig

logger = logging.getLogger("anthropic_proxy.store")

BATCH_SECONDS = 0.05  # how long the sender gathers puts before sending them
PENDING_DELAY = 0.25  # a pending record is written only if its call is still running this much later
MAX_QUEUED = 20_000  # puts kept for a writer that cannot keep up or keeps dying (the newest are kept)
_RESTART_PAUSE = 1.0  # between two starts of a writer process that keeps dying


def _log(level: int, message: str, *args: Any, exc_info: bool = False) -> None:
    """Log from the store's threads, which must survive their log: mitmproxy's terminal log calls `sys.exit(1)`
    when it cannot print (a full disk under the log, a closed pipe), which would end the thread, not the proxy."""
    with contextlib.suppress(BaseException):  # (nowhere left to say it)
        logger.log(level, message, *args, exc_info=exc_info)


@dataclass(slots=True)
class _Queued:
    """A put not yet reported written."""

    seq: int
    item: Record | Capture
    ended: bool = False  # its CallEnd was handed on (a restarted writer reports it again)


@dataclass(frozen=True, slots=True)
class _Deferred:
    """A put the sender encodes `PENDING_DELAY` later if it is still the latest of its record: a pending one, or
    one re-sent to a new writer process (encoded again from what `get` shows)."""

    record_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class _Flush:
    done: threading.Event  # set once the writer has tried to write everything sent before


_Outgoing = Put | _Deferred | _Flush | Trace | Stop


class WriterProcess:
    """Starts the writer process and feeds it; `put` never blocks (the proxy's event loop calls it).

    The sender and receiver threads do almost no Python work of their own: any CPU they take is taken from the
    event loop (the GIL), and a loop thread that gave the GIL up for a socket write waits for it. So a final
    record is encoded right in `put`, once, and a pending one (a call that has just begun) is encoded only if
    it is still the latest put of its record `PENDING_DELAY` later: a short call writes one row, not two."""

    def __init__(self, settings: WriterSettings, limits: Callable[[], tuple[int, float]],
                 on_ends: Callable[[list[CallEnd]], None] | None = None) -> None:
        self.settings = settings
        self._limits = limits  # (max_records, retention_days): options that change while running
        self._on_ends = on_ends  # gets each call's final facts once, in the receiver thread
        self.queued: dict[str, _Queued] = {}  # put, not yet reported written: `get` answers from here
        self.write_errors = 0
        self.last_write_error: str | None = None
        self.unsaved = 0
        self.lost = 0
        self.restarts = 0  # writer processes that died and were replaced
        self.notice: str | None = None  # the writer's (see Report.notice)
        self.thread_restarts = 0  # sender or receiver threads that died and were started again
        self.last_thread_error: str | None = None
        # what the sender sends next, appended without a lock
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._wake = threading.Event()  # the outbox has something
        self._urgent = threading.Event()  # a flush or stop: no gathering
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)
        self._flushes: dict[int, threading.Event] = {}
        self._closing = False
        self._started_at = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: Channel | None = None
        self._start()
        self._sender = self._thread(self._send_loop, "sender")
        self._receiver = self._thread(self._receive_loop, "receiver")

    def put(self, item: Record | Capture) -> None:
        seq = next(self._seq)
        if item.ending is not None if isinstance(item, Capture) else item.is_final:
            try:
                outgoing: Put | _Deferred = encode(item, seq)
            except Exception:  # one record that cannot be serialised must not stop the others
                self.queued.pop(item.id, None)  # (nor be written half-way, as its pending put)
                self._lose(item.id)
                return
        else:
            outgoing = _Deferred(item.id, seq)
        self.queued[item.id] = _Queued(seq, item)
        self._send(outgoing)
        if len(self.queued) > MAX_QUEUED:  # the writer cannot keep up or keeps dying: keep the newest
            self.queued.pop(next(iter(self.queued)))
            self.lost += 1
            if self.lost == 1 or self.lost % 1000 == 0:
                _log(logging.ERROR, "store: %d record(s) lost: the writer process is not taking them", self.lost)

    def pending(self, record_id: str) -> Record | Capture | None:
        """A record (or a call's capture) put and not yet written."""
        item = self.queued.get(record_id)
        return item.item if item else None

    def configure_tracing(self, config: TraceConfig | None) -> None:
        """Spans from now on (None: none), also from a writer process started after this one dies."""
        self.settings = dataclasses.replace(self.settings, trace=config)
        self._send(Trace(config))

    def flush(self, timeout: float) -> None:
        done = threading.Event()
        self._send(_Flush(done), urgent=True)
        done.wait(timeout)

    def close(self) -> None:
        self._closing = True
        self._send(Stop(), urgent=True)
        self._sender.join(timeout=30)
        self._receiver.join(timeout=30)
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self.queued:
            _log(logging.ERROR, "store: %d record(s) could not be written before shutdown", len(self.queued))

    def _send(self, item: _Outgoing, *, urgent: bool = False) -> None:
        self._outbox.append(item)
        if urgent:
            self._urgent.set()
        if not self._wake.is_set():  # (setting it takes a lock: once per batch, not once per put)
            self._wake.set()

    def _lose(self, record_id: str) -> None:
        self.lost += 1
        _log(logging.ERROR, "store: record %s cannot be stored", record_id, exc_info=True)

    # --- threads -----------------------------------------------------------------------------------

    def _thread(self, loop: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=self._supervised, args=(loop, name), name=f"anthropic-proxy-store-{name}",
                                  daemon=True)
        thread.start()
        return thread

    def _supervised(self, loop: Callable[[], None], name: str) -> None:
        """Run a thread's loop, and run it again if it fails: whatever ends it (a bug, a `SystemExit` that a log
        handler raised) must not leave records in memory for good. /health says it happened."""
        while True:
            try:
                loop()
                return
            except BaseException as exc:
                if self._closing:
                    return
                self._thread_failed(name, repr(exc))
                time.sleep(0.1)  # (a loop that fails at once must not spin)

    def _thread_failed(self, name: str, why: str) -> None:
        self.thread_restarts += 1
        self.last_thread_error = f"the store's {name} thread failed ({why}) and was started again"
        _log(logging.ERROR, "store: %s", self.last_thread_error)

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        # The child imports this package the way the proxy did (a script's sys.path, not only site-packages).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "anthropic_proxy.store.writer", str(theirs.fileno())],  # (child.py)
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self._started_at = time.monotonic()
        channel = Channel(ours.detach())
        channel.send(self.settings)
        self._channel = channel

    def _restart(self) -> None:
        """The writer process died: start another and give it everything not yet written."""
        code = self._process.wait() if self._process is not None else None
        self.restarts += 1
        # /health says degraded until the new process reports (its first report sets the writer's own state)
        self.last_write_error = f"the store's writer process stopped (exit code {code})"
        _log(logging.ERROR, "store: %s; starting another", self.last_write_error)
        if self._channel is not None:
            self._channel.close()
        time.sleep(max(0.0, self._started_at + _RESTART_PAUSE - time.monotonic()))
        self._start()
        for record_id, item in list(self.queued.items()):
            self._send(_Deferred(record_id, item.seq))
        for done in list(self._flushes.values()):
            self._send(_Flush(done), urgent=True)
        self._flushes.clear()

    def _send_loop(self) -> None:
        deferred: dict[str, tuple[float, int]] = {}  # pending records: id -> (when to encode, seq)
        while True:
            self._wake.wait(min(due for due, _ in deferred.values()) - time.monotonic() if deferred else None)
            self._urgent.wait(BATCH_SECONDS)  # gather the puts of a moment into one message
            self._wake.clear()
            self._urgent.clear()
            ready: dict[str, Put] = {}
            flushes: list[threading.Event] = []
            tracing: list[Trace] = []
            stop = False
            while self._outbox:
                item = self._outbox.popleft()
                if isinstance(item, Put):
                    deferred.pop(item.record_id, None)
                    ready[item.record_id] = item
                elif isinstance(item, _Deferred):
                    deferred[item.record_id] = (time.monotonic() + PENDING_DELAY, item.seq)
                elif isinstance(item, Stop):
                    stop = True
                elif isinstance(item, Trace):
                    tracing.append(item)
                else:
                    flushes.append(item.done)
            now = time.monotonic()
            for record_id, (due, seq) in list(deferred.items()):
                if due <= now or flushes or stop:
                    del deferred[record_id]
                    self._encode_later(record_id, seq, ready)
            messages: list[Message] = [*tracing[-1:]]
            if ready:
                max_records, retention_days = self._limits()
                messages.append(Puts(max_records, retention_days, list(ready.values())))
            for done in flushes:
                token = next(self._tokens)
                self._flushes[token] = done
                messages.append(Flush(token))
            if stop:
                messages.append(Stop())
            for message in messages:
                channel = self._channel
                try:
                    if channel is not None:
                        channel.send(message)
                except OSError:  # the process died: the receiver starts another and re-sends what is queued
                    break
            if stop:
                return

    def _encode_later(self, record_id: str, seq: int, ready: dict[str, Put]) -> None:
        """A deferred put, if it is still the latest of its record (a final put supersedes a pending one)."""
        item = self.queued.get(record_id)
        if item is None or item.seq != seq or record_id in ready:
            return
        try:
            ready[record_id] = encode(item.item, seq)
        except Exception:
            self._forget(record_id, seq)
            self._lose(record_id)

    def _receive_loop(self) -> None:
        while True:
            channel = self._channel
            try:
                report: Report = channel.recv()  # type: ignore[union-attr]
            except (EOFError, OSError):
                if self._closing:
                    return
                self._restart()
                continue
            self._apply(report)

    def _apply(self, report: Report) -> None:
        if report.ends and self._on_ends is not None:
            self._on_ends(self._first_reports(report.ends))
        for record_id, seq in (*report.written, *report.dropped):
            self._forget(record_id, seq)
        self.write_errors, self.last_write_error = report.write_errors, report.last_write_error
        self.notice = report.notice
        self.unsaved, self.lost = report.unsaved, self.lost + report.lost
        for token in report.flushed:
            if (done := self._flushes.pop(token, None)) is not None:
                done.set()
        for level, message in report.logs:  # last: the report has taken effect whatever logging does
            _log(level, message)

    def _first_reports(self, ends: list[CallEnd]) -> list[CallEnd]:
        """The ends not handed on before: a put stays queued until written, and a writer started after another died
        takes (and reports) it again."""
        fresh = []
        for end in ends:
            item = self.queued.get(end.record_id)
            if item is not None and not item.ended:
                item.ended = True
                fresh.append(end)
        return fresh

    def _forget(self, record_id: str, seq: int) -> None:
        """Drop a put from `queued` unless a newer put of the record came since."""
        item = self.queued.get(record_id)
        if item is not None and item.seq == seq:
            del self.queued[record_id]
