"""The calls in flight: one registry, by mitmproxy flow id and by record id, of each call's route and exchange.

The Router adds a call's route when it routes it (`route`), the Recorder its exchange when it records it (`begin`)
and takes the entry out at the call's end (`end`). The failover relay finds a call's route by flow id, the monitor a
call's exchange by record id, the watchdog and shutdown walk the exchanges in flight: no scanning, no second map.

mitmweb's view reads a call's end after the Recorder took it out (its hooks run later): when a view is there it asks
the registry to keep ended entries (`keep_ended`) until it takes them (`take_ended`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anthropic_proxy.capture.exchange import Exchange
    from anthropic_proxy.providers.route import Route


@dataclass(slots=True)
class InFlightCall:
    """One call in flight: its route (calls routed by config) and its exchange (calls recorded), once they exist."""

    flow_id: str
    route: Route | None = None
    exchange: Exchange | None = None


class InFlight:
    """The calls in flight (see the module's docstring). Used from the event loop only."""

    def __init__(self) -> None:
        self._by_flow: dict[str, InFlightCall] = {}
        self._by_record: dict[str, InFlightCall] = {}  # the recorded ones
        self._ended: dict[str, InFlightCall] = {}  # by flow id, while `keep_ended`
        self.keep_ended = False

    def route(self, flow_id: str, route: Route) -> None:
        """The call of `flow_id` is routed by `route`."""
        self._entry(flow_id).route = route

    def begin(self, flow_id: str, exchange: Exchange) -> None:
        """The call of `flow_id` is recorded by `exchange`."""
        entry = self._entry(flow_id)
        entry.exchange = exchange
        self._by_record[exchange.capture.id] = entry

    def route_of(self, flow_id: str) -> Route | None:
        entry = self._by_flow.get(flow_id)
        return entry.route if entry is not None else None

    def exchange_of(self, flow_id: str) -> Exchange | None:
        entry = self._by_flow.get(flow_id)
        return entry.exchange if entry is not None else None

    def by_record(self, record_id: str) -> Exchange | None:
        entry = self._by_record.get(record_id)
        return entry.exchange if entry is not None else None

    def exchanges(self) -> list[Exchange]:
        """The exchanges in flight, as a list (the caller may end some as it goes)."""
        return [entry.exchange for entry in self._by_record.values() if entry.exchange is not None]

    def __len__(self) -> int:
        """How many recorded calls are in flight."""
        return len(self._by_record)

    def end(self, flow_id: str) -> InFlightCall | None:
        """Take the call of `flow_id` out (kept for `take_ended` while `keep_ended`)."""
        entry = self._by_flow.pop(flow_id, None)
        if entry is not None:
            if entry.exchange is not None:
                self._by_record.pop(entry.exchange.capture.id, None)
            if self.keep_ended:
                self._ended[flow_id] = entry
        return entry

    def take_ended(self, flow_id: str) -> InFlightCall | None:
        """An ended call kept for its late reader, once."""
        return self._ended.pop(flow_id, None)

    def _entry(self, flow_id: str) -> InFlightCall:
        entry = self._by_flow.get(flow_id)
        if entry is None:
            entry = self._by_flow[flow_id] = InFlightCall(flow_id)
        return entry
