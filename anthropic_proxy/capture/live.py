"""In-process publish/subscribe of record events for live views (the monitor's event stream).

Publishing is cheap and never blocks the proxy: a subscriber that cannot keep up loses events
(it is told so with a `lagged` event and can re-read the store) instead of slowing any client.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

EventKind = Literal["started", "progressed", "ended", "cleared", "lagged"]


class LiveBus:
    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def publish(self, kind: EventKind, payload: dict[str, Any]) -> None:
        event = {"type": kind, "record": payload}
        for queue in self._subscribers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                queue.get_nowait()
                queue.put_nowait({"type": "lagged", "record": {}})
