"""Throughput and per-chunk latency of the OpenRouter -> Anthropic stream translator.

Replays every recorded OpenRouter stream in tests/data/openrouter:
- throughput: whole recordings fed at once, repeated; upstream MB/s and Anthropic events/s written;
- latency: each recording fed one upstream SSE event per feed() call (what the proxy sees on the wire);
  the time of each call is the latency the translation adds to that chunk;

Run: .venv/bin/python bench/bench_translate.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from anthropic_proxy.translate.stream import StreamTranslator

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
    p = lambda q: latencies[int(q * (len(latencies) - 1))] * 1e6  # noqa: E731
    print(
        f"per-chunk latency over {len(latencies)} chunks: mean {statistics.fmean(latencies) * 1e6:.1f} µs, "
        f"p50 {p(0.5):.1f} µs, p99 {p(0.99):.1f} µs, max {latencies[-1] * 1e6:.1f} µs"
    )


if __name__ == "__main__":
    main()
