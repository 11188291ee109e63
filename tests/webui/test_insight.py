"""Rate limits and the session view through a real mitmdump: the fake Anthropic's anthropic-ratelimit-* headers
(unified 5h / 7d windows and one no one knows yet) in /api/monitor/ratelimits and in the monitor's panel; a
50-turn session built from the captured Claude Code requests, imported, shown as a conversation with its cache
breaks at /monitor?session=ID (Playwright, Debian's Chromium).

Set WEBUI_SCREENSHOTS=1 to refresh docs/screenshots/session.png.
"""

from __future__ import annotations

import copy
import os
import time
from datetime import timedelta

import httpx
from fakes.claude_session import session_records
from playwright.sync_api import expect

from anthropic_proxy.store import record_json

from .conftest import open_monitor
from .test_api import send, unique_model, wait_final
from .test_browser import SCREENSHOTS

UNIFIED = "x-fake-response-anthropic-ratelimit-unified-"


def test_rate_limit_headers_reach_the_endpoint_and_the_panel(page, proxy):
    model = unique_model()
    reset = int(time.time()) + 3 * 3600
    for used in ("0.30", "0.40"):
        send(proxy, model, "how full is my quota?", headers={
            f"{UNIFIED}5h-utilization": used, f"{UNIFIED}5h-reset": str(reset), f"{UNIFIED}status": "allowed",
            f"{UNIFIED}7d-utilization": "0.12", f"{UNIFIED}7d-reset": "2030-01-08T00:00:00Z",
            f"{UNIFIED}brand-new-thing": "as-sent"})
        time.sleep(0.3)  # two points apart in time: a rate to project
    wait_final(proxy, model, 2)
    report = proxy.get("/api/monitor/ratelimits", model=model).json()
    latest = report["latest"]
    assert latest["anthropic-ratelimit-unified-brand-new-thing"]["value"] == "as-sent"  # unknown, kept as sent
    assert latest["anthropic-ratelimit-requests-remaining"]["value"] == "3999"  # the fake's standard headers
    five = next(w for w in report["windows"] if w["window"] == "5h")
    assert five["utilization"] == 0.4 and five["status"] == "allowed" and five["ratePerHour"] > 0
    assert five["fillsAt"] is not None and five["fillsBeforeReset"] is True  # +10 points in 0.3 s
    assert [p["values"]["unified-5h-utilization"] for p in report["series"]] == [0.3, 0.4]
    assert {limit["name"] for limit in report["limits"]} >= {"requests", "input-tokens", "output-tokens"}

    open_monitor(page, proxy, f"?model={model}")
    panel = page.get_by_test_id("ratelimits")
    expect(panel).to_be_visible()
    window = panel.locator('[data-window="5h"]')
    expect(window).to_contain_text("40.0% used")
    expect(window.get_by_test_id("ratelimit-projection")).to_contain_text("before the window resets")
    assert window.locator("svg.rl-spark polyline").count() == 1  # the two points over time
    expect(panel.locator('[data-testid="ratelimit-row"][data-name="requests"]')).to_contain_text("3,999")
    expect(panel.get_by_test_id("ratelimit-headers")).to_contain_text("as-sent")
    assert page.console.errors == []


def _session_export() -> tuple[str, bytes, dict[int, str]]:
    """50 turns shaped like the captured Claude Code requests; turn 3 edits the first message, turn 35
    changes the Bash tool's description, turn 42 comes ten minutes after turn 41 (the cache expired)."""
    records = list(session_records(50, seed=21))
    for n, record in enumerate(records):
        body = record.request.body = copy.deepcopy(record.request.body)
        if n >= 3:
            body["messages"][0]["content"][0]["text"] += " (edited)"
        if n >= 35:
            next(t for t in body["tools"] if t["name"] == "Bash")["description"] += " Also."
        if n >= 42:
            record.timestamp += timedelta(minutes=10)
    lines = [record_json(r).encode() for r in records]
    return records[0].session_id, b"\n".join(lines) + b"\n", {3: "messages", 35: "tools", 42: "ttl"}


def test_session_view_shows_a_50_turn_session_with_its_cache_breaks(page, proxy, tmp_path):
    session, content, breaks = _session_export()
    with httpx.Client(trust_env=False, timeout=60) as c:
        imported = c.post(proxy.url + "/api/monitor/import", content=content).json()
    assert imported["imported"] == 50
    turns = proxy.get(f"/api/monitor/sessions/{session}").json()["turns"]
    assert len(turns) == 50
    assert {n: t["cacheBreak"]["at"] for n, t in enumerate(turns) if t["cacheBreak"]} == breaks
    assert turns[3]["toolCalls"][0]["name"] == "Bash" and turns[3]["toolResults"] == 1

    open_monitor(page, proxy, f"?session={session}")
    view = page.get_by_test_id("conversation")
    expect(view).to_be_visible()
    expect(view.get_by_test_id("turn")).to_have_count(50)
    expect(view.get_by_test_id("turn-break")).to_have_count(3)
    expect(view.get_by_test_id("conversation-summary")).to_contain_text("50 turns")
    expect(view.get_by_test_id("turn").nth(35).get_by_test_id("turn-break")).to_contain_text(
        "tool `Bash` description changed")
    assert view.locator("svg rect").count() >= 100  # both charts drawn, a bar per turn
    folder = SCREENSHOTS if os.environ.get("WEBUI_SCREENSHOTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    view.evaluate("el => window.scrollTo(0, el.offsetTop - 60)")  # the charts, then the turns from #1
    page.wait_for_timeout(300)
    page.screenshot(path=folder / "session.png", full_page=False)
    view.get_by_test_id("turn").nth(3).locator(".turn-head").click()
    expect(page.get_by_test_id("detail-cache-break")).to_contain_text("message 0 edited (user)")
    page.get_by_test_id("filter-session-clear").click()
    expect(view).to_be_hidden()
    assert page.console.errors == []
