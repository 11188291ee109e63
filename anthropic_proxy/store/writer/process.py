"""The proxy's side of the store's writer: `WriterProcess` starts the writer process (child.py) and feeds it through
the journal (store/journal/, docs/journal.md).

    put(capture or record)  a final put is encoded at once (protocol.py) and appended to the journal: `held` keeps
      only its record id and journal seq (`Store.get` reads it back from there until it is written); a pending one
      waits in `queued` and is appended by the sender only if its call still runs `PENDING_DELAY` later (a short
      call writes one row)
    sender thread: wakes the writer when the journal has more (`Wake`, at most one per `BATCH_SECONDS`); `Flush`,
      `Trace`, `Stop`
    receiver thread: applies each `Report`: forgets what the writer has consumed from `held`, hands each call's
      `CallEnd` on (call_end.py), logs the writer's lines

Memory does not grow with the writer's backlog: that waits on disk. No put is lost to the hand-over: the writer
stores its position in the journal with the rows it wrote, so a writer process that dies is replaced by one that goes
on from there. The journal's own bounds (a full disk) are in appender.py. The threads log through `threads.log_safely`,
and a thread that ends anyway is started again (`threads.start_supervised`).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection as Channel
from pathlib import Path

from anthropic_proxy.record.call_end import CallEnd
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.model import Record
from anthropic_proxy.store.journal import Journal, JournalBusy
from anthropic_proxy.store.threads import log_safely, start_supervised
from anthropic_proxy.store.writer.protocol import (
    Flush,
    Message,
    Report,
    Stop,
    Trace,
    Wake,
    WriterSettings,
    entry,
    item_of,
    masked,
)
from anthropic_proxy.telemetry.tracing import TraceConfig

BATCH_SECONDS = 0.05  # how long the sender gathers puts before sending them
PENDING_DELAY = 0.25  # a pending record is written only if its call is still running this much later
MAX_HELD = 100_000  # puts in the journal that `get` can read back (the newest; older ones are still written)
_RESTART_PAUSE = 1.0  # between two starts of a writer process that keeps dying


@dataclass(slots=True)
class _Queued:
    """A pending put, not yet in the journal."""

    seq: int
    item: Record | Capture


@dataclass(frozen=True, slots=True)
class _Deferred:
    """A pending put the sender appends `PENDING_DELAY` later if it is still the latest of its record."""

    record_id: str
    seq: int


class _Written:
    """The journal wrote something: the writer is to be woken."""


@dataclass(frozen=True, slots=True)
class _Flush:
    done: threading.Event  # set once the writer has tried to write everything sent before


_Outgoing = _Written | _Deferred | _Flush | Trace | Stop
_WRITTEN = _Written()


@dataclass(frozen=True, slots=True)
class _Unwritten:
    """The ids of the records put and not yet written: pending ones, and those in the journal."""

    pending: dict[str, _Queued]
    held: dict[str, int]

    def __contains__(self, record_id: object) -> bool:
        return record_id in self.pending or record_id in self.held

    def __len__(self) -> int:
        return len(self.pending) + len(self.held)


def _rss_mb(pid: str) -> float | None:
    """A process's resident set (Linux's /proc; None elsewhere, or once it has ended)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


class WriterProcess:
    """Starts the writer process and feeds it; `put` never blocks (the proxy's event loop calls it).

    The sender and receiver threads do almost no Python work of their own: any CPU they take is taken from the
    event loop (the GIL), and a loop thread that gave the GIL up for a socket write waits for it. So a final
    record is encoded right in `put`, once, and a pending one (a call that has just begun) is encoded only if
    it is still the latest put of its record `PENDING_DELAY` later: a short call writes one row, not two.

    `journal`: the journal's directory (None: a private one, deleted at `close`: a tool's store, which must not
    take the proxy's); `backlog_bytes`: what the journal may hold in memory while the disk refuses writes."""

    def __init__(self, settings: WriterSettings, limits: Callable[[], tuple[int, float]],
                 on_ends: Callable[[list[CallEnd]], None] | None = None, *, journal: Path | None,
                 backlog_bytes: int) -> None:
        self._limits = limits  # (max_records, retention_days): options that change while running
        self._on_ends = on_ends  # gets each call's final facts once, in the receiver thread
        self._pending: dict[str, _Queued] = {}  # pending puts not yet in the journal: `get` answers from here
        # record id -> journal seq of its latest put, in journal order, until the writer reports it consumed
        self.held: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._ended: set[str] = set()  # ids in `held` whose CallEnd was handed on
        self._writer_error: str | None = None  # the writer's last_write_error
        self.write_errors = 0
        self.unsaved = 0
        self._lost = 0
        self.restarts = 0  # writer processes that died and were replaced
        self.notice: str | None = None  # the writer's (see Report.notice)
        self.thread_restarts = 0  # sender or receiver threads that died and were started again
        self.last_thread_error: str | None = None
        self._private: Path | None = None
        self.journal = self._open_journal(journal, backlog_bytes)
        self.settings = dataclasses.replace(settings, journal=self.journal.directory)
        # what the sender sends next, appended without a lock
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._wake = threading.Event()  # the outbox has something
        self._urgent = threading.Event()  # a flush or stop: no gathering
        self._order = threading.Lock()  # a record's puts go to the journal in the order they were made
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
        if not (item.ending is not None if isinstance(item, Capture) else item.is_final):
            self._pending[item.id] = _Queued(seq, item)
            self._send(_Deferred(item.id, seq))
            return
        try:
            payload = entry(item)
        except Exception:  # one record that cannot be serialised must not stop the others
            self._pending.pop(item.id, None)  # (nor be written half-way, as its pending put)
            self._lose(item.id)
            return
        with self._order:
            self._pending.pop(item.id, None)
            self._append(item.id, payload)

    def pending(self, record_id: str) -> Record | Capture | None:
        """A record (or a call's capture) put and not yet written: from `queued`, or read back from the journal."""
        if (queued := self._pending.get(record_id)) is not None:
            return queued.item
        if (seq := self.held.get(record_id)) is None or (payload := self.journal.read(seq)) is None:
            return None
        try:
            return item_of(payload)
        except Exception:  # (the writer says why, when it reaches it)
            return None

    @property
    def queued(self) -> _Unwritten:
        """The records put and not yet written (`in`, `len`)."""
        return _Unwritten(self._pending, self.held)

    @property
    def last_write_error(self) -> str | None:
        """Why puts are not being written: the journal's disk refuses them, or the database does."""
        return self.journal.last_error or self._writer_error

    @property
    def lost(self) -> int:
        """Puts given up: dropped by the journal (its memory bound while its disk refuses), or by the writer."""
        return self._lost + self.journal.lost

    def memory_mb(self) -> tuple[float | None, float | None]:
        """The resident memory of the proxy's process and of the writer process, in MB (None: not known here)."""
        process = self._process
        return _rss_mb("self"), _rss_mb(str(process.pid)) if process is not None else None

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
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
        unwritten = self.journal.close()
        if unwritten:
            log_safely(logging.ERROR, "store: %d record(s) could not be put in the journal before shutdown", unwritten)
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)

    def _open_journal(self, directory: Path | None, backlog_bytes: int) -> Journal:
        if directory is not None:
            try:
                return Journal(directory, backlog_bytes=backlog_bytes, on_written=self._written, transform=masked)
            except JournalBusy:
                log_safely(logging.WARNING, "store: another process appends to the journal in %s; this one keeps a "
                     "journal of its own, which a crash would lose", directory)
        self._private = Path(tempfile.mkdtemp(prefix="anthropic-proxy-journal-"))
        return Journal(self._private, backlog_bytes=backlog_bytes, on_written=self._written, transform=masked)

    def _append(self, record_id: str, payload: bytes) -> None:
        """Put a final or due put in the journal (under `_order`)."""
        seq = self.journal.append(payload)
        self.held.pop(record_id, None)
        self._ended.discard(record_id)
        if seq is None:  # (counted by the journal: its memory bound is reached while its disk refuses)
            if self.journal.lost == 1 or self.journal.lost % 1000 == 0:
                log_safely(logging.ERROR, "store: %d record(s) lost: the journal in %s cannot write (%s)",
                     self.journal.lost, self.journal.directory, self.journal.last_error)
            return
        self.held[record_id] = seq  # (at the end: `held` runs in journal order)
        if len(self.held) > MAX_HELD:
            self._ended.discard(self.held.popitem(last=False)[0])

    def _written(self, _seq: int) -> None:
        """The journal wrote entries (its flusher thread): wake the writer, once per sender round."""
        self._send(_WRITTEN)

    def _send(self, item: _Outgoing, *, urgent: bool = False) -> None:
        self._outbox.append(item)
        if urgent:
            self._urgent.set()
        if not self._wake.is_set():  # (setting it takes a lock: once per batch, not once per put)
            self._wake.set()

    def _lose(self, record_id: str) -> None:
        self._lost += 1
        log_safely(logging.ERROR, "store: record %s cannot be stored", record_id, exc_info=True)

    # --- threads -----------------------------------------------------------------------------------

    def _thread(self, loop: Callable[[], None], name: str) -> threading.Thread:
        return start_supervised(loop, name, closing=lambda: self._closing, failed=self._thread_failed)

    def _thread_failed(self, name: str, why: str) -> None:
        self.thread_restarts += 1
        self.last_thread_error = f"the store's {name} thread failed ({why}) and was started again"
        log_safely(logging.ERROR, "store: %s", self.last_thread_error)

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
        """The writer process died: start another (it goes on from the position it stored in the database)."""
        code = self._process.wait() if self._process is not None else None
        self.restarts += 1
        # /health says degraded until the new process reports (its first report sets the writer's own state)
        self._writer_error = f"the store's writer process stopped (exit code {code})"
        log_safely(logging.ERROR, "store: %s; starting another", self._writer_error)
        if self._channel is not None:
            self._channel.close()
        time.sleep(max(0.0, self._started_at + _RESTART_PAUSE - time.monotonic()))
        self._start()
        self._send(_WRITTEN)
        for done in list(self._flushes.values()):
            self._send(_Flush(done), urgent=True)
        self._flushes.clear()

    def _send_loop(self) -> None:
        deferred: dict[str, tuple[float, int]] = {}  # pending records: id -> (when to append, seq)
        while True:
            self._wake.wait(min(due for due, _ in deferred.values()) - time.monotonic() if deferred else None)
            self._urgent.wait(BATCH_SECONDS)  # gather a moment's worth of wake-ups into one
            self._wake.clear()
            self._urgent.clear()
            written = False
            flushes: list[threading.Event] = []
            tracing: list[Trace] = []
            stop = False
            while self._outbox:
                item = self._outbox.popleft()
                if isinstance(item, _Written):
                    written = True
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
                    self._append_later(record_id, seq)
            if stop:  # (what is put goes to disk before the writer is told to consume it all)
                self.journal.flush(10.0)
            messages: list[Message] = [*tracing[-1:]]
            if written or stop:
                messages.append(Wake(*self._limits()))
            # (while the journal's disk refuses, a flush waits only for what it could write)
            upto = self.journal.last_seq if self.journal.last_error is None else self.journal.written_seq
            for done in flushes:
                token = next(self._tokens)
                self._flushes[token] = done
                messages.append(Flush(token, upto))
            if stop:
                messages.append(Stop())
            for message in messages:
                channel = self._channel
                try:
                    if channel is not None:
                        channel.send(message)
                except OSError:  # the process died: the receiver starts another and wakes it
                    break
            if stop:
                return

    def _append_later(self, record_id: str, seq: int) -> None:
        """A deferred put, if it is still the latest of its record (a final put supersedes a pending one)."""
        with self._order:
            item = self._pending.get(record_id)
            if item is None or item.seq != seq:
                return
            try:
                payload = entry(item.item)
            except Exception:
                del self._pending[record_id]
                self._lose(record_id)
                return
            self._append(record_id, payload)
            del self._pending[record_id]

    def _first_reports(self, ends: list[CallEnd]) -> list[CallEnd]:
        """The ends not handed on before: a writer started after another died reads (and reports) again what the
        other had not written."""
        fresh = []
        for end in ends:
            if end.record_id not in self._ended:
                fresh.append(end)
                if end.record_id in self.held:
                    self._ended.add(end.record_id)
        return fresh

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
        with self._order:
            held = self.held
            while held and held[next(iter(held))] < report.consumed:
                self._ended.discard(held.popitem(last=False)[0])
        self.write_errors, self._writer_error = report.write_errors, report.last_write_error
        self.notice = report.notice
        self.unsaved, self._lost = report.unsaved, self._lost + report.lost
        for token in report.flushed:
            if (done := self._flushes.pop(token, None)) is not None:
                done.set()
        for name, level, message in report.logs:  # last: the report has taken effect whatever logging does
            log_safely(level, message, name=name)
