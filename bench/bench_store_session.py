"""The record store's disk use and write speed on a real-shaped Claude Code session.

1. Size: one session of `--turns` calls built from a captured Claude Code request (tests/fakes/claude_session.py:
   system as 3 blocks, 24 tools, the whole history resent every turn, tool results of 0.2-12 KB, cache_control
   moving to the last block), written to a fresh store; prints the database's size (after a WAL checkpoint) per
   record, next to the final request body's size.
2. Write speed: `--sessions` sessions of `--session-turns` calls each (bodies of 76-130 KB, the size of a young
   Claude Code session), put in the store and flushed; prints records per second (best of `--repeat`).
3. Unique bodies: `--unique` calls whose 50 KB bodies share nothing (random words); prints the database's size
   per record next to the body's, and how long a list query (`q`) over them takes (best of `--repeat`).

    .venv/bin/python bench/bench_store_session.py [--turns 200] [--sessions 30] [--session-turns 10] [--repeat 3]
                                                  [--unique 2000]

Any version of the store can be measured: `PYTHONPATH=<a checkout> .venv/bin/python bench/bench_store_session.py`
(only the public Store API is used).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "tests"))

from fakes.claude_session import WORDS, session_records  # noqa: E402

from anthropic_proxy.record.model import HttpRequestPart, Record  # noqa: E402
from anthropic_proxy.store import DB_NAME, RecordFilter, Store  # noqa: E402


def db_bytes(state_dir: Path) -> int:
    db = sqlite3.connect(state_dir / DB_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return sum(p.stat().st_size for p in state_dir.glob(DB_NAME + "*"))


def size(turns: int) -> None:
    records = list(session_records(turns))
    final_body = len(json.dumps(records[-1].request.body, separators=(",", ":")))
    bodies = sum(len(json.dumps(r.request.body, separators=(",", ":"))) for r in records)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        store = Store(state)
        for record in records:
            store.put(record)
        store.close()
        total = db_bytes(state)
    print(f"session of {turns} turns: final request body {final_body / 1024:.0f} KiB, "
          f"all bodies {bodies / 2**20:.1f} MiB")
    print(f"  store: {total / 2**20:.2f} MiB = {total / turns / 1024:.1f} KiB per record "
          f"({total / final_body:.1f} x the final body)")


def throughput(sessions: int, session_turns: int, repeat: int) -> None:
    records = [r for s in range(sessions) for r in session_records(session_turns, seed=100 + s)]
    sizes = [len(json.dumps(r.request.body)) for r in records]
    best = 0.0
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp))
            store.flush()  # the writer process is up (its start is not part of the figure)
            started = time.perf_counter()
            for record in records:
                store.put(record)
            store.flush(timeout=600)
            elapsed = time.perf_counter() - started
            store.close()
        best = max(best, len(records) / elapsed)
    print(f"write: {len(records)} records, bodies {min(sizes) // 1024}-{max(sizes) // 1024} KiB: "
          f"{best:.0f} records/s ({1000 / best:.2f} ms per record, best of {repeat})")


def unique(count: int, repeat: int) -> None:
    rng = random.Random(5)
    body_bytes = 0
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        store = Store(state)
        for i in range(count):
            text = " ".join(rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(6_000))[:50_000]
            body = {"model": "claude-sonnet-4-5", "max_tokens": 100,
                    "messages": [{"role": "user", "content": f"item{i} {text}"}]}
            body_bytes += len(json.dumps(body, separators=(",", ":")))
            store.put(Record(request=HttpRequestPart(method="POST", path="/v1/messages", body=body),
                             status="success", message={"content": [{"type": "text", "text": f"answer {i}"}]}))
        store.flush(timeout=600)
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            assert store.query(RecordFilter(q=f"item{count - 1} "))[1] == 1
            best = min(best, time.perf_counter() - started)
        store.close()
        total = db_bytes(state)
    print(f"unique bodies: {count} of {body_bytes / count / 1024:.1f} KiB: store {total / count / 1024:.1f} KiB per "
          f"record ({total / body_bytes:.2f} x the bodies); list with q: {best * 1000:.0f} ms (best of {repeat})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--session-turns", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--unique", type=int, default=2000)
    args = parser.parse_args()
    size(args.turns)
    throughput(args.sessions, args.session_turns, args.repeat)
    unique(args.unique, args.repeat)


if __name__ == "__main__":
    main()
