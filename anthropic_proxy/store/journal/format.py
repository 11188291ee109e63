"""The journal's bytes on disk: segment files of framed, checksummed entries, and the one scanner that reads them.

    journal/000000000001.seg   a segment: a header, then frames, appended in order
    journal/lock               held (flock) by the one process that appends

    segment header (32 bytes)  magic "APJRNL01" | journal id (8 random bytes) | first seq (u64) | crc32 (u32) | 0000
    frame (24 + n bytes)       magic a7 4a 45 01 | n (u32) | seq (u64) | crc32 of the payload (u32)
                               | crc32 of the 20 header bytes before it (u32) | payload (n bytes)

All integers are little-endian. The journal id tells one journal from another (a position kept for a journal that
was deleted and made again must not skip the new one's entries); seqs run on across segments, without gaps unless
bytes were damaged. The header's own checksum makes its length trustworthy: a frame whose payload fails its checksum
is skipped by that length alone; a header that fails its checksum is skipped by looking for the next valid header
(`resync`), which a payload's bytes cannot fake without also matching a 32-bit checksum.

A reader may scan a segment while its appender writes it. A write makes its bytes visible in order (the file's size
only grows past bytes already copied), so an incomplete frame at the end of the newest segment is one still being
written; once a later segment exists, the appender is done with the earlier one and such a frame is a torn tail.
"""

from __future__ import annotations

import enum
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SEGMENT_MAGIC = b"APJRNL01"
SEGMENT_HEADER = struct.Struct("<8s8sQI4x")
FRAME_MAGIC = b"\xa7JE\x01"
FRAME_HEADER = struct.Struct("<4sIQII")
_FRAME_CHECKED = struct.Struct("<4sIQI")  # the header's first 20 bytes: what its own checksum covers
MAX_PAYLOAD = 1 << 30  # a header claiming more is damaged (an API request body is far smaller)
_SEGMENT_NAME = re.compile(r"^(\d{12})\.seg$")
_RESYNC_CHUNK = 1 << 20


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:012d}.seg"


def segment_numbers(directory: Path) -> list[int]:
    """The numbers of the segments in `directory`, oldest first (none if it does not exist)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(match[1]) for name in names if (match := _SEGMENT_NAME.match(name)))


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    journal: bytes  # the journal's id
    first_seq: int  # the seq of the segment's first frame (the next one's, if it has none)

    def encode(self) -> bytes:
        head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, self.journal, self.first_seq, 0)
        return head[:24] + zlib.crc32(head[:24]).to_bytes(4, "little") + head[28:]

    @classmethod
    def decode(cls, data: bytes) -> SegmentHeader | None:
        """The header in `data` (SEGMENT_HEADER.size bytes), or None if it is damaged."""
        magic, journal, first_seq, crc = SEGMENT_HEADER.unpack(data)
        if magic != SEGMENT_MAGIC or zlib.crc32(data[:24]) != crc:
            return None
        return cls(journal, first_seq)


_CHECKSUM_PIECE = 4096  # under zlib's 5 KiB, past which `zlib.crc32` lets go of the GIL


def checksum(payload: bytes | memoryview) -> int:
    """The CRC-32 of `payload`, a frame's payload checksum (written and checked), taken in pieces that keep the
    GIL. The appender's flusher thread checksums each entry between two writes: a crc32 that let the GIL go for
    every entry would hand it to the proxy's event loop and take it back each time (a wait on the loop's side
    whenever it comes back from a socket write), where one batch holding it throughout costs the loop one wait."""
    if len(payload) <= _CHECKSUM_PIECE:
        return zlib.crc32(payload)
    crc, view = 0, memoryview(payload)
    for start in range(0, len(view), _CHECKSUM_PIECE):
        crc = zlib.crc32(view[start:start + _CHECKSUM_PIECE], crc)
    return crc


def frame_header(seq: int, payload: bytes | memoryview) -> bytes:
    """The 24 bytes that go before `payload` in the journal."""
    head = _FRAME_CHECKED.pack(FRAME_MAGIC, len(payload), seq, checksum(payload))
    return head + zlib.crc32(head).to_bytes(4, "little")


def _valid_header(data: bytes) -> tuple[int, int, int] | None:
    """(length, seq, payload checksum) of the frame header in `data`, or None if it is not a valid one."""
    magic, length, seq, payload_crc, crc = FRAME_HEADER.unpack(data)
    if magic != FRAME_MAGIC or zlib.crc32(data[:20]) != crc or length > MAX_PAYLOAD:
        return None
    return length, seq, payload_crc


class Damage(enum.StrEnum):
    TORN_TAIL = "torn tail"  # an incomplete frame at the end of a segment the appender has left
    BAD_CHECKSUM = "bad checksum"  # a frame whose payload does not match its checksum
    UNREADABLE = "unreadable bytes"  # bytes where a frame header should be that are not one
    BAD_SEGMENT = "bad segment header"  # a segment whose header is damaged or missing: its frames are skipped


@dataclass(frozen=True, slots=True)
class Frame:
    seq: int
    offset: int  # where its header starts
    end: int  # just after its payload
    payload: bytes | None  # None when the scan was asked not to read payloads


@dataclass(frozen=True, slots=True)
class Skipped:
    """Bytes of a segment that hold no readable frame."""

    kind: Damage
    offset: int
    length: int
    seq: int | None = None  # the frame's seq, when its header could be read (a bad checksum)


@dataclass(frozen=True, slots=True)
class Incomplete:
    """Where the complete frames of a scan end: the rest (`length` bytes) is an unfinished or torn frame."""

    offset: int
    length: int


def scan(file: BinaryIO, offset: int, size: int, *, payloads: bool = True) -> Iterator[Frame | Skipped | Incomplete]:
    """The frames of a segment `file` from `offset` (a frame's start) up to `size` bytes, and the damage between.

    Ends with an `Incomplete` when the bytes end inside a frame. Unreadable bytes at the very end are reported only
    up to where a header that is still being written could begin: a later scan continues from there.
    `payloads=False` reads headers only (payloads are neither read nor checked)."""
    while offset < size:
        if size - offset < FRAME_HEADER.size:
            yield Incomplete(offset, size - offset)
            return
        file.seek(offset)
        header = _valid_header(file.read(FRAME_HEADER.size))
        if header is None:
            found = resync(file, offset + 1, size)
            # Unreadable up to the end: a header may yet complete in its last bytes.
            resume = found if found is not None else max(offset + 1, size - FRAME_HEADER.size + 1)
            yield Skipped(Damage.UNREADABLE, offset, resume - offset)
            offset = resume
            continue
        length, seq, payload_crc = header
        end = offset + FRAME_HEADER.size + length
        if end > size:
            yield Incomplete(offset, size - offset)
            return
        if not payloads:
            yield Frame(seq, offset, end, None)
        elif checksum(payload := file.read(length)) != payload_crc:
            yield Skipped(Damage.BAD_CHECKSUM, offset, end - offset, seq)
        else:
            yield Frame(seq, offset, end, payload)
        offset = end


def resync(file: BinaryIO, offset: int, size: int) -> int | None:
    """The offset of the first valid frame header at or after `offset` (whole, before `size`), or None."""
    while offset <= size - FRAME_HEADER.size:
        file.seek(offset)
        chunk = file.read(min(_RESYNC_CHUNK, size - offset))
        start = 0
        while (at := chunk.find(FRAME_MAGIC, start)) >= 0:
            if offset + at + FRAME_HEADER.size > size:
                return None
            candidate = chunk[at:at + FRAME_HEADER.size]
            if len(candidate) < FRAME_HEADER.size:  # the header runs past this chunk: read it whole
                file.seek(offset + at)
                candidate = file.read(FRAME_HEADER.size)
            if _valid_header(candidate) is not None:
                return offset + at
            start = at + 1
        # (a magic cut by the chunk's end is found by the next chunk, which starts 3 bytes before it)
        offset += max(1, len(chunk) - len(FRAME_MAGIC) + 1)
    return None


def read_segment_header(file: BinaryIO) -> SegmentHeader | bytes:
    """The segment's header; or, when it is damaged or incomplete, the bytes there are of it."""
    file.seek(0)
    data = file.read(SEGMENT_HEADER.size)
    if len(data) < SEGMENT_HEADER.size:
        return data
    return SegmentHeader.decode(data) or data
