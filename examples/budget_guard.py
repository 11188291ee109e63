"""Daily budget guard: refuse new API calls once today's cost reaches a limit.

    mitmdump -s addons/proxy.py -s examples/budget_guard.py --set budget_daily_usd=5

(either load order works: the guard decides in `requestheaders`, before any of the proxy's request hooks)

- Today's spend starts from the store (records since local midnight) and grows with every finished record
  (the `anthropic_record_complete` hook, `record.cost_usd`). The day is the proxy host's local day (TZ).
- Once spend >= budget_daily_usd, calls to /v1/messages and /v1/messages/count_tokens get
  `400 invalid_request_error` with a clear message and `x-should-retry: false`. That is what Anthropic itself
  answers when an organisation's spend limit is reached, and clients do not retry it: the SDKs retry 408,
  409, 429 and 5xx (Claude Code up to ten times with backoff), so a 429 or 529 would make them hammer the
  proxy, and 401/403 would send the user looking for a key problem. Refused calls are still recorded (as
  errors, costing nothing), so the monitor shows them.
- A record without a cost (a model the price table does not know: see its `costNote`) cannot be counted; the
  guard logs that once per model. Calls already in flight when the limit is crossed finish normally, so the
  day can end a little above the limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import date, datetime, time

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.environment import environment
from anthropic_proxy.record.model import Record
from anthropic_proxy.store import RecordFilter
from anthropic_proxy.translate.errors import anthropic_error_body

logger = logging.getLogger("anthropic_proxy.examples.budget_guard")

GUARDED_PATHS = ("/v1/messages", "/v1/messages/count_tokens")


def local_midnight(day: date) -> datetime:
    return datetime.combine(day, time.min).astimezone()  # local midnight, as an aware datetime


def record_day(record: Record) -> date:
    return record.timestamp.astimezone().date()


class BudgetGuard:
    def __init__(self) -> None:
        self.limit: float | None = None
        self.day = date.today()
        self.spent = 0.0
        self.loaded = asyncio.Event()
        self._unpriced_models: set[str] = set()

    def load(self, loader: Loader) -> None:
        loader.add_option("budget_daily_usd", str, environment.get("BUDGET_DAILY_USD"),
                          "Refuse API calls once today's cost (USD, local day) reaches this amount, e.g. 5 or "
                          "12.50; 0 refuses every call (env BUDGET_DAILY_USD). Required.")

    def configure(self, updated: set[str]) -> None:
        if "budget_daily_usd" not in updated:
            return
        raw = ctx.options.budget_daily_usd.strip()
        try:
            limit = float(raw)
        except ValueError:
            raise exceptions.OptionsError(
                f"budget_daily_usd must be an amount in USD such as 5 or 12.50 (got {raw!r}); "
                "set it with --set budget_daily_usd=AMOUNT or BUDGET_DAILY_USD") from None
        if limit < 0:
            raise exceptions.OptionsError("budget_daily_usd cannot be negative")
        self.limit = limit

    def running(self) -> None:
        # Sync on purpose (an async running() stops mitmproxy's script reload); the store read runs in a thread.
        asyncio.get_running_loop().create_task(self._load_today())

    async def _load_today(self) -> None:
        try:
            runtime = runtime_module.current_runtime()
            if runtime is not None:
                self.day = date.today()
                flt = RecordFilter(since=local_midnight(self.day))
                stats = await asyncio.to_thread(runtime.store.aggregate, flt)
                self.spent = float(stats.get("costUsd") or 0.0)
            logger.info("budget guard: $%.4f spent today of $%s", self.spent, ctx.options.budget_daily_usd)
        except Exception:
            logger.exception("budget guard: could not read today's spend from the store; counting from $0")
        finally:
            self.loaded.set()

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if request.method != "POST" or request.path.split("?", 1)[0] not in GUARDED_PATHS or flow.response:
            return
        await self.loaded.wait()  # only the first calls after start-up can wait here, for a few milliseconds
        self._roll_day()
        if self.limit is None or self.spent < self.limit:
            return
        message = (f"anthropic-proxy budget guard: today's spend ${self.spent:.4f} has reached the daily limit "
                   f"${self.limit:.2f} (budget_daily_usd). New requests are refused until local midnight "
                   "or until the limit is raised.")
        flow.response = http.Response.make(
            400, json.dumps(anthropic_error_body("invalid_request_error", message)).encode(),
            {"content-type": "application/json", "x-should-retry": "false"})
        flow.comment = "refused by the budget guard"
        flow.marked = ":no_entry:"
        logger.warning("budget guard refused %s: $%.4f spent of $%.2f", request.path, self.spent, self.limit)

    def anthropic_record_complete(self, record: Record) -> None:
        self._roll_day()
        if record_day(record) != self.day:
            return
        if record.cost_usd is not None:
            self.spent += record.cost_usd
        elif record.status == "success" and (record.model or "?") not in self._unpriced_models:
            self._unpriced_models.add(record.model or "?")
            logger.warning("budget guard: calls to %s have no known cost and are not counted (%s)", record.model,
                           getattr(record, "cost_note", None) or "no price")

    def _roll_day(self) -> None:
        today = date.today()
        if today != self.day:
            self.day, self.spent = today, 0.0


addons = [BudgetGuard()]
