"""Which flows are captured, which paths the web app owns, the local-capture error text, the launcher's pieces."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from anthropic_proxy import cli
from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.addons.capture import Capture
from anthropic_proxy.capture.hosts import destination_host, is_captured, local_capture_error, parse_capture_hosts
from anthropic_proxy.claude_run import claude_environment, split_arguments
from anthropic_proxy.preflight import option_values
from anthropic_proxy.record.model import HttpRequestPart, Record, Usage
from anthropic_proxy.record.pricing import SUBSCRIPTION_NOTE, PriceBook, apply_cost
from anthropic_proxy.webui.app import WebRoutes, create_app

HOSTS = frozenset({"api.anthropic.com"})


def flow_in(mode: str, host: str, host_header: str | None = None) -> tflow.HTTPFlow:
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = ProxyMode.parse(mode)
    flow.request = tutils.treq(host=host, port=443, headers=[(b"host", (host_header or host).encode())])
    return flow


def test_capture_hosts_are_bare_host_names():
    assert parse_capture_hosts(["api.anthropic.com", " Localhost., 127.0.0.1", "::1"]) == {
        "api.anthropic.com", "localhost", "127.0.0.1", "::1"}
    assert parse_capture_hosts([""]) == frozenset()
    for bad in ("https://api.anthropic.com", "api.anthropic.com:443", "*.anthropic.com", "api anthropic",
                "api.anthropic.com/v1", "-bad.example", "1.2.3.999"):
        with pytest.raises(ValueError, match="bare host names"):
            parse_capture_hosts([bad])


def test_only_capture_hosts_are_captured_off_the_reverse_listener():
    assert is_captured(flow_in("reverse:https://api.anthropic.com@8082", "api.anthropic.com"), HOSTS)
    assert is_captured(flow_in("reverse:https://api.anthropic.com@8082", "anything.example"), HOSTS)
    assert is_captured(flow_in("regular@8080", "API.Anthropic.com"), HOSTS)
    assert not is_captured(flow_in("regular@8080", "api.openai.com"), HOSTS)
    # A forward-proxy request is for the host it names to the proxy, whatever its Host header says.
    assert not is_captured(flow_in("regular@8080", "evil.example", host_header="api.anthropic.com"), HOSTS)
    # The local redirector sees an address: the name is the Host header's.
    local = flow_in("local:claude", "160.79.104.10", host_header="api.anthropic.com")
    assert destination_host(local) == "api.anthropic.com" and is_captured(local, HOSTS)


def test_capture_addon_marks_flows_and_refuses_bad_hosts():
    addon = Capture()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, capture_hosts=["localhost,example.test"])
        flow = flow_in("regular@8080", "example.test")
        addon.requestheaders(flow)
        assert flow.metadata["anthropic_proxy.captured"] is True
        other = flow_in("regular@8080", "api.anthropic.com")
        addon.requestheaders(other)
        assert "anthropic_proxy.captured" not in other.metadata
        with pytest.raises(exceptions.OptionsError, match="bare host names"):
            tctx.configure(addon, capture_hosts=["https://example.test"])


def test_the_web_app_owns_its_routes_and_nothing_else(tmp_path: Path):
    runtime = runtime_module.open_runtime(tmp_path, max_records=10, retention_days=1)
    try:
        routes = WebRoutes(create_app(runtime))
    finally:
        runtime_module.close_runtime()
    for path in ("/", "/monitor", "/config", "/health", "/favicon.ico", "/static/monitor.js", "/api/config",
                 "/api/config/models", "/api/monitor/requests?limit=5", "/api/monitor/requests/abc-123",
                 "/api/monitor/stream"):
        assert path in routes, path
    for path in ("/api/claude_code/settings", "/api/claude_code/policy_limits", "/api/event_logging/batch",
                 "/v1/messages", "/v1/models", "/monitor/x", "/api/monitor/requests/a/b", "/static", "/healthz",
                 "/api/oauth/profile"):
        assert path not in routes, path


def test_local_capture_error_names_the_cause_without_the_backtrace():
    error = RuntimeError("Failed to run sudo.\n\nCaused by:\n    No such file or directory (os error 2)\n\n"
                         "Stack backtrace:\n   0: <unknown>\n   1: start_thread")
    text = local_capture_error("local:claude", error, None)
    assert text.startswith("local capture (--mode local:claude) could not start: Failed to run sudo: No such file "
                           "or directory (os error 2). ")
    assert "backtrace" not in text and "<unknown>" not in text and "eBPF" in text


def test_subscription_calls_cost_api_equivalent():
    book = PriceBook()

    def priced(headers: dict[str, str]) -> Record:
        record = Record(request=HttpRequestPart(method="POST", path="/v1/messages", headers=headers),
                        model="claude-sonnet-4-5-20250929", status="success",
                        usage=Usage(input_tokens=1000, output_tokens=100))
        return apply_cost(record, book)

    oauth = priced({"Authorization": "Bearer sk-ant-oat...AbCd"})  # as a record keeps it (masked)
    by_key = priced({"authorization": "Bearer sk-ant-api03...AbCd"})
    assert oauth.cost_usd == by_key.cost_usd > 0
    assert oauth.cost_note == SUBSCRIPTION_NOTE and by_key.cost_note is None


def test_launcher_adds_the_capture_listeners():
    command = cli.build_command("mitmdump", ["-p", "9000"], forward=("127.0.0.1", 8080), local="claude")
    modes = [command[i + 1] for i, arg in enumerate(command) if arg == "--mode"]
    assert modes[0].startswith("reverse:") and modes[1:] == ["regular@127.0.0.1:8080", "local:claude"]
    assert option_values(command, "listen_port")[-1] == "9000", "-p is listen_port and comes last"
    assert cli.forward_address("9090") == ("127.0.0.1", 9090)
    assert cli.forward_address("0.0.0.0:9090") == ("0.0.0.0", 9090)
    assert cli.forward_address("[::1]:9090") == ("::1", 9090)
    for bad in ("x", "70000", "host:"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.forward_address(bad)


def test_claude_arguments_and_environment():
    assert split_arguments(["-p", "hi"]) == (None, ["-p", "hi"])
    assert split_arguments(["--forward", "-p", "hi"]) == (("127.0.0.1", 8080), ["-p", "hi"])
    assert split_arguments(["--forward", "9000", "--", "--forward"]) == (("127.0.0.1", 9000), ["--forward"])
    assert split_arguments(["--forward=9001", "say 9000"]) == (("127.0.0.1", 9001), ["say 9000"])
    base = {"ANTHROPIC_BASE_URL": "https://elsewhere", "https_proxy": "http://corp:3128", "KEEP": "1"}
    reverse = claude_environment(base, "http://127.0.0.1:8082", None, Path("/ca.pem"))
    assert reverse == {**base, "ANTHROPIC_BASE_URL": "http://127.0.0.1:8082"}
    forward = claude_environment(base, "http://127.0.0.1:8082", "http://127.0.0.1:8080", Path("/ca.pem"))
    assert forward == {"KEEP": "1", "HTTPS_PROXY": "http://127.0.0.1:8080", "NODE_EXTRA_CA_CERTS": "/ca.pem"}
