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
- `web_mask_keys` (on by default) masks API keys (x-api-key, authorization, cookies) in the flows mitmweb keeps,
  as the records do: in what its UI is sent from the start, and in the flow itself once the request has gone
  upstream (the upstream gets the real key), so saved, exported or replayed flows hold no key either.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions, flowfilter, http
from mitmproxy.addonmanager import Loader

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.addons.webapp import INTERNAL_FLOW
from anthropic_proxy.environment import environment
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.masking import SECRET_HEADERS, mask_header_value
from anthropic_proxy.record.model import Record
from anthropic_proxy.telemetry.call_log import provider_name, summary_parts, via

logger = logging.getLogger("anthropic_proxy.mitmweb")

MAX_FLOWS_OPTION = "web_max_flows"
MASK_KEYS_OPTION = "web_mask_keys"
KEYS_MASKED = "anthropic_proxy.keys_masked"  # flow.metadata: the flow's own request headers are masked
DEFAULT_MAX_FLOWS = 1000
MARK_ERROR = ":x:"
MARK_CANCELLED = ":heavy_multiplication_x:"
MARK_TRANSLATED = ":twisted_rightwards_arrows:"


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


def describe(record: Record) -> tuple[str, str]:
    """The flow comment and mark for a record: what a person scanning mitmweb's list wants to know."""
    parts = summary_parts(record)
    comment = " · ".join(parts) + f"\nrecord {record.id}"
    if record.upstream_request is not None:
        comment += (f"\ntranslated: the request shown is what went to {provider_name(record.provider)}; the response "
                    "is the Anthropic answer the client received. Both sides are in the record (/monitor).")
    if record.status == "error":
        mark = MARK_ERROR
    elif record.status == "cancelled":
        mark = MARK_CANCELLED
    elif record.upstream_request is not None:
        mark = MARK_TRANSLATED
    else:
        mark = ""
    return comment, mark


def mask_request_keys(flow: http.HTTPFlow) -> None:
    """Mask the secret headers of a request that has gone upstream (once: masking a masked key again would
    leave only `***`)."""
    if flow.metadata.get(KEYS_MASKED):
        return
    headers = flow.request.headers
    for name in SECRET_HEADERS:
        if values := headers.get_all(name):
            headers.set_all(name, [mask_header_value(name, value) for value in values])
    flow.metadata[KEYS_MASKED] = True


def mask_keys_in_ui() -> None:
    """Until a request has gone upstream its flow must keep the real key, but mitmweb sends the UI each flow as
    soon as it arrives: wrap mitmweb's flow serializer (every flow the UI gets passes through it) so those
    headers go out masked. Idempotent across script reloads; nothing to do outside mitmweb."""
    app = sys.modules.get("mitmproxy.tools.web.app")
    if app is None or getattr(app.flow_to_json, "_anthropic_proxy", False):
        return
    original = app.flow_to_json

    def flow_to_json(flow: Any) -> dict[str, Any]:
        data = original(flow)
        request = data.get("request")
        if request is not None and not flow.metadata.get(KEYS_MASKED) and ctx.options.web_mask_keys:
            request["headers"] = [(name, mask_header_value(name, value) if name.lower() in SECRET_HEADERS else value)
                                  for name, value in request["headers"]]
        return data

    flow_to_json._anthropic_proxy = True  # type: ignore[attr-defined]
    app.flow_to_json = flow_to_json


def client_stream_body(capture: Capture) -> bytes:
    """The SSE stream the client received, byte for byte (from the capture's log of it)."""
    return b"".join(data for _, data in capture.client_log)


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
        loader.add_option(
            MASK_KEYS_OPTION, bool, environment.get("WEB_MASK_KEYS", "true").lower() not in ("0", "false", "no", "off"),
            "mitmweb/mitmproxy console: mask API keys in the flows kept (the upstream still gets the real key); "
            "off shows and saves them as sent (env WEB_MASK_KEYS).")
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
        mask_keys_in_ui()
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
        exchange = runtime.inflight.exchange_of(flow.id) if runtime else None
        if exchange is None:
            return
        runtime.inflight.keep_ended = True  # its end is read here after the Recorder's (`_finished`)
        record = exchange.record()  # (shown in mitmweb at once: its model, and later its outcome)
        flow.comment = f"{record.model or '?'} {via(record)} · in progress\nrecord {record.id}"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # The first hook after the request has gone upstream (error() covers a request that got no answer).
        if self.view is not None and ctx.options.web_mask_keys and not flow.metadata.get(INTERNAL_FLOW):
            mask_request_keys(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        if self.view is not None:  # after the Recorder's end of the record, which it defers to the loop's next turn
            asyncio.get_running_loop().call_soon(self._finished, flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if self.view is not None:
            if ctx.options.web_mask_keys and not flow.metadata.get(INTERNAL_FLOW):
                mask_request_keys(flow)
            self._finished(flow)

    def done(self) -> None:
        for task in self._tasks:
            task.cancel()

    # --- internals ------------------------------------------------------------------------------------

    def _finished(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(INTERNAL_FLOW):
            self._spawn(self._forget_when_done(flow))
            return
        runtime = runtime_module.current_runtime()
        ended = runtime.inflight.take_ended(flow.id) if runtime else None
        exchange = ended.exchange if ended is not None else None
        if exchange is None:
            return
        flow.comment, flow.marked = describe(exchange.record(runtime.prices if runtime else None))
        response = flow.response
        if response is not None and response.stream and response.raw_content is None and exchange.capture.client_log:
            # Headers already went out, so this only changes what the view shows (no content-length is added).
            response.data.content = client_stream_body(exchange.capture)
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
