"""mitmproxy glue: thin addons, one concern each. Order matters: see docs/extending.md."""

from __future__ import annotations

from .recording import Recorder
from .routing import Router
from .startup import Startup
from .webapp import WebApp


def all_addons() -> list[object]:
    """The proxy's addons in hook order: options first, then the web app, recording, routing."""
    return [Startup(), WebApp(), Recorder(), Router()]
