"""mitmweb with the addon, for real: a mitmweb child process in front of the fake Anthropic (and a fake
OpenRouter), read through mitmweb's own HTTP API (`GET /flows`, authenticated with `web_password`).

What a mitmweb user sees: API calls with a comment (model, provider, outcome, tokens, cost, record id) and a
mark for errors / cancels / translations, the streamed answer's body; no web-app flows (even a live
monitor stream, which must keep working while hidden); never more flows than `web_max_flows`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from fakes.harness import FAKE_API_KEY, ProxyProcess, by_tag, child_env, free_port
from fakes.openrouter_upstream import DEFAULT_KEY, FakeOpenRouter

WEB_PASSWORD = "test-web-password"
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}


class MitmwebProcess(ProxyProcess):
    """The harness's proxy, run by mitmweb (no browser, a fixed password, a free UI port)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.web_port = free_port()

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[0] = str(Path(cmd[0]).with_name("mitmweb"))
        return [*cmd, "--set", "web_open_browser=false", "--set", f"web_port={self.web_port}",
                "--set", f"web_password={WEB_PASSWORD}"]

    def web(self, path: str) -> httpx.Response:
        return self._http.get(f"http://127.0.0.1:{self.web_port}{path}",
                              headers={"Authorization": f"Bearer {WEB_PASSWORD}"})

    def flows(self) -> list[dict[str, Any]]:
        r = self.web("/flows")
        assert r.status_code == 200, r.text[:300]
        return r.json()

    def wait_flows(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            flows = self.flows()
            if predicate(flows):
                return flows
            if time.monotonic() > deadline:
                raise AssertionError(f"mitmweb flows never matched: {[summary(f) for f in flows]}")
            time.sleep(0.1)


def summary(flow: dict[str, Any]) -> tuple:
    request = flow.get("request") or {}
    return request.get("path"), flow.get("marked"), flow.get("comment", "")[:80]


def tagged(flows: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    return [f for f in flows if [tag] == [v for k, v in f["request"]["headers"] if k.lower() == "x-test-tag"]]


@pytest.fixture(scope="module")
def web_proxies(tmp_path_factory) -> Iterator[list[MitmwebProcess]]:
    started: list[MitmwebProcess] = []
    yield started
    for p in started:
        p.close()


@pytest.fixture(scope="module")
def mitmweb(web_proxies, tmp_path_factory, fake_anthropic) -> MitmwebProcess:
    p = MitmwebProcess(workdir=tmp_path_factory.mktemp("mitmweb"), upstream=fake_anthropic.url)
    web_proxies.append(p)
    return p.start()


def client_for(proxy: ProxyProcess, tag: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=0, timeout=20,
                               default_headers={"x-test-tag": tag, **headers})


# ---- the flows of API calls ------------------------------------------------------------------------------------
def test_streamed_call_has_comment_and_body(mitmweb, test_tag):
    with client_for(mitmweb, test_tag).messages.stream(**BODY) as stream:
        message = stream.get_final_message()
    record = mitmweb.wait_record(by_tag(test_tag))
    flows = mitmweb.wait_flows(lambda fs: any("record " in f["comment"] for f in tagged(fs, test_tag))
                               and "in progress" not in tagged(fs, test_tag)[0]["comment"])
    (flow,) = tagged(flows, test_tag)
    comment = flow["comment"]
    assert comment.startswith("claude-sonnet-4-5 · anthropic · end_turn · in 25 / out 42 tok"), comment
    assert "cache read 200, write 100" in comment and f"record {record['id']}" in comment
    assert flow["marked"] == "", "a successful Anthropic call is not marked"
    # The streamed answer is readable in mitmweb: the events the client received.
    body = mitmweb.web(f"/flows/{flow['id']}/response/content.data")
    assert body.status_code == 200
    text = body.content.decode()
    assert text.startswith("event: message_start\n") and "event: message_stop" in text
    assert message.content[0].text in "".join(
        json.loads(line[6:])["delta"].get("text", "") for line in text.splitlines()
        if line.startswith("data: ") and '"text_delta"' in line)


def test_error_call_is_marked(mitmweb, test_tag):
    with pytest.raises(anthropic.RateLimitError):
        client_for(mitmweb, test_tag, **{"x-fake-scenario": "rate_limit"}).messages.create(**BODY)
    flows = mitmweb.wait_flows(lambda fs: any(f["marked"] for f in tagged(fs, test_tag)))
    (flow,) = tagged(flows, test_tag)
    assert flow["marked"] == "❌"
    assert "error rate_limit_error" in flow["comment"]


def test_cancelled_call_is_marked(mitmweb, test_tag):
    client = client_for(mitmweb, test_tag, **{"x-fake-scenario": "slow", "x-fake-events": "200"})
    with client.messages.stream(**BODY) as stream:
        for _ in zip(range(3), stream.text_stream, strict=False):
            pass  # leave after a few events
    flows = mitmweb.wait_flows(lambda fs: any(f["marked"] for f in tagged(fs, test_tag)))
    (flow,) = tagged(flows, test_tag)
    assert flow["marked"] == "✖" and "cancelled (the client left)" in flow["comment"]


def test_comment_column_is_shown(mitmweb):
    options = mitmweb.web("/options").json()
    assert "comment" in options["web_columns"]["value"]


# ---- the web app's flows ----------------------------------------------------------------------------------------
def test_web_app_flows_are_hidden_and_dropped(mitmweb, test_tag):
    for _ in range(3):
        assert mitmweb.get("/health").status_code == 200
        assert mitmweb.get("/api/monitor/requests", limit=1).status_code == 200
    assert mitmweb.get("/monitor").status_code == 200
    client_for(mitmweb, test_tag).messages.create(**BODY)  # an API flow after them, to be sure the view is current
    flows = mitmweb.wait_flows(lambda fs: bool(tagged(fs, test_tag)))
    paths = [f["request"]["path"] for f in flows]
    assert not [p for p in paths if not p.startswith("/v1/")], paths
    assert all(f["comment"] != "anthropic-proxy web app" for f in flows)


def test_live_monitor_stream_keeps_working_while_hidden(mitmweb, test_tag):
    """Hiding must not kill: the monitor's event stream (a web-app flow that stays open) still delivers."""
    events: list[str] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", mitmweb.url + "/api/monitor/stream", timeout=20, trust_env=False) as r:
            for line in r.iter_lines():
                connected.set()
                events.append(line)
                if test_tag in line and '"ended"' in line:
                    return

    worker = threading.Thread(target=listen, daemon=True)
    worker.start()
    assert connected.wait(10)
    time.sleep(0.3)
    assert not [f for f in mitmweb.flows() if f["request"]["path"].startswith("/api/monitor/stream")]
    client_for(mitmweb, test_tag).messages.create(**BODY)
    worker.join(15)
    assert not worker.is_alive(), f"the live stream stopped delivering events: {events[-5:]}"


# ---- the cap -----------------------------------------------------------------------------------------------------
def test_web_max_flows_caps_the_flow_list(web_proxies, tmp_path_factory, fake_anthropic, test_tag):
    proxy = MitmwebProcess(workdir=tmp_path_factory.mktemp("mitmweb-cap"), upstream=fake_anthropic.url,
                           options={"web_max_flows": 5})
    web_proxies.append(proxy)
    proxy.start()
    client = client_for(proxy, test_tag)
    for i in range(12):
        client.messages.create(**{**BODY, "messages": [{"role": "user", "content": f"call {i}"}]})
        assert len(proxy.flows()) <= 5
    flows = proxy.wait_flows(lambda fs: len(fs) == 5)
    kept = [json.loads(proxy.web(f"/flows/{f['id']}/request/content.data").content)["messages"][0]["content"]
            for f in flows]
    assert kept == [f"call {i}" for i in range(7, 12)], "the oldest flows go first"
    # the cap is mitmweb's memory only; every call is still recorded (the store writes in the background)
    assert len(proxy.wait_records(lambda r: True, count=12)) == 12
    # 0 lifts the cap at runtime (an option like any other).
    with httpx.Client(base_url=f"http://127.0.0.1:{proxy.web_port}", trust_env=False,
                      headers={"Authorization": f"Bearer {WEB_PASSWORD}"}) as ui:
        xsrf = "ab" * 16  # tornado's double-submit check: the same token as cookie and header
        r = ui.put("/options", json={"web_max_flows": 0},
                   headers={"X-XSRFToken": xsrf, "Cookie": f"_mitmproxy_xsrf={xsrf}"})
    assert r.status_code == 200, r.text
    assert len(proxy.flows()) == 5, [summary(f) for f in proxy.flows()]
    for _ in range(3):
        client.messages.create(**BODY)
    proxy.wait_flows(lambda fs: len(fs) == 8)


# ---- OpenRouter mode ---------------------------------------------------------------------------------------------
def test_translated_flow_is_understandable(web_proxies, tmp_path_factory, test_tag):
    with FakeOpenRouter() as fake:
        proxy = MitmwebProcess(workdir=tmp_path_factory.mktemp("mitmweb-or"), upstream="https://api.anthropic.com",
                               options={"proxy_mode": "openrouter", "openrouter_base_url": fake.base_url},
                               env={"OPENROUTER_API_KEY": DEFAULT_KEY})
        web_proxies.append(proxy)
        proxy.start()
        body = {**BODY, "model": "claude-haiku-4-5", "metadata": {"user_id": test_tag}}
        with client_for(proxy, test_tag).messages.stream(**body) as stream:
            stream.get_final_message()
        record = proxy.wait_record(by_tag(test_tag))
        flows = proxy.wait_flows(lambda fs: any(f["marked"] for f in fs))
        (flow,) = flows
        assert flow["marked"] == "🔀"
        assert flow["request"]["path"].endswith("/chat/completions"), "the request as sent to OpenRouter"
        comment = flow["comment"]
        assert comment.startswith(f"claude-haiku-4-5 → {record['upstreamModel']} via OpenRouter · "), comment
        assert "translated: the request shown is what went to OpenRouter" in comment
        if record.get("costUsd") is not None:
            assert f"${record['costUsd']:.6f}"[:6] in comment
        answer = proxy.web(f"/flows/{flow['id']}/response/content.data").content.decode()
        events = [line.removeprefix("event: ") for line in answer.splitlines() if line.startswith("event: ")]
        assert events[0] == "message_start" and events[-1] == "message_stop", "the Anthropic stream the client got"
        assert "chat.completion.chunk" not in answer, answer
        proxy.stop()


# ---- the launcher -------------------------------------------------------------------------------------------------
def test_launcher_web_starts_mitmweb(tmp_path, fake_anthropic):
    port, web_port = free_port(), free_port()
    env = child_env(tmp_path, {"ANTHROPIC_UPSTREAM_URL": fake_anthropic.url, "PORT": str(port),
                               "ANTHROPIC_PROXY_HOME": str(tmp_path / "state")})
    launcher = Path(sys.executable).with_name("anthropic-proxy")
    log = open(tmp_path / "launcher.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(launcher), "--web", "--set", "web_open_browser=false", "--set",
                             f"web_port={web_port}", "--set", f"web_password={WEB_PASSWORD}",
                             "--set", f"confdir={tmp_path / 'mitm'}"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "launcher.log").read_text()
            time.sleep(0.1)
        anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=FAKE_API_KEY, max_retries=0).messages.create(
            **BODY)
        headers = {"Authorization": f"Bearer {WEB_PASSWORD}"}
        deadline = time.monotonic() + 10
        while True:
            flows = httpx.get(f"http://127.0.0.1:{web_port}/flows", headers=headers, trust_env=False).json()
            if flows and "record " in flows[0]["comment"] and "in progress" not in flows[0]["comment"]:
                break
            assert time.monotonic() < deadline, flows
            time.sleep(0.1)
        assert [f["request"]["path"] for f in flows] == ["/v1/messages"]
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert os.path.exists(tmp_path / "state" / "records.sqlite3")



# ---- API keys ---------------------------------------------------------------------------------------------------
def test_keys_are_masked_in_mitmweb_but_reach_the_upstream(mitmweb, fake_anthropic, test_tag):
    """web_mask_keys (default on): in flight (before the answer, from mitmweb's serializer) and once the request
    has gone (in the flow itself: saved flows hold no key); the upstream got the real one."""
    client = client_for(mitmweb, test_tag, **{"x-fake-scenario": "silent", "x-fake-delay-ms": "1500"})
    worker = threading.Thread(target=lambda: client.messages.create(**BODY))
    worker.start()

    def key_shown(flow: dict[str, Any]) -> str:  # (the SDK sends the key as a bearer token)
        return next(v for k, v in flow["request"]["headers"] if k.lower() == "authorization")

    masked = f"Bearer {FAKE_API_KEY[:10]}...{FAKE_API_KEY[-4:]}"

    try:
        in_flight = tagged(mitmweb.wait_flows(lambda fs: bool(tagged(fs, test_tag))), test_tag)[0]
        assert in_flight.get("response") is None, "seen before the answer"
        assert key_shown(in_flight) == masked
    finally:
        worker.join(15)
    assert fake_anthropic.tagged(test_tag)[0].header("authorization") == f"Bearer {FAKE_API_KEY}"
    done = tagged(mitmweb.wait_flows(lambda fs: any(f.get("response") for f in tagged(fs, test_tag))), test_tag)[0]
    assert key_shown(done) == masked
    saved = mitmweb.web("/flows/dump")
    assert saved.status_code == 200 and test_tag.encode() in saved.content
    assert b"secretMIDDLE" not in saved.content, "flows saved from mitmweb hold no key"
