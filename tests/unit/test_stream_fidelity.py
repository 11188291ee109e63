"""Fuzz-style: every recorded stream in tests/data/anthropic_sse, re-encoded every legal way (each SSE line end, each
content coding, with and without `event:` lines or a byte order mark) and cut at random, must give the same record,
whether or not anyone in the proxy watches it live (the monitor's progress reads it as it flows) and whoever derives
it (`to_record` in the proxy, `to_stored` in the store's writer, from the capture as it crossed to the writer)."""

from __future__ import annotations

import gzip
import itertools
import json
import random
import zlib
from pathlib import Path
from typing import Any

import brotli
import pytest

from anthropic_proxy.capture.exchange import Exchange
from anthropic_proxy.capture.live import LiveBus
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.derive import to_record, to_stored
from anthropic_proxy.record.model import Record
from anthropic_proxy.wire.codings import ContentDecoder

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # Python < 3.14: mitmproxy's own dependency
    from backports import zstd

DATA = Path(__file__).parent.parent / "data" / "anthropic_sse"
FIXTURES = sorted([*DATA.glob("*/*.chunks.txt"), *DATA.glob("*/*.sse")])
LINE_ENDS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
ENCODERS = {
    "identity": lambda data: data,
    "gzip": lambda data: gzip.compress(data, mtime=0),
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
}


def events_of(path: Path) -> list[dict[str, Any]]:
    """A fixture's events' JSON, in order (`.chunks.txt`: one per line; `.sse`: an OpenAI-style SSE body)."""
    lines = path.read_text().splitlines()
    if path.suffix == ".sse":
        lines = [line.removeprefix("data: ") for line in lines if line.startswith("data: {")]
    return [json.loads(line) for line in lines if line.strip()]


def wire(events: list[dict[str, Any]], *, named: bool, bom: bool, line_end: bytes, coding: str) -> bytes:
    """The stream as an upstream could send it."""
    text = "".join((f"event: {e.get('type') or 'message'}\n" if named else "") + f"data: {json.dumps(e)}\n\n"
                   for e in events)
    raw = (b"\xef\xbb\xbf" if bom else b"") + text.encode().replace(b"\n", line_end)
    return ENCODERS[coding](raw)


def cuts(data: bytes, rng: random.Random) -> list[list[bytes]]:
    """The bytes whole, cut at a few random places, and cut into many random pieces (some of a byte or two)."""
    def at(points: list[int]) -> list[bytes]:
        edges = [0, *sorted(set(points)), len(data)]
        return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]

    few = at([rng.randrange(1, len(data)) for _ in range(3)]) if len(data) > 1 else [data]
    many = at([rng.randrange(1, len(data)) for _ in range(min(80, len(data) // 3))]) if len(data) > 1 else [data]
    return [[data], few, many]


def record_of(pieces: list[bytes], coding: str, *, watched: bool) -> list[Record]:
    """The stream through an exchange, watched (someone subscribed: live progress) or not, and the record each
    derivation makes of it."""
    bus = LiveBus()
    if watched:
        bus.subscribe()
    capture = Capture(id="r", started=0.0, method="POST", path="/v1/messages", request_headers={}, request=b"")
    exchange = Exchange(capture, bus=bus, on_end=lambda _: None)
    headers = {"content-type": "text/event-stream"} | ({} if coding == "identity" else {"Content-Encoding": coding})
    exchange.response_started(200, headers, stream=True)
    passed = b""
    for n, piece in enumerate(pieces):
        if n % 5 == 0:
            exchange._last_progress = 0.0  # (a live progress read now, not once per 0.5 s)
        out = exchange.stream_tap(piece)
        passed += out if isinstance(out, bytes) else b"".join(out)
    exchange.stream_tap(b"")
    exchange.ended(200, None, None, True)
    assert passed == b"".join(pieces), "the client gets the bytes as they came"
    _, data = to_stored(Capture.decode(capture.encode()), None)  # (the writer's record; `data` is what it stores)
    return [to_record(capture), Record.model_validate(data)]


def facts(record: Record) -> dict[str, Any]:
    """What must not depend on the encoding, the cuts or who watched (chunk times do: they are network facts)."""
    return {"status": record.status, "error": record.error, "usage": record.usage, "stopReason": record.stop_reason,
            "message": record.message, "count": record.metrics.chunk_count,
            "chunks": [(c.event, c.data) for c in record.chunks]}


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_every_encoding_of_a_stream_gives_the_same_record(path: Path) -> None:
    events = events_of(path)
    rng = random.Random(path.name)
    reference = None
    for named, bom in ((True, False), (False, False), (True, True)):
        expected = None
        for line_name, line_end in LINE_ENDS.items():
            for coding in ENCODERS:
                data = wire(events, named=named, bom=bom, line_end=line_end, coding=coding)
                pieces = rng.choice(cuts(data, rng))
                for watched in (False, True):
                    for record in record_of(pieces, coding, watched=watched):
                        got = facts(record)
                        expected = expected or got
                        assert got == expected, (path.name, named, bom, line_name, coding, watched)
        assert expected["count"] == len(events)
        # Named or not, with a byte order mark or not: the same message and outcome (the event names differ).
        outcome = {k: v for k, v in expected.items() if k != "chunks"}
        reference = reference or outcome
        assert outcome == reference
    if path.suffix == ".txt" and "anthropic/" in str(path) and "spliced" not in path.name:
        assert reference["status"] == "success" and reference["usage"].output_tokens > 0


def test_every_cut_of_every_coding_is_decoded_the_same() -> None:
    """The content decoding on its own, cut at every byte for a small stream: what `cuts` samples at random."""
    raw = wire(events_of(DATA / "anthropic" / "anthropic-text.chunks.txt"), named=True, bom=False, line_end=b"\n",
               coding="identity")
    for coding in ENCODERS:
        if coding == "identity":
            continue
        data = ENCODERS[coding](raw)
        for size in (1, 2, 3, 5, 64):
            decoder = ContentDecoder([coding])
            out = b"".join(decoder.feed(data[i:i + size]) for i in range(0, len(data), size)) + decoder.flush()
            assert out == raw, (coding, size)


def test_a_stream_not_in_its_declared_coding_is_recorded_as_unreadable() -> None:
    raw = wire(events_of(DATA / "anthropic" / "anthropic-text.chunks.txt"), named=True, bom=False, line_end=b"\n",
               coding="identity")
    for coding, data in (("gzip", raw), ("br", raw), ("compress", raw), ("zstd", zstd.compress(raw)[:-8])):
        for watched in (False, True):
            for record in record_of([data[:50], data[50:]], coding, watched=watched):
                assert record.status == "error" and record.error is not None
                assert record.error.type == "undecodable_stream", (coding, record.error)
                assert coding in record.error.message
