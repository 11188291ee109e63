"""Team scale: two real proxies on one PostgreSQL database; each web app shows every record of both."""

from __future__ import annotations

import threading
import time

import anthropic
from fakes.harness import FAKE_API_KEY, by_tag
from fakes.postgres import PG_PASSWORD

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


def call(proxy, tag: str, **headers: str) -> anthropic.types.Message:
    with anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=0, timeout=20,
                             default_headers={"x-test-tag": tag, **headers}) as client, \
            client.messages.stream(**BODY) as stream:
        return stream.get_final_message()


def test_two_proxies_share_one_postgresql_store(start_proxy, postgres, fake_anthropic, test_tag):
    url = postgres.url(postgres.create_database(), password=PG_PASSWORD)
    first, second = (start_proxy(options={"store_url": url}) for _ in range(2))
    for proxy in (first, second):
        health = proxy.health()
        assert health["store"]["backend"] == "postgresql" and PG_PASSWORD not in str(health)
        assert health["store"]["path"] == url.replace(PG_PASSWORD, "***")

    call(first, f"{test_tag}-1")
    call(second, f"{test_tag}-2")
    for proxy in (first, second):  # every web app lists the records of both
        one = proxy.wait_record(by_tag(f"{test_tag}-1"))
        two = proxy.wait_record(by_tag(f"{test_tag}-2"))
        assert one["status"] == two["status"] == "success"
        listed = {r["id"] for r in proxy.list_records(limit=10)["data"]}
        assert {one["id"], two["id"]} <= listed

    # A call held in flight by the first proxy survives the second one restarting.
    hold = f"{test_tag}-hold"
    result: dict = {}

    def held_call() -> None:
        result["message"] = call(first, hold, **{"x-fake-scenario": "hold", "x-fake-hold-id": hold})

    worker = threading.Thread(target=held_call)
    worker.start()
    try:
        fake_anthropic.wait_holding(hold)
        pending = second.wait_record(by_tag(hold), final=False)  # written by the first, read by the second
        assert pending["status"] == "pending"
        second.restart()
        time.sleep(0.3)
        assert second.get_record(pending["id"])["status"] == "pending", "the restart closed another's record"
    finally:
        fake_anthropic.release(hold)
        worker.join(timeout=20)
    assert result["message"].stop_reason == "end_turn"
    for proxy in (first, second):
        assert proxy.wait_record(pending["id"])["status"] == "success"
    for proxy in (first, second):
        logs = proxy.logs()
        # (mitmproxy may print a CancelledError of a client connection at shutdown: not ours)
        assert PG_PASSWORD not in logs and "/anthropic_proxy/" not in logs and "store: " not in logs
        assert "records to postgresql://postgres:***@" in logs


def test_an_unreachable_database_stops_the_proxy_with_a_masked_message(start_proxy, postgres):
    url = f"postgresql://nobody:{PG_PASSWORD}@127.0.0.1:9/nowhere"  # discard port: refused at once
    proxy = start_proxy(options={"store_url": url}, wait_ready=False)
    try:
        proxy.proc.wait(20)
    except Exception:
        proxy.stop()
        raise AssertionError(f"the proxy kept running without its store\n{proxy.logs()}") from None
    logs = proxy.logs()
    assert "cannot open the record store postgresql://nobody:***@127.0.0.1:9/nowhere" in logs, logs
    assert PG_PASSWORD not in logs
