"""Odd but legal upstream answers, secrets in odd places and store faults, through a real mitmdump: the client's
traffic passes as it came, and the record, the live monitor and /health stay right (issue 16)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.harness import FAKE_API_KEY, ProxyProcess, by_tag
from fakes.odd_upstream import TEXT, USAGE, OddAnthropic

from anthropic_proxy.record.model import HttpRequestPart, Record
from anthropic_proxy.store import Store

FAILING_LOG = Path(__file__).parent.parent / "fakes" / "failing_log.py"
SECRET = "sk-ant-api03-" + "QUERYsecretMIDDLE" * 3 + "-end9"


@pytest.fixture(scope="module")
def odd() -> Iterator[OddAnthropic]:
    with OddAnthropic() as server:
        yield server


@pytest.fixture(scope="module")
def odd_proxy(proxy_factory, odd) -> ProxyProcess:
    # request_timeout 2: a whole answer trickling in for longer must not be cut (any byte is activity)
    return proxy_factory(upstream=odd.url, options={"request_timeout": 2})


def post(proxy: ProxyProcess, tag: str, *, stream: bool = True, path: str = "/v1/messages",
         text: str = "hello", model: str = "claude-sonnet-4-5", **odd: str) -> tuple[bytes, float, httpx.Response]:
    """A call as raw bytes (no decoding: what the client got on the wire), and when its first body byte came."""
    body = {"model": model, "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": text}]}
    headers = {"x-api-key": FAKE_API_KEY, "anthropic-version": "2023-06-01", "x-test-tag": tag,
               **{f"x-odd-{k.replace('_', '-')}": v for k, v in odd.items()}}
    started = time.monotonic()
    first = None
    raw = b""
    with httpx.Client(trust_env=False, timeout=20) as client, \
            client.stream("POST", proxy.url + path, json=body, headers=headers) as response:
        for piece in response.iter_raw():
            first = first or time.monotonic() - started
            raw += piece
    return raw, first or 0.0, response


@contextmanager
def monitor(proxy: ProxyProcess) -> Iterator[list[dict[str, Any]]]:
    """The live monitor open (subscribed) while the block runs; yields the events it got (raw `data:` JSON)."""
    events: list[dict[str, Any]] = []
    subscribed, stop = threading.Event(), threading.Event()

    def run() -> None:
        with httpx.Client(trust_env=False, timeout=None) as client, \
                client.stream("GET", proxy.url + "/api/monitor/stream") as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    subscribed.set()
                if stop.is_set():
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert subscribed.wait(10), "the monitor stream did not start"
    try:
        yield events
    finally:
        stop.set()
        post(proxy, "monitor-stop")  # (an event, so the reader sees `stop` and hangs up)
        thread.join(10)
        # The server notices the hang-up when it next writes: more events, so the next call is watched by nobody.
        for _ in range(2):
            time.sleep(0.1)
            post(proxy, "monitor-stop")


def assert_recorded(record: dict[str, Any]) -> None:
    assert record["status"] == "success", record.get("error")
    assert record["usage"] == {"inputTokens": USAGE["input_tokens"], "outputTokens": USAGE["output_tokens"],
                               "cacheCreationInputTokens": 0, "cacheReadInputTokens": 0}
    assert record["metrics"]["chunkCount"] == 9 and len(record["chunks"]) == 9
    assert record["message"]["content"] == [{"type": "text", "text": TEXT}]
    assert record["stopReason"] == "end_turn"


ODD_STREAMS = {
    "bare-cr": {"line_end": "cr"},
    "crlf-unnamed": {"line_end": "crlf", "unnamed": "1"},
    "bom": {"bom": "1"},
    "gzip": {"encoding": "gzip"},
    "deflate": {"encoding": "deflate", "line_end": "crlf"},
    "br": {"encoding": "br", "unnamed": "1"},
    "zstd": {"encoding": "zstd", "line_end": "cr", "bom": "1"},
}


@pytest.mark.parametrize("case", ODD_STREAMS)
def test_an_odd_stream_is_recorded_the_same_whether_or_not_anyone_watches(odd_proxy, odd, test_tag, case) -> None:
    """Defects 2, 3 and 4: compressed streams, data-only events, a byte order mark, bare CR line ends."""
    records = []
    for watched in (False, True):
        tag = f"{test_tag}-{watched}"
        if watched:
            with monitor(odd_proxy):
                raw, _, response = post(odd_proxy, tag, **ODD_STREAMS[case])
                record = odd_proxy.wait_record(by_tag(tag))
        else:
            raw, _, response = post(odd_proxy, tag, **ODD_STREAMS[case])
            record = odd_proxy.wait_record(by_tag(tag))
        sent = odd.find(lambda ex, tag=tag: ex.headers.get("x-test-tag") == tag)[0].sent
        assert response.status_code == 200 and raw == sent, "the client gets the bytes as the upstream sent them"
        assert record["status"] == "success", (f"watched={watched}", record["error"])
        assert_recorded(record)
        records.append(record)
    unwatched, watched_record = records
    for key in ("status", "usage", "message", "stopReason", "costUsd", "error"):
        assert unwatched[key] == watched_record[key], key
    assert [(c["event"], c["data"]) for c in unwatched["chunks"]] == \
        [(c["event"], c["data"]) for c in watched_record["chunks"]]


def test_a_media_type_in_any_case_is_streamed(odd_proxy, test_tag) -> None:
    """Defect 5: `Text/Event-Stream` is an event stream: the client gets the first event while the upstream still
    holds the rest, and the record has the stream's events."""
    raw, first, response = post(odd_proxy, test_tag, content_type="Text/Event-Stream; Charset=UTF-8", hold="1.5")
    assert response.status_code == 200 and raw.startswith(b"event: message_start")
    assert first < 1.0, f"the first byte came after {first:.2f} s: the stream was buffered"
    assert_recorded(odd_proxy.wait_record(by_tag(test_tag)))


def test_a_whole_answer_still_arriving_is_not_cut_by_the_watchdog(odd_proxy, test_tag) -> None:
    """Defect 6: a JSON body trickling in for longer than request_timeout (2 s here) keeps coming: every byte
    is activity."""
    raw, _, response = post(odd_proxy, test_tag, stream=False, trickle="3")
    assert response.status_code == 200, raw[:300]
    assert json.loads(raw)["content"][0]["text"] == TEXT
    record = odd_proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "success", record.get("error")
    assert record["metrics"]["durationMs"] > 2500


def test_the_live_monitor_masks_keys_in_the_path_and_the_text(odd_proxy, test_tag) -> None:
    """Defect 1: a key in the query string, in the user's text or in the model name reaches no monitor client in
    full, in any event (`started`, `progressed`, `ended`), nor in any answer of the API."""
    with monitor(odd_proxy) as events:
        post(odd_proxy, test_tag, path=f"/v1/messages?key={SECRET}", text=f"my key is {SECRET}", hold="1.2",
             model=f"claude-{SECRET}")
        record = odd_proxy.wait_record(by_tag(test_tag))
        deadline = time.monotonic() + 5
        while not any(e.get("type") == "ended" and e["record"].get("id") == record["id"] for e in events):
            assert time.monotonic() < deadline, "no ended event"
            time.sleep(0.05)
    mine = [e for e in events if (e.get("record") or {}).get("id") == record["id"]]
    assert {e["type"] for e in mine} == {"started", "progressed", "ended"}
    text = json.dumps(mine)
    assert SECRET not in text and "secretMIDDLE" not in text
    assert "sk-ant-api...end9" in text  # masked, the way every other view masks it
    assert all("sk-ant-api...end9" in e["record"]["request"]["path"] for e in mine)
    assert all("sk-ant-api...end9" in e["record"]["preview"] for e in mine)
    for path in ("/api/monitor/stats", "/api/monitor/requests", f"/api/monitor/requests/{record['id']}",
                 "/api/monitor/export"):
        answer = odd_proxy.get(path)
        assert answer.status_code == 200 and "secretMIDDLE" not in answer.text, path


# ---- store faults -----------------------------------------------------------------------------------------------
def test_the_store_survives_a_log_that_cannot_be_written(proxy_factory, odd, test_tag) -> None:
    """Defect 7: mitmproxy's terminal log raises SystemExit when it cannot print (a closed pipe, a full disk).
    Every log line of a background thread raises so here (tests/fakes/failing_log.py): the store's threads must
    go on, and a writer process that dies must still be replaced."""
    proxy = proxy_factory(upstream=odd.url, extra_args=["-s", str(FAILING_LOG)])
    post(proxy, f"{test_tag}-1", stream=False)
    proxy.wait_record(by_tag(f"{test_tag}-1"))
    os.kill(proxy.writer_pid(), signal.SIGKILL)  # the receiver logs that, and starts another writer
    time.sleep(0.3)
    post(proxy, f"{test_tag}-2", stream=False)
    deadline = time.monotonic() + 15
    while proxy.list_records(limit=10)["total"] < 2:
        assert time.monotonic() < deadline, f"the second record was never written: {proxy.health()}"
        time.sleep(0.1)
    store = proxy.health()["store"]
    assert store["writerRestarts"] == 1 and store["queued"] == 0
    assert "failing_log: SystemExit" in proxy.logs(), "the failing log handler did raise"


def test_a_deleted_state_dir_is_re_created_and_said(proxy_factory, odd, test_tag) -> None:
    """Defect 8: `rm -rf` of the state dir under a running proxy: /health and the API answer (never a bare
    500), the store is re-created, /health says degraded and why, and the records from then on are kept."""
    proxy = proxy_factory(upstream=odd.url)
    post(proxy, f"{test_tag}-1", stream=False)
    first = proxy.wait_record(by_tag(f"{test_tag}-1"))
    shutil.rmtree(proxy.state_dir)
    for path in ("/health", "/api/monitor/requests", "/api/monitor/stats", f"/api/monitor/requests/{first['id']}"):
        response = proxy.get(path)
        assert response.status_code in (200, 404, 500), path
        assert response.headers["content-type"].startswith("application/json"), (path, response.text[:200])
    deadline = time.monotonic() + 10
    while "deleted or replaced" not in str(health := proxy.health()).lower():
        assert time.monotonic() < deadline, f"the writer never noticed: {health}"
        time.sleep(0.1)
    assert health["status"] == "degraded" and "deleted or replaced" in health["reason"]
    post(proxy, f"{test_tag}-2")
    second = proxy.wait_record(by_tag(f"{test_tag}-2"))
    assert second["status"] == "success"
    assert [r["id"] for r in proxy.list_records()["data"]] == [second["id"]]
    with sqlite3.connect(proxy.state_dir / "records.sqlite3") as db:  # in the file now at the path
        assert db.execute("SELECT id FROM records").fetchall() == [(second["id"],)]


def test_an_export_of_a_damaged_database_says_it_failed(fake_anthropic, tmp_path) -> None:
    """A database with a damaged page still lets the proxy run, but its export must not be a 200 with 0 bytes."""
    proxy = ProxyProcess(workdir=tmp_path, upstream=fake_anthropic.url)
    store = Store(proxy.state_dir)
    for n in range(20):
        record = Record(request=HttpRequestPart(method="POST", path="/v1/messages", body={
            "model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": f"{n} " + "x" * 5000}]}),
            status="success")
        store.put(record)
    store.flush()
    store.close()
    db_path = proxy.state_dir / "records.sqlite3"
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'blobs' AND pagetype = 'leaf'")]
    with open(db_path, "r+b") as f:  # garbage over one page of message pieces, as a failing disk leaves it
        f.seek((pages[len(pages) // 2] - 1) * page_size)
        f.write(os.urandom(page_size))
    try:
        proxy.start()
        response = proxy.get("/api/monitor/export")
        assert response.status_code == 500, (response.status_code, len(response.content))
        error = response.json()["error"]
        assert "export failed" in error["message"] and "malformed" in error["message"]
    finally:
        proxy.close()


def test_a_body_with_nan_is_recorded_as_sent(odd_proxy, test_tag) -> None:
    """`NaN` is not JSON: the record keeps the body as the text the client sent, never a `null` in its place."""
    body = b'{"model": "claude-sonnet-4-5", "max_tokens": 8, "temperature": NaN, "messages": []}'
    with httpx.Client(trust_env=False, timeout=20) as client:
        response = client.post(odd_proxy.url + "/v1/messages", content=body, headers={
            "x-api-key": FAKE_API_KEY, "content-type": "application/json", "x-test-tag": test_tag})
    assert response.status_code == 200
    record = odd_proxy.wait_record(by_tag(test_tag))
    assert record["request"]["body"] == body.decode()
