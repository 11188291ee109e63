"""The exchange's stream tap on its own: what it records never depends on how the network cut the stream."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from anthropic_proxy.capture.exchange import Exchange
from anthropic_proxy.capture.live import LiveBus
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.derive import to_record
from anthropic_proxy.record.model import Record

EVENTS: list[tuple[str, Any]] = [
    ("message_start", {"type": "message_start", "message": {"id": "m1", "role": "assistant", "content": [],
                                                            "usage": {"input_tokens": 5}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    *[("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})
      for t in ["Bonjour", " à ", "vous ✓"]],
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
    ("message_stop", {"type": "message_stop"}),
]
STREAM = b"".join(f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode() for name, data in EVENTS)


def record_stream(pieces: list[bytes]) -> tuple[Record, bytes]:
    """The record of a stream that came in `pieces`, and the bytes the client got."""
    capture = Capture(id="r", started=0.0, method="POST", path="/v1/messages", request_headers={}, request=b"")
    ended: list[Exchange] = []
    exchange = Exchange(capture, bus=LiveBus(), on_end=ended.append)
    exchange.response_started(200, {"content-type": "text/event-stream"}, stream=True)
    sent = b"".join(as_bytes(exchange.stream_tap(piece)) for piece in [*pieces, b""])  # b"": the end of the stream
    exchange.ended(200, None, None, True)
    assert ended == [] and exchange.is_over, "handed on a moment later, off the client's path"
    exchange.settle()
    assert ended == [exchange]
    # The exchange itself reads nothing: it keeps the bytes as they passed.
    assert b"".join(data for _, data in capture.client_log) == sent
    return to_record(capture), sent


def as_bytes(out: bytes | Iterable[bytes]) -> bytes:
    return out if isinstance(out, bytes) else b"".join(out)


def test_any_chunking_records_the_same_events_and_message():
    byte_by_byte = [STREAM[i:i + 1] for i in range(len(STREAM))]
    per_event = [event + b"\n\n" for event in STREAM.split(b"\n\n")[:-1]]
    for pieces in ([STREAM], per_event, byte_by_byte, [STREAM[:100], STREAM[100:101], STREAM[101:]]):
        record, sent = record_stream(pieces)
        assert sent == STREAM
        assert [(chunk.event, chunk.data) for chunk in record.chunks] == EVENTS
        assert record.metrics.chunk_count == len(EVENTS) and record.metrics.response_bytes == len(STREAM)
        assert record.status == "success" and record.stop_reason == "end_turn"
        assert record.message is not None
        assert record.message["content"] == [{"type": "text", "text": "Bonjour à vous ✓"}]


def test_data_that_is_not_json_is_recorded_as_text():
    """`Infinity` is not JSON either: recorded as the text it is, not as a float every encoder writes as null."""
    odd = b"event: ping\ndata: not json\n\nevent: ping\ndata: {\"n\": Infinity}\n\n"
    cut = STREAM.index(b"\n\n") + 2  # after message_start
    stream = STREAM[:cut] + odd + STREAM[cut:]
    for pieces in ([stream], [STREAM[:cut - 5], STREAM[cut - 5:cut] + odd[:30], odd[30:] + STREAM[cut:]]):
        record, sent = record_stream(pieces)
        assert sent == stream
        recorded = [(chunk.event, chunk.data) for chunk in record.chunks]
        assert recorded == [EVENTS[0], ("ping", "not json"), ("ping", '{"n": Infinity}'), *EVENTS[1:]]
        assert record.status == "success"
