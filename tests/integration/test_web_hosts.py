"""Serving other machines: with the proxy on all interfaces, a browser elsewhere reaches it by the machine's
address or name, or a name given in web_hosts, and sends that as Host. The requests here still go to 127.0.0.1;
only the Host header is the one such a browser would send."""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

import httpx


def test_a_browser_elsewhere_opens_the_printed_url(start_proxy):
    proxy = start_proxy(options={"listen_host": "0.0.0.0", "web_hosts": "proxy.example.test, 10.9.8.7:9999"})
    printed = re.search(r"Open (http://\S+)/monitor\?token=([\w-]+)", proxy.logs())
    assert printed, proxy.logs()
    base, token = printed.groups()
    assert base == f"http://proxy.example.test:{proxy.port}", "the first web_hosts name, never 0.0.0.0"
    assert "0.0.0.0" not in re.findall(r"http://([^/:\s]+)", proxy.logs())
    assert f"monitor: {base}/monitor" in proxy.logs()

    def status(host: str) -> int:
        auth = {"Host": host, "Authorization": f"Bearer {token}"}
        return httpx.get(f"{proxy.url}/api/monitor/requests", headers=auth, trust_env=False).status_code

    assert status(urlsplit(base).netloc) == 200
    assert status("proxy.example.test") == 200, "a bare name: behind a reverse proxy on port 80/443"
    assert status("10.9.8.7:9999") == 200
    assert status(f"{socket.gethostname()}:{proxy.port}") == 200, "the machine's own name, listening on all"
    assert status(f"evil.example:{proxy.port}") == 403, "any other name is still refused (DNS rebinding)"
    assert status(f"10.9.8.7:{proxy.port}") == 403
    page = httpx.get(f"{proxy.url}/monitor?token={token}", headers={"Host": "proxy.example.test"}, trust_env=False)
    assert page.status_code == 302, "the printed URL opens the monitor (and trades the token for a cookie)"


def test_a_bad_web_hosts_entry_stops_the_proxy(start_proxy):
    proxy = start_proxy(options={"web_hosts": "http://proxy.example.test"}, wait_ready=False)
    assert proxy.proc is not None and proxy.proc.wait(timeout=15) != 0
    assert "web_hosts: 'http://proxy.example.test' is not a host name" in proxy.logs()


def test_without_web_hosts_the_url_names_the_machine(start_proxy):
    proxy = start_proxy(options={"listen_host": "0.0.0.0"})
    printed = re.search(r"Open http://([^/\s]+)/monitor\?token=([\w-]+)", proxy.logs())
    assert printed, proxy.logs()
    host, token = printed.groups()
    assert not host.startswith(("0.0.0.0", "127.", "localhost")), "an address another machine can use"
    answer = httpx.get(f"{proxy.url}/api/monitor/requests", headers={"Host": host, "Authorization": f"Bearer {token}"},
                       trust_env=False)
    assert answer.status_code == 200
