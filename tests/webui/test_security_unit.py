"""The web app's safety middleware in-process (aiohttp test server), for settings the harness cannot set yet:
a proxy listening beyond loopback, which must require the web token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.runtime import ProxySettings, Runtime
from anthropic_proxy.webui.app import create_app
from anthropic_proxy.webui.common import INTERNAL_HEADER, ORIGINAL_HOST_HEADER
from anthropic_proxy.webui.security import own_hosts, public_url, split_host, token_cookie_name

TOKEN = "s3cret-token-value"


@pytest.fixture
def runtime(tmp_path) -> Runtime:
    rt = runtime_module.open_runtime(tmp_path, max_records=100, retention_days=1)
    yield rt
    runtime_module.close_runtime()


async def client_for(runtime: Runtime, settings: ProxySettings) -> TestClient:
    runtime.settings = settings
    client = TestClient(TestServer(create_app(runtime)))
    await client.start_server()
    return client


@pytest.fixture
async def lan(runtime) -> AsyncIterator[TestClient]:
    client = await client_for(runtime, ProxySettings(listen_host="192.168.1.20", listen_port=8082, web_token=TOKEN))
    yield client
    await client.close()


def headers(runtime: Runtime, host: str = "192.168.1.20:8082", **extra: str) -> dict[str, str]:
    return {INTERNAL_HEADER: runtime.internal_token, ORIGINAL_HOST_HEADER: host, **extra}


async def test_without_the_internal_header_nothing_is_served(lan, runtime):
    r = await lan.get("/health", headers={ORIGINAL_HOST_HEADER: "127.0.0.1:8082"})
    assert r.status == 403


async def test_beyond_loopback_pages_and_api_need_the_token(lan, runtime):
    for path in ("/monitor", "/api/monitor/stats", "/api/config"):
        assert (await lan.get(path, headers=headers(runtime))).status == 401, path
        assert (await lan.get(path, headers=headers(runtime, **{"x-anthropic-proxy-token": "wrong"}))).status == 401
        ok = await lan.get(path, headers=headers(runtime, Authorization=f"Bearer {TOKEN}"))
        assert ok.status == 200, path
    assert (await lan.get("/health", headers=headers(runtime))).status == 200  # health checks need no token


async def test_token_in_the_url_becomes_a_cookie(lan, runtime):
    r = await lan.get(f"/monitor?token={TOKEN}&status=error", headers=headers(runtime), allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/monitor?status=error"
    cookie = r.cookies[token_cookie_name(ProxySettings(listen_port=8082))]
    assert cookie.value == TOKEN and cookie["httponly"] and cookie["samesite"] == "Strict"
    r = await lan.get("/api/monitor/stats", headers=headers(runtime, Cookie=f"{cookie.key}={TOKEN}"))
    assert r.status == 200


async def test_beyond_loopback_without_a_configured_token_fails_closed(runtime):
    client = await client_for(runtime, ProxySettings(listen_host="10.0.0.5", listen_port=8082))
    try:
        assert (await client.get("/monitor", headers=headers(runtime, "10.0.0.5:8082"))).status == 403
    finally:
        await client.close()


async def test_loopback_needs_no_token_but_own_host(runtime):
    client = await client_for(runtime, ProxySettings(listen_host="127.0.0.1", listen_port=8082))
    try:
        assert (await client.get("/monitor", headers=headers(runtime, "localhost:8082"))).status == 200
        assert (await client.get("/monitor", headers=headers(runtime, "evil.test:8082"))).status == 403
        assert (await client.get("/monitor", headers=headers(runtime, "192.168.1.20:8082"))).status == 403
    finally:
        await client.close()


def test_own_hosts():
    assert own_hosts(ProxySettings(listen_host="0.0.0.0", listen_port=9000)) == {
        "127.0.0.1:9000", "localhost:9000", "[::1]:9000"}
    assert "[fd00::1]:80" in own_hosts(ProxySettings(listen_host="fd00::1", listen_port=80))
    assert "proxy.lan" in own_hosts(ProxySettings(listen_host="Proxy.LAN", listen_port=80))


def test_web_hosts_add_names_with_and_without_port():
    hosts = own_hosts(ProxySettings(listen_host="0.0.0.0", listen_port=8082,
                                    web_hosts=("Proxy.Example.test", "10.1.2.3:9999", "[fd00::2]", "fd00::3")))
    assert {"proxy.example.test:8082", "proxy.example.test", "10.1.2.3:9999", "[fd00::2]:8082", "[fd00::3]"} <= hosts
    assert "10.1.2.3:8082" not in hosts and "10.1.2.3" not in hosts, "a port given is the only one allowed"
    for bad in ("http://proxy.test", "*", "proxy.test/monitor", "proxy.test:http", "[fd00::1", "a b", ""):
        with pytest.raises(ValueError):
            split_host(bad)


def test_public_url_is_one_a_browser_can_open():
    assert public_url(ProxySettings(listen_host="127.0.0.1", listen_port=8082)) == "http://127.0.0.1:8082"
    assert public_url(ProxySettings(listen_host="fd00::1", listen_port=8082)) == "http://[fd00::1]:8082"
    on_all = ProxySettings(listen_host="0.0.0.0", listen_port=8082, web_hosts=("proxy.test", "192.168.1.5:8082"))
    assert public_url(on_all) == "http://proxy.test:8082"
    assert public_url(ProxySettings(listen_host="::", listen_port=8082)) == "http://127.0.0.1:8082"


async def test_a_browser_on_another_machine_is_served_by_its_host_name(runtime):
    settings = ProxySettings(listen_host="0.0.0.0", listen_port=8082, web_token=TOKEN,
                             web_hosts=("proxy.example.test", "192.168.7.7:8082"))
    client = await client_for(runtime, settings)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for host in ("proxy.example.test:8082", "proxy.example.test", "192.168.7.7:8082"):
            assert (await client.get("/monitor", headers=headers(runtime, host, **auth))).status == 200, host
        for host in ("evil.test:8082", "192.168.7.8:8082", "0.0.0.0:8082"):
            assert (await client.get("/monitor", headers=headers(runtime, host, **auth))).status == 403, host
    finally:
        await client.close()
