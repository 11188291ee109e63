"""Throughput and per-chunk latency of the OpenRouter -> Anthropic stream translator.

Replays every recorded OpenRouter stream in tests/data/openrouter:
- throughput: whole recordings fed at once, repeated; upstream MB/s and Anthropic events/s written;
- latency: each recording fed one upstream SSE event per feed() call (what the proxy sees on the wire);
  the time of each call is the latency the translation adds to that chunk;
- the outline (`StreamTranslator.outline`, what the exchange reads at a stream's end): the time spent making it and
  adding the message's own events to it, per stream.

Run: .venv/bin/python bench/bench_translate.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from anthropic_proxy.translate.stream import StreamTranslator
from anthropic_proxy.wire.accumulate import MessageAccumulator

RECORDINGS = sorted((Path(__file__).resolve().parent.parent / "tests/data/openrouter").glob("**/*.response.sse.txt"))


def translate(pieces: list[bytes]) -> bytes:
    translator = StreamTranslator(requested_model="claude-sonnet-4-5", tool_names={})
    return b"".join(translator.feed(piece) for piece in pieces) + translator.finish()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    streams = [path.read_bytes() for path in RECORDINGS]
    upstream_bytes = sum(len(raw) for raw in streams)
    events = sum(translate([raw]).count(b"\nevent: ") + 1 for raw in streams)

    start = time.perf_counter()
    for _ in range(args.repeat):
        for raw in streams:
            translate([raw])
    elapsed = time.perf_counter() - start
    print(f"recordings: {len(streams)}, {upstream_bytes / 1024:.1f} KiB upstream, {events} Anthropic events")
    print(
        f"throughput: {upstream_bytes * args.repeat / elapsed / 1e6:.1f} MB/s upstream, "
        f"{events * args.repeat / elapsed:,.0f} events/s out"
    )

    latencies: list[float] = []
    for _ in range(max(args.repeat // 10, 1)):
        for raw in streams:
            chunks = [piece + b"\n\n" for piece in raw.split(b"\n\n") if piece]
            translator = StreamTranslator(requested_model="claude-sonnet-4-5", tool_names={})
            for chunk in chunks:
                t0 = time.perf_counter()
                translator.feed(chunk)
                latencies.append(time.perf_counter() - t0)
            translator.finish()
    latencies.sort()
    outline_times, outline_adds, chunk_count = outline_cost(streams, max(args.repeat // 10, 1))
    p = lambda q: latencies[int(q * (len(latencies) - 1))] * 1e6  # noqa: E731
    print(
        f"per-chunk latency over {len(latencies)} chunks: mean {statistics.fmean(latencies) * 1e6:.1f} µs, "
        f"p50 {p(0.5):.1f} µs, p99 {p(0.99):.1f} µs, max {latencies[-1] * 1e6:.1f} µs"
    )
    runs = len(outline_times)
    print(
        f"outline: {outline_adds / runs:.1f} events added per stream ({chunk_count / runs:.1f} upstream chunks); "
        f"made and fed, per stream: p50 {statistics.median(outline_times) * 1e6:.2f} µs, "
        f"min {min(outline_times) * 1e6:.2f} µs"
    )


class _TimedOutline(MessageAccumulator):
    """The translator's outline, timing its own making and every event added to it."""

    spent = 0.0
    adds = 0

    def __init__(self) -> None:
        t0 = time.perf_counter()
        super().__init__()
        _TimedOutline.spent += time.perf_counter() - t0

    def add(self, event: dict) -> None:
        t0 = time.perf_counter()
        super().add(event)
        _TimedOutline.spent += time.perf_counter() - t0
        _TimedOutline.adds += 1


def outline_cost(streams: list[bytes], repeat: int) -> tuple[list[float], int, int]:
    """Seconds spent in the outline for each stream translated, events added to it, and upstream chunks fed (each
    recording fed one event per call)."""
    _TimedOutline.adds = 0
    times: list[float] = []
    chunk_count = 0
    for _ in range(repeat):
        for raw in streams:
            _TimedOutline.spent = 0.0
            translator = StreamTranslator(requested_model="claude-sonnet-4-5", tool_names={})
            translator.outline = _TimedOutline()
            for chunk in (piece + b"\n\n" for piece in raw.split(b"\n\n") if piece):
                translator.feed(chunk)
                chunk_count += 1
            translator.finish()
            times.append(_TimedOutline.spent)
    return times, _TimedOutline.adds, chunk_count


if __name__ == "__main__":
    main()
