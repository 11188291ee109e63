"""The store's writer: a process of its own, so the proxy never pays for the database with its GIL.

Cutting a record into content-addressed pieces, hashing them and writing SQL cost about a millisecond per
record; in a thread that millisecond was taken from the event loop that moves every client's bytes. Now the
proxy only serialises each record once (pydantic's Rust encoder, ~60 µs for a 100-event stream; the request
body goes as the client's own bytes) and hands the bytes to this process over a socket pair; everything else
runs here, on another core.

    proxy (WriterProcess)                               writer process (Writer)
      put(record, request_body) -> `queued` (what `get` answers from); a final record encoded at once,
        a pending one by the sender only if its call still runs `PENDING_DELAY` later
      sender thread: gathers 50 ms of puts into one message
        ("put", max_records, retention_days, [(id, seq, (json, body))])  ->  decode, prepare, write, retry
        ("flush", token) / ("stop",)                              ->  after the write attempt
        ("trace", TraceConfig | None)                             ->  spans from now on (tracing.py)
      receiver thread: drops acknowledged puts from `queued`  <-  Report(written, dropped, flushed, counters, logs,
        and hands on each call's final facts (`call_end.py`)          ends: a CallEnd per final record taken)

No record is lost to the hand-over: a put stays in `queued` until the writer reports it written (or dropped:
unserialisable, or beyond `MAX_UNSAVED` while the disk refuses writes). If the writer process dies, the receiver
starts a new one and sends it everything still queued. The writer ignores SIGINT and SIGTERM (a Ctrl-C or a
service stop reaches the whole process group) and exits when the proxy says stop or goes away (end of file),
writing what it holds first. Its log lines travel back in the reports and are logged by the proxy.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Channel
from pathlib import Path
from typing import Any

from anthropic_proxy import __version__
from anthropic_proxy.record.call_end import CallEnd, call_end
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.derive import to_stored
from anthropic_proxy.record.model import Record
from anthropic_proxy.record.pricing import PRICES_FILE, PriceBook
from anthropic_proxy.store.dialects import Connection, dialect_for
from anthropic_proxy.store.rows import Prepared, RowWriter, prepare
from anthropic_proxy.telemetry.call_log import log_call
from anthropic_proxy.telemetry.tracing import TraceConfig, Tracer
from anthropic_proxy.wire import fastjson

logger = logging.getLogger("anthropic_proxy.store")


def _log(level: int, message: str, *args: Any, exc_info: bool = False) -> None:
    """Log from the store's threads, which must survive their log: mitmproxy's terminal log calls `sys.exit(1)`
    when it cannot print (a full disk under the log, a closed pipe), which would end the thread, not the proxy."""
    with contextlib.suppress(BaseException):  # (nowhere left to say it)
        logger.log(level, message, *args, exc_info=exc_info)

BATCH_SECONDS = 0.05  # how long the sender gathers puts before sending them
PENDING_DELAY = 0.25  # a pending record is written only if its call is still running this much later
RETRY_SECONDS = 1.0  # between two attempts while writes fail
MAX_UNSAVED = 10_000  # records held in memory while writes fail
PRUNE_EVERY = 500  # writes between two retention passes
HEARTBEAT_SECONDS = 30.0  # how often an instance on a shared database says it is alive
WRITER_NICENESS = 10  # added to the writer process's nice value (a lower CPU priority than the proxy's)
_RESTART_PAUSE = 1.0  # between two starts of a writer process that keeps dying
CHECK_SECONDS = 1.0  # how often an idle writer looks whether its database file is still there
_STOP = object()


@dataclass(frozen=True, slots=True)
class WriterSettings:
    """What the writer process needs; sent over the socket (a URL's password never shows in `ps`)."""

    state_dir: Path
    url: str
    busy_timeout: float
    instance_id: str
    instance_name: str
    announced: bool  # on a shared database: heartbeats, and leave `instances` at stop
    legacy: bool  # v2 rows are waiting to be rewritten in the v3 form
    prune_every: int  # PRUNE_EVERY and HEARTBEAT_SECONDS as they were when the store started (tests lower them)
    heartbeat_seconds: float
    trace: TraceConfig | None = None  # an OpenTelemetry span per call, made here (tracing.py)


@dataclass(slots=True)
class Report:
    """The writer's answer after each round: which puts are in the database, which are given up, the flushes
    done, and its counters."""

    written: list[tuple[str, int]] = field(default_factory=list)
    dropped: list[tuple[str, int]] = field(default_factory=list)
    flushed: list[int] = field(default_factory=list)
    write_errors: int = 0
    last_write_error: str | None = None
    unsaved: int = 0
    lost: int = 0
    notice: str | None = None  # something the operator should know that is not a failing write (a re-created file)
    logs: list[tuple[int, str]] = field(default_factory=list)
    ends: list[CallEnd] = field(default_factory=list)  # the final records taken this round (see call_end.py)


# (is it a capture, its bytes): a capture's encoding (`Capture.encode`), or a record's JSON
Encoded = tuple[bool, bytes]


def encode(item: Record | Capture) -> Encoded:
    """What the writer is sent of a put: a capture as its own compact encoding (its record is derived there), a
    record as its JSON (a lone surrogate, which UTF-8 cannot hold, goes as a JSON escape)."""
    if isinstance(item, Capture):
        return True, item.encode()
    try:
        return False, item.model_dump_json(by_alias=True).encode()
    except ValueError:
        return False, json.dumps(item.model_dump(mode="json", by_alias=True)).encode()


def decode(encoded: Encoded, prices: PriceBook | None = None) -> tuple[Record, dict[str, Any]]:
    """`encode`'s record, and its JSON data (`model_dump(mode="json", by_alias=True)`) for `prepare`: a capture's
    derived here (`derive.to_stored`, priced with `prices`)."""
    is_capture, payload = encoded
    if is_capture:
        return to_stored(Capture.decode(payload), prices)
    data = fastjson.loads(payload)
    return Record.model_validate(data), data



@dataclass(frozen=True, slots=True)
class _Tracing:
    """The outbox's item for a change of the tracing configuration."""

    config: TraceConfig | None


@dataclass(slots=True)
class _Put:
    seq: int
    item: Record | Capture
    ended: bool = False  # its CallEnd was handed on (a restarted writer reports it again)


# --- the proxy's side ------------------------------------------------------------------------------------


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
        self.queued: dict[str, _Put] = {}  # put, not yet reported written: `get` answers from here
        self.write_errors = 0
        self.last_write_error: str | None = None
        self.unsaved = 0
        self.lost = 0
        self.restarts = 0  # writer processes that died and were replaced
        self.notice: str | None = None  # the writer's (see Report.notice)
        self.thread_restarts = 0  # sender or receiver threads that died and were started again
        self.last_thread_error: str | None = None
        # (record id, seq, JSON or None: encode later), a flush's Event, or _STOP; appended without a lock
        self._outbox: collections.deque[Any] = collections.deque()
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
                data: Encoded | None = encode(item)
            except Exception:  # one record that cannot be serialised must not stop the others
                self.queued.pop(item.id, None)  # (nor be written half-way, as its pending put)
                self._lose(item.id)
                return
        else:
            data = None
        self.queued[item.id] = _Put(seq, item)
        self._send((item.id, seq, data))
        if len(self.queued) > 2 * MAX_UNSAVED:  # the writer cannot keep up or keeps dying: keep the newest
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
        self._send(_Tracing(config))

    def flush(self, timeout: float) -> None:
        done = threading.Event()
        self._send(done, urgent=True)
        done.wait(timeout)

    def close(self) -> None:
        self._closing = True
        self._send(_STOP, urgent=True)
        self._sender.join(timeout=30)
        self._receiver.join(timeout=30)
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self.queued:
            _log(logging.ERROR, "store: %d record(s) could not be written before shutdown", len(self.queued))

    def _send(self, item: Any, *, urgent: bool = False) -> None:
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
            [sys.executable, "-m", "anthropic_proxy.store.writer", str(theirs.fileno())],
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
            self._send((record_id, item.seq, None))  # encoded again by the sender, from the record `get` shows
        for done in list(self._flushes.values()):
            self._send(done, urgent=True)
        self._flushes.clear()

    def _send_loop(self) -> None:
        deferred: dict[str, tuple[float, int]] = {}  # pending records: id -> (when to encode, seq)
        while True:
            self._wake.wait(min(due for due, _ in deferred.values()) - time.monotonic() if deferred else None)
            self._urgent.wait(BATCH_SECONDS)  # gather the puts of a moment into one message
            self._wake.clear()
            self._urgent.clear()
            ready: dict[str, tuple[int, Encoded]] = {}
            flushes: list[threading.Event] = []
            tracing: list[TraceConfig | None] = []
            stop = False
            while self._outbox:
                item = self._outbox.popleft()
                if isinstance(item, tuple):
                    record_id, seq, data = item
                    if data is None:
                        deferred[record_id] = (time.monotonic() + PENDING_DELAY, seq)
                    else:
                        deferred.pop(record_id, None)
                        ready[record_id] = (seq, data)
                elif item is _STOP:
                    stop = True
                elif isinstance(item, _Tracing):
                    tracing.append(item.config)
                else:
                    flushes.append(item)
            now = time.monotonic()
            for record_id, (due, seq) in list(deferred.items()):
                if due <= now or flushes or stop:
                    del deferred[record_id]
                    self._encode_later(record_id, seq, ready)
            messages: list[tuple[Any, ...]] = [("trace", config) for config in tracing[-1:]]
            if ready:
                messages.append(("put", *self._limits(), [(rid, seq, data) for rid, (seq, data) in ready.items()]))
            for done in flushes:
                token = next(self._tokens)
                self._flushes[token] = done
                messages.append(("flush", token))
            if stop:
                messages.append(("stop",))
            for message in messages:
                channel = self._channel
                try:
                    if channel is not None:
                        channel.send(message)
                except OSError:  # the process died: the receiver starts another and re-sends what is queued
                    break
            if stop:
                return

    def _encode_later(self, record_id: str, seq: int, ready: dict[str, tuple[int, Encoded]]) -> None:
        """A deferred put, if it is still the latest of its record (a final put supersedes a pending one)."""
        item = self.queued.get(record_id)
        if item is None or item.seq != seq or record_id in ready:
            return
        try:
            ready[record_id] = (seq, encode(item.item))
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


# --- the writer process ----------------------------------------------------------------------------------


class _Collect(logging.Handler):
    """Keeps the writer's log lines for the next report (the proxy logs them its own way)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append((record.levelno, text))


class Writer:
    """The loop of the writer process: receive, write, report; retry while the database refuses writes."""

    def __init__(self, settings: WriterSettings, channel: Channel, logs: _Collect) -> None:
        self.settings = settings
        self.channel = channel
        self.logs = logs
        self.dialect = dialect_for(settings.state_dir, settings.url, busy_timeout=settings.busy_timeout)
        self.prices = PriceBook(settings.state_dir / PRICES_FILE)  # prices the calls, on the proxy's prices.json
        self.rows = RowWriter(self.dialect, self.prices)
        self.db: Connection = self.dialect.connect(lazy=True)  # opened by the first write (which reports failure)
        self.legacy = settings.legacy
        self.max_records, self.retention_days = 50_000, 30.0
        self.write_errors = 0
        self.last_write_error: str | None = None
        self.lost = 0  # since the last report
        self.unsaved: dict[str, tuple[int, Prepared]] = {}  # write failed (disk full, locked): retried
        self.notice: str | None = None
        self._writes = 0
        self._parent_gone = False
        self.tracer: Tracer | None = None
        self._use_tracing(settings.trace)

    def run(self) -> None:
        settings = self.settings
        next_beat = time.monotonic() + settings.heartbeat_seconds
        stopping = False
        while not stopping:
            idle_work = self.legacy and not self.unsaved
            # Old rows are rewritten a few at a time with pauses between, whenever nothing else waits.
            timeout = RETRY_SECONDS if self.unsaved else 0.2 if idle_work else \
                CHECK_SECONDS if self.dialect.path is not None else None
            if settings.announced:
                timeout = max(0.0, min(timeout or settings.heartbeat_seconds, next_beat - time.monotonic()))
            messages = self._receive(timeout)
            self._check_file()
            if settings.announced and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + settings.heartbeat_seconds
                self._beat()
            if not messages and idle_work:
                self._upgrade_legacy()
                continue
            report = Report()
            for message in messages:
                if message[0] == "put":
                    _, self.max_records, self.retention_days, items = message
                    self._take(items, report)
                elif message[0] == "flush":
                    report.flushed.append(message[1])
                elif message[0] == "trace":
                    self._use_tracing(message[1])
                else:
                    stopping = True
            if self.unsaved and self._write():
                report.written = [(record_id, seq) for record_id, (seq, _) in self.unsaved.items()]
                self._writes += len(self.unsaved)
                self.unsaved.clear()
                if self._writes >= min(settings.prune_every, max(1, self.max_records // 10)):
                    self._writes = 0
                    self.rows.prune(self.db, max_records=self.max_records, retention_days=self.retention_days)
            self._keep_within(report)
            self._report(report)
        if self.unsaved:
            logger.error("store: %d record(s) could not be written to %s before shutdown",
                         len(self.unsaved), self.dialect.location)
        self._use_tracing(None)  # (its last spans go, for a bounded while)
        if settings.announced:
            with contextlib.suppress(*self.dialect.errors):
                self.db.reopen_if_broken()
                self.db.execute("DELETE FROM instances WHERE id = ?", (settings.instance_id,))
        self.db.close()
        self._report(Report())

    def _check_file(self) -> None:
        """SQLite: a database file deleted or replaced under the writer (its state dir removed, say) would take
        every later write where nobody reads it. Open a new one at the path instead (the directory too), and say
        so: the records written before then are not in it."""
        if not self.dialect.file_lost():
            return
        location = self.dialect.location
        try:
            self.db.close()
            self.dialect.path.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            self.db = self.dialect.connect()
            self.dialect.migrate(self.db)
        except (*self.dialect.errors, OSError) as exc:  # the next write fails too, and says why (lastWriteError)
            self.db = self.dialect.connect(lazy=True)
            logger.error("store: %s was deleted or replaced, and a new one cannot be created there (%s)",
                         location, exc)
            return
        self.notice = (f"{location} was deleted or replaced under the running proxy (noticed at "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}): a new database was created there; the records "
                       "written before then are not in it")
        logger.warning("store: %s", self.notice)

    def _receive(self, timeout: float | None) -> list[tuple[Any, ...]]:
        """What the proxy sent, waiting up to `timeout` for the first message; the proxy gone is a stop."""
        messages: list[tuple[Any, ...]] = []
        try:
            if self.channel.poll(timeout):
                messages.append(self.channel.recv())
                while len(messages) < 64 and self.channel.poll(0):
                    messages.append(self.channel.recv())
        except (EOFError, OSError):
            self._parent_gone = True
            messages.append(("stop",))
        return messages

    def _take(self, items: list[tuple[str, int, Encoded]], report: Report) -> None:
        for record_id, seq, encoded in items:
            try:
                record, data = decode(encoded, self.prices)
                if (end := self._end_of(record)) is not None:
                    self._trace(end, record)  # (before `prepare`, which cuts the bodies the record shares)
                prepared = prepare(record, self.settings.instance_id, data)
            except Exception:  # one record that cannot be stored must not stop the writer
                self.lost += 1
                report.dropped.append((record_id, seq))
                logger.exception("store: record %s cannot be stored", record_id)
                continue
            log_call(record)  # (here every call's record is derived: see call_log.py)
            self.unsaved.pop(record_id, None)
            self.unsaved[record_id] = (seq, prepared)  # the latest put of a record wins
            if end is not None:
                report.ends.append(end)

    def _use_tracing(self, config: TraceConfig | None) -> None:
        if self.tracer is not None:
            if self.tracer.config == config:
                return
            self.tracer.shutdown(wait=config is None)
        self.tracer = None
        if config is not None:
            try:
                self.tracer = Tracer(config, version=__version__)
            except Exception:  # (the proxy checked the extra is there: a bad setting, say) calls go on, untraced
                logger.exception("store: OpenTelemetry spans cannot be made")

    def _trace(self, end: CallEnd, record: Record) -> None:
        """The call's span: made here, in this process, so that the SDK's CPU is not taken from the proxy's."""
        if self.tracer is not None:
            try:
                self.tracer.on_end(end, record)
            except Exception:
                logger.exception("store: the span of record %s could not be made", record.id)

    @staticmethod
    def _end_of(record: Record) -> CallEnd | None:
        """A final record's CallEnd (every final put is a call that has just ended in the proxy)."""
        if not record.is_final:
            return None
        try:
            return call_end(record)
        except Exception:  # its facts are a bonus: the record is still stored
            logger.exception("store: the final facts of record %s could not be read", record.id)
            return None

    def _write(self) -> bool:
        """One transaction for everything unsaved; False when the database refused it (then it is retried)."""
        db, dialect = self.db, self.dialect
        try:
            db.reopen_if_broken()
            db.begin_write()
            self.rows.store(db, [prepared for _, prepared in self.unsaved.values()])
            db.commit()
        except dialect.errors as exc:
            self.rows.rollback(db)
            if isinstance(exc, dialect.unstorable):
                return self._give_up()
            self.write_errors += 1
            message = dialect.scrub(str(exc)).strip()
            if self.last_write_error is None:  # log a failure streak once, not at every retry
                logger.error("store: writing to %s failed (%s); keeping %d record(s) in memory and retrying",
                             dialect.location, message, len(self.unsaved))
            self.last_write_error = message
            return False
        except Exception:  # a bug, or data no database takes
            self.rows.rollback(db)
            return self._give_up()
        if self.last_write_error is not None:
            logger.warning("store: writing to %s works again", dialect.location)
            self.last_write_error = None
        return True

    def _give_up(self) -> bool:
        """Retrying cannot help (nor could a new writer process: the proxy would send it the same records), so
        count them lost and keep writing the others."""
        self.lost += len(self.unsaved)
        logger.exception("store: %d record(s) could not be stored", len(self.unsaved))
        return True

    def _keep_within(self, report: Report) -> None:
        """Memory is the last resort while the disk refuses writes: keep the newest, count what is dropped."""
        while len(self.unsaved) > MAX_UNSAVED:
            record_id = next(iter(self.unsaved))
            report.dropped.append((record_id, self.unsaved.pop(record_id)[0]))
            self.lost += 1
            logger.error("store: a record was lost: %s kept refusing writes", self.dialect.location)

    def _report(self, report: Report) -> None:
        report.write_errors, report.last_write_error = self.write_errors, self.last_write_error
        report.unsaved, report.lost, report.notice = len(self.unsaved), self.lost, self.notice
        report.logs, self.logs.lines = self.logs.lines, []
        if self._parent_gone:
            return
        try:
            self.channel.send(report)
            self.lost = 0
        except OSError:
            self._parent_gone = True

    def _beat(self) -> None:
        """Tell the other instances on the database that this one is alive (its pending records are live)."""
        try:
            self.db.reopen_if_broken()
            self.db.execute(self.rows.announce, (self.settings.instance_id, self.settings.instance_name, time.time()))
        except self.dialect.errors as exc:  # the next write reports a lasting failure
            logger.debug("store: heartbeat failed (%s)", self.dialect.scrub(str(exc)))

    def _upgrade_legacy(self, count: int = 8) -> None:
        """Rewrite a few v2 rows (whole bodies) in the v3 form; clears `legacy` when none are left."""
        db = self.db
        try:
            db.reopen_if_broken()
            rows = db.execute("SELECT data FROM records WHERE refs IS NULL ORDER BY ts LIMIT ?", (count,)).fetchall()
            if not rows:
                self.legacy = False
                return
            prepared = [prepare(Record.model_validate_json(data), self.settings.instance_id) for (data,) in rows]
            db.begin_write()
            self.rows.store(db, prepared)
            db.commit()
        except Exception as exc:  # try again when the writer is next idle; never lose the row
            self.rows.rollback(db)
            logger.warning("store: rewriting old records failed (%s); will retry", self.dialect.scrub(str(exc)))
            time.sleep(RETRY_SECONDS)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):  # the proxy decides when this process ends
        signal.signal(signum, signal.SIG_IGN)
    # Writing can wait, traffic cannot: when the cores are busy, the proxy (and the client beside it) come first.
    with contextlib.suppress(OSError):
        os.nice(WRITER_NICENESS)
    channel = Channel(int(sys.argv[1]))
    logs = _Collect()
    logging.getLogger().addHandler(logs)
    logging.getLogger().setLevel(logging.INFO)
    Writer(channel.recv(), channel, logs).run()


if __name__ == "__main__":  # `python -m`: run the module's own classes (reports pickle by module name)
    from anthropic_proxy.store.writer import main as run

    run()
