"""Capture without touching the base URL: one real mitmdump with a reverse and a forward-proxy listener.

- The Anthropic fake speaks HTTPS with a certificate made here, and is addressed as `localhost`, the one capture
  host; a second HTTPS fake stands for another host and is addressed as `127.0.0.1`. mitmproxy trusts the
  certificate (`ssl_verify_upstream_trusted_ca`); clients trust mitmproxy's CA from the test's confdir.
- The real SDK goes through the forward proxy (HTTPS_PROXY style) and its calls are recorded; the other host's
  traffic reaches it byte for byte, unrecorded, and the web app answers nothing there.
- On the reverse listener, the paths the web app has no route for (Claude Code's /api/claude_code/settings)
  reach the upstream with their headers and come back with its answer.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from fakes.anthropic_upstream import FINAL_TEXT, TOOL_INPUT, FakeAnthropic
from fakes.harness import (
    FAKE_API_KEY,
    ProxyProcess,
    by_tag,
    claude_executable,
    free_port,
    headers_get,
    mitmdump_path,
)
from fakes.tls import SelfSigned, make_self_signed

OAUTH_TOKEN = "sk-ant-oat01-" + "FAKEoauthSECRETmiddle0123456789" * 2 + "-AbCd"
BODY = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
WEATHER_TOOL = {"name": "get_weather", "description": "weather", "input_schema": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> SelfSigned:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def anthropic_fake(certificate) -> Iterator[FakeAnthropic]:
    with FakeAnthropic(tls=certificate.server_context()) as fake:
        yield fake


@pytest.fixture(scope="module")
def other_host(certificate) -> Iterator[FakeAnthropic]:
    """Another host: it answers /v1/messages too, which is exactly what must not be taken for Anthropic's."""
    with FakeAnthropic(tls=certificate.server_context()) as fake:
        yield fake


@pytest.fixture(scope="module")
def capture_proxy(proxy_factory, anthropic_fake, certificate) -> ProxyProcess:
    upstream = f"https://localhost:{anthropic_fake.port}"
    forward_port = free_port()
    proxy = proxy_factory(
        upstream=upstream,
        options={"listen_host": "127.0.0.1", "capture_hosts": "localhost",
                 "ssl_verify_upstream_trusted_ca": str(certificate.cert)},
        extra_args=["--mode", f"reverse:{upstream}", "--mode", f"regular@127.0.0.1:{forward_port}"])
    proxy.forward_url = f"http://127.0.0.1:{forward_port}"  # type: ignore[attr-defined]
    return proxy


@pytest.fixture(scope="module")
def mitm_ca(capture_proxy) -> ssl.SSLContext:
    """What a client of the forward proxy trusts: mitmproxy's CA, as written to the confdir at its start."""
    return ssl.create_default_context(cafile=str(capture_proxy.confdir / "mitmproxy-ca-cert.pem"))


@pytest.fixture
def forward(capture_proxy, mitm_ca) -> Iterator[httpx.Client]:
    with httpx.Client(proxy=capture_proxy.forward_url, verify=mitm_ca, trust_env=False, timeout=20) as client:
        yield client


def sdk_client(proxy: ProxyProcess, ca: ssl.SSLContext, base_url: str, tag: str, **kwargs: Any) -> anthropic.Anthropic:
    http_client = anthropic.DefaultHttpxClient(proxy=proxy.forward_url, verify=ca, trust_env=False)  # type: ignore[attr-defined]
    return anthropic.Anthropic(base_url=base_url, http_client=http_client, max_retries=0, timeout=20,
                               default_headers={"x-test-tag": tag}, **kwargs)


def assert_unrecorded(proxy: ProxyProcess, client: httpx.Client, base_url: str, tag: str) -> None:
    """No record carries `tag`: checked once an API call made after those flows has its final record (by then a
    record of theirs would be there too)."""
    marker = f"{tag}-marker"
    assert client.post(f"{base_url}/v1/messages", json=BODY,
                       headers={"x-api-key": FAKE_API_KEY, "x-test-tag": marker}).status_code == 200
    proxy.wait_record(by_tag(marker))
    assert proxy.records(by_tag(tag)) == []


def test_sdk_calls_through_the_forward_proxy_are_recorded(capture_proxy, anthropic_fake, mitm_ca, test_tag):
    base_url = f"https://localhost:{anthropic_fake.port}"
    with sdk_client(capture_proxy, mitm_ca, base_url, test_tag, api_key=FAKE_API_KEY) as client:
        message = client.messages.create(**BODY)
        assert message.content[0].text == FINAL_TEXT
        with client.messages.stream(**BODY) as stream:
            assert stream.get_final_text() == FINAL_TEXT
        with client.messages.stream(**{**BODY, "model": "fake-stream_tool", "tools": [WEATHER_TOOL]}) as stream:
            final = stream.get_final_message()
        tool_use = next(block for block in final.content if block.type == "tool_use")
        assert tool_use.input == TOOL_INPUT and final.stop_reason == "tool_use"

    reached = anthropic_fake.tagged(test_tag)
    assert [(ex.method, ex.path) for ex in reached] == [("POST", "/v1/messages")] * 3
    # (this SDK sends the key as a bearer token; older ones as x-api-key)
    assert all(FAKE_API_KEY in (ex.header("x-api-key"), ex.header("authorization").removeprefix("Bearer "))
               for ex in reached)
    records = capture_proxy.wait_records(by_tag(test_tag), count=3)
    assert [r["status"] for r in records] == ["success"] * 3
    assert [r["stream"] for r in records] == [False, True, True]
    assert records[2]["stopReason"] == "tool_use" and records[0]["costUsd"] > 0 and records[0]["costNote"] is None
    assert FAKE_API_KEY not in json.dumps(records), "the key is masked in records"


def test_subscription_calls_pass_through_and_are_masked_and_priced_api_equivalent(
        capture_proxy, anthropic_fake, mitm_ca, test_tag):
    base_url = f"https://localhost:{anthropic_fake.port}"
    with sdk_client(capture_proxy, mitm_ca, base_url, test_tag, auth_token=OAUTH_TOKEN) as client:
        assert client.messages.create(**BODY).content[0].text == FINAL_TEXT
    (reached,) = anthropic_fake.tagged(test_tag)
    assert reached.header("authorization") == f"Bearer {OAUTH_TOKEN}" and reached.header("x-api-key") is None
    record = capture_proxy.wait_record(by_tag(test_tag))
    assert OAUTH_TOKEN not in json.dumps(record)
    assert headers_get(record["request"]["headers"], "authorization").startswith("Bearer sk-ant-oat...")
    assert record["costUsd"] > 0 and record["costNote"].startswith("API-equivalent")


def test_other_hosts_pass_through_untouched_and_unrecorded(capture_proxy, anthropic_fake, other_host, forward,
                                                          test_tag):
    other = f"https://127.0.0.1:{other_host.port}"
    body = b'{"model": "claude-sonnet-4-5-20250929",  "max_tokens": 5, "messages": []}'  # bytes, not JSON re-encoded
    headers = {"x-api-key": "other-host-key-0123456789abcdef", "x-test-tag": test_tag,
               "content-type": "application/json", "x-odd-Case": "Kept"}
    answer = forward.post(f"{other}/v1/messages?beta=true", content=body, headers=headers)
    page = forward.get(f"{other}/monitor", headers={"x-test-tag": test_tag})
    # The capture host's own /monitor is Anthropic's too: on the forward listener nothing of ours answers.
    anthropic_page = forward.get(f"https://localhost:{anthropic_fake.port}/monitor", headers={"x-test-tag": test_tag})

    post, get = other_host.tagged(test_tag)
    assert (post.method, post.raw_path, post.body) == ("POST", "/v1/messages?beta=true", body)
    assert post.header("x-api-key") == headers["x-api-key"] and post.header("x-odd-case") == "Kept"
    assert post.header("host") == f"127.0.0.1:{other_host.port}"
    assert answer.status_code == 200 and answer.content == post.sent
    assert answer.headers["request-id"] == post.response_header("request-id")
    assert (get.method, get.raw_path) == ("GET", "/monitor")
    assert page.status_code == 404 and page.content == get.sent, "the other host's answer, not our page"
    (anthropic_get,) = anthropic_fake.tagged(test_tag)
    assert anthropic_get.raw_path == "/monitor" and anthropic_page.content == anthropic_get.sent

    assert_unrecorded(capture_proxy, forward, f"https://localhost:{anthropic_fake.port}", test_tag)


def test_allow_hosts_leaves_other_hosts_tls_alone(proxy_factory, anthropic_fake, other_host, certificate, test_tag):
    """The recommended setting: mitmproxy intercepts TLS only for the capture hosts; the others' connections are
    tunnelled as they are, so their clients need not trust mitmproxy's CA (here: they trust only the host's own)."""
    upstream = f"https://localhost:{anthropic_fake.port}"
    forward_port = free_port()
    proxy = proxy_factory(
        upstream=upstream,
        options={"listen_host": "127.0.0.1", "capture_hosts": "localhost", "allow_hosts": "^localhost:",
                 "ssl_verify_upstream_trusted_ca": str(certificate.cert)},
        extra_args=["--mode", f"reverse:{upstream}", "--mode", f"regular@127.0.0.1:{forward_port}"])
    forward_url = f"http://127.0.0.1:{forward_port}"
    own_certificate_only = ssl.create_default_context(cafile=str(certificate.cert))
    with httpx.Client(proxy=forward_url, verify=own_certificate_only, trust_env=False, timeout=20) as client:
        answer = client.post(f"https://127.0.0.1:{other_host.port}/v1/messages", json=BODY,
                             headers={"x-test-tag": test_tag})
    assert answer.status_code == 200 and answer.content == other_host.tagged(test_tag)[0].sent
    mitm = ssl.create_default_context(cafile=str(proxy.confdir / "mitmproxy-ca-cert.pem"))
    with httpx.Client(proxy=forward_url, verify=mitm, trust_env=False, timeout=20) as client:
        assert client.post(f"{upstream}/v1/messages", json=BODY, headers={
            "x-test-tag": test_tag, "x-api-key": FAKE_API_KEY}).status_code == 200
    (record,) = proxy.wait_records(by_tag(test_tag), count=1)
    assert record["status"] == "success" and record["request"]["path"] == "/v1/messages"
    assert proxy.get("/monitor").status_code == 200, "the reverse listener is intercepted as before"


def test_reverse_listener_passes_paths_the_web_app_does_not_have(capture_proxy, anthropic_fake, test_tag):
    headers = {"authorization": f"Bearer {OAUTH_TOKEN}", "anthropic-beta": "oauth-2025-04-20",
               "x-test-tag": test_tag, "x-fake-scenario": "message", "user-agent": "claude-cli/2.1.0"}
    with httpx.Client(base_url=capture_proxy.url, trust_env=False, timeout=10) as client:
        settings = client.get("/api/claude_code/settings?x=1", headers=headers)
        limits = client.get("/api/claude_code/policy_limits", headers=headers)
        events = client.post("/api/event_logging/batch", headers=headers, content=b'{"events": [ ]}')
        monitor = client.get("/monitor")
    first, second, third = anthropic_fake.tagged(test_tag)
    assert (first.method, first.raw_path) == ("GET", "/api/claude_code/settings?x=1")
    assert second.raw_path == "/api/claude_code/policy_limits"
    assert (third.method, third.raw_path, third.body) == ("POST", "/api/event_logging/batch", b'{"events": [ ]}')
    for ex, answer in ((first, settings), (second, limits), (third, events)):
        assert ex.header("authorization") == headers["authorization"]
        assert ex.header("anthropic-beta") == "oauth-2025-04-20" and ex.header("user-agent") == "claude-cli/2.1.0"
        assert ex.header("host") == f"localhost:{anthropic_fake.port}"
        assert answer.status_code == 200 and answer.content == ex.sent
        assert answer.headers["request-id"] == ex.response_header("request-id")
    assert monitor.status_code == 200 and "text/html" in monitor.headers["content-type"], "the web app's own route"
    with httpx.Client(trust_env=False, timeout=10) as client:
        assert_unrecorded(capture_proxy, client, capture_proxy.url, test_tag)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the error path measured here is Linux's")
def test_local_capture_that_cannot_start_says_why(tmp_path, fake_anthropic):
    """Without sudo (PATH holds only the venv), mitmproxy's redirector cannot start: one readable paragraph, no
    Rust backtrace (RUST_BACKTRACE=1 asks for one), and the proxy exits instead of running without it."""
    proxy = ProxyProcess(workdir=tmp_path, upstream=fake_anthropic.url, options={"listen_host": "127.0.0.1"},
                         extra_args=["--mode", f"reverse:{fake_anthropic.url}", "--mode", "local:claude"],
                         env={"PATH": str(mitmdump_path().parent), "RUST_BACKTRACE": "1"})
    try:
        proxy.start(wait_ready=False)
        assert proxy.proc is not None and proxy.proc.wait(timeout=20) != 0
    finally:
        proxy.close()
    logs = proxy.logs()
    assert "local capture (--mode local:claude) could not start: Failed to run sudo" in logs, logs
    assert "needs root rights through sudo" in logs and "Stack backtrace" not in logs, logs


def test_a_bad_capture_host_stops_mitmdump(tmp_path, fake_anthropic):
    proxy = ProxyProcess(workdir=tmp_path, upstream=fake_anthropic.url,
                         options={"listen_host": "127.0.0.1", "capture_hosts": "api.anthropic.com:443"},
                         extra_args=["--mode", f"reverse:{fake_anthropic.url}",
                                     "--mode", f"regular@127.0.0.1:{free_port()}"])
    try:
        proxy.start(wait_ready=False)
        assert proxy.proc is not None and proxy.proc.wait(timeout=20) != 0, "no proxy left running"
    finally:
        proxy.close()
    assert "capture_hosts takes bare host names such as api.anthropic.com: 'api.anthropic.com:443'" in proxy.logs()


@pytest.mark.skipif(claude_executable() is None, reason="Claude Code is not installed (npm i -g "
                    "@anthropic-ai/claude-code, or ANTHROPIC_PROXY_TEST_CLAUDE=/path/to/claude)")
def test_claude_code_through_the_forward_proxy(proxy_factory, anthropic_fake, certificate, tmp_path):
    """`claude -p` with the official base URL (no ANTHROPIC_BASE_URL), HTTPS_PROXY and NODE_EXTRA_CA_CERTS: its
    calls to api.anthropic.com are captured, sent to the fake and recorded; nothing reaches the internet."""
    forward_port = free_port()
    upstream = f"https://localhost:{anthropic_fake.port}"
    # block_list: whatever else Claude Code reaches for is cut off here, never sent to the internet.
    proxy = proxy_factory(upstream=upstream, options={"listen_host": "127.0.0.1",
                                                     "block_list": "/!(~d api.anthropic.com | ~d 127.0.0.1)/444",
                                                     "ssl_verify_upstream_trusted_ca": str(certificate.cert)},
                          extra_args=["--mode", f"reverse:{upstream}", "--mode", f"regular@127.0.0.1:{forward_port}"])
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))
           and k.lower() not in ("https_proxy", "http_proxy", "no_proxy", "all_proxy")}
    env.update(HOME=str(home), HTTPS_PROXY=f"http://127.0.0.1:{forward_port}", ANTHROPIC_API_KEY=FAKE_API_KEY,
               NODE_EXTRA_CA_CERTS=str(proxy.confdir / "mitmproxy-ca-cert.pem"),
               CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1")
    result = subprocess.run([claude_executable(), "-p", "Say hi", "--model", "claude-sonnet-4-5-20250929"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert FINAL_TEXT in result.stdout
    records = proxy.wait_records(lambda r: r["request"]["path"].startswith("/v1/messages"), count=1)
    assert records[-1]["status"] == "success"
    assert headers_get(records[-1]["request"]["headers"], "user-agent").startswith("claude-cli/")
    assert anthropic_fake.find(lambda ex: ex.raw_path.startswith("/v1/messages")
                               and (ex.header("user-agent") or "").startswith("claude-cli/"))
