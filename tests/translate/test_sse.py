"""The SSE decoder on its own: any chunking, CRLF, comments, multi-line data, odd fields."""

from hypothesis import given
from hypothesis import strategies as st

from anthropic_proxy.translate.sse import SSEDecoder, encode_event

STREAM = (b": hello\r\n\r\nevent: a\r\ndata: {\"x\": \"\xc3\xa9\"}\r\n\r\n"
          b"data: line1\ndata:line2\ndata\nid: 7\nretry: 10\ndatafoo: ignored\n\n"
          b"event: last\ndata: end")


def decode(pieces: list[bytes], keep_comments: bool = False) -> list[tuple]:
    decoder = SSEDecoder(keep_comments=keep_comments)
    events = [e for piece in pieces for e in decoder.feed(piece)] + decoder.flush()
    return [(e.event, e.data, e.comment) for e in events]


def test_fields_and_line_endings():
    assert decode([STREAM]) == [("a", '{"x": "é"}', False), (None, "line1\nline2\n", False), ("last", "end", False)]
    assert decode([STREAM], keep_comments=True)[0] == (None, "hello", True)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_chunking_gives_the_same_events(cuts):
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert decode(pieces, keep_comments=True) == decode([STREAM], keep_comments=True)


def test_encode_event_round_trips():
    raw = encode_event("content_block_delta", {"type": "content_block_delta", "delta": {"text": "é\n"}})
    assert raw.startswith(b"event: content_block_delta\ndata: {") and raw.endswith(b"\n\n")
    (event,) = SSEDecoder().feed(raw)
    assert event.event == "content_block_delta" and event.json()["delta"]["text"] == "é\n"
