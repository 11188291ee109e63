"""Options, start-up and shutdown: the proxy's settings, its listen address and its shared runtime."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import secrets
import socket
from pathlib import Path
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import mode_specs

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.capture import watchdog
from anthropic_proxy.environment import DEFAULT_STATE_DIR, environment
from anthropic_proxy.runtime import Pin, ProxySettings
from anthropic_proxy.store.dialects import check_store_url, mask_url
from anthropic_proxy.telemetry.call_log import quiet_connection_lines
from anthropic_proxy.webui.security import is_loopback, is_unspecified, public_url, split_host

logger = logging.getLogger("anthropic_proxy")

DEFAULT_PORT = 8082
DEFAULT_HOST = "127.0.0.1"
PROXY_MODES = ("anthropic", "openrouter")
_LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warn", "warn": "warn", "error": "error",
               "critical": "error"}
# Options this design depends on: per-request routing needs lazy upstream connections, and the
# web app's DNS-rebinding check needs the Host the client really sent.
_REQUIRED_MITM_OPTIONS = {"connection_strategy": "lazy", "keep_host_header": True}
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""}


def check_upstream(url: str, option: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise exceptions.OptionsError(f"{option} must be an http(s) URL such as https://api.anthropic.com "
                                      f"(got {url!r})")


def _is_own_address(url: str, listen_host: str, listen_port: int) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    own_hosts = _LOOPBACK_NAMES | {listen_host.lower()}
    return port == listen_port and (host in own_hosts or host.startswith("127."))


def _config_pins(proxy_mode: str) -> dict[str, Pin]:
    """What the proxy_mode option fixes at every start (it is saved in config.json then), and by what."""
    if not proxy_mode:
        return {}
    origin = environment.origin("PROXY_MODE")
    by = f"PROXY_MODE ({origin})" if origin and environment.get("PROXY_MODE") == proxy_mode else "--set proxy_mode"
    return {"mode": Pin(value=proxy_mode, by=by)}


@functools.cache
def machine_names() -> tuple[str, ...]:
    """This machine's address on its default route, host name and other addresses: the names a browser on
    another machine uses when the proxy listens on all interfaces (loopback ones are allowed anyway)."""
    names: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # (UDP: nothing is sent; the kernel only picks the outgoing address)
        names.append(probe.getsockname()[0])
    hostname = socket.gethostname()  # (not getfqdn(): a reverse DNS lookup can stall start-up for seconds)
    names.append(hostname)
    with contextlib.suppress(OSError):
        names += [info[4][0] for info in socket.getaddrinfo(hostname, None)]
    return tuple(dict.fromkeys(name.lower() for name in names if name and not is_loopback(name)))


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
    """Declares the proxy's options and keeps the shared runtime in step with them."""

    def __init__(self) -> None:
        self.manages_mode = False
        self._generated_token: str | None = None

    def load(self, loader: Loader) -> None:
        env = environment
        loader.add_option("anthropic_upstream", str,
                          env.get("ANTHROPIC_UPSTREAM_URL", "https://api.anthropic.com"),
                          "Where Anthropic API calls go in anthropic mode (env ANTHROPIC_UPSTREAM_URL).")
        loader.add_option("openrouter_base_url", str, env.get("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1"),
                          "OpenRouter's API base URL for openrouter mode (env OPENROUTER_BASE_URL).")
        loader.add_option("proxy_mode", str, env.get("PROXY_MODE"),
                          "anthropic: pass calls through to anthropic_upstream; openrouter: translate them to "
                          "OpenRouter. Empty: the mode saved in state_dir/config.json (env PROXY_MODE).",
                          choices=("", *PROXY_MODES))
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
        loader.add_option("web_token", str, env.get("WEB_TOKEN"),
                          "Token the web pages and API require (env WEB_TOKEN). Listening beyond loopback without "
                          "one, the proxy makes one up and prints it at start-up.")
        loader.add_option("web_hosts", str, env.get("WEB_HOSTS"),
                          "More host names the web pages answer to, comma-separated: name (with the listen port, "
                          "or none behind a reverse proxy) or name:port. Listening on all interfaces, the "
                          "machine's own names and addresses are allowed too (env WEB_HOSTS).")
        loader.add_option("max_records", int, env.get_int("MAX_RECORDS", 50_000),
                          "Keep at most this many records; the oldest go first (env MAX_RECORDS).")
        loader.add_option("retention_days", int, env.get_int("RETENTION_DAYS", 30),
                          "Delete records older than this many days (env RETENTION_DAYS).")
        quiet_connection_lines()
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
        for option in ("anthropic_upstream", "openrouter_base_url"):
            if option in updated:
                check_upstream(getattr(opts, option), option)
        if opts.request_timeout <= 0:
            raise exceptions.OptionsError("request_timeout must be a positive number of seconds")
        if opts.stream_keepalive < 0:
            raise exceptions.OptionsError("stream_keepalive must be 0 (off) or a number of seconds")
        if opts.max_records < 1 or opts.retention_days < 1:
            raise exceptions.OptionsError("max_records and retention_days must be at least 1")
        host, port = self.listen_address()
        web_hosts = self._web_hosts(host, port)
        if _is_own_address(opts.anthropic_upstream, host, port):
            raise exceptions.OptionsError(
                f"anthropic_upstream {opts.anthropic_upstream} is this proxy's own address ({host}:{port}): "
                "requests would loop forever. Set ANTHROPIC_UPSTREAM_URL (not ANTHROPIC_BASE_URL) to the real API."
            )
        if "state_dir" in updated:
            environment.use_state_dir(Path(opts.state_dir))  # its .env holds secrets read per request
        try:
            check_store_url(opts.store_url)
            runtime = runtime_module.open_runtime(Path(opts.state_dir), max_records=opts.max_records,
                                                  retention_days=opts.retention_days, store_url=opts.store_url)
        except (ValueError, RuntimeError) as exc:  # a bad store_url, psycopg missing, a newer schema
            raise exceptions.OptionsError(str(exc)) from None
        except Exception as exc:  # the database refused (PostgreSQL down, wrong password): no password shown
            where = mask_url(opts.store_url) if opts.store_url else opts.state_dir
            raise exceptions.OptionsError(f"cannot open the record store {where}: {exc}") from None
        if "proxy_mode" in updated and opts.proxy_mode:
            runtime.config.update({"mode": opts.proxy_mode})
        settings = ProxySettings(
            anthropic_upstream=opts.anthropic_upstream.rstrip("/"),
            openrouter_base_url=opts.openrouter_base_url.rstrip("/"), listen_host=host, listen_port=port,
            request_timeout=opts.request_timeout, stream_keepalive=opts.stream_keepalive, web_hosts=web_hosts,
            pins=_config_pins(opts.proxy_mode),
        )
        runtime.settings = settings.model_copy(update={"web_token": self._web_token(settings)})

    @staticmethod
    def _web_hosts(host: str, port: int) -> tuple[str, ...]:
        """web_hosts as given, then (listening on all interfaces) the machine's own names with the port."""
        given = tuple(entry.strip() for entry in ctx.options.web_hosts.split(",") if entry.strip())
        for entry in given:
            try:
                split_host(entry)
            except ValueError:
                raise exceptions.OptionsError(f"web_hosts: {entry!r} is not a host name, address or name:port "
                                              "(such as proxy.example.com or 192.168.1.5:8082)") from None
        if not is_unspecified(host):
            return given
        return given + tuple(f"[{name}]:{port}" if ":" in name else f"{name}:{port}" for name in machine_names())

    def _web_token(self, settings: ProxySettings) -> str | None:
        if ctx.options.web_token:
            return ctx.options.web_token
        if is_loopback(settings.listen_host):
            return None
        if self._generated_token is None:
            self._generated_token = secrets.token_urlsafe(24)
            logger.warning("anthropic-proxy listens beyond loopback: the web pages need a token. Open "
                           "%s/monitor?token=%s (or set web_token / WEB_TOKEN)", public_url(settings),
                           self._generated_token)
        return self._generated_token

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
            # process: out of the collector's sight, a full collection stops rescanning it. Measured: GC time
            # under a stream load 1.0 s -> 0.4 s of 6 s CPU.
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
