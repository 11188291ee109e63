"""mitmweb's flow list, made useful: readable API flows, no web-app flows, and a cap on the flows kept.

Only acts when mitmproxy keeps flows, i.e. has a `view` addon (mitmweb, the mitmproxy console); mitmdump
keeps none, and there every hook here returns at once.

- API calls get a comment when their record ends (model, provider, stop reason or error, tokens, cost,
  duration, record id) and a mark for what needs a look: `:x:` error, `:heavy_multiplication_x:` cancelled,
  `:twisted_rightwards_arrows:` translated to OpenRouter. A streamed answer's body is filled in from the
  record (what the client received), so mitmweb shows it without `store_streamed_bodies`.
- The web app's own flows (monitor, config, /health) never enter the view: its filter is wrapped so they
  never match, and once finished they are dropped from the store too (removing a live flow would kill it).
- `web_max_flows` caps the flows mitmweb keeps in memory: the oldest finished flows go first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions, flowfilter, http
from mitmproxy.addonmanager import Loader

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.environment import environment
from anthropic_proxy.record import Record
from anthropic_proxy.stream_log import read_record

from .webapp import INTERNAL_FLOW

logger = logging.getLogger("anthropic_proxy.mitmweb")

MAX_FLOWS_OPTION = "web_max_flows"
DEFAULT_MAX_FLOWS = 1000
MARK_ERROR = ":x:"
MARK_CANCELLED = ":heavy_multiplication_x:"
MARK_TRANSLATED = ":twisted_rightwards_arrows:"

# Records of the API flows in flight, by flow id. Module state on purpose: it lives in the installed package,
# so a reload of the `-s` script (which replaces the addon instances) keeps it.
_live_records: dict[str, Record] = {}


class HideInternal:
    """A view filter that never matches the web app's flows, around whatever filter the user chose."""

    def __init__(self, inner: Callable[[Any], bool]) -> None:
        self.inner = inner

    def __call__(self, flow: Any) -> bool:
        return not flow.metadata.get(INTERNAL_FLOW) and self.inner(flow)


def hide_internal_flows(view: Any) -> None:
    """Wrap the view's filter, now and whenever `view_filter` changes (idempotent across script reloads)."""
    if not isinstance(view.filter, HideInternal):
        view.filter = HideInternal(view.filter)
    if getattr(view.set_filter, "_anthropic_proxy", False):
        return
    original = view.set_filter

    def set_filter(flt: flowfilter.TFilter | None) -> None:
        original(HideInternal(flt or flowfilter.match_all))

    set_filter._anthropic_proxy = True  # type: ignore[attr-defined]
    view.set_filter = set_filter


def _money(cost: float) -> str:
    return f"${cost:.4f}" if cost >= 0.01 else f"${cost:.6f}"


def _name(provider: str) -> str:
    return "OpenRouter" if provider == "openrouter" else provider


def _via(record: Record) -> str:
    """Where the call went: `· anthropic` for a plain passthrough, else `→ model via provider`."""
    if record.provider == "anthropic" and record.upstream_model in (None, record.model):
        return "· anthropic"
    return f"→ {record.upstream_model or '?'} via {_name(record.provider)}"


def describe(record: Record) -> tuple[str, str]:
    """The flow comment and mark for a record: what a person scanning mitmweb's list wants to know."""
    head = f"{record.model or '?'} {_via(record)}"
    if record.request.path.split("?", 1)[0].endswith("/count_tokens"):
        head += " · count_tokens"
    if record.status == "success":
        outcome = record.stop_reason or "ok"
    elif record.status == "error" and record.error is not None:
        outcome = f"error {record.error.type}: {record.error.message[:120]}"
    elif record.status == "cancelled":
        outcome = "cancelled (the client left)"
    else:
        outcome = record.status
    usage = record.usage
    tokens = f"in {usage.input_tokens} / out {usage.output_tokens} tok"
    if usage.cache_read_input_tokens or usage.cache_creation_input_tokens:
        tokens += f" (cache read {usage.cache_read_input_tokens}, write {usage.cache_creation_input_tokens})"
    if record.cost_usd is not None:
        cost = _money(record.cost_usd)
    else:
        note = getattr(record, "cost_note", None)
        cost = f"cost unknown ({note})" if note else "cost unknown"
    parts = [head, outcome, tokens, cost]
    if record.metrics.duration_ms is not None:
        parts.append(f"{record.metrics.duration_ms / 1000:.2f} s")
    if len(record.attempts) > 1:
        parts.append(f"after {len(record.attempts)} attempts: " + ", ".join(
            f"{a.provider} {a.status or 'no answer'}" for a in record.attempts))
    comment = " · ".join(parts) + f"\nrecord {record.id}"
    if record.upstream_request is not None:
        comment += (f"\ntranslated: the request shown is what went to {_name(record.provider)}; the response is the "
                    "Anthropic answer the client received. Both sides are in the record (/monitor).")
    if record.status == "error":
        mark = MARK_ERROR
    elif record.status == "cancelled":
        mark = MARK_CANCELLED
    elif record.upstream_request is not None:
        mark = MARK_TRANSLATED
    else:
        mark = ""
    return comment, mark


def client_stream_body(record: Record) -> bytes:
    """The SSE stream the client received, byte for byte (from the record's log of it)."""
    return b"".join(data for _, data in record.client_stream)


class MitmwebView:
    def __init__(self) -> None:
        self.view: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._internal: set[str] = set()  # ids of web-app flows still in the view's store

    def load(self, loader: Loader) -> None:
        loader.add_option(
            MAX_FLOWS_OPTION, int, environment.get_int("WEB_MAX_FLOWS", DEFAULT_MAX_FLOWS),
            "mitmweb/mitmproxy console: keep at most this many flows in memory, dropping the oldest finished "
            "ones; 0 keeps all. mitmdump keeps no flows and ignores it (env WEB_MAX_FLOWS).")
        self.view = loader.master.addons.get("view")

    def configure(self, updated: set[str]) -> None:
        if MAX_FLOWS_OPTION in updated:
            if ctx.options.web_max_flows < 0:
                raise exceptions.OptionsError(f"{MAX_FLOWS_OPTION} must be 0 (no limit) or more")
            if self.view is not None:
                self._enforce_cap(room=0)

    def running(self) -> None:
        if self.view is None:
            return
        hide_internal_flows(self.view)
        # Show the comment column unless the user chose the columns; mitmdump has no such option.
        options = ctx.options
        if "web_columns" in options and not options.has_changed("web_columns") \
                and "comment" not in options.web_columns:
            options.update(web_columns=[*options.web_columns, "comment"])

    # --- hooks (this addon runs after the Recorder, see addons/__init__.py) ---------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.view is None:
            return
        if flow.metadata.get(INTERNAL_FLOW):  # set by the WebApp, which runs before us
            self._internal.add(flow.id)  # hidden, dropped when done: never counted against the cap
        else:
            self._enforce_cap(room=1)  # the view adds this flow right after our hook

    def request(self, flow: http.HTTPFlow) -> None:
        if self.view is None:
            return
        runtime = runtime_module.current_runtime()
        exchange = runtime.exchanges.get(flow.id) if runtime else None
        if exchange is None:
            return
        record = exchange.describe()  # (shown in mitmweb at once: its model, and later its outcome)
        _live_records[flow.id] = record
        flow.comment = f"{record.model or '?'} {_via(record)} · in progress\nrecord {record.id}"

    def response(self, flow: http.HTTPFlow) -> None:
        if self.view is not None:  # after the Recorder's end of the record, which it defers to the loop's next turn
            asyncio.get_running_loop().call_soon(self._finished, flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if self.view is not None:
            self._finished(flow)

    def done(self) -> None:
        for task in self._tasks:
            task.cancel()

    # --- internals ------------------------------------------------------------------------------------

    def _finished(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(INTERNAL_FLOW):
            self._spawn(self._forget_when_done(flow))
            return
        record = _live_records.pop(flow.id, None)
        if record is None:
            return
        if record.status == "ended":  # its outcome is still to be read from its stream
            runtime = runtime_module.current_runtime()
            record = read_record(record, runtime.prices if runtime else None)
        flow.comment, flow.marked = describe(record)
        response = flow.response
        if response is not None and response.stream and response.raw_content is None and record.client_stream:
            # Headers already went out, so this only changes what the view shows (no content-length is added).
            response.data.content = client_stream_body(record)
        if self.view.get_by_id(flow.id) is flow:
            self.view.update([flow])  # (the view took the flow's end before this ran)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget_when_done(self, flow: http.HTTPFlow) -> None:
        """Drop a finished web-app flow from the store. Never while live: the view's remove() kills live flows."""
        delay = 0.02
        while flow.live:  # a live monitor stream stays open for hours: check ever more rarely
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        self._internal.discard(flow.id)
        if self.view is not None and self.view.get_by_id(flow.id) is flow:
            self.view.remove([flow])

    def _enforce_cap(self, room: int) -> None:
        """Remove the oldest finished flows until `room` more fit under web_max_flows."""
        cap = ctx.options.web_max_flows
        if not cap:
            return
        store = self.view._store  # insertion-ordered (oldest first); mitmproxy 12 View internals
        excess = len(store) - len(self._internal) + room - cap
        if excess <= 0:
            return
        victims = []
        for flow in store.values():
            if not flow.live and flow.id not in self._internal:  # removing a live flow would kill it
                victims.append(flow)
                if len(victims) >= excess:
                    break
        for flow in victims:
            self.view.remove([flow])  # one by one: a batch logs an alert each time
