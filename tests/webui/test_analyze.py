"""The analysis report and the stats breakdowns through a real mitmdump: `GET /api/monitor/analyze` (HTML with
its own CSP, and `format=json`), `GET /api/monitor/stats` by model / provider / day / session with cache savings
in dollars, the config's price information, and the monitor page's Analyze dialog, sessions table, cache
savings figure and unknown-cost marker in Chromium.

The module's proxy holds exactly the seven records `populated` sends (no other test here adds any), so every
figure below is hand-computed from the fake upstream's usage and the built-in prices (USD per MTok):

    non-streamed answer: input 12, output 29, cache write 3 (5m), cache read 5
    streamed answer (also stream_tool): input 25, output 42, cache write 100 (5m), cache read 200
    Sonnet 4.5  $3 in, $15 out, $3.75 5m write, $0.30 read   -> saves $2.70 per MTok read
    Opus 4.8    $5 in, $25 out, $6.25 5m write, $0.50 read   -> saves $4.50 per MTok read
    Haiku 4.5   $1 in,  $5 out, $1.25 5m write, $0.10 read   -> saves $0.90 per MTok read
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.sync_api import expect

from .conftest import open_monitor
from .test_api import send, wait_final

SONNET, OPUS, HAIKU = "claude-sonnet-4-5-20250929", "claude-opus-4-8", "claude-haiku-4-5"
UNKNOWN = "claude-unreleased-9"  # no price
SESSION_HEADER = "x-claude-code-session-id"

# cost and cache savings of each record (see the module docstring)
A1 = (12 * 3 + 29 * 15 + 3 * 3.75 + 5 * 0.30) / 1e6, 5 * 2.70 / 1e6  # 0.00048375, 0.0000135
A2 = (25 * 3 + 42 * 15 + 100 * 3.75 + 200 * 0.30) / 1e6, 200 * 2.70 / 1e6  # 0.00114, 0.00054
A3 = (12 * 5 + 29 * 25 + 3 * 6.25 + 5 * 0.50) / 1e6, 5 * 4.50 / 1e6  # 0.00080625, 0.0000225
B1 = (25 * 1 + 42 * 5 + 100 * 1.25 + 200 * 0.10) / 1e6, 200 * 0.90 / 1e6  # 0.00038, 0.00018
N1 = A1


def usd(value: float) -> float:
    return round(value, 8)


@pytest.fixture(scope="module")
def populated(proxy) -> dict[str, Any]:
    """Session A: three priced calls (Sonnet, Sonnet streamed, Opus). Session B: a Haiku tool call, a rate-limited
    call, a call to a model without a price. One Sonnet call without a session."""
    a, b = f"sess-a-{uuid.uuid4().hex[:8]}", f"sess-b-{uuid.uuid4().hex[:8]}"
    send(proxy, SONNET, "Fix the bug in the parser", headers={SESSION_HEADER: a})
    send(proxy, SONNET, "Write unit tests for the store", stream=True, headers={SESSION_HEADER: a})
    send(proxy, OPUS, "Explain how the router works", headers={SESSION_HEADER: a})
    send(proxy, HAIKU, "hello there", stream=True, scenario="stream_tool", headers={SESSION_HEADER: b})
    send(proxy, HAIKU, "rate limited please", scenario="rate_limit", headers={SESSION_HEADER: b})
    send(proxy, UNKNOWN, "hello again", headers={SESSION_HEADER: b})
    send(proxy, SONNET, "hello without a session")
    proxy.wait_records(lambda r: True, count=7, timeout=15)
    records = proxy.list_records(limit=50)["data"]
    assert len(records) == 7 and all(r["status"] != "pending" for r in records)
    return {"a": a, "b": b, "records": records}


# ---- the report -------------------------------------------------------------------------------------------------
def test_analyze_json_has_hand_checked_figures(proxy, populated):
    r = proxy.get("/api/monitor/analyze", format="json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    report = r.json()
    t = report["totals"]
    assert (t["requests"], t["success"], t["errors"], t["unpricedRequests"]) == (7, 6, 1, 1)
    assert (t["inputTokens"], t["outputTokens"]) == (12 + 25 + 12 + 25 + 12 + 12, 29 + 42 + 29 + 42 + 29 + 29)
    assert (t["cacheReadTokens"], t["cacheCreationTokens"]) == (5 + 200 + 5 + 200 + 5 + 5, 3 + 100 + 3 + 100 + 3 + 3)
    assert t["costUsd"] == usd(A1[0] + A2[0] + A3[0] + B1[0] + N1[0]) == 0.00329375
    cache = report["cache"]
    assert cache["savingsUsd"] == usd(A1[1] + A2[1] + A3[1] + B1[1] + N1[1]) == 0.0007695
    assert cache["unpricedReadTokens"] == 5  # the unknown model's reads: not in the savings
    assert {x["key"]: x["requests"] for x in report["byRequestType"]} == {
        "debugging": 1, "testing": 1, "explanation": 1, "tool use": 1, "conversation": 3}
    assert report["toolUsage"] == [{"name": "get_weather", "count": 1}]
    assert [(e["type"], e["count"]) for e in report["errorsByType"]] == [("rate_limit_error", 1)]
    assert report["latencyMs"]["count"] == 7 and report["latencyMs"]["p50"] <= report["latencyMs"]["p95"]
    by_model = {x["key"]: x for x in report["byModel"]}
    assert by_model[SONNET]["costUsd"] == usd(A1[0] + A2[0] + N1[0])
    assert by_model[SONNET]["cacheSavingsUsd"] == usd(A1[1] + A2[1] + N1[1])
    assert by_model[UNKNOWN]["unpricedRequests"] == 1 and report["unpricedModels"] == [UNKNOWN]
    top = report["mostExpensiveRequests"]
    assert [x["costUsd"] for x in top[:2]] == [usd(A2[0]), usd(A3[0])] and len(top) == 6  # priced ones only
    assert top[0]["preview"] == "Write unit tests for the store" and top[0]["requestType"] == "testing"
    sessions = report["mostExpensiveSessions"]
    assert [(s["sessionId"], s["requests"], s["turns"]) for s in sessions] == [
        (populated["a"], 3, 3), (populated["b"], 3, 3)]
    assert sessions[0]["costUsd"] == usd(A1[0] + A2[0] + A3[0]) and sessions[1]["unpricedRequests"] == 1
    assert (report["sessionCount"], report["recordsWithoutSession"]) == (2, 1)
    # filters apply, and the report says which
    only_a = proxy.get("/api/monitor/analyze", format="json", session=populated["a"]).json()
    assert only_a["totals"]["requests"] == 3 and only_a["filters"]["session"] == populated["a"]
    assert proxy.get("/api/monitor/analyze", format="pdf").status_code == 400


def test_analyze_html_is_the_report_with_its_own_csp(proxy, populated):
    r = proxy.get("/api/monitor/analyze", session=populated["a"])
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'" and directives["style-src"] == "'unsafe-inline'"
    assert "script-src" not in directives and "'unsafe-inline'" not in directives["default-src"]
    assert directives["frame-ancestors"] == "'none'"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    assert r.headers["content-disposition"].startswith("inline;")
    page = r.text
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page.lower()
    assert "$0.0024" in page  # session A's cost, $0.00243
    # the token total says that it counts the cache tokens, and how many of each kind
    t = proxy.get("/api/monitor/analyze", session=populated["a"], format="json").json()["totals"]
    assert t["totalTokens"] == sum(t[k] for k in ("inputTokens", "outputTokens", "cacheReadTokens",
                                                  "cacheCreationTokens"))
    assert f">Tokens incl. cache</div><div class=\"value\">{t['totalTokens']:,}<" in page
    assert (f"{t['inputTokens']:,} in · {t['outputTokens']:,} out · {t['cacheReadTokens']:,} cache read · "
            f"{t['cacheCreationTokens']:,} cache write") in page
    assert f"session={populated['a']}" in page  # the filters it was made with
    assert "Write unit tests for the store" in page and "debugging" in page  # top requests, request types
    # the app's strict policy still applies everywhere else
    assert "script-src 'self'" in proxy.get("/api/monitor/stats").headers["content-security-policy"]


def test_hostile_prompt_model_and_session_are_escaped(start_proxy, browser):
    p = start_proxy()
    script = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
    model = "claude-<script>alert(1)</script>"
    send(p, SONNET, f"review this {script} & that", headers={SESSION_HEADER: "<script>s</script>"})
    send(p, model, f"and {script}")
    wait_final(p, SONNET, 1)
    wait_final(p, model, 1)
    for params in ({}, {"q": "<script>"}):
        page = p.get("/api/monitor/analyze", **params).text
        lowered = page.lower()
        assert "<script" not in lowered and "<img" not in lowered, params
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page  # the prompt, as text
        assert "claude-&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the model name
        assert "&lt;script&gt;s&lt;/script&gt;" in page  # the session id
    assert "q=&lt;script&gt;" in p.get("/api/monitor/analyze", q="<script>").text
    report = p.get("/api/monitor/analyze", format="json").json()
    assert report["unpricedModels"] == [model]  # JSON keeps the text as it was
    # the report in a browser: nothing runs; the monitor's dialog shows the same text as text
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.goto(f"{p.url}/api/monitor/analyze")
        expect(tab.locator("h1")).to_have_text("anthropic-proxy analysis")
        assert tab.locator("script, img").count() == 0 and tab.evaluate("window.__pwned") is None
        tab.goto(f"{p.url}/monitor")
        tab.get_by_test_id("analyze").click()
        dialog = tab.get_by_test_id("analyze-dialog")
        expect(dialog).to_contain_text(model)
        expect(dialog.get_by_test_id("analyze-request").first).to_contain_text(script)
        assert tab.locator("img[src=x], dialog script").count() == 0 and tab.evaluate("window.__pwned") is None
    finally:
        context.close()


# ---- stats breakdowns --------------------------------------------------------------------------------------------
def test_stats_breakdowns_by_session_day_model_with_exact_sums(proxy, populated):
    stats = proxy.get("/api/monitor/stats").json()
    assert stats["total"] == 7 and stats["costUsd"] == 0.00329375
    # cache savings in dollars: savings_for_tokens per model, summed
    assert stats["cacheSavingsUsd"] == 0.0007695 and stats["cacheSavingsUnpricedTokens"] == 5
    by_model = {m["model"]: m for m in stats["byModel"]}
    assert by_model[SONNET]["requests"] == 3 and by_model[SONNET]["costUsd"] == usd(A1[0] + A2[0] + N1[0])
    assert by_model[SONNET]["cacheReadTokens"] == 210 and by_model[SONNET]["cacheSavingsUsd"] == 0.000567
    assert by_model[OPUS]["cacheSavingsUsd"] == 0.0000225 and by_model[HAIKU]["cacheSavingsUsd"] == 0.00018
    assert (by_model[HAIKU]["success"], by_model[HAIKU]["errors"], by_model[HAIKU]["successRate"]) == (1, 1, 0.5)
    assert by_model[UNKNOWN]["costedRequests"] == 0 and by_model[UNKNOWN]["cacheSavingsUsd"] == 0.0
    assert all(m["latencyMs"]["p50"] is not None for m in stats["byModel"])
    sessions = {s["session"]: s for s in stats["bySession"]}
    a, b = sessions[populated["a"]], sessions[populated["b"]]
    assert [s["session"] for s in stats["bySession"]] == [populated["a"], populated["b"]]  # most expensive first
    assert (a["requests"], a["inputTokens"], a["outputTokens"], a["cacheReadTokens"]) == (3, 49, 100, 210)
    assert a["costUsd"] == 0.00243 and a["cacheSavingsUsd"] == usd(A1[1] + A2[1] + A3[1]) == 0.000576
    assert a["models"] == sorted([SONNET, OPUS]) and a["successRate"] == 1.0
    assert (b["requests"], b["errors"], b["costedRequests"], b["costUsd"]) == (3, 1, 2, 0.00038)
    assert b["cacheSavingsUsd"] == 0.00018 and b["latencyMs"]["p95"] >= b["latencyMs"]["p50"]
    assert (stats["sessionCount"], stats["recordsWithoutSession"]) == (2, 1)
    days = stats["byDay"]
    today = datetime.now(UTC).date().isoformat()
    assert [d["day"] for d in days] == sorted({r["timestamp"][:10] for r in populated["records"]})
    assert today in {d["day"] for d in days} or len(days) == 1
    for figure in ("requests", "errors", "inputTokens", "outputTokens", "cacheReadTokens", "cacheCreationTokens"):
        for breakdown in ("byModel", "byDay", "byProvider"):
            assert sum(x[figure] for x in stats[breakdown]) == sum(x[figure] for x in stats["byDay"]), figure
    assert sum(d["requests"] for d in days) == 7 and usd(sum(d["costUsd"] for d in days)) == 0.00329375
    assert [(p["provider"], p["requests"], p["cacheSavingsUsd"]) for p in stats["byProvider"]] == [
        ("anthropic", 7, 0.0007695)]
    # a filter narrows every breakdown
    only_b = proxy.get("/api/monitor/stats", session=populated["b"]).json()
    assert [s["session"] for s in only_b["bySession"]] == [populated["b"]] and only_b["recordsWithoutSession"] == 0
    assert only_b["cacheSavingsUsd"] == 0.00018 and {m["model"] for m in only_b["byModel"]} == {HAIKU, UNKNOWN}


def test_config_shows_where_prices_come_from(proxy):
    prices = proxy.get("/api/monitor/config").json()["prices"]
    assert re.fullmatch(r"genai-prices \d+\.\d+\.\d+", prices["library"]) and prices["source"].startswith("https://")
    assert prices["overrideFile"] == str(proxy.state_dir / "prices.json")
    assert prices["overrideError"] is None and prices["overrideModels"] == []
    assert "claude-sonnet-4-5" in prices["builtinModels"]


# ---- the page --------------------------------------------------------------------------------------------------
def test_analyze_dialog_shows_types_and_opens_an_expensive_request(page, proxy, populated):
    open_monitor(page, proxy)
    page.get_by_test_id("analyze").click()
    dialog = page.get_by_test_id("analyze-dialog")
    expect(dialog).to_be_visible()
    types = dialog.get_by_test_id("analyze-types")
    for name in ("debugging", "testing", "explanation", "tool use", "conversation"):
        expect(types).to_contain_text(name)
    expect(dialog.get_by_test_id("analyze-tools")).to_contain_text("get_weather × 1")
    expect(dialog.get_by_test_id("analyze-errors")).to_contain_text("rate_limit_error")
    expect(dialog.get_by_test_id("analyze-latency")).to_contain_text("p95")
    expect(dialog).to_contain_text("Cache savings")
    expect(dialog).to_contain_text("$0.00077")  # 0.0007695
    expect(dialog).to_contain_text("Tokens incl. cache930 (98 in · 200 out · 420 cache read · 212 cache write)")
    expect(dialog).to_contain_text(f"No price for: {UNKNOWN}")
    expect(dialog.get_by_test_id("analyze-session")).to_have_count(2)
    full = dialog.get_by_test_id("analyze-full-report")
    assert full.get_attribute("target") == "_blank" and full.get_attribute("href") == "/api/monitor/analyze"
    with page.context.expect_page() as opened:
        full.click()
    report = opened.value
    expect(report.locator("h1")).to_have_text("anthropic-proxy analysis")
    expect(report.locator("body")).to_contain_text("Most expensive requests")
    report.close()
    # the most expensive request opens in the detail view
    first = dialog.get_by_test_id("analyze-request").first
    expect(first).to_contain_text("Write unit tests for the store")
    record_id = first.get_attribute("data-id")
    first.click()
    expect(dialog).to_be_hidden()
    detail = page.get_by_test_id("detail")
    expect(detail).to_have_attribute("data-id", record_id)
    expect(detail).to_contain_text("Write unit tests for the store")
    assert page.console.errors == []


def test_cache_savings_sessions_and_unknown_costs_on_the_page(page, proxy, populated):
    open_monitor(page, proxy)
    expect(page.get_by_test_id("stat-cache-savings")).to_have_text("$0.00077")  # $0.0007695
    expect(page.get_by_test_id("stat-total")).to_have_text("7")
    sessions = page.get_by_test_id("session-row")
    expect(sessions).to_have_count(2)
    expect(sessions.first).to_have_attribute("data-session", populated["a"])
    expect(sessions.first).to_contain_text("$0.0024")  # 0.00243
    # a request without a price shows "?" with the reason
    unknown = next(r for r in populated["records"] if r["model"] == UNKNOWN)
    marker = page.locator(f'[data-testid="request-row"][data-id="{unknown["id"]}"] [data-testid="cost-note"]')
    expect(marker).to_have_text("?")
    assert UNKNOWN in marker.get_attribute("title") and "prices.json" in marker.get_attribute("title")
    # a session click filters the rows, the stats and the URL
    sessions.nth(1).click()
    rows = page.get_by_test_id("request-row")
    expect(rows).to_have_count(3)
    expect(page.get_by_test_id("stat-total")).to_have_text("3")
    expect(page.get_by_test_id("filter-session")).to_be_visible()
    assert f"session={populated['b']}" in page.url
    expect(page.get_by_test_id("stat-cache-savings")).to_have_text("$0.00018")  # 0.00018
    expect(page.get_by_test_id("session-row")).to_have_count(1)
    page.get_by_test_id("filter-session-clear").click()
    expect(rows).to_have_count(7)
    expect(page.get_by_test_id("filter-session")).to_be_hidden()
    # a session from the Analyze dialog filters too
    page.get_by_test_id("analyze").click()
    page.get_by_test_id("analyze-dialog").get_by_test_id("analyze-session").first.click()
    expect(rows).to_have_count(3)
    assert f"session={populated['a']}" in page.url
    assert page.console.errors == []


def test_config_page_shows_the_prices_read_only(page, proxy):
    page.goto(f"{proxy.url}/config")
    prices = page.get_by_test_id("prices")
    library = proxy.get("/api/monitor/config").json()["prices"]["library"]
    expect(prices).to_contain_text(library)
    expect(prices.get_by_test_id("prices-file")).to_have_text(str(proxy.state_dir / "prices.json"))
    expect(prices.get_by_test_id("prices-error")).to_be_hidden()
    assert prices.locator("input, select, textarea").count() == 0  # read-only
    path = proxy.state_dir / "prices.json"
    try:
        path.write_text("{ not json", encoding="utf-8")
        page.reload()
        expect(prices.get_by_test_id("prices-error")).to_contain_text("is not a valid price file")
        path.write_text(json.dumps({"models": {"my-model": {"input": 1, "output": 2}}}), encoding="utf-8")
        page.reload()
        expect(prices).to_contain_text("1 model(s): my-model")
        expect(prices.get_by_test_id("prices-error")).to_be_hidden()
    finally:
        path.unlink(missing_ok=True)
