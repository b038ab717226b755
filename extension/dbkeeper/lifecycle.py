"""The extension's life after registering: serve until SHUTDOWN, then close everything.

A small event loop over typed events (the Rust lambda-extension crate's shape). Subscribed to
SHUTDOWN only: INVOKE would add latency to every invocation and nothing here needs it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from .config import Config
from .event_pump import EventPump
from .events import InvokeEvent, ShutdownEvent
from .listeners import BoundListeners
from .log import Logger
from .server import Server

_SIGTERM_GRACE_MS = 2000
# Stop killing statements this long before the deadline: the COM_QUITs, the log line and the exit
# still have to happen before Lambda's SIGKILL.
_SHUTDOWN_MARGIN_S = 0.3


def run(config: Config, log: Logger, listeners: BoundListeners, events: EventPump) -> int:
    loop_factory = _loop_factory(config, log)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(config, log, listeners, events))


async def _serve(config: Config, log: Logger, listeners: BoundListeners, events: EventPump) -> int:
    loop = asyncio.get_running_loop()
    server = Server(config, log, listeners)
    await server.start()
    loop.add_signal_handler(signal.SIGTERM, lambda: events.inject(
        ShutdownEvent(reason="SIGTERM", deadline_ms=int(time.time() * 1000) + _SIGTERM_GRACE_MS)))
    try:
        while True:
            event = await events.next()
            if isinstance(event, InvokeEvent):
                continue  # not subscribed; nothing to do per invocation even if one comes
            if isinstance(event, ShutdownEvent):
                received = time.time()
                deadline = loop.time() + (event.deadline_ms / 1000 - received) - _SHUTDOWN_MARGIN_S
                report = await server.shutdown(deadline)
                await asyncio.sleep(0)  # let the transports we closed run their close callbacks
                log.info("shutdown_complete", reason=event.reason, upstreams_opened=server.pool.opened,
                         ms_left_before_deadline=round(event.deadline_ms - time.time() * 1000, 1),
                         ms_since_event=round((time.time() - received) * 1000, 3), **report)
                return 0
    except BaseException:
        # Lambda's API failed us (or a bug): still say goodbye to the database before the exit.
        await server.shutdown(loop.time() + 1.0)
        raise


def _loop_factory(config: Config, log: Logger) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if config.event_loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError as exc:
            if config.event_loop == "uvloop":
                log.warning("uvloop_unavailable", error=str(exc), detail="using asyncio")
            return None
        return uvloop.new_event_loop
    return None
