"""The translator writes each event in the one encoding the proxy uses (`event:` line, compact JSON `data:` line),
whichever way it builds the bytes: checked against the standard library's compact JSON of the same event."""

from __future__ import annotations

import json

from helpers import STREAMS
from hypothesis import HealthCheck, given, settings
from test_stream_properties import run, upstream_stream


def assert_canonical(out: bytes) -> None:
    text = out.decode("utf-8")
    assert text.endswith("\n\n")
    for block in text[:-2].split("\n\n"):
        if block.startswith(":"):  # a keep-alive comment
            continue
        event_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
        assert data_line == "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def test_recorded_streams_fed_event_by_event():
    for path in STREAMS:
        raw = path.read_bytes()
        assert_canonical(run([piece + b"\n\n" for piece in raw.split(b"\n\n") if piece]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(upstream_stream())
def test_generated_streams(stream):
    raw, _ = stream
    assert_canonical(run([raw]))
