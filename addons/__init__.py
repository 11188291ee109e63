"""mitmproxy glue: thin addons, one concern each. Order matters: see docs/extending.md."""

from __future__ import annotations

from anthropic_proxy.addons.capture import Capture
from anthropic_proxy.addons.errorpages import ErrorPages
from anthropic_proxy.addons.mitmweb_view import MitmwebView
from anthropic_proxy.addons.recording import Recorder
from anthropic_proxy.addons.routing import Router
from anthropic_proxy.addons.startup import Startup
from anthropic_proxy.addons.telemetry import Telemetry
from anthropic_proxy.addons.webapp import WebApp


def all_addons() -> list[object]:
    """The proxy's addons in hook order. Capture marks the flows that are Anthropic API traffic before the
    Router looks for them; the Router runs before the Recorder so that the record sees both the client's call
    (kept in the Route) and the answer as the client finally gets it."""
    return [Startup(), ErrorPages(), WebApp(), Capture(), Router(), Recorder(), MitmwebView(), Telemetry()]
