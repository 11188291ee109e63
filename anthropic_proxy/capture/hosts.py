"""Which flows are Anthropic API traffic, and how a failed local capture is explained.

A flow on the reverse listener (`--mode reverse:...`) was sent to the proxy on purpose: it is always ours. On any
other listener (a forward proxy `--mode regular@PORT`, the local redirector `--mode local:NAME`, WireGuard...)
the proxy sees every host the client talks to, and only the hosts in `capture_hosts` are Anthropic's: the rest
passes through untouched, unrecorded.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from mitmproxy import http
from mitmproxy.proxy import mode_specs

DEFAULT_CAPTURE_HOSTS = ("api.anthropic.com",)

# A DNS name (labels of letters, digits and hyphens, not at a label's ends) or an IP address.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# Modes where the client names its destination to the proxy (CONNECT host, absolute URL, SOCKS address); in the
# transparent ones (local redirector, WireGuard, transparent) the connection's address is an IP and the name the
# client meant is in its Host header.
_EXPLICIT_PROXY_MODES = (mode_specs.RegularMode, mode_specs.UpstreamMode, mode_specs.Socks5Mode)


def parse_capture_hosts(entries: Iterable[str]) -> frozenset[str]:
    """The host names in `entries` (each may hold several, comma-separated), lower-cased.

    Raises ValueError naming the first entry that is not a bare host name or IP address (a URL, a port, a
    path, a wildcard).
    """
    hosts: set[str] = set()
    for entry in entries:
        for raw in entry.split(","):
            name = raw.strip().lower().rstrip(".")
            if not name:
                continue
            if not _is_host(name):
                raise ValueError(f"capture_hosts takes bare host names such as api.anthropic.com: {raw.strip()!r} "
                                 "is not one (no scheme, port, path or wildcard)")
            hosts.add(name)
    return frozenset(hosts)


def _is_host(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        pass
    labels = name.split(".")
    return len(name) <= 253 and all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def destination_host(flow: http.HTTPFlow) -> str:
    """The host name the client addressed the flow to, lower-cased."""
    request = flow.request
    host = request.host if isinstance(flow.client_conn.proxy_mode, _EXPLICIT_PROXY_MODES) else request.pretty_host
    return host.lower().rstrip(".")


def is_captured(flow: http.HTTPFlow, capture_hosts: frozenset[str]) -> bool:
    """True for Anthropic API traffic: every flow of a reverse listener, a capture host's flow on the others."""
    if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
        return True
    return destination_host(flow) in capture_hosts


def local_capture_error(spec: str, error: BaseException, unavailable: str | None) -> str:
    """One paragraph for a local redirector that could not start: the cause mitmproxy_rs gave (without its
    backtrace) and what the redirector needs."""
    text = str(error).split("Stack backtrace:", 1)[0]
    parts = [line.strip().rstrip(".") for line in text.splitlines()]
    cause = ": ".join(part for part in parts if part and part != "Caused by:") or type(error).__name__
    if unavailable:
        cause += f" ({unavailable})"
    return (f"local capture (--mode {spec}) could not start: {cause}. mitmproxy's local redirector needs root "
            "rights through sudo and, on Linux, a kernel with eBPF and BTF (/sys/kernel/btf/vmlinux); on macOS "
            "it installs a network extension to approve, on Windows it needs an administrator. Forward capture "
            "(anthropic-proxy --forward) needs none of this: see docs/capture.md.")
