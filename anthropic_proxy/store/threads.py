"""The store's threads in the proxy process (the journal's flusher, the writer's sender and receiver): a log they
survive, and a loop that is started again when something ends it anyway.

mitmproxy's terminal log calls `sys.exit(1)` when it cannot print (a full disk under the log, a closed pipe). Raised
in one of these threads, that would end the thread, not the proxy, and leave records in memory for good.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("anthropic_proxy.store")


def log_safely(level: int, message: str, *args: Any, exc_info: bool = False, name: str = logger.name) -> None:
    """Log from a store thread (to the logger `name`); nothing a log handler raises gets out (there is nowhere left
    to say it)."""
    with contextlib.suppress(BaseException):
        logging.getLogger(name).log(level, message, *args, exc_info=exc_info)


def start_supervised(loop: Callable[[], None], name: str, *, closing: Callable[[], bool],
                     failed: Callable[[str, str], None]) -> threading.Thread:
    """A daemon thread that runs `loop` until it returns, and runs it again whenever it raises (anything: a bug, a
    `SystemExit` from a log handler) unless `closing()`; `failed(name, why)` hears of each such end first."""

    def supervise() -> None:
        while True:
            try:
                loop()
                return
            except BaseException as exc:
                if closing():
                    return
                failed(name, repr(exc))
                time.sleep(0.1)  # (a loop that fails at once must not spin)

    thread = threading.Thread(target=supervise, name=f"anthropic-proxy-store-{name}", daemon=True)
    thread.start()
    return thread
