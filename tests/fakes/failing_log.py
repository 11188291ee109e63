"""A mitmproxy script for tests: every log line from a thread other than the main one fails the way mitmproxy's
terminal log fails when it cannot print (a closed pipe, a full disk): `sys.exit(1)`, i.e. `SystemExit`."""

from __future__ import annotations

import logging
import sys
import threading


class FailingLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is not threading.main_thread():
            print(f"failing_log: SystemExit for {record.getMessage()[:80]!r}", file=sys.stderr, flush=True)
            sys.exit(1)


class InstallFailingLog:
    def load(self, loader: object) -> None:
        logging.getLogger().addHandler(FailingLog())


addons = [InstallFailingLog()]
