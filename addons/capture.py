"""Capture: which flows are Anthropic API traffic (`capture_hosts`), and a readable error when local capture fails.

Every flow of the reverse listener is ours. On a forward-proxy listener (`--mode regular@8080`) or the local
redirector (`--mode local:claude`) only flows to a host in `capture_hosts` are: this addon marks them with
`flow.metadata["anthropic_proxy.captured"]`. The Router leaves every unmarked flow alone (and the WebApp serves the
reverse listener only), so it goes to its own host untouched and unrecorded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import mitmproxy_rs
from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.master import Master
from mitmproxy.proxy import mode_specs

from anthropic_proxy.capture.hosts import DEFAULT_CAPTURE_HOSTS, is_captured, local_capture_error, parse_capture_hosts
from anthropic_proxy.environment import environment

CAPTURED = "anthropic_proxy.captured"
CAPTURE_HOSTS_OPTION = "capture_hosts"
# proxyserver logs a server that failed to start under this logger, with the exception's text as the message.
_SERVERS_LOGGER = "mitmproxy.addons.proxyserver"


class LocalRedirectorErrors(logging.Filter):
    """Rewrites the local redirector's start-up failure (a Rust error chain, with a backtrace when RUST_BACKTRACE
    is set) into one paragraph that names the cause and what the redirector needs."""

    def __init__(self, master: Master) -> None:
        super().__init__()
        self.master = master

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        proxyserver = self.master.addons.get("proxyserver")
        for server in proxyserver.servers if proxyserver else ():
            error = server.last_exception
            if isinstance(server.mode, mode_specs.LocalMode) and error is not None \
                    and record.getMessage() == str(error):
                unavailable = mitmproxy_rs.local.LocalRedirector.unavailable_reason()
                record.msg, record.args = local_capture_error(server.mode.full_spec, error, unavailable), ()
        return True


class Capture:
    def __init__(self) -> None:
        self.hosts = frozenset(DEFAULT_CAPTURE_HOSTS)

    def load(self, loader: Loader) -> None:
        default = environment.get("CAPTURE_HOSTS", ",".join(DEFAULT_CAPTURE_HOSTS))
        loader.add_option(
            CAPTURE_HOSTS_OPTION, Sequence[str], [default],
            "Hosts whose traffic is Anthropic API traffic on a forward-proxy or local-capture listener: recorded "
            "and routed like the reverse listener's. Every other host passes through untouched. Repeat the "
            "option or separate names with commas (env CAPTURE_HOSTS; default api.anthropic.com).")
        servers_logger = logging.getLogger(_SERVERS_LOGGER)
        for old in [f for f in servers_logger.filters if isinstance(f, LocalRedirectorErrors)]:
            servers_logger.removeFilter(old)  # one filter, however often the script is reloaded
        servers_logger.addFilter(LocalRedirectorErrors(loader.master))

    def configure(self, updated: set[str]) -> None:
        if CAPTURE_HOSTS_OPTION in updated:
            try:
                self.hosts = parse_capture_hosts(ctx.options.capture_hosts)
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if is_captured(flow, self.hosts):
            flow.metadata[CAPTURED] = True
