"""The store's writer process: `python -m anthropic_proxy.store.writer` (started by `WriterProcess`, process.py).

Cutting a record into content-addressed pieces, hashing them and writing SQL cost about a millisecond per record;
in a thread that millisecond was taken from the event loop that moves every client's bytes. Here it runs on another
core, at a lower CPU priority (`WRITER_NICENESS`): the `Writer` reads what the proxy put from the journal
(store/journal/), at most `batch_bytes` at a time, derives each call's record from its capture (`derive.to_stored`),
prepares its rows (rows.py), makes its `CallEnd`, span (tracing.py) and terminal line (call_log.py), and writes the
batch in one transaction together with its position in the journal (consumed.py); then it deletes the segments it
has consumed and reports back. Killed at any point, the next writer goes on from the last committed position: no put
is written twice or lost. A batch the database refuses is kept (it is at most `batch_bytes` of entries) and retried
every `RETRY_SECONDS`, reading no further meanwhile: the backlog waits on disk. A database file deleted under it is
created again. It ignores SIGINT and SIGTERM (a Ctrl-C or a service stop reaches the whole process group) and exits
when the proxy says stop or goes away (end of file), consuming the journal to its end first. Its log lines travel
back in its reports and are logged by the proxy.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Channel

from anthropic_proxy import __version__
from anthropic_proxy.record.call_end import CallEnd, call_end
from anthropic_proxy.record.model import Record
from anthropic_proxy.record.pricing import PRICES_FILE, PriceBook
from anthropic_proxy.store import consumed
from anthropic_proxy.store.dialects import Connection, dialect_for
from anthropic_proxy.store.journal import Entry, JournalReader, Position, next_seq
from anthropic_proxy.store.rows import Prepared, RowWriter, prepare
from anthropic_proxy.store.writer.protocol import Flush, Message, Report, Stop, Trace, Wake, WriterSettings, decode
from anthropic_proxy.telemetry.call_log import log_call
from anthropic_proxy.telemetry.tracing import TraceConfig, Tracer

logger = logging.getLogger("anthropic_proxy.store")

RETRY_SECONDS = 1.0  # between two attempts while writes fail
WRITER_NICENESS = 10  # added to the writer process's nice value (a lower CPU priority than the proxy's)
CHECK_SECONDS = 1.0  # how often an idle writer looks whether its database file is still there


class _Collect(logging.Handler):
    """Keeps the writer's log lines for the next report, each with its logger's name (the proxy logs them again
    under the same name: a call's line is `anthropic_proxy.calls`'s wherever it is made)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append((record.name, record.levelno, text))


@dataclass(slots=True)
class _Batch:
    """Entries read from the journal, ready to be written: their rows, and where the journal is after them."""

    prepared: dict[str, Prepared] = field(default_factory=dict)  # by record id: the latest put of a record wins
    position: Position | None = None


class Writer:
    """The loop of the writer process: receive, consume the journal, report; retry while the database refuses."""

    def __init__(self, settings: WriterSettings, channel: Channel, logs: _Collect) -> None:
        self.settings = settings
        self.channel = channel
        self.logs = logs
        self.dialect = dialect_for(settings.state_dir, settings.url, busy_timeout=settings.busy_timeout)
        self.prices = PriceBook(settings.state_dir / PRICES_FILE)  # prices the calls, on the proxy's prices.json
        self.rows = RowWriter(self.dialect, self.prices)
        self.db: Connection = self.dialect.connect(lazy=True)  # opened by the first write (which reports failure)
        assert settings.journal is not None
        self.reader = JournalReader(settings.journal)
        self.position: Position | None = None  # how far the journal is written (None: from its start)
        self.loaded = False  # `position` is the database's
        self.batch: _Batch | None = None  # read, and refused by the database: retried
        self.retry_at = 0.0
        self.flushes: list[Flush] = []
        self.legacy = settings.legacy
        self.max_records, self.retention_days = 50_000, 30.0
        self.write_errors = 0
        self.last_write_error: str | None = None
        self.lost = 0  # since the last report
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
            idle_work = self.legacy and self.batch is None
            # Old rows are rewritten a few at a time with pauses between, whenever nothing else waits. (The journal
            # is looked at every CHECK_SECONDS anyway: a wake-up the proxy could not send is not a put lost.)
            timeout = RETRY_SECONDS if self.batch else 0.2 if idle_work else CHECK_SECONDS
            if settings.announced:
                timeout = max(0.0, min(timeout, next_beat - time.monotonic()))
            messages = self._receive(timeout)
            self._check_file()
            if settings.announced and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + settings.heartbeat_seconds
                self._beat()
            report = Report()
            for message in messages:
                if isinstance(message, Wake):
                    self.max_records, self.retention_days = message.max_records, message.retention_days
                elif isinstance(message, Flush):
                    self.flushes.append(message)
                elif isinstance(message, Trace):
                    self._use_tracing(message.config)
                else:
                    stopping = True
            worked = self._consume(report, to_the_end=stopping)
            if not worked and not messages and idle_work:
                self._upgrade_legacy()
            self._answer_flushes(report)
            self._report(report)
        if self.batch is not None:
            logger.error("store: %d record(s) could not be written to %s before shutdown; the journal keeps them for "
                         "the next start", len(self.batch.prepared), self.dialect.location)
        self._use_tracing(None)  # (its last spans go, for a bounded while)
        if settings.announced:
            with contextlib.suppress(*self.dialect.errors):
                self.db.reopen_if_broken()
                self.db.execute("DELETE FROM instances WHERE id = ?", (settings.instance_id,))
        self.db.close()
        self._report(Report())

    # --- the journal ---------------------------------------------------------------------------------

    def _consume(self, report: Report, *, to_the_end: bool) -> bool:
        """Write what the journal holds, a batch at a time, until it is all written, a write fails, or (unless
        `to_the_end`) the proxy has said something; whether anything was written."""
        worked = False
        while True:
            if self.batch is not None and time.monotonic() < self.retry_at and not to_the_end:
                return worked
            if self.batch is None and not self._read(report):
                return worked
            if not self._write(report):
                return worked
            worked = True
            if not to_the_end and self._proxy_waits():
                return worked

    def _proxy_waits(self) -> bool:
        """The proxy has sent something (or gone): answer it before the next batch."""
        try:
            return self.channel.poll(0)
        except (EOFError, OSError):
            return True

    def _read(self, report: Report) -> bool:
        """Read the next batch from the journal into `batch` and make its rows (its calls' ends go in `report`: a
        writer started after this one died reports them again, which the proxy knows); False when there is nothing
        new (or the position cannot be known: the database refuses, which `last_write_error` says)."""
        if not self.loaded:
            journal = self.reader.journal_id()
            if journal is None:
                return False
            try:
                self.db.reopen_if_broken()
                self.position, self.loaded = consumed.load(self.db, journal), True
            except self.dialect.errors as exc:
                self._failed(exc)
                return False
        read = self.reader.read(self.position, max_bytes=self.settings.batch_bytes)
        for problem in read.problems:
            logger.warning("store: the journal in %s: %s", self.settings.journal, problem)
        if not read.entries and read.position == self.position:
            return False
        self.batch = batch = _Batch(position=read.position)
        for entry in read.entries:
            self._take(entry, batch, report)
        return True

    def _take(self, entry: Entry, batch: _Batch, report: Report) -> None:
        try:
            record, data = decode(entry.payload, self.prices)
            if (end := self._end_of(record)) is not None:
                self._trace(end, record)  # (before `prepare`, which cuts the bodies the record shares)
            prepared = prepare(record, self.settings.instance_id, data)
        except Exception:  # one record that cannot be stored must not stop the writer
            self.lost += 1
            logger.exception("store: the put in journal entry %d cannot be stored", entry.seq)
            return
        log_call(record)  # (here every call's record is derived: see call_log.py)
        batch.prepared.pop(record.id, None)
        batch.prepared[record.id] = prepared  # the latest put of a record wins
        if end is not None:
            report.ends.append(end)

    def _write(self, report: Report) -> bool:
        """The batch and its position in one transaction; False when the database refused it (then it is kept and
        retried). Records no database takes are given up (the position goes on past them)."""
        db, dialect, batch = self.db, self.dialect, self.batch
        assert batch is not None and batch.position is not None
        rows = list(batch.prepared.values())
        while True:
            try:
                db.reopen_if_broken()
                db.begin_write()
                self.rows.store(db, rows)
                consumed.save(db, batch.position)
                db.commit()
                break
            except Exception as exc:
                self.rows.rollback(db)
                if rows and (not isinstance(exc, dialect.errors) or isinstance(exc, dialect.unstorable)):
                    self.lost += len(rows)  # (a bug, or data no database takes: retrying cannot help)
                    logger.exception("store: %d record(s) could not be stored", len(rows))
                    rows = []  # (the position alone, then: past them)
                    continue
                self._failed(exc)
                return False
        self.position, self.batch = batch.position, None
        with contextlib.suppress(OSError):  # (a segment left behind is deleted by a later pass)
            self.reader.truncate(batch.position)
        if self.last_write_error is not None:
            logger.warning("store: writing to %s works again", dialect.location)
            self.last_write_error = None
        self._writes += len(rows)
        if self._writes >= min(self.settings.prune_every, max(1, self.max_records // 10)):
            self._writes = 0
            self.rows.prune(db, max_records=self.max_records, retention_days=self.retention_days)
        return True

    def _failed(self, exc: Exception) -> None:
        self.write_errors += 1
        self.retry_at = time.monotonic() + RETRY_SECONDS
        message = self.dialect.scrub(str(exc)).strip()
        if self.last_write_error is None:  # log a failure streak once, not at every retry
            logger.error("store: writing to %s failed (%s); the journal keeps the records and the writes are "
                         "retried", self.dialect.location, message)
        self.last_write_error = message

    def _answer_flushes(self, report: Report) -> None:
        """A flush is done once the journal up to its seq is written, or a write was just tried and failed."""
        done = next_seq(self.position)
        waiting = []
        for flush in self.flushes:
            if flush.seq < done or self.last_write_error is not None:
                report.flushed.append(flush.token)
            else:
                waiting.append(flush)
        self.flushes = waiting

    # --- the rest ------------------------------------------------------------------------------------

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
            self.position, self.loaded = None, False  # (the new file has none: what the journal still holds goes in)
        except (*self.dialect.errors, OSError) as exc:  # the next write fails too, and says why (lastWriteError)
            self.db = self.dialect.connect(lazy=True)
            logger.error("store: %s was deleted or replaced, and a new one cannot be created there (%s)",
                         location, exc)
            return
        self.notice = (f"{location} was deleted or replaced under the running proxy (noticed at "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}): a new database was created there; the records "
                       "written before then are not in it")
        logger.warning("store: %s", self.notice)

    def _receive(self, timeout: float | None) -> list[Message]:
        """What the proxy sent, waiting up to `timeout` for the first message; the proxy gone is a stop."""
        messages: list[Message] = []
        try:
            if self.channel.poll(timeout):
                messages.append(self.channel.recv())
                while len(messages) < 64 and self.channel.poll(0):
                    messages.append(self.channel.recv())
        except (EOFError, OSError):
            self._parent_gone = True
            messages.append(Stop())
        return messages

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

    def _report(self, report: Report) -> None:
        report.consumed = next_seq(self.position)
        report.write_errors, report.last_write_error = self.write_errors, self.last_write_error
        report.unsaved = len(self.batch.prepared) if self.batch is not None else 0
        report.lost, report.notice = self.lost, self.notice
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
    settings: WriterSettings = channel.recv()
    # One consumer per journal: a writer whose proxy was killed may still be writing the end of it.
    assert settings.journal is not None
    with open(settings.journal / "consumer.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        Writer(settings, channel, logs).run()
