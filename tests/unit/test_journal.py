"""The on-disk journal: framing, rotation, resuming, consuming, and what it does with damage and a full disk."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from anthropic_proxy.store.journal import Damage, Journal, JournalBusy, JournalReader, Position
from anthropic_proxy.store.journal.format import (
    FRAME_HEADER,
    SEGMENT_HEADER,
    checksum,
    segment_numbers,
    segment_path,
)


def payload(i: int, size: int = 0) -> bytes:
    """A distinct payload per `i` (of `size` bytes, or a size that varies with `i`)."""
    size = size or 1 + (i * 7919) % 3000
    return (f"{i}:".encode() * (size // 2 + 1))[:size]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "journal"


@pytest.fixture
def journal(directory: Path) -> Iterator[Journal]:
    journal = Journal(directory, segment_bytes=64 << 10)
    yield journal
    journal.close()


def append_all(journal: Journal, payloads: list[bytes]) -> list[int]:
    seqs = [journal.append(data) for data in payloads]
    assert journal.flush(5)
    assert None not in seqs
    return seqs  # type: ignore[return-value]


def read_all(directory: Path, after: Position | None = None):
    reader = JournalReader(directory)
    batch = reader.read(after, max_bytes=1 << 40, max_entries=1 << 40)
    reader.close()
    return batch


def test_entries_come_back_in_order_across_rotated_segments(journal: Journal, directory: Path):
    payloads = [payload(i) for i in range(1, 401)] + [b"", payload(0, 200_000)]  # an empty and an oversized one
    seqs = append_all(journal, payloads)
    assert seqs == list(range(1, len(payloads) + 1))
    assert len(segment_numbers(directory)) > 5  # rotated (64 KiB segments)
    assert all(segment_path(directory, n).stat().st_size <= (64 << 10) + 200_100 for n in segment_numbers(directory))
    batch = read_all(directory)
    assert [entry.payload for entry in batch.entries] == payloads
    assert [entry.seq for entry in batch.entries] == seqs
    assert batch.problems == []
    assert batch.position == batch.entries[-1].end


def test_reading_in_small_batches_resumes_where_each_ended(journal: Journal, directory: Path):
    payloads = [payload(i) for i in range(1, 301)]
    append_all(journal, payloads)
    reader = JournalReader(directory)
    position, seen = None, []
    while True:
        batch = reader.read(position, max_entries=7, max_bytes=10_000)
        if not batch.entries:
            break
        assert len(batch.entries) <= 7
        seen += [entry.payload for entry in batch.entries]
        position = Position.parse(str(batch.position))  # (kept as text, as a database would)
    assert seen == payloads


def test_a_read_at_the_end_returns_nothing_and_later_entries_follow(journal: Journal, directory: Path):
    append_all(journal, [b"one"])
    reader = JournalReader(directory)
    first = reader.read(None)
    assert reader.read(first.position).entries == []
    append_all(journal, [b"two"])
    assert [e.payload for e in reader.read(first.position).entries] == [b"two"]


def test_reopening_starts_a_new_segment_and_continues_the_seqs(directory: Path):
    journal = Journal(directory)
    append_all(journal, [b"a", b"b"])
    assert journal.close() == 0
    position = read_all(directory).position
    journal = Journal(directory)
    try:
        assert append_all(journal, [b"c"]) == [3]
        assert len(segment_numbers(directory)) == 2
        batch = read_all(directory, position)
        assert [(e.seq, e.payload) for e in batch.entries] == [(3, b"c")]
        assert batch.problems == []
        assert JournalReader(directory).journal_id() == journal.journal.hex() == position.journal
    finally:
        journal.close()


def test_one_appender_per_journal(journal: Journal, directory: Path):
    with pytest.raises(JournalBusy):
        Journal(directory)


def test_truncate_deletes_only_consumed_segments(journal: Journal, directory: Path):
    payloads = [payload(i, 10_000) for i in range(1, 61)]
    append_all(journal, payloads)
    before = segment_numbers(directory)
    reader = JournalReader(directory)
    half = reader.read(None, max_entries=30)
    deleted = reader.truncate(half.position)
    assert deleted == half.position.segment - before[0] > 0
    assert segment_numbers(directory)[0] == half.position.segment
    rest = reader.read(half.position, max_entries=1000)
    assert [e.payload for e in rest.entries] == payloads[30:]
    reader.truncate(rest.position)
    assert segment_numbers(directory) == [before[-1]]  # the newest stays: the appender writes it
    assert journal.disk_bytes > 0
    assert journal.read(1) is None  # consumed and deleted
    assert journal.read(60) == payloads[-1]


def test_an_appender_reads_back_entries_not_consumed(journal: Journal):
    payloads = [payload(i, 50_000) for i in range(1, 101)]  # several read marks per segment
    append_all(journal, payloads)
    for seq in (1, 2, 21, 22, 57, 100):
        assert journal.read(seq) == payloads[seq - 1]
    assert journal.read(101) is None


def test_position_stored_with_the_work_in_one_transaction(journal: Journal, directory: Path, tmp_path: Path):
    """The consumer's pattern: what it made of the entries and its position commit together, so a crash between
    reading and committing makes it read the same entries again, never skip or repeat one."""
    db = sqlite3.connect(tmp_path / "consumer.sqlite3", isolation_level=None)
    db.execute("CREATE TABLE rows (seq INTEGER PRIMARY KEY, payload BLOB)")
    db.execute("CREATE TABLE position (id INTEGER PRIMARY KEY CHECK (id = 1), value TEXT)")
    payloads = [payload(i) for i in range(1, 51)]
    append_all(journal, payloads)

    def consume(crash_before_commit: bool) -> None:
        row = db.execute("SELECT value FROM position").fetchone()
        reader = JournalReader(directory)
        batch = reader.read(Position.parse(row[0]) if row else None, max_entries=20)
        db.execute("BEGIN")
        db.executemany("INSERT INTO rows VALUES (?, ?)", [(e.seq, e.payload) for e in batch.entries])
        db.execute("INSERT OR REPLACE INTO position VALUES (1, ?)", (str(batch.position),))
        if crash_before_commit:
            db.execute("ROLLBACK")
            return
        db.execute("COMMIT")
        reader.truncate(batch.position)

    consume(False)
    consume(True)
    consume(False)
    consume(True)
    consume(False)
    assert [bytes(p) for (p,) in db.execute("SELECT payload FROM rows ORDER BY seq")] == payloads


def corrupt(path: Path, offset: int, data: bytes = b"\xff") -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        original = file.read(len(data))
        file.seek(offset)
        file.write(bytes(a ^ b for a, b in zip(original, data, strict=True)))


def frame_offsets(payloads: list[bytes]) -> list[int]:
    offsets, at = [], SEGMENT_HEADER.size
    for data in payloads:
        offsets.append(at)
        at += FRAME_HEADER.size + len(data)
    return offsets


def closed_journal(directory: Path, count: int) -> tuple[list[bytes], Path]:
    """A journal holding entries 1..`count`, closed: their payloads, and its one segment."""
    journal = Journal(directory)
    payloads = [payload(i) for i in range(1, count + 1)]
    append_all(journal, payloads)
    journal.close()
    return payloads, segment_path(directory, segment_numbers(directory)[0])


def test_a_bad_checksum_mid_file_skips_that_entry_only(directory: Path):
    payloads, segment = closed_journal(directory, 5)
    at = frame_offsets(payloads)[2]
    corrupt(segment, at + FRAME_HEADER.size + 10)
    batch = read_all(directory)
    assert [e.seq for e in batch.entries] == [1, 2, 4, 5]
    [problem] = batch.problems
    assert (problem.kind, problem.seq, problem.offset) == (Damage.BAD_CHECKSUM, 3, at)
    assert problem.length == FRAME_HEADER.size + len(payloads[2])
    assert "bad checksum (entry 3)" in str(problem)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 50_000])
def test_the_checksum_taken_in_pieces_is_the_payloads_crc32(size: int):
    data = os.urandom(size)
    assert checksum(data) == zlib.crc32(data) == checksum(memoryview(data))


def test_damage_in_the_last_piece_of_a_large_entry_is_found(directory: Path):
    journal = Journal(directory)
    payloads = [os.urandom(50_000) for _ in range(3)]
    append_all(journal, payloads)
    journal.close()
    at = frame_offsets(payloads)[1]
    corrupt(segment_path(directory, segment_numbers(directory)[0]), at + FRAME_HEADER.size + 49_990)
    batch = read_all(directory)
    assert [e.payload for e in batch.entries] == [payloads[0], payloads[2]]
    assert [(p.kind, p.seq) for p in batch.problems] == [(Damage.BAD_CHECKSUM, 2)]


def test_a_damaged_header_is_skipped_to_the_next_valid_frame(directory: Path):
    payloads, segment = closed_journal(directory, 5)
    offsets = frame_offsets(payloads)
    corrupt(segment, offsets[1] + 5)  # entry 2's length: its header no longer checks
    batch = read_all(directory)
    assert [e.payload for e in batch.entries] == [payloads[0], *payloads[2:]]
    unreadable, missing = batch.problems
    assert (unreadable.kind, unreadable.offset, unreadable.length) == (
        Damage.UNREADABLE, offsets[1], offsets[2] - offsets[1])
    assert missing.missing == (2, 2)


def test_a_torn_tail_is_left_while_newest_then_skipped_once_a_new_segment_exists(directory: Path):
    payloads, segment = closed_journal(directory, 3)
    torn = segment.stat().st_size - 5  # a crash cut the last frame's write short
    os.truncate(segment, torn)
    at = frame_offsets(payloads)[2]

    batch = read_all(directory)  # newest segment: the frame may still be being written
    assert [e.seq for e in batch.entries] == [1, 2]
    assert batch.problems == []
    assert batch.position.offset == at

    journal = Journal(directory)  # recovery: the appender starts a new segment at once, which settles the tail
    try:
        recovered = read_all(directory, batch.position)
        assert recovered.entries == []
        [problem] = recovered.problems
        assert (problem.kind, problem.offset, problem.length) == (Damage.TORN_TAIL, at, torn - at)
        assert append_all(journal, [b"after"]) == [3]  # (the torn entry's seq is given again)
        batch = read_all(directory, recovered.position)
        assert [(e.seq, e.payload) for e in batch.entries] == [(3, b"after")]
        assert batch.problems == []
    finally:
        journal.close()


def test_a_position_of_another_journal_reads_this_one_from_its_start(directory: Path):
    journal = Journal(directory)
    append_all(journal, [b"old"])
    journal.close()
    old = read_all(directory).position
    for number in segment_numbers(directory):  # the journal is deleted and made again
        segment_path(directory, number).unlink()
    journal = Journal(directory)
    try:
        append_all(journal, [b"new 1", b"new 2"])
        batch = read_all(directory, old)
        assert [e.payload for e in batch.entries] == [b"new 1", b"new 2"]
        assert batch.problems[0].foreign == old.journal
    finally:
        journal.close()


def test_append_never_waits_while_writes_fail_and_everything_lands_after(directory: Path, monkeypatch):
    """ENOSPC in the middle of a write: the whole frames stay, the rest is retried, nothing is torn or doubled."""
    journal = Journal(directory, retry_seconds=0.05, backlog_bytes=200_000)
    real_writev = os.writev
    free = {"bytes": 50_500}  # a disk with room for 50 and a half entries

    def writev(fd, buffers):  # writes what fits (part of a frame too), then refuses
        data = b"".join(buffers)[:free["bytes"]]
        if not data:
            raise OSError(28, "No space left on device")
        free["bytes"] -= len(data)
        return real_writev(fd, [data])

    try:
        monkeypatch.setattr(os, "writev", writev)
        payloads = [payload(i, 1000) for i in range(1, 400)]
        seqs = [journal.append(data) for data in payloads[:100]]  # more than fits
        deadline = time.monotonic() + 5
        while journal.last_error is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "No space left" in journal.last_error
        started = time.perf_counter()
        seqs += [journal.append(data) for data in payloads[100:]]
        assert time.perf_counter() - started < 0.5
        assert journal.lost == seqs.count(None) > 0  # the backlog bound (200 kB of 1 kB payloads)
        assert journal.backlog <= 200_000
        free["bytes"] = 1 << 30
        assert journal.flush(5)
        assert journal.last_error is None and journal.write_errors > 0
        batch = read_all(directory)
        kept = [data for data, seq in zip(payloads, seqs, strict=True) if seq is not None]
        assert [e.payload for e in batch.entries] == kept
        assert batch.problems == []
    finally:
        monkeypatch.undo()
        journal.close()


def test_a_full_disk_holds_entries_in_memory_until_space_returns(tmpfs):
    tiny_disk = tmpfs("1m")
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (900 << 10))
    directory = tiny_disk / "journal"
    journal = Journal(directory, segment_bytes=32 << 10, retry_seconds=0.05, backlog_bytes=1 << 20)
    try:
        payloads = [payload(i, 5000) for i in range(1, 101)]  # 500 kB: more than is free
        seqs = [journal.append(data) for data in payloads]
        assert None not in seqs
        assert not journal.flush(0.5)
        assert "No space left" in (journal.last_error or "")
        assert 0 < journal.backlog < 500_000 and 0 < journal.unwritten < 100
        filler.unlink()
        assert journal.flush(5)
        assert journal.last_error is None and journal.lost == 0
        batch = read_all(directory)
        assert [e.payload for e in batch.entries] == payloads
        assert batch.problems == []
    finally:
        journal.close()


def test_max_bytes_bounds_the_journal_until_its_consumer_catches_up(directory: Path):
    journal = Journal(directory, segment_bytes=32 << 10, max_bytes=200 << 10, retry_seconds=0.05)
    try:
        payloads = [payload(i, 10_000) for i in range(1, 41)]  # 400 kB
        for data in payloads:
            journal.append(data)
        assert not journal.flush(0.5)
        assert "maximum" in (journal.last_error or "")
        assert journal.disk_bytes <= 200 << 10
        reader = JournalReader(directory)
        position, seen = None, []
        deadline = time.monotonic() + 10
        while len(seen) < len(payloads):
            assert time.monotonic() < deadline
            batch = reader.read(position)
            seen += [e.payload for e in batch.entries]
            position = batch.position or position
            if position is not None:
                reader.truncate(position)
            time.sleep(0.02)
        assert seen == payloads
        assert journal.flush(1) and journal.lost == 0
    finally:
        journal.close()


_APPENDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from anthropic_proxy.store.journal import Journal
    journal = Journal(Path(sys.argv[1]))
    seq = 0
    while True:
        seq = journal.append(b"%d" % (seq + 1) * 5000)
        print(seq, time.time(), flush=True)
        time.sleep(0.001)
""")


def test_a_sigkill_loses_no_entry_appended_before_it(directory: Path):
    child = subprocess.Popen([sys.executable, "-c", _APPENDER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    appended = []
    for line in child.stdout:
        seq, at = line.split()
        appended.append((int(seq), float(at)))
        if len(appended) == 500:
            break
    child.send_signal(signal.SIGKILL)
    killed_at = time.time()
    child.wait()
    batch = read_all(directory)
    got = [e.seq for e in batch.entries]
    assert got == list(range(1, len(got) + 1))
    bound = [seq for seq, at in appended if at < killed_at - 0.1]  # appended more than 0.1 s before the kill
    assert len(bound) > 100 and set(bound) <= set(got)
    assert batch.problems == []  # (an entry cut short by the kill is an incomplete frame, not yet a torn tail)


def test_unreadable_bytes_at_the_end_are_reported_whole_once_the_segment_is_left(directory: Path):
    journal = Journal(directory)
    append_all(journal, [b"a", b"b"])
    journal.close()
    segment = segment_path(directory, segment_numbers(directory)[0])
    end = segment.stat().st_size
    with segment.open("ab") as file:  # zeros where a crash of the machine left a file longer than its data
        file.write(b"\0" * 100)
    assert [e.payload for e in read_all(directory).entries] == [b"a", b"b"]
    journal = Journal(directory)
    try:
        append_all(journal, [b"c"])
        batch = read_all(directory)
        assert [e.payload for e in batch.entries] == [b"a", b"b", b"c"]
        [problem] = batch.problems
        assert (problem.kind, problem.offset, problem.length) == (Damage.UNREADABLE, end, 100)
    finally:
        journal.close()


def test_the_store_keeps_a_position_per_journal_in_the_writers_transaction(tmp_path: Path, store_url: str):
    from anthropic_proxy.store import consumed
    from anthropic_proxy.store.dialects import dialect_for

    dialect = dialect_for(tmp_path, store_url, busy_timeout=5)
    db = dialect.connect()
    try:
        dialect.migrate(db)
        first, other = Position("00" * 8, 3, 1000, 41), Position("11" * 8, 1, 32, 1)
        assert consumed.load(db, first.journal) is None
        for position in (Position(first.journal, 1, 32, 1), first, other):
            db.begin_write()
            consumed.save(db, position)
            db.commit()
        db.begin_write()
        consumed.save(db, Position(first.journal, 9, 9, 99))
        db.rollback()  # (the rows it went with were not written either)
        assert consumed.load(db, first.journal) == first
        assert consumed.load(db, other.journal) == other
    finally:
        db.close()


def test_a_journal_deleted_under_its_appender_goes_on_in_a_new_directory(journal: Journal, directory: Path):
    append_all(journal, [b"before"])
    position = read_all(directory).position
    for path in directory.iterdir():  # `rm -rf` of the state dir
        path.unlink()
    directory.rmdir()
    append_all(journal, [b"after"])
    batch = read_all(directory, position)
    assert [(e.seq, e.payload) for e in batch.entries] == [(2, b"after")]
    assert batch.problems == []


KEY = "sk-ant-api03-" + "Zq7" * 14 + "-end9"


def test_an_entry_holds_no_key_anywhere_a_call_could_carry_one():
    from anthropic_proxy.record.capture import Capture, Ending
    from anthropic_proxy.record.derive import to_record
    from anthropic_proxy.record.model import Attempt
    from anthropic_proxy.store.writer.protocol import entry, masked

    carried = Capture(
        id="r1", started=1.0, method="POST", path=f"/v1/messages?key={KEY}", request_headers={},
        request=f'{{"note": "{KEY}"}}'.encode(), upstream_request=f"Bearer {KEY}".encode(), streamed=True,
        client_log=[(1.0, b"event: a\n"), (2.0, f"data: {KEY}\n\n".encode())],
        attempts=[Attempt(provider="p", error=f"refused {KEY}")],
        ending=Ending("failed", f"upstream said {KEY}", "api_error"))
    written = masked(entry(carried))
    assert KEY[12:-4].encode() not in written
    back = Capture.decode(written[1:])
    assert back.client_log[0] == (1.0, b"event: a\n") and back.request.startswith(b'{"note": "sk-ant-api')
    assert back.ending is not None and back.ending.error_type == "api_error"
    # the sizes are those that passed, not those of the masked bytes
    assert len(back.request) < len(carried.request) and back.request_bytes == len(carried.request)
    assert back.response_bytes == sum(len(data) for _, data in carried.client_log)
    assert to_record(back).metrics.request_bytes == len(carried.request)

    # what a Claude Code request holds (masked header values, "sk-" and "clearer" in prose) goes as it is
    plain = entry(Capture(id="r2", started=1.0, method="POST", path="/v1/messages",
                          request_headers={"x-api-key": "sk-ant-api...end9"},
                          request=b'{"text": "a risk-first plan, clearer than a bearer of news"}'))
    assert masked(plain) is plain


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_a_key_in_a_content_coded_stream_does_not_reach_the_journal(coding: str):
    """A stream that passed gzip'd (or br) hides its keys from a look through its bytes: the journal looks through
    it decoded, and writes it decoded and masked; its size stays the one that passed, and its record is the same."""
    import gzip

    import brotli

    from anthropic_proxy.record.capture import Capture, Ending
    from anthropic_proxy.record.derive import to_record
    from anthropic_proxy.store.writer.protocol import entry, masked
    from anthropic_proxy.wire.sse import encode_event

    def stream(text: str) -> bytes:
        return b"".join([
            encode_event("message_start", {"type": "message_start", "message": {
                "id": "m", "type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": 1}}}),
            encode_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}}),
            encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta", "text": text}}),
            encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            encode_event("message_stop", {"type": "message_stop"})])

    compress = gzip.compress if coding == "gzip" else brotli.compress

    def captured(text: str) -> Capture:
        coded = compress(stream(text))
        return Capture(id="r1", started=1.0, method="POST", path="/v1/messages", request_headers={},
                       request=b'{"stream": true}', status=200, streamed=True, ending=Ending("completed"),
                       response_headers={"content-type": "text/event-stream", "Content-Encoding": coding},
                       client_log=[(1.0, coded[:20]), (2.0, coded[20:])])

    carried = captured(f"your key is {KEY}")
    written = masked(entry(carried))
    back = Capture.decode(written[1:])
    record = to_record(back)
    assert record.status == "success" and record.message["content"][0]["text"] == f"your key is {KEY[:10]}...end9"
    assert KEY[12:-4] not in record.model_dump_json(), "no key once the journal's bytes are read"
    assert back.response_bytes == carried.response_bytes, "the size that passed"
    assert "Content-Encoding" not in back.response_headers and back.response_headers["content-type"]

    clean = entry(captured("nothing secret here"))
    assert masked(clean) is clean, "a coded stream without a key is written as it passed"

    running = captured(f"your key is {KEY}")
    running.ending, running.client_log = None, running.client_log[:1]  # (half of it passed: no end to its coding yet)
    running.client_log[0] = (1.0, compress(stream(f"your key is {KEY}"))[:-12])
    written = b"".join(data for _, data in Capture.decode(masked(entry(running))[1:]).client_log)
    assert f"your key is {KEY[:10]}...end9".encode() in written and KEY[12:-4].encode() not in written
