"""The web app's safety rules, applied to every request before any handler runs.

1. Only requests that came through the proxy (the addon adds a secret header) are served.
2. DNS rebinding: the Host the browser sent must be the proxy's own address (127.0.0.1, localhost,
   [::1] or the configured listen host, with the port) or one of `web_hosts` (the names the user allowed,
   and the machine's own names and addresses when it listens on all interfaces), for every page and API call.
3. Beyond loopback, a token is required (cookie, `x-anthropic-proxy-token`, `Authorization: Bearer`,
   or once as `?token=` on a page, which sets the cookie and redirects to the clean URL).
4. Cross-site: a state-changing request (not GET/HEAD/OPTIONS) with an `Origin` other than the proxy's
   own (a foreign site, or `null`) is refused; one without `Origin` (curl, scripts) is accepted.
5. Every response carries a strict Content-Security-Policy and related headers.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from typing import Any

from aiohttp import web

from anthropic_proxy.runtime import RUNTIME_KEY as RUNTIME
from anthropic_proxy.runtime import ProxySettings
from anthropic_proxy.webui.common import INTERNAL_HEADER, ORIGINAL_HOST_HEADER, error_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_HEADER = "x-anthropic-proxy-token"
TOKEN_QUERY = "token"
OPEN_PATHS = frozenset({"/health"})  # no token needed (health checks); the Host check still applies
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_UNSPECIFIED = frozenset({"", "0.0.0.0", "::", "*"})
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")  # a DNS name or an IPv4 address


def _host_name(host: str) -> str:
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def is_unspecified(host: str) -> bool:
    """0.0.0.0, :: and the like: listening on all interfaces."""
    return host.strip().lower() in _UNSPECIFIED


def split_host(entry: str) -> tuple[str, int | None]:
    """`name`, `name:port`, `[v6]`, `[v6]:port` or a bare IPv6 address -> (Host-header name, port or None).
    Raises ValueError for anything else (a URL, a path, a wildcard)."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        name, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"not a host name: {entry!r}")
        ipaddress.IPv6Address(name)
        name, port = f"[{name}]", rest[1:]
    elif entry.count(":") > 1:
        return f"[{ipaddress.IPv6Address(entry)}]", None
    else:
        name, _, port = entry.partition(":")
        if not _HOST_NAME.fullmatch(name):
            raise ValueError(f"not a host name: {entry!r}")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"not a port: {entry!r}")
    return name, int(port) if port else None


def own_hosts(settings: ProxySettings) -> frozenset[str]:
    """Every `Host` header value that names this proxy: its loopback names and listen host with the port, and
    each of `web_hosts`: `name:port` as given, a bare `name` with the listen port or none (behind a reverse
    proxy on 80/443). An unspecified listen address (0.0.0.0) is no name a browser uses, so it adds nothing."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    if not is_unspecified(settings.listen_host):
        names.add(_host_name(settings.listen_host))
    port = settings.listen_port
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:
        hosts |= names
    for entry in settings.web_hosts:
        name, entry_port = split_host(entry)
        hosts.add(f"{name}:{entry_port or port}")
        if entry_port is None:
            hosts.add(name)
    return frozenset(hosts)


def public_url(settings: ProxySettings) -> str:
    """The proxy's base URL as a browser should open it: the listen host, or on all interfaces the first of
    `web_hosts` (the user's, then the machine's address and name); never http://0.0.0.0."""
    port = settings.listen_port
    if not is_unspecified(settings.listen_host):
        return f"http://{_host_name(settings.listen_host)}:{port}"
    for entry in settings.web_hosts:
        name, entry_port = split_host(entry)
        return f"http://{name}:{entry_port or port}"
    return f"http://127.0.0.1:{port}"


def own_origins(settings: ProxySettings) -> frozenset[str]:
    return frozenset(f"{scheme}://{host}" for host in own_hosts(settings) for scheme in ("http", "https"))


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_required(settings: ProxySettings) -> bool:
    return bool(settings.web_token) or not is_loopback(settings.listen_host)


def token_cookie_name(settings: ProxySettings) -> str:
    return f"anthropic_proxy_token_{settings.listen_port}"  # cookies ignore ports: one name per proxy


def _presented_token(request: web.Request, settings: ProxySettings) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return (request.headers.get(TOKEN_HEADER) or request.cookies.get(token_cookie_name(settings))
            or request.query.get(TOKEN_QUERY))


def _forbidden(request: web.Request, message: str, status: int = 403) -> web.Response:
    if request.path.startswith("/api/") or request.path in OPEN_PATHS:
        return error_response(status, message, "permission_error" if status == 403 else "authentication_error")
    return web.Response(status=status, text=f"anthropic-proxy: {message}\n", content_type="text/plain")


@web.middleware
async def only_through_proxy(request: web.Request, handler: Any) -> web.StreamResponse:
    """The private port is reachable by any local process: serve only what came through the proxy."""
    if not secrets.compare_digest(request.headers.get(INTERNAL_HEADER, ""), request.app[RUNTIME].internal_token):
        return error_response(403, "this port is internal to anthropic-proxy", "permission_error")
    return await handler(request)


@web.middleware
async def check_request(request: web.Request, handler: Any) -> web.StreamResponse:
    settings = request.app[RUNTIME].settings
    host = request.headers.get(ORIGINAL_HOST_HEADER, "").strip().lower()
    if host not in own_hosts(settings):
        return _forbidden(request, f"this proxy answers only to its own address, not to Host {host!r}")
    if token_required(settings) and request.path not in OPEN_PATHS:
        if not settings.web_token:
            return _forbidden(request, "the proxy listens beyond loopback but no web token is configured")
        presented = _presented_token(request, settings)
        if not presented or not secrets.compare_digest(presented.encode(), settings.web_token.encode()):
            return _forbidden(request, "a token is required: open the URL printed when the proxy started", 401)
        if request.method == "GET" and TOKEN_QUERY in request.query and not request.path.startswith("/api/"):
            return _redirect_without_token(request, settings)
    origin = request.headers.get("Origin")
    if request.method not in SAFE_METHODS and origin is not None and origin.lower() not in own_origins(settings):
        return _forbidden(request, f"cross-site request refused (Origin {origin!r})")
    return await handler(request)


def _redirect_without_token(request: web.Request, settings: ProxySettings) -> web.Response:
    """`/monitor?token=...`: remember the token in a cookie and drop it from the address bar."""
    query = request.rel_url.query.copy()
    query.popall(TOKEN_QUERY)
    response = web.Response(status=302, headers={"Location": str(request.rel_url.with_query(query))})
    response.set_cookie(token_cookie_name(settings), str(settings.web_token), httponly=True, samesite="Strict",
                        path="/")
    return response


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/") or request.path in OPEN_PATHS:
        response.headers.setdefault("Cache-Control", "no-store")
