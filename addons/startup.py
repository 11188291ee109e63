"""Start-up and shutdown: the shared runtime (store, config) and its options, the listen address, the watchdog.

Each addon declares and validates its own options (as mitmproxy's do); this one those of the runtime it opens
(`state_dir`, `store_url`, `max_records`, `retention_days`, `memory_budget`) and of the watchdog it starts
(`request_timeout`, `stream_keepalive`). It runs first, so the addons after it find the runtime open in their
`configure`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import mode_specs

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.capture import watchdog
from anthropic_proxy.environment import DEFAULT_STATE_DIR, environment
from anthropic_proxy.store import MEMORY_BUDGET_MB, MIN_MEMORY_BUDGET_MB
from anthropic_proxy.store.dialects import check_store_url, mask_url
from anthropic_proxy.telemetry.call_log import install_log_filters
from anthropic_proxy.webui.security import public_url

logger = logging.getLogger("anthropic_proxy")

DEFAULT_PORT = 8082
DEFAULT_HOST = "127.0.0.1"
_LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warn", "warn": "warn", "error": "error",
               "critical": "error"}
# Options this design depends on: per-request routing needs lazy upstream connections, and the
# web app's DNS-rebinding check needs the Host the client really sent.
_REQUIRED_MITM_OPTIONS = {"connection_strategy": "lazy", "keep_host_header": True}


def start_line(runtime: runtime_module.Runtime) -> str:
    """Where calls really go, and where to watch them: mitmproxy's own "reverse proxy to ..." line names only
    the default target of its reverse mode, which in openrouter mode no call goes to."""
    settings = runtime.settings
    mode = runtime.config.current.mode
    if mode == "openrouter":
        target = f"translated to OpenRouter ({settings.openrouter_base_url}/chat/completions)"
    else:
        target = f"passed through to {settings.anthropic_upstream}"
    base = public_url(settings)
    return (f"anthropic-proxy {runtime.version}: {mode} mode, API calls to {base}/v1/messages are {target}; "
            f"monitor: {base}/monitor")


class Startup:
    """Opens the shared runtime and keeps it in step with its options and the listen address."""

    def __init__(self) -> None:
        self.manages_mode = False

    def load(self, loader: Loader) -> None:
        env = environment
        loader.add_option("state_dir", str, env.get("ANTHROPIC_PROXY_HOME", DEFAULT_STATE_DIR),
                          "Folder for config.json and the record store (env ANTHROPIC_PROXY_HOME).")
        loader.add_option("store_url", str, env.get("STORE_URL"),
                          "Record store: empty for SQLite in state_dir, or postgresql://user:password@host/db "
                          "(several proxies may share one; needs anthropic-proxy[postgres]) (env STORE_URL).")
        # int: mitmproxy cannot parse float options given with --set
        loader.add_option("request_timeout", int, env.get_int("REQUEST_TIMEOUT", 600),
                          "Seconds an upstream may stay silent before the exchange fails (env REQUEST_TIMEOUT).")
        loader.add_option("stream_keepalive", int, env.get_int("STREAM_KEEPALIVE", 10),
                          "In openrouter mode, send the client a ping after this many seconds of upstream silence "
                          "(0: never; env STREAM_KEEPALIVE).")
        loader.add_option("max_records", int, env.get_int("MAX_RECORDS", 50_000),
                          "Keep at most this many records; the oldest go first (env MAX_RECORDS).")
        loader.add_option("retention_days", int, env.get_int("RETENTION_DAYS", 30),
                          "Delete records older than this many days (env RETENTION_DAYS).")
        loader.add_option("memory_budget", int, env.get_int("MEMORY_BUDGET", MEMORY_BUDGET_MB),
                          "MB of memory (RSS) the proxy and its store's writer use together at most: the store's "
                          "in-memory bounds follow from it; its backlog waits on disk (env MEMORY_BUDGET).")
        install_log_filters()
        level = env.get("LOG_LEVEL").lower()
        # (--set values of mitmproxy's own options are in place by now: one given wins over LOG_LEVEL)
        if level in _LOG_LEVELS and not loader.master.options.has_changed("termlog_verbosity"):
            loader.master.options.update(termlog_verbosity=_LOG_LEVELS[level])
        loader.master.options.update(**_REQUIRED_MITM_OPTIONS)
        # No --mode given: this is a reverse proxy for Anthropic on loopback, not a forward proxy on *:8080.
        self.manages_mode = list(loader.master.options.mode) == ["regular"]

    def configure(self, updated: set[str]) -> None:
        # Every check raises here, never in load(): mitmproxy swallows an OptionsError from load(), and the
        # proxy would then run without this addon, as mitmdump's default forward proxy.
        level = environment.get("LOG_LEVEL").lower()
        if level and level not in _LOG_LEVELS:
            raise exceptions.OptionsError(f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)} (got {level!r})")
        opts = ctx.options
        if opts.request_timeout <= 0:
            raise exceptions.OptionsError("request_timeout must be a positive number of seconds")
        if opts.stream_keepalive < 0:
            raise exceptions.OptionsError("stream_keepalive must be 0 (off) or a number of seconds")
        if opts.max_records < 1 or opts.retention_days < 1:
            raise exceptions.OptionsError("max_records and retention_days must be at least 1")
        if opts.memory_budget < MIN_MEMORY_BUDGET_MB:
            raise exceptions.OptionsError(f"memory_budget must be at least {MIN_MEMORY_BUDGET_MB} (MB)")
        host, port = self.listen_address()
        if "state_dir" in updated:
            environment.use_state_dir(Path(opts.state_dir))  # its .env holds secrets read per request
        try:
            check_store_url(opts.store_url)
            runtime = runtime_module.open_runtime(Path(opts.state_dir), max_records=opts.max_records,
                                                  retention_days=opts.retention_days, store_url=opts.store_url,
                                                  memory_budget_mb=opts.memory_budget)
        except (ValueError, RuntimeError) as exc:  # a bad store_url, psycopg missing, a newer schema
            raise exceptions.OptionsError(str(exc)) from None
        except Exception as exc:  # the database refused (PostgreSQL down, wrong password): no password shown
            where = mask_url(opts.store_url) if opts.store_url else opts.state_dir
            raise exceptions.OptionsError(f"cannot open the record store {where}: {exc}") from None
        # (the addons after this one, the Router and the WebApp, add their own options' part)
        runtime.settings = runtime.settings.model_copy(update={
            "listen_host": host, "listen_port": port, "request_timeout": opts.request_timeout,
            "stream_keepalive": opts.stream_keepalive})

    def listen_address(self) -> tuple[str, int]:
        opts = ctx.options
        if self.manages_mode:
            return (opts.listen_host or environment.get("HOST", DEFAULT_HOST),
                    opts.listen_port or environment.get_int("PORT", DEFAULT_PORT))
        modes = [mode_specs.ProxyMode.parse(spec) for spec in opts.mode]
        # The web app's address: the reverse listener's, when a forward proxy or local capture runs beside it.
        mode = next((m for m in modes if isinstance(m, mode_specs.ReverseMode)), modes[0])
        return mode.listen_host(opts.listen_host) or "0.0.0.0", mode.listen_port(opts.listen_port) or 8080

    def running(self) -> None:
        # Must stay sync: an async running() stops mitmproxy's hot reload of the script.
        runtime = runtime_module.current_runtime()
        if runtime is not None and runtime.watchdog is None:  # one per process, across script reloads
            runtime.watchdog = asyncio.get_running_loop().create_task(watchdog.watch(runtime))
            # Everything loaded so far (mitmproxy, pydantic, the web app: ~110k objects) lives as long as the
            # process: out of the collector's sight, a full collection stops rescanning it (less GC time under a
            # stream load: bench/RESULTS.md).
            gc.freeze()
            logger.info("%s", start_line(runtime))
        if self.manages_mode and list(ctx.options.mode) == ["regular"]:
            host, port = self.listen_address()
            # proxyserver re-binds when `mode` changes while running.
            ctx.options.update(mode=[f"reverse:{ctx.options.anthropic_upstream}"], listen_host=host,
                               listen_port=port)

    def requestheaders(self, flow) -> None:
        # Until the switch above lands, mitmproxy briefly listens as a forward proxy: never act as one. (A forward
        # proxy the user asked for, `--mode regular@8080` beside the reverse one, is not managed: its flows pass.)
        if self.manages_mode and isinstance(flow.client_conn.proxy_mode, mode_specs.RegularMode):
            flow.kill()

    def done(self) -> None:
        if ctx.master.should_exit.is_set():  # shutdown, not a script reload
            runtime = runtime_module.current_runtime()
            if runtime is not None:
                for exchange in runtime.inflight.exchanges():  # (an ended one is completed, not failed)
                    exchange.fail("the proxy shut down before this exchange finished", cancelled=False)
                runtime_module.close_runtime()
