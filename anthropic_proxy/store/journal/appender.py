"""The proxy's side of the journal: `append` hands a payload over at once; a thread of its own writes it.

    journal = Journal(state_dir / "journal", on_written=wake_the_consumer)
    seq = journal.append(payload)      # the event loop: O(1), never waits for the disk; None when dropped

The flusher thread frames what was appended (checksums), writes it to the newest segment with one `writev` per
batch (the OS's page cache keeps it from then on: a SIGKILL of the process loses nothing written; nothing is
fsynced), starts a new segment past `segment_bytes`, and calls `on_written(last seq)`. It gathers what is appended
for `GATHER_SECONDS` after the first append it sees, so an entry reaches the OS within that (and the time to write
it) while the disk takes writes; `flush` has it written at once.

When the disk refuses (full, read-only, `max_bytes` reached) the entries wait in memory, up to `backlog_bytes`, and
the flusher retries every `retry_seconds`; appends past that bound are dropped and counted (`lost`): a call never
waits for the journal. `last_error` says why writes fail (None once they work again), for /health. A write cut off
half-way is cut back to its last whole frame, so a frame is never left torn in the middle of a segment.

Opening a journal takes its lock (one appender per directory: `JournalBusy` otherwise), carries on its id and seqs
from the newest readable segment, and starts a new segment: whatever a crash left unfinished at the end of the
previous one is then a torn tail to its reader, reported and skipped.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from anthropic_proxy.store.journal.format import (
    FRAME_HEADER,
    SEGMENT_HEADER,
    Frame,
    SegmentHeader,
    frame_header,
    read_segment_header,
    scan,
    segment_numbers,
    segment_path,
)
from anthropic_proxy.store.threads import log_safely

SEGMENT_BYTES = 64 << 20  # a segment is closed and a new one begun past this size
BACKLOG_BYTES = 32 << 20  # payloads held in memory while the disk refuses writes
RETRY_SECONDS = 1.0
GATHER_SECONDS = 0.05  # the flusher gathers appends this long before it writes them (a flush does not wait)
_MARK_BYTES = 1 << 20  # `read` scans at most about this much of a segment to find an entry
_MAX_IOV = 512  # entries per writev (two buffers each; the OS allows 1024)


class JournalBusy(RuntimeError):
    """Another process appends to this journal."""


class JournalFull(OSError):
    """The journal holds `max_bytes` already (its consumer is behind, or stopped)."""


class Journal:
    """Appends payloads to the journal in `directory` (made if missing). `append` is thread-safe."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES, max_bytes: int | None = None,
                 backlog_bytes: int = BACKLOG_BYTES, retry_seconds: float = RETRY_SECONDS,
                 on_written: Callable[[int], None] | None = None,
                 transform: Callable[[bytes], bytes] | None = None) -> None:
        self.directory = directory
        self.segment_bytes, self.max_bytes, self.backlog_limit = segment_bytes, max_bytes, backlog_bytes
        self.retry_seconds = retry_seconds
        self._on_written = on_written
        self._transform = transform  # what is written of a payload (in the flusher thread): the store masks keys
        self.lost = 0  # appends dropped: the backlog was full
        self.write_errors = 0  # failed write attempts
        self.last_error: str | None = None  # why the last attempt failed; None when it worked
        self.backlog = 0  # payload bytes appended and not yet written
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise JournalBusy(f"another process appends to the journal in {directory}") from None
        self.journal, last_seq, last_segment = self._recover()
        self._next_seq = last_seq + 1  # the next append's
        self.written_seq = last_seq  # every entry up to this one is written
        self._segment = last_segment  # the open segment's number (the next one is made at open)
        self._fd: int | None = None
        self._size = 0  # the open segment's
        self._disk_bytes = self._measure()
        self._marks: list[tuple[int, int, int]] = []  # (seq, segment, offset) of some written entries, for `read`
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._carry: list[tuple[int, bytes]] = []  # taken from the queue, not yet written (a failed write)
        self._lock = threading.Lock()  # the queue, seqs and the backlog
        self._done = threading.Condition()  # written_seq moved
        self._wake = threading.Event()  # something was appended
        self._urgent = threading.Event()  # a flush (or close) wants it written now
        self._stop = threading.Event()
        self._retry_at = 0.0
        self._new_segment_safely()
        self._thread = threading.Thread(target=self._run, name="anthropic-proxy-journal", daemon=True)
        self._thread.start()

    # --- the producer's API ----------------------------------------------------------------------

    def append(self, payload: bytes) -> int | None:
        """Queue `payload` for the journal; its seq, or None when it was dropped (writes fail and the backlog is
        full)."""
        with self._lock:
            # (while writes work, the queue drains at the disk's pace: a burst is not a backlog)
            if self.last_error is not None and self.backlog + len(payload) > self.backlog_limit and self.backlog:
                self.lost += 1
                return None
            seq = self._next_seq
            self._next_seq += 1
            self._queue.append((seq, payload))
            self.backlog += len(payload)
        if not self._wake.is_set():  # (setting it takes a lock: once per batch, not once per append)
            self._wake.set()
        return seq

    def read(self, seq: int) -> bytes | None:
        """The payload of entry `seq` while the journal still has it (in memory or on disk), else None."""
        with self._lock:  # (queued seqs run on without gaps)
            for queued in (self._carry, self._queue):
                if queued and queued[0][0] <= seq <= queued[-1][0]:
                    return queued[seq - queued[0][0]][1]
        marks = self._marks
        at = bisect.bisect_right(marks, (seq, 1 << 62, 0)) - 1
        if at < 0 or seq > self.written_seq:
            return None
        _, segment, offset = marks[at]
        try:
            with segment_path(self.directory, segment).open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                for item in scan(file, offset, size):
                    if isinstance(item, Frame) and item.seq >= seq:
                        return item.payload if item.seq == seq else None
        except FileNotFoundError:  # consumed
            pass
        return None

    def flush(self, timeout: float) -> bool:
        """Wait until everything appended so far is written; False if it is not after `timeout` seconds."""
        with self._lock:
            target = self._next_seq - 1
        self._urgent.set()
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self.written_seq >= target, timeout)

    def close(self, timeout: float = 10.0) -> int:
        """Write what is queued (for up to `timeout` seconds while the disk refuses) and let go of the journal;
        how many entries could not be written."""
        self.flush(timeout)
        self._stop.set()
        self._urgent.set()
        self._wake.set()
        self._thread.join(timeout=max(1.0, timeout))
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        os.close(self._lock_fd)
        with self._lock:
            return len(self._queue) + len(self._carry)

    @property
    def unwritten(self) -> int:
        """Entries appended and not yet written (held in memory)."""
        return self.last_seq - self.written_seq

    @property
    def last_seq(self) -> int:
        """The seq of the last entry appended (0: none yet)."""
        return self._next_seq - 1

    @property
    def disk_bytes(self) -> int:
        """The journal's size on disk, as of its last write or check."""
        return self._disk_bytes

    # --- opening -------------------------------------------------------------------------------------

    def _recover(self) -> tuple[bytes, int, int]:
        """(journal id, last seq written, newest segment number) from the segments on disk; a new id and 0, 0 if
        none is readable."""
        segments = segment_numbers(self.directory)
        for number in reversed(segments):
            with segment_path(self.directory, number).open("rb") as file:
                header = read_segment_header(file)
                if not isinstance(header, SegmentHeader):
                    continue
                last_seq = header.first_seq - 1
                size = os.fstat(file.fileno()).st_size
                for item in scan(file, SEGMENT_HEADER.size, size, payloads=False):
                    if isinstance(item, Frame):
                        last_seq = max(last_seq, item.seq)
            return header.journal, last_seq, segments[-1]
        return os.urandom(8), 0, segments[-1] if segments else 0

    # --- the flusher thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if self.last_error is None:
                self._wake.wait()
                self._urgent.wait(GATHER_SECONDS)  # (one write, and one thread switch, for a moment's appends)
            elif (delay := self._retry_at - time.monotonic()) > 0:  # (retries go at their pace, whatever wakes)
                self._stop.wait(delay)
            self._wake.clear()
            self._urgent.clear()
            try:
                self._write_all()
            except Exception as exc:  # a bug must not end the thread: appends would only pile up
                self.write_errors += 1
                self.last_error = f"{self.directory}: {exc!r}"
                self._retry_at = time.monotonic() + self.retry_seconds
                log_safely(logging.ERROR, "journal: writing failed unexpectedly", exc_info=True)
            if self._stop.is_set():
                return

    def _write_all(self) -> None:
        """Write what is queued until nothing is left or a write fails."""
        while True:
            with self._lock:
                while self._queue and len(self._carry) < _MAX_IOV:
                    self._carry.append(self._queue.popleft())
                batch = list(self._carry)
            if not batch:
                return
            written, error = self._write(batch)
            if written:
                self._settle(batch[:written])
            if error is not None:
                self.write_errors += 1
                self.last_error = f"{self.directory}: {error.strerror or error}"
                self._retry_at = time.monotonic() + self.retry_seconds
                return
            self.last_error = None

    def _write(self, batch: list[tuple[int, bytes]]) -> tuple[int, OSError | None]:
        """Write `batch` in order; how many of its entries are written whole, and the error that stopped it."""
        done = 0
        try:
            if self._fd is not None and os.fstat(self._fd).st_nlink == 0:  # deleted under us (its directory, say)
                self._end_segment()
            while done < len(batch):
                if self._fd is None:
                    self._new_segment(batch[done][0])
                frames: list[bytes] = []
                size = self._size
                for seq, payload in batch[done:]:
                    payload = self._written_form(payload)
                    frame = FRAME_HEADER.size + len(payload)
                    if size + frame > self.segment_bytes and size > SEGMENT_HEADER.size:
                        break
                    frames += (frame_header(seq, payload), payload)
                    size += frame
                if not frames:  # the segment is full
                    self._end_segment()
                    continue
                if self.max_bytes is not None and self._disk_bytes + size - self._size > self.max_bytes:
                    self._disk_bytes = self._measure()  # (its consumer may have deleted segments since)
                    if self._disk_bytes + size - self._size > self.max_bytes:
                        raise JournalFull(errno.ENOSPC, f"the journal holds its maximum of {self.max_bytes} bytes")
                done += self._write_frames(frames, batch[done][0])
                if self._size >= self.segment_bytes:
                    self._end_segment()
        except _Cut as cut:
            return done + cut.whole, cut
        except OSError as exc:
            return done, exc
        return done, None

    def _written_form(self, payload: bytes) -> bytes:
        if self._transform is None:
            return payload
        try:
            return self._transform(payload)
        except Exception:  # (a payload the transform cannot read is written as it is)
            log_safely(logging.ERROR, "journal: an entry could not be transformed", exc_info=True)
            return payload

    def _write_frames(self, frames: list[bytes], first_seq: int) -> int:
        """Write `frames` (header, payload, header, ...) at the end of the open segment; how many entries were
        written. A failure cuts the segment back to the last whole frame and raises `_Cut`."""
        assert self._fd is not None
        start, written, total = self._size, 0, sum(map(len, frames))
        buffers: list[bytes | memoryview] = list(frames)
        try:
            while written < total:
                count = os.writev(self._fd, buffers)
                written += count
                while buffers and count >= len(buffers[0]):
                    count -= len(buffers.pop(0))
                if count:
                    buffers[0] = memoryview(buffers[0])[count:]
        except OSError as exc:
            whole, kept = 0, 0
            for index in range(0, len(frames), 2):
                frame = len(frames[index]) + len(frames[index + 1])
                if kept + frame > written:
                    break
                kept += frame
                whole += 1
            try:
                os.ftruncate(self._fd, start + kept)
            except OSError:  # (the torn frame stays: begin another segment, where it is a torn tail)
                self._end_segment()
            else:
                self._wrote(frames[:2 * whole], first_seq, start)
            raise _Cut(whole, exc) from exc
        self._wrote(frames, first_seq, start)
        return len(frames) // 2

    def _wrote(self, frames: list[bytes], first_seq: int, start: int) -> None:
        """Account for `frames` written at `start` of the open segment: its size, and the marks `read` uses."""
        offset = start
        for index in range(0, len(frames), 2):
            if not self._marks or self._marks[-1][1] != self._segment or offset - self._marks[-1][2] >= _MARK_BYTES:
                self._marks.append((first_seq + index // 2, self._segment, offset))
            offset += len(frames[index]) + len(frames[index + 1])
        self._disk_bytes += offset - start
        self._size = offset

    def _new_segment(self, first_seq: int) -> None:
        number = self._segment + 1
        self.directory.mkdir(parents=True, exist_ok=True)
        path = segment_path(self.directory, number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            header = SegmentHeader(self.journal, first_seq).encode()
            if os.write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, "no space left for a segment header")
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._fd, self._segment, self._size = fd, number, SEGMENT_HEADER.size
        self._disk_bytes = self._measure()
        oldest = min(segment_numbers(self.directory), default=number)
        self._marks = [mark for mark in self._marks if mark[1] >= oldest]

    def _new_segment_safely(self) -> None:
        try:
            self._new_segment(self._next_seq)
        except OSError as exc:  # the flusher tries again with the first entry
            self.write_errors += 1
            self.last_error = f"{self.directory}: {exc.strerror or exc}"
            self._retry_at = time.monotonic() + self.retry_seconds

    def _end_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _measure(self) -> int:
        total = 0
        for number in segment_numbers(self.directory):
            with contextlib.suppress(FileNotFoundError):
                total += segment_path(self.directory, number).stat().st_size
        return total

    def _settle(self, written: list[tuple[int, bytes]]) -> None:
        with self._lock:
            del self._carry[:len(written)]
            self.backlog -= sum(len(payload) for _, payload in written)
        with self._done:
            self.written_seq = written[-1][0]
            self._done.notify_all()
        if self._on_written is not None:
            try:
                self._on_written(self.written_seq)
            except Exception:  # (the entries are written all the same)
                log_safely(logging.ERROR, "journal: on_written failed", exc_info=True)


class _Cut(OSError):
    """A write that failed after `whole` of its entries were written whole."""

    def __init__(self, whole: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.whole = whole
