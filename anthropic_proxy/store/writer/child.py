"""The store's writer process: `python -m anthropic_proxy.store.writer` (started by `WriterProcess`, process.py).

Cutting a record into content-addressed pieces, hashing them and writing SQL cost about a millisecond per record;
in a thread that millisecond was taken from the event loop that moves every client's bytes. Here it runs on another
core, at a lower CPU priority (`WRITER_NICENESS`): the `Writer` loop receives the proxy's messages (protocol.py),
derives each call's record from its capture (`derive.to_stored`), prepares its rows (rows.py), makes its `CallEnd`,
span (tracing.py) and terminal line (call_log.py), writes each batch in one transaction and reports back. A write the
database refuses is kept in memory (up to `MAX_UNSAVED`) and retried every `RETRY_SECONDS`; a database file deleted
under it is created again. It ignores SIGINT and SIGTERM (a Ctrl-C or a service stop reaches the whole process
group) and exits when the proxy says stop or goes away (end of file), writing what it holds first. Its log lines
travel back in its reports and are logged by the proxy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from multiprocessing.connection import Connection as Channel

from anthropic_proxy import __version__
from anthropic_proxy.record.call_end import CallEnd, call_end
from anthropic_proxy.record.model import Record
from anthropic_proxy.record.pricing import PRICES_FILE, PriceBook
from anthropic_proxy.store.dialects import Connection, dialect_for
from anthropic_proxy.store.rows import Prepared, RowWriter, prepare
from anthropic_proxy.store.writer.protocol import (
    Flush,
    Message,
    Put,
    Puts,
    Report,
    Stop,
    Trace,
    WriterSettings,
    decode,
)
from anthropic_proxy.telemetry.call_log import log_call
from anthropic_proxy.telemetry.tracing import TraceConfig, Tracer

logger = logging.getLogger("anthropic_proxy.store")

RETRY_SECONDS = 1.0  # between two attempts while writes fail
MAX_UNSAVED = 10_000  # records held in memory while writes fail
WRITER_NICENESS = 10  # added to the writer process's nice value (a lower CPU priority than the proxy's)
CHECK_SECONDS = 1.0  # how often an idle writer looks whether its database file is still there


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
                if isinstance(message, Puts):
                    self.max_records, self.retention_days = message.max_records, message.retention_days
                    self._take(message.items, report)
                elif isinstance(message, Flush):
                    report.flushed.append(message.token)
                elif isinstance(message, Trace):
                    self._use_tracing(message.config)
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

    def _take(self, puts: list[Put], report: Report) -> None:
        for put in puts:
            record_id, seq = put.record_id, put.seq
            try:
                record, data = decode(put, self.prices)
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
