"""The consumer's side of the journal: read entries from a position, report damage, delete consumed segments.

    reader = JournalReader(state_dir / "journal")
    batch = reader.read(position)            # position: what the consumer stored last (None: from the start)
    ... store batch.entries and str(batch.position) in one transaction ...
    reader.truncate(batch.position)          # delete the segments wholly before it

A consumer that stores the position in the same transaction as what it made of the entries never handles an entry
twice nor skips one, whenever it is killed: after a crash it reads again from the position it committed. `read`
never waits: at the end of what the appender has written so far it returns what it has (an unfinished frame at the
end of the newest segment is left for the next call). Damage is skipped and reported in `batch.problems`, each once
per position (a consumer that does not store the position after them is told again).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from anthropic_proxy.store.journal.format import (
    SEGMENT_HEADER,
    Damage,
    Frame,
    Incomplete,
    SegmentHeader,
    Skipped,
    read_segment_header,
    scan,
    segment_numbers,
    segment_path,
)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a consumer is: in `segment`, at byte `offset` (0: before its header), the next entry expected being
    `seq`, in the journal whose id is `journal` (hex). `str()` and `parse` give it a form to keep in a database."""

    journal: str
    segment: int
    offset: int
    seq: int

    def __str__(self) -> str:
        return f"{self.journal}:{self.segment}:{self.offset}:{self.seq}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """`str(position)`'s position; a ValueError for anything else."""
        journal, segment, offset, seq = text.split(":")
        bytes.fromhex(journal)
        return cls(journal, int(segment), int(offset), int(seq))


def next_seq(position: Position | None) -> int:
    """The first seq a consumer at `position` has not consumed (None: it has consumed nothing, and seqs begin at
    1)."""
    return position.seq if position is not None else 1


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    payload: bytes
    end: Position  # the position just after it: what to store once it is consumed


@dataclass(frozen=True, slots=True)
class Problem:
    """What a read skipped: damaged bytes (`kind`, where, how many), or entries that are missing (`kind` None:
    seqs `missing[0]` to `missing[1]`, both included) or the consumer's position, which is of another journal
    (`foreign`: the journal was deleted and made again; it is read from its start)."""

    segment: int
    offset: int
    kind: Damage | None = None
    length: int = 0
    seq: int | None = None  # the damaged frame's, when its header could still be read
    missing: tuple[int, int] | None = None
    foreign: str | None = None  # the position's journal id

    def __str__(self) -> str:
        where = f"segment {self.segment} at byte {self.offset}"
        if self.foreign is not None:
            return f"the position kept is of another journal ({self.foreign}): reading this one from its start"
        if self.missing is not None:
            first, last = self.missing
            return f"entries {first} to {last} are missing (before {where})"
        entry = f" (entry {self.seq})" if self.seq is not None else ""
        return f"{self.kind}{entry}: {self.length} byte(s) skipped in {where}"


@dataclass(slots=True)
class Batch:
    entries: list[Entry] = field(default_factory=list)
    position: Position | None = None  # where the next read goes on from (None: the journal has no segment yet)
    problems: list[Problem] = field(default_factory=list)


class JournalReader:
    """Reads one journal directory. Not thread-safe; one consumer at a time (the store's writer process)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._headers: dict[int, SegmentHeader] = {}  # (a segment's header never changes once whole)
        self._open: tuple[int, BinaryIO] | None = None

    def read(self, after: Position | None, *, max_bytes: int = 8 << 20, max_entries: int = 10_000) -> Batch:
        """The entries after `after` (None: from the journal's start), up to about `max_bytes` of payloads (at least
        one entry when there is one) and `max_entries`, with the damage skipped on the way."""
        batch = Batch(position=after)
        segments = segment_numbers(self.directory)  # (listed before any size is read: see format.py)
        if not segments:
            return batch
        position = self._start(after, segments, batch.problems)
        if position is None:
            return batch
        size_read = 0
        index = segments.index(position.segment)
        while True:
            newest = index == len(segments) - 1
            position, stop = self._read_segment(position, newest, batch, max_entries, max_bytes - size_read)
            batch.position = position
            size_read = sum(len(entry.payload) for entry in batch.entries)
            if stop or newest or len(batch.entries) >= max_entries or size_read >= max_bytes:
                return batch
            index += 1
            position = Position(position.journal, segments[index], 0, position.seq)

    def truncate(self, position: Position) -> int:
        """Delete the segments of `position`'s journal wholly before it; how many were deleted."""
        deleted = 0
        for number in segment_numbers(self.directory):
            if number >= position.segment:
                break
            header = self._header(number)
            if isinstance(header, SegmentHeader) and header.journal.hex() != position.journal:
                continue  # (not this journal's: never delete what a position does not cover)
            if self._open is not None and self._open[0] == number:
                self._close()
            with contextlib.suppress(FileNotFoundError):
                segment_path(self.directory, number).unlink()
            self._headers.pop(number, None)
            deleted += 1
        return deleted

    def journal_id(self) -> str | None:
        """The id of the journal in the directory (hex), None while it has no segment: the key of its position."""
        return self._journal_id(segment_numbers(self.directory))

    def close(self) -> None:
        self._close()

    # --- inside -------------------------------------------------------------------------------------

    def _start(self, after: Position | None, segments: list[int], problems: list[Problem]) -> Position | None:
        """Where to read from: `after`, or the journal's start when there is none or it is another journal's."""
        journal = self._journal_id(segments)
        if journal is None:  # no segment has a whole header yet
            return None
        if after is not None and after.journal == journal:
            later = [number for number in segments if number >= after.segment]
            if not later:  # (its segments are gone; the appender's next one comes after)
                return None
            return after if later[0] == after.segment else Position(journal, later[0], 0, after.seq)
        if after is not None:
            problems.append(Problem(after.segment, after.offset, foreign=after.journal))
        return Position(journal, segments[0], 0, 0)

    def _journal_id(self, segments: list[int]) -> str | None:
        """The id of the journal in the directory: the newest whole segment header's."""
        for number in reversed(segments):
            if isinstance(header := self._header(number), SegmentHeader):
                return header.journal.hex()
        return None

    def _header(self, number: int) -> SegmentHeader | bytes:
        if (known := self._headers.get(number)) is not None:
            return known
        try:
            with segment_path(self.directory, number).open("rb") as file:
                header = read_segment_header(file)
        except FileNotFoundError:
            return b""
        if isinstance(header, SegmentHeader):
            self._headers[number] = header
        return header

    def _read_segment(self, position: Position, newest: bool, batch: Batch, max_entries: int,
                      max_bytes: int) -> tuple[Position, bool]:
        """Read one segment from `position` into `batch`; the position after what was read, and whether the read must
        stop there (a limit reached, or the newest segment's end)."""
        number, seq = position.segment, position.seq
        try:
            file = self._file(number)
        except FileNotFoundError:  # (deleted under us: by whom could only be a person; go on with the next)
            return position, newest
        size = os.fstat(file.fileno()).st_size
        offset = position.offset
        if offset == 0:
            header = self._header(number)
            if not isinstance(header, SegmentHeader):
                if newest and len(header) < SEGMENT_HEADER.size:  # being created
                    return position, True
                batch.problems.append(Problem(number, 0, Damage.BAD_SEGMENT, size))
                return Position(position.journal, number, size, seq), False
            if header.journal.hex() != position.journal:  # a stray segment of another journal
                batch.problems.append(Problem(number, 0, Damage.BAD_SEGMENT, size))
                return Position(position.journal, number, size, seq), False
            if seq and header.first_seq > seq:
                batch.problems.append(Problem(number, 0, missing=(seq, header.first_seq - 1)))
            seq = header.first_seq if not seq or header.first_seq > seq else seq
            offset = SEGMENT_HEADER.size
        taken = 0
        for item in scan(file, offset, size):
            if isinstance(item, Incomplete):
                if newest:  # still being written
                    return Position(position.journal, number, item.offset, seq), True
                last = batch.problems[-1] if batch.problems else None
                if last is not None and last.segment == number and last.offset + last.length == item.offset \
                        and last.kind is Damage.UNREADABLE:  # (the scan kept those bytes for a header yet to come)
                    batch.problems[-1] = Problem(number, last.offset, Damage.UNREADABLE, last.length + item.length)
                else:
                    batch.problems.append(Problem(number, item.offset, Damage.TORN_TAIL, item.length))
                offset = size
                break
            if isinstance(item, Skipped):
                batch.problems.append(Problem(number, item.offset, item.kind, item.length, item.seq))
                if item.seq is not None:
                    seq = max(seq, item.seq + 1)
                offset = item.offset + item.length
                continue
            assert isinstance(item, Frame) and item.payload is not None
            if item.seq > seq:
                batch.problems.append(Problem(number, item.offset, missing=(seq, item.seq - 1)))
            seq = item.seq + 1
            offset = item.end
            batch.entries.append(Entry(item.seq, item.payload, Position(position.journal, number, offset, seq)))
            taken += len(item.payload)
            if len(batch.entries) >= max_entries or taken >= max_bytes:
                return batch.entries[-1].end, True
        return Position(position.journal, number, offset, seq), False

    def _file(self, number: int) -> BinaryIO:
        if self._open is not None and self._open[0] == number:
            return self._open[1]
        self._close()
        file = segment_path(self.directory, number).open("rb")
        self._open = (number, file)
        return file

    def _close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None
