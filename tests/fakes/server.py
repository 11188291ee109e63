"""What the fake upstreams share: an aiohttp server on 127.0.0.1 in a thread of its own (so sync tests, the
SDK and async tests can all use it), the log of every exchange it got, and answers held until released."""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Self

from aiohttp import web


class FakeServer:
    name = "fake server"  # in thread names and error messages

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.tls = tls  # serve HTTPS with this context (tests/fakes/tls.py makes one)
        self.port: int | None = None
        self.exchanges: list[Any] = []
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._holds: dict[str, threading.Event] = {}
        self._holding: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = threading.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def _describe(self, exchange: Any) -> Any:
        """How an exchange is named when a wait fails."""
        return (exchange.method, exchange.path)

    # ---- lifecycle -----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self, port: int = 0) -> Self:
        started = threading.Event()
        failure: list[BaseException] = []
        self._stopping.clear()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._astart(port))
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            assert self._runner is not None
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError(f"{self.name} did not start")
        if failure:
            raise failure[0]
        return self

    async def _astart(self, port: int) -> None:
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port, reuse_address=True, ssl_context=self.tls)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        self._stopping.set()
        for event in list(self._holds.values()):
            event.set()
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # ---- inspection ----------------------------------------------------------------------------------------
    def clear(self) -> None:
        with self._lock:
            self.exchanges.clear()

    def find(self, predicate: Callable[[Any], bool]) -> list[Any]:
        with self._lock:
            return [ex for ex in self.exchanges if predicate(ex)]

    def wait_for(self, predicate: Callable[[Any], bool], *, count: int = 1, timeout: float = 10.0) -> Any:
        """Wait until `count` exchanges match; return the last one that matched."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(predicate)
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {len(found)}/{count} matching requests after {timeout}s; "
                                     f"received {[self._describe(ex) for ex in self.exchanges]}")
            time.sleep(0.01)

    # ---- holds ---------------------------------------------------------------------------------------------
    def _hold_event(self, hold_id: str) -> threading.Event:
        with self._lock:
            return self._holds.setdefault(hold_id, threading.Event())

    def _mark_holding(self, hold_id: str) -> None:
        """Say the answer holds from now on: called before the write that ends its first part, since the client can
        read that part before the coroutine that wrote it runs again."""
        with self._lock:
            self._holding.add(hold_id)

    async def _hold(self, hold_id: str, timeout: float) -> None:
        """Wait (the answer marked holding) until `release(hold_id)` or `timeout` seconds."""
        event = self._hold_event(hold_id)
        try:
            deadline = time.monotonic() + timeout
            while not event.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        finally:
            with self._lock:
                self._holding.discard(hold_id)

    def release(self, hold_id: str) -> None:
        self._hold_event(hold_id).set()

    def is_holding(self, hold_id: str) -> bool:
        """True while an answer has sent its first part and waits for `release(hold_id)`."""
        with self._lock:
            return hold_id in self._holding

    def wait_holding(self, hold_id: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_holding(hold_id):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} never started holding {hold_id!r}")
            time.sleep(0.005)
