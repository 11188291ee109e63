"""The SSE decoder on its own: any chunking, CRLF, comments, multi-line data, odd fields."""

from hypothesis import given, settings
from hypothesis import strategies as st

from anthropic_proxy.wire.sse import SSEDecoder, encode_event

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


# Pieces of a stream: lines, and whole plain events (`event:` + `data:` + blank line, the decoder's fast path), some
# with invalid UTF-8. Fed one byte at a time the decoder never holds a whole plain event and parses line by line: the
# reference for the fast path.
PIECES = [b"event: a\n", b"event:b\n", b"event:  c\n", b"event: \n", b"event: s\r\n",
          b"data: {\"x\": 1}\n", b"data:y\n", b"data: \n", b"data\n", b"data: \xc3\xa9\xe2\x82\xac\n",
          b"data: \xff\xc3\n", b"data: crlf\r\n", b": keep-alive\n", b"id: 7\n", b"retry: 10\n", b"datafoo: z\n",
          b"\n", b"\r\n", b"event: p\ndata: {\"y\": 2}\n\n", b"event: q\ndata: \xc3\xa9\n\n", b"event:r\ndata:3\n\n",
          b"event: \xe2\x82\ndata: \xc3\n\n", b"data: {\"z\": 3}\n\n", b"data:[DONE]\n\n", b": \xc2\xa0ping \n"]


def one_byte_at_a_time(raw: bytes) -> list[bytes]:
    return [raw[i:i + 1] for i in range(len(raw))]


@settings(max_examples=500)
@given(st.lists(st.sampled_from(PIECES), max_size=30), st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_the_fast_path_parses_like_the_line_parser(pieces, cuts):
    raw = b"".join(pieces)
    points = sorted({c % (len(raw) + 1) for c in cuts})
    chunks = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    reference = decode(one_byte_at_a_time(raw), keep_comments=True)
    assert decode([raw], keep_comments=True) == reference
    assert decode(chunks, keep_comments=True) == reference


def test_plain_events_whole_split_and_crlf_agree():
    events = [("message_start", '{"type": "message_start"}'), ("content_block_delta", '{"text": "h\\u00e9 \xe9"}'),
              ("ping", ""), ("message_stop", '{"type": "message_stop"}')]
    lf = "".join(f"event: {name}\ndata: {data}\n\n" for name, data in events).encode()
    expected = [(name, data, False) for name, data in events]
    assert decode([lf]) == decode(one_byte_at_a_time(lf)) == expected
    assert decode([lf.replace(b"\n", b"\r\n")]) == expected
    # A cut inside the two-byte "é" of the second event: the fast path resumes after the line parser finished it.
    cut = lf.index("\xe9".encode()) + 1
    assert decode([lf[:cut], lf[cut:]]) == expected


def test_an_event_the_fast_path_must_not_take_whole():
    raw = (b"event: a\ndata: one\ndata: two\n\n"  # multi-line data
           b"event: b\ndata: x\nid: 3\n\n"  # a third field
           b"event: c\nevent: d\ndata: y\n\n"  # the last `event:` wins
           b"event: e\n: comment\ndata: z\n\n"  # a comment inside the event
           b"data: w\nevent: f\n\n"  # fields in the other order
           b"data: t\nevent: h\ndata: u\n\n"  # a plain-looking tail after a data line
           b"event: g\ndata: v\r\n\n")  # a CR on one line only
    assert decode([raw]) == [("a", "one\ntwo", False), ("b", "x", False), ("d", "y", False), ("e", "z", False),
                             ("f", "w", False), ("h", "t\nu", False), ("g", "v", False)]


def test_a_plain_event_is_delivered_only_when_its_blank_line_arrives():
    decoder = SSEDecoder()
    assert decoder.feed(b"event: a\ndata: 1\n") == []
    assert [(e.event, e.data) for e in decoder.feed(b"\nevent: b\ndata: 2\n\nevent: c\n")] == [("a", "1"), ("b", "2")]
    assert [(e.event, e.data) for e in decoder.flush()] == [("c", "")]


def test_text_is_decoded_as_each_line_on_its_own_would_be():
    raw = b": \xc2\xa0keep-alive \xff\n\nevent: e\xff\ndata: \xc3\n\ndata: \xe2\x82\n\n"
    assert decode([raw], keep_comments=True) == [(None, "\xa0keep-alive \ufffd", True), ("e\ufffd", "\ufffd", False),
                                                 (None, "\ufffd", False)]
