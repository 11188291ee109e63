"""The start-up line names where calls really go (mitmproxy's own line names only its reverse mode's target), and
the log level the user gives wins."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.addons.termlog import TermLog
from mitmproxy.log import LegacyLogEvents
from mitmproxy.test import taddons

from anthropic_proxy.addons import startup
from anthropic_proxy.addons.startup import start_line
from anthropic_proxy.runtime import ProxySettings
from anthropic_proxy.telemetry.call_log import install_log_filters


def runtime(mode: str, **settings: object) -> SimpleNamespace:
    config = SimpleNamespace(current=SimpleNamespace(mode=mode))
    return SimpleNamespace(settings=ProxySettings(**settings), config=config, version="9.9")


def test_anthropic_mode_names_the_configured_upstream():
    line = start_line(runtime("anthropic", anthropic_upstream="http://127.0.0.1:19090", listen_port=19082))
    assert line == ("anthropic-proxy 9.9: anthropic mode, API calls to http://127.0.0.1:19082/v1/messages are "
                    "passed through to http://127.0.0.1:19090; monitor: http://127.0.0.1:19082/monitor")


def test_openrouter_mode_names_openrouter_and_a_url_that_opens():
    line = start_line(runtime("openrouter", openrouter_base_url="https://openrouter.example/api/v1",
                              listen_host="0.0.0.0", web_hosts=("proxy.example.test",)))
    assert "openrouter mode" in line and "api.anthropic.com" not in line
    assert "translated to OpenRouter (https://openrouter.example/api/v1/chat/completions)" in line
    assert line.endswith("monitor: http://proxy.example.test:8082/monitor")


@pytest.mark.parametrize(("given", "expected"), [(None, "debug"), ("warn", "warn")])
def test_log_level_from_the_environment_yields_to_set(monkeypatch, given, expected):
    monkeypatch.setattr(startup.environment, "get", lambda name, default="": {"LOG_LEVEL": "debug"}.get(name, default))
    with taddons.context(Proxyserver(), TermLog()) as tctx:
        if given:
            tctx.options.update(termlog_verbosity=given)  # what --set does before the script's addons load
        tctx.master.addons.add(startup.Startup())
        assert tctx.options.termlog_verbosity == expected


def test_call_lines_reach_the_terminal_but_not_the_deprecated_add_log_event():
    """mitmproxy dispatches every log record's add_log event through every addon on its event loop: the call
    lines, one per call, skip that dispatch (the terminal and mitmweb's event log are logging handlers)."""
    with taddons.context(Proxyserver(), TermLog()) as tctx:
        tctx.master.addons.add(startup.Startup())
        [legacy] = [h for h in logging.getLogger().handlers if isinstance(h, LegacyLogEvents)]
        terminal = tctx.master.addons.get("termlog").logger
        line = logging.LogRecord("anthropic_proxy.calls", logging.INFO, __file__, 1, "POST /v1/messages 200", None,
                                 None)
        other = logging.LogRecord("anthropic_proxy.store", logging.INFO, __file__, 1, "store: ready", None, None)
        assert not legacy.filter(line) and legacy.filter(other)
        assert terminal.filter(line)
        install_log_filters()  # (what a reload of the script does again) adds no second filter
        assert len(legacy.filters) == 1
