"""mitmproxy glue: thin addons, one concern each. Order matters: see docs/extending.md."""

from __future__ import annotations

from .errorpages import ErrorPages
from .mitmweb_view import MitmwebView
from .recording import Recorder
from .routing import Router
from .startup import Startup
from .telemetry import Telemetry
from .webapp import WebApp


def all_addons() -> list[object]:
    """The proxy's addons in hook order. The Router runs before the Recorder so that the record sees both
    the client's call (kept in the Route) and the answer as the client finally gets it."""
    return [Startup(), ErrorPages(), WebApp(), Router(), Recorder(), MitmwebView(), Telemetry()]
