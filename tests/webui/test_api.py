"""The web app's JSON API, live stream and safety rules, through a real mitmdump running the addon.

Each test sends its own requests with a model name unique to the test, so filtering by that model
isolates its records from the other tests sharing the module's proxy.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from typing import Any

import anthropic
import httpx
import pytest
from fakes.harness import FAKE_API_KEY, ProxyProcess


def unique_model() -> str:
    return f"claude-webui-{uuid.uuid4().hex[:10]}"


def send(proxy: ProxyProcess, model: str, prompt: str = "Hello", *, stream: bool = False,
         scenario: str | None = None, headers: dict[str, str] | None = None) -> None:
    extra = {**({"x-fake-scenario": scenario} if scenario else {}), **(headers or {})}
    with anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=0, timeout=20,
                             http_client=anthropic.DefaultHttpxClient(trust_env=False)) as client:
        try:
            if stream:
                with client.messages.stream(model=model, max_tokens=64, extra_headers=extra,
                                            messages=[{"role": "user", "content": prompt}]) as s:
                    s.get_final_message()
            else:
                client.messages.create(model=model, max_tokens=64, extra_headers=extra,
                                       messages=[{"role": "user", "content": prompt}])
        except anthropic.APIStatusError:
            pass  # error scenarios are recorded too


def wait_final(proxy: ProxyProcess, model: str, count: int) -> None:
    proxy.wait_records(lambda r: r.get("model") == model, count=count, timeout=15)


def raw(proxy: ProxyProcess, method: str, path: str, *, host: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if host is not None:
        headers["Host"] = host
    with httpx.Client(trust_env=False, timeout=10) as c:
        return c.request(method, proxy.url + path, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def populated(proxy) -> dict[str, Any]:
    """7 records of one model (5 success, 2 errors; 1 with a unique word) plus 2 of another model."""
    model, other = unique_model(), unique_model()
    word = f"zebra{uuid.uuid4().hex[:6]}"
    for i in range(4):
        send(proxy, model, f"plain prompt {i}")
    send(proxy, model, f"the {word} prompt", stream=True)
    send(proxy, model, "rate limited", scenario="rate_limit")
    send(proxy, model, "overloaded", scenario="overloaded")
    send(proxy, other, "other model")
    send(proxy, other, "other model again", stream=True)
    wait_final(proxy, model, 7)
    wait_final(proxy, other, 2)
    return {"model": model, "other": other, "word": word}


# ---- filters, stats, export -------------------------------------------------------------------------------------
def test_filters_apply_to_all_records_not_a_page(proxy, populated):
    model = populated["model"]
    page1 = proxy.get("/api/monitor/requests", model=model, limit=2).json()
    page4 = proxy.get("/api/monitor/requests", model=model, limit=2, page=4).json()
    assert page1["total"] == 7 and len(page1["data"]) == 2
    assert len(page4["data"]) == 1  # 7 = 2 + 2 + 2 + 1
    stamps = [r["timestamp"] for r in page1["data"]]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    stats = proxy.get("/api/monitor/stats", model=model).json()
    assert (stats["total"], stats["success"], stats["errors"], stats["pending"]) == (7, 5, 2, 0)
    assert stats["successRate"] == pytest.approx(5 / 7, abs=1e-3)
    # message scenario: input 12, output 29, cache write 3, cache read 5; stream: 25/42/100/200
    assert stats["tokens"]["input"] == 4 * 12 + 25
    assert stats["tokens"]["output"] == 4 * 29 + 42
    assert stats["tokens"]["cacheRead"] == 4 * 5 + 200
    assert stats["tokens"]["cacheCreation"] == 4 * 3 + 100
    assert stats["latencyMs"]["p50"] is not None and stats["latencyMs"]["p95"] >= stats["latencyMs"]["p50"]
    assert sum(b["count"] for b in stats["latencyHistogram"]) == 7
    assert sum(p["requests"] for p in stats["timeline"]["points"]) == 7
    assert [m["model"] for m in stats["byModel"]] == [model]
    assert model in stats["facets"]["models"] and populated["other"] in stats["facets"]["models"]

    errors = proxy.get("/api/monitor/stats", model=model, status="error").json()
    assert errors["total"] == 2 and errors["success"] == 0
    listed = proxy.get("/api/monitor/requests", model=model, status="error").json()
    assert listed["total"] == 2 and {r["status"] for r in listed["data"]} == {"error"}
    assert proxy.get("/api/monitor/stats", model=model, provider="openrouter").json()["total"] == 0
    assert proxy.get("/api/monitor/stats", model=model, timeRange="1h").json()["total"] == 7
    assert proxy.get("/api/monitor/stats", model=model, to="2000-01-01T00:00:00Z").json()["total"] == 0


def test_search_covers_prompt_and_answer(proxy, populated):
    hits = proxy.get("/api/monitor/requests", q=populated["word"].upper()).json()
    assert hits["total"] == 1 and populated["word"] in hits["data"][0]["preview"]
    assert proxy.get("/api/monitor/stats", q=populated["word"]).json()["total"] == 1
    # the fake's answer text is in every successful message record of this model
    answer = proxy.get("/api/monitor/stats", model=populated["model"], q="doing well, thanks").json()
    assert answer["total"] == 5


def test_bad_filters_are_400(proxy):
    for params in ({"status": "nope"}, {"timeRange": "2y"}, {"from": "yesterday"}, {"page": "x"}):
        r = proxy.get("/api/monitor/requests", **params)
        assert r.status_code == 400, params
        assert r.json()["type"] == "error"


def test_export_streams_every_matching_record_as_a_download(proxy, populated):
    r = proxy.get("/api/monitor/export", model=populated["model"])  # no format: one JSON array
    assert r.status_code == 200
    assert r.headers["content-disposition"].startswith("attachment;") and ".json" in r.headers["content-disposition"]
    assert r.headers["content-type"].startswith("application/json")
    lines = r.json()
    assert len(lines) == 7 and {rec["model"] for rec in lines} == {populated["model"]}
    assert all("request" in rec and "chunks" in rec for rec in lines)  # full records
    assert FAKE_API_KEY[10:-4] not in r.text  # keys masked
    as_ndjson = proxy.get("/api/monitor/export", model=populated["model"], status="error", format="ndjson")
    assert [json.loads(line)["status"] for line in as_ndjson.text.splitlines()] == ["error", "error"]


def test_analyze_and_config_answer(proxy, populated):
    result = proxy.get("/api/monitor/analyze", model=populated["model"], format="json").json()
    assert (result["totals"]["requests"], result["totals"]["errors"]) == (7, 2)
    assert {e["type"] for e in result["errorsByType"]} == {"rate_limit_error", "overloaded_error"}
    assert result["latencyMs"]["count"] == 7 and result["filters"]["model"] == populated["model"]
    assert result["unpricedModels"] == [populated["model"]]  # a made-up model: no price, no guess
    page = proxy.get("/api/monitor/analyze", model=populated["model"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    config = proxy.get("/api/monitor/config").json()
    assert config["mode"] == "anthropic" and config["listenPort"] == proxy.port
    assert config["tokenRequired"] is False
    assert config["prices"]["library"].startswith("genai-prices ") and config["prices"]["overrideError"] is None


# ---- live stream ----------------------------------------------------------------------------------------------
def read_events(url: str, out: queue.Queue, stop: threading.Event) -> None:
    try:
        _read_events(url, out, stop)
    except httpx.HTTPError as exc:  # the proxy stops at the end of the module
        out.put(("closed", repr(exc)))


def _read_events(url: str, out: queue.Queue, stop: threading.Event) -> None:
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(5, read=30)) as c, c.stream("GET", url) as r:
        out.put(("status", r.status_code, r.headers.get("content-type")))
        event = None
        for line in r.iter_lines():
            if stop.is_set():
                return
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.put((event, json.loads(line[6:])))


def next_event(events: queue.Queue, kind: str, timeout: float = 10) -> Any:
    while True:
        item = events.get(timeout=timeout)
        if item[0] == kind:
            return item[1]


def test_stream_delivers_events_live_and_filtered(proxy, fake_anthropic):
    model = unique_model()
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(target=read_events, daemon=True,
                              args=(f"{proxy.url}/api/monitor/stream?model={model}", events, stop))
    reader.start()
    status = events.get(timeout=10)
    assert status[1] == 200 and status[2].startswith("text/event-stream")
    next_event(events, "hello")
    send(proxy, unique_model(), "someone else's request")  # filtered out: never delivered
    hold = uuid.uuid4().hex
    sender = threading.Thread(target=send, args=(proxy, model, "held"), daemon=True,
                              kwargs={"stream": True, "scenario": "hold", "headers": {"x-fake-hold-id": hold}})
    sender.start()
    try:
        started = next_event(events, "started")
        assert started["record"]["model"] == model and started["record"]["status"] == "pending"
        # the event reached us while the exchange is still going on (the upstream holds its answer
        # until we release it), so the stream is live, not buffered to its end
        fake_anthropic.wait_holding(hold)
        assert sender.is_alive()
    finally:
        fake_anthropic.release(hold)
    sender.join(15)
    ended = next_event(events, "ended")
    assert ended["record"]["model"] == model and ended["record"]["status"] == "success"
    assert ended["record"]["id"] == started["record"]["id"]
    stop.set()
    reader.join(timeout=0)
    while not events.empty():
        kind, data = events.get_nowait()[:2]
        if kind != "closed":
            assert kind in ("progressed", "ended") and data["record"]["model"] == model, (kind, data)


# ---- safety -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/monitor", "/config", "/api/monitor/requests", "/api/monitor/stats",
                                  "/api/config", "/health", "/static/monitor.js"])
def test_foreign_host_is_refused(proxy, path):
    assert raw(proxy, "GET", path, host="attacker.example").status_code == 403
    assert raw(proxy, "GET", path, host=f"attacker.example:{proxy.port}").status_code == 403
    assert raw(proxy, "GET", path, host=f"127.0.0.1:{proxy.port + 1}").status_code == 403
    for own in (f"127.0.0.1:{proxy.port}", f"localhost:{proxy.port}", f"[::1]:{proxy.port}"):
        assert raw(proxy, "GET", path, host=own).status_code == 200, own


def test_pages_carry_a_strict_csp_and_root_redirects(proxy):
    r = raw(proxy, "GET", "/monitor")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" in raw(proxy, "GET", "/api/monitor/stats").headers
    root = raw(proxy, "GET", "/", follow_redirects=False)
    assert root.status_code == 302 and root.headers["location"] == "/monitor"


def test_cross_site_post_is_refused_and_changes_nothing(start_proxy):
    p = start_proxy()
    model = unique_model()
    send(p, model)
    wait_final(p, model, 1)
    before = raw(p, "GET", "/api/config").json()
    for origin in ("http://attacker.example", "null", f"http://127.0.0.1:{p.port + 1}"):
        r = raw(p, "POST", "/api/monitor/clear", headers={"Origin": origin})
        assert r.status_code == 403, origin
        r = raw(p, "POST", "/api/config", headers={"Origin": origin}, json={"mode": "openrouter"})
        assert r.status_code == 403, origin
    assert p.list_records()["total"] == 1
    assert raw(p, "GET", "/api/config").json() == before
    # the proxy's own origin, and scripts without an Origin, are accepted
    own = raw(p, "POST", "/api/monitor/clear", headers={"Origin": f"http://localhost:{p.port}"})
    assert own.status_code == 200 and own.json()["deleted"] == 1
    send(p, model)
    wait_final(p, model, 1)
    assert raw(p, "POST", "/api/monitor/clear").json()["deleted"] == 1
    assert p.list_records()["total"] == 0


def test_web_app_flows_are_not_recorded(proxy):
    before = proxy.get("/api/monitor/stats").json()["total"]
    for path in ("/monitor", "/config", "/api/monitor/stats", "/static/style.css", "/no-such-page"):
        raw(proxy, "GET", path)
    raw(proxy, "POST", "/api/monitor/requests")  # a POST the web app answers 405; still not recorded
    after = proxy.list_records(limit=500)
    assert after["total"] == before
    assert all(r["request"]["path"].startswith("/v1/") for r in after["data"])
