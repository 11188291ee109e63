"""Store write throughput with real-shaped records (a captured Claude Code request, ~80 KB), and the
bytes each record costs on disk over a growing session.

    .venv/bin/python bench/bench_store.py [--records 1000]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

from anthropic_proxy.record import HttpRequestPart, Record, Usage
from anthropic_proxy.store import DB_NAME, Store

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "claude_code" / \
    "claude_code_request_02_tool_result_turn.json"


def session_records(count: int) -> list[Record]:
    """A session that grows like Claude Code's: every turn resends the whole history plus one new exchange."""
    base = json.loads(FIXTURE.read_text())["body"]
    records = []
    messages = copy.deepcopy(base["messages"])
    for turn in range(count):
        messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": f"answer {turn} " * 40}]},
                    {"role": "user", "content": [{"type": "text", "text": f"question {turn} " * 20}]}]
        body = {**base, "messages": messages}
        records.append(Record(request=HttpRequestPart(method="POST", path="/v1/messages", body=body),
                              model=base["model"], status="success", session_id="bench",
                              usage=Usage(input_tokens=1000 + turn, output_tokens=100),
                              message={"type": "message", "content": [{"type": "text", "text": f"answer {turn}"}]}))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200, help="turns in the synthetic session (default 200)")
    args = parser.parse_args()
    records = session_records(args.records)
    body_bytes = sum(len(r.model_dump_json()) for r in records)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        started = time.perf_counter()
        for record in records:
            store.put(record)
        store.flush(timeout=600)
        elapsed = time.perf_counter() - started
        store.close()
        size = sum(p.stat().st_size for p in Path(tmp).glob(DB_NAME + "*"))
    print(f"{args.records} records of a growing session, {body_bytes / args.records / 1024:.0f} KB each on average")
    print(f"write throughput: {args.records / elapsed:.0f} records/s, {body_bytes / elapsed / 1e6:.1f} MB/s of records")
    print(f"store on disk: {size / 1e6:.1f} MB, {size / args.records / 1024:.0f} KB per record "
          f"(last request body: {len(records[-1].model_dump_json()) / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
