"""mitmproxy glue: thin addons, one concern each. Order matters: see docs/extending.md."""

from __future__ import annotations

from .capture import Capture
from .errorpages import ErrorPages
from .mitmweb_view import MitmwebView
from .recording import Recorder
from .routing import Router
from .startup import Startup
from .telemetry import Telemetry
from .webapp import WebApp


def all_addons() -> list[object]:
    """The proxy's addons in hook order. Capture marks the flows that are Anthropic API traffic before the
    Router looks for them; the Router runs before the Recorder so that the record sees both the client's call
    (kept in the Route) and the answer as the client finally gets it."""
    return [Startup(), ErrorPages(), WebApp(), Capture(), Router(), Recorder(), MitmwebView(), Telemetry()]
