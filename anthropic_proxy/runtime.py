"""Process-wide state shared by the addons and the web app.

It lives in this installed module, not in the `-s` script, so it survives mitmproxy's hot reload of
the script: in-flight exchanges, the store and the web server carry on while the addons are replaced.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from anthropic_proxy import __version__
from anthropic_proxy.capture.live import LiveBus
from anthropic_proxy.capture.registry import InFlight
from anthropic_proxy.providers.failover import CoolDowns, Relay
from anthropic_proxy.providers.openrouter_api import ModelCatalog
from anthropic_proxy.providers.proxy_config import ConfigStore
from anthropic_proxy.record.pricing import PriceBook
from anthropic_proxy.store import MEMORY_BUDGET_MB, Store
from anthropic_proxy.telemetry.metrics import ProxyMetrics, ProxyState

logger = logging.getLogger("anthropic_proxy")


class Pin(BaseModel):
    """A configuration value that an option sets at every start: the config page changes it only until a restart."""

    value: str
    by: str  # what sets it, for people: "PROXY_MODE (/home/me/.env)", "--set proxy_mode"


class ProxySettings(BaseModel):
    """The options that matter outside mitmproxy (web app, health), as last validated: each addon's `configure` sets
    the part of its own options (Startup, Router, WebApp)."""

    anthropic_upstream: str = "https://api.anthropic.com"
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8082
    request_timeout: float = 600
    stream_keepalive: float = 10
    # Required by the web pages and API when set; the proxy must set one when it listens beyond loopback.
    web_token: str | None = None
    # More Host header values the web app answers to (`name` or `name:port`): the web_hosts option's, and the
    # machine's own addresses and names when it listens on all interfaces (webui/security.py).
    web_hosts: tuple[str, ...] = ()
    pins: dict[str, Pin] = {}  # by ProxyConfig field ("mode")


@dataclass
class Runtime:
    state_dir: Path
    store: Store
    config: ConfigStore
    catalog: ModelCatalog
    settings: ProxySettings = field(default_factory=ProxySettings)
    bus: LiveBus = field(default_factory=LiveBus)
    inflight: InFlight = field(default_factory=InFlight)  # the calls in flight: routes and exchanges
    cooldowns: CoolDowns = field(default_factory=CoolDowns)  # targets skipped for now (429/529 retry-after)
    relay: Relay | None = None  # tries the targets of calls that have fallbacks (started by the Router)
    # Proves to the internal web server that a request came through the proxy's own checks.
    internal_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    web_port: int | None = None
    web_runner: web.AppRunner | None = None
    version: str = __version__
    store_url: str = ""  # as configured (password included): never show it, show `store.location`

    background: set[asyncio.Task[Any]] = field(default_factory=set)
    watchdog: asyncio.Task[None] | None = None
    metrics: ProxyMetrics = field(init=False)  # GET /metrics; counts every call's end (metrics.py)

    def __post_init__(self) -> None:
        self.metrics = ProxyMetrics(self.state, self.version)
        self.store.call_ends.subscribe(self.metrics.count)

    def state(self) -> ProxyState:
        """What the proxy holds right now (read at each scrape of /metrics)."""
        store = self.store
        return ProxyState(in_flight=len(self.inflight), store_queue=store.queued, store_unsaved=store.unsaved,
                          store_write_errors=store.write_errors, store_degraded=store.last_write_error is not None,
                          store_lost=store.lost, writer_restarts=store.writer_restarts,
                          cooldowns=len(self.cooldowns.view()))

    @property
    def prices(self) -> PriceBook:
        """The built-in table plus state_dir/prices.json: the store's book (its writer prices from the same file)."""
        return self.store.prices

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` in the background, keeping a reference so the task is not collected mid-way."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def close(self) -> None:
        self.store.close()


_current: Runtime | None = None


def open_runtime(state_dir: Path, *, max_records: int, retention_days: int, store_url: str = "",
                 memory_budget_mb: int = MEMORY_BUDGET_MB) -> Runtime:
    """The runtime for `state_dir` and `store_url` (empty: SQLite in state_dir), reusing the live one across
    script reloads."""
    global _current
    state_dir = state_dir.expanduser().resolve()
    if _current is not None and _current.state_dir == state_dir and _current.store_url == store_url:
        _current.store.max_records, _current.store.retention_days = max_records, retention_days
        return _current
    if _current is not None:
        _current.close()
        _current = None
    store = Store(state_dir, url=store_url, max_records=max_records, retention_days=retention_days,
                  memory_budget_mb=memory_budget_mb)
    logger.info("anthropic-proxy records to %s (%s)", store.location, store.dialect.name)
    _current = Runtime(state_dir=state_dir, store=store, config=ConfigStore(state_dir),
                       catalog=ModelCatalog(state_dir), store_url=store_url)
    return _current


def current_runtime() -> Runtime | None:
    return _current


def close_runtime() -> None:
    global _current
    if _current is not None:
        _current.close()
        _current = None


RUNTIME_KEY = web.AppKey("runtime", Runtime)
