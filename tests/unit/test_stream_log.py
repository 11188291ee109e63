"""Reading a logged stream: the live progress's reading (no chunks kept, read as the stream flows) must agree with the
whole read, however the network cut the stream and whatever its line ends."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from anthropic_proxy.record.capture import Capture, Ending
from anthropic_proxy.record.derive import to_record, to_stored
from anthropic_proxy.record.model import Record
from anthropic_proxy.record.pricing import PriceBook
from anthropic_proxy.record.stream_log import StreamLog, StreamReader
from anthropic_proxy.wire.sse import encode_event

FIXTURES = Path(__file__).parent.parent / "data" / "anthropic_sse" / "anthropic"
NAMES = sorted(p.name.removesuffix(".chunks.txt") for p in FIXTURES.glob("*.chunks.txt"))


def sse(name: str) -> bytes:
    """A recorded stream (one event's JSON per line) as the bytes Anthropic sends."""
    lines = (FIXTURES / f"{name}.chunks.txt").read_text().splitlines()
    return b"".join(f"event: {json.loads(line)['type']}\ndata: {line}\n\n".encode() for line in lines if line)


def cut(stream: bytes, rng: random.Random, pieces: int) -> StreamLog:
    points = sorted(rng.sample(range(1, len(stream)), min(pieces, len(stream) - 1)))
    return [(float(i), stream[a:b]) for i, (a, b) in enumerate(zip([0, *points], [*points, len(stream)], strict=True))]


def as_exchange_reads(log: StreamLog, *, step: int = 1) -> StreamReader:
    """The stream as the live progress reads it: some entries at a time while the stream flows, then the end."""
    reader = StreamReader(keep=False)
    for end in range(step, len(log), step):
        reader.read(log[:end])
    reader.finish(log)
    return reader


def whole(log: StreamLog) -> StreamReader:
    reader = StreamReader()
    reader.finish(log)
    return reader


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_the_exchanges_reading_agrees_with_the_whole_read(name: str, line_end: bytes) -> None:
    stream = sse(name).replace(b"\n", line_end)
    rng = random.Random(name)
    reference = whole([(0.0, stream)])
    assert reference.count > 3 and reference.accumulator.stopped
    for log in ([(0.0, stream)], cut(stream, rng, 7), cut(stream, rng, 40), [(0.0, stream[i:i + 1]) for i in
                                                                          range(len(stream))]):
        exchanges, full = as_exchange_reads(log, step=3), whole(log)
        assert full.count == exchanges.count == reference.count
        assert full.accumulator.message == exchanges.accumulator.message == reference.accumulator.message
        assert exchanges.chunks == []
        assert (exchanges.accumulator.stopped, exchanges.accumulator.error) == (True, None)


def test_the_exchanges_reading_reads_the_message_events_of_any_stream() -> None:
    delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,' \
            b'"delta":{"type":"text_delta","text":"x"}}\n\n'
    stream = (b'event: message_start\ndata: {"type":"message_start","message":{"content":[],"usage":'
              b'{"input_tokens":3}}}\n\n'
              b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":'
              b'{"type":"text","text":""}}\n\n'
              + delta * 3
              + b': a comment\n\n'  # counted by neither
              + b'event:content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{}}\n\n'
              + b'event: content_block_delta\ndata: not json\n\n'
              + b'event: content_block_delta\nid: 7\n\n'  # a delta without data is still an event
              + b'\n\n\n'
              + b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n'
              + b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
              b'"usage":{"output_tokens":9}}')  # the last event has no blank line: the end delivers it
    for log in ([(0.0, stream)], [(float(i), stream[i:i + 1]) for i in range(len(stream))]):
        exchanges, full = as_exchange_reads(log, step=5), whole(log)
        assert exchanges.count == full.count == 10
        assert exchanges.accumulator.error == full.accumulator.error == {"type": "overloaded_error",
                                                                          "message": "busy"}
        assert exchanges.accumulator.message["usage"] == {"input_tokens": 3, "output_tokens": 9}
        assert exchanges.accumulator.message["stop_reason"] == "end_turn"
        assert full.accumulator.message == exchanges.accumulator.message
        assert full.accumulator.message["content"] == [{"type": "text", "text": "xxx"}]


def test_events_are_read_by_their_data_however_they_are_named() -> None:
    """A block renamed by a second event line, and an event name written inside a data line, are read as a decoder
    reads them: by the data's type."""
    stream = (b'event: message_start\ndata: {"type":"message_start","message":{"content":[],"usage":{}}}\n\n'
              b'event: ping\ndata: event: message_stop\n\n'  # not the end: a ping whose data is that text
              b'event: content_block_delta\nevent: message_delta\ndata: {"type":"message_delta","delta":'
              b'{"stop_reason":"tool_use"},"usage":{"output_tokens":2}}\n\n'
              b'event:message_stop\ndata: {"type":"message_stop"}\n\n')
    for log in ([(0.0, stream)], cut(stream, random.Random(2), 5)):
        exchanges, full = as_exchange_reads(log, step=2), whole(log)
        assert exchanges.count == full.count == 4
        assert exchanges.accumulator.stopped and full.accumulator.stopped
        assert exchanges.accumulator.message == full.accumulator.message
        assert exchanges.accumulator.message["stop_reason"] == "tool_use"
    truncated = stream[:stream.index(b"event:message_stop")]
    assert not as_exchange_reads([(0.0, truncated)]).accumulator.stopped, "the ping's data is not the end"


BOOK = PriceBook()


def odd_stream() -> bytes:
    """Anything an upstream could send in an event's fields: wrong types, impossible indexes, huge counts."""
    def delta(index: object, value: object) -> tuple[str, dict]:
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": value}

    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_odd", "content": "not a list", "usage": {"input_tokens": "12", "output_tokens": 1.0,
                                                               "cache_read_input_tokens": 1e300}}}),
        ("content_block_start", {"type": "content_block_start", "index": 10**9, "content_block": {"type": "text"}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                                           "text": ""}}),
        delta([0], {"type": "text_delta", "text": "list index"}), delta(0.0, {"type": "text_delta", "text": "float"}),
        delta(0, "not an object"), delta(0, {"type": "text_delta", "text": "ok"}),
        ("content_block_stop", {"type": "content_block_stop", "index": "a"}),
        ("message_delta", {"type": "message_delta", "delta": 5, "usage": "x"}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": 5}, "usage": {"output_tokens": 3}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(encode_event(name, data) for name, data in events)


def test_a_stream_of_odd_shapes_is_still_recorded() -> None:
    """Odd fields are ignored, never raised on: a raise would lose the record in the store's writer (and a start at a
    huge index must not fill memory with empty blocks)."""
    capture = Capture(id="r", started=0.0, method="POST", path="/v1/messages", request_headers={}, request=b"",
                      status=200, streamed=True, client_log=cut(odd_stream(), random.Random(5), 6),
                      ending=Ending("completed"))
    stored, data = to_stored(capture, BOOK)
    for record in (to_record(capture, BOOK), stored, Record.model_validate(data)):
        assert record.status == "success" and record.stop_reason is None
        assert (record.usage.input_tokens, record.usage.output_tokens, record.usage.cache_read_input_tokens) == \
            (0, 3, 0)
    assert stored.message["content"] == [{"type": "text", "text": "ok"}]


@pytest.mark.parametrize("name", NAMES)
def test_a_whole_log_read_at_once_is_what_the_decoder_makes_of_it(name: str) -> None:
    """`finish` on an unread log reads a plain stream in one pass (`_read_plain`): events, their times, counts and
    message must be the incremental decoder's, however the network cut the stream; anything not plain falls back."""
    stream = sse(name)
    rng = random.Random(name)
    odd = stream.replace("é".encode(), b"\xff", 1) if "é".encode() in stream else stream[:40] + b"\xff" + stream[40:]
    between_newlines = [0] + [i + 1 for i in range(len(stream)) if stream.startswith(b"\n\n", i)] + [len(stream)]
    plain = [[(0.0, stream)], cut(stream, rng, 7), cut(stream, rng, 60),
             [(float(i), stream[i:i + 1]) for i in range(len(stream))], cut(odd, rng, 9), [],
             [(float(i), stream[a:b]) for i, (a, b) in enumerate(itertools.pairwise(between_newlines))]]
    not_plain = [cut(stream.replace(b"\n", b"\r\n"), rng, 9), cut(b": keep-alive\n\n" + stream, rng, 5),
                 cut(stream[:-1], rng, 5), cut(stream + b"event: ping\n", rng, 5)]
    for log in plain + not_plain:
        assert StreamReader()._read_plain(log) == (log in plain)
        for as_json in (False, True):
            at_once, incremental = StreamReader(as_json=as_json), StreamReader(as_json=as_json)
            at_once.finish(log)
            incremental.read(log)  # (then `finish` reads no more at once)
            incremental.finish(log)
            assert at_once.chunks == incremental.chunks
            assert at_once.count == incremental.count == len(at_once.chunks)
            assert at_once.accumulator.message == incremental.accumulator.message
            assert at_once.accumulator.stopped == incremental.accumulator.stopped
