"""Lambda events, delivered into the event loop.

`event/next` blocks (for hours, across freezes), so a daemon thread waits on it. The thread starts
right after registering, before asyncio is even imported, so dbkeeper's part of INIT ends as early
as it can; events that arrive before the loop runs wait in the queue.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

from .errors import ExtensionsApiError
from .events import InvokeEvent, LifecycleEvent
from .extensions_api import ExtensionsApi

if TYPE_CHECKING:  # asyncio is imported only once the loop runs (see above)
    import asyncio


class EventPump:
    def __init__(self, api: ExtensionsApi):
        self._api = api
        self._items: deque[LifecycleEvent | ExtensionsApiError] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None

    def start(self) -> None:
        threading.Thread(target=self._pump, name="dbkeeper-events", daemon=True).start()

    def _pump(self) -> None:
        while True:
            item: LifecycleEvent | ExtensionsApiError
            try:
                item = self._api.next_event()
            except ExtensionsApiError as exc:
                item = exc
            self._deliver(item)
            if not isinstance(item, InvokeEvent):
                return  # SHUTDOWN or a broken API: nothing more will come

    def _deliver(self, item: LifecycleEvent | ExtensionsApiError) -> None:
        with self._lock:
            self._items.append(item)
            loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._wake)

    def inject(self, event: LifecycleEvent) -> None:
        """Queue an event from the loop's own thread (SIGTERM becomes a SHUTDOWN)."""
        with self._lock:
            self._items.append(event)
        self._wake()

    async def next(self) -> LifecycleEvent:
        import asyncio

        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                self._loop = loop
                if self._items:
                    item = self._items.popleft()
                    if isinstance(item, ExtensionsApiError):
                        raise item
                    return item
                self._waiter = loop.create_future()
            await self._waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
