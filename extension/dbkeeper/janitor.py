"""The janitor: stops statements that nobody waits for any more (PgBouncer forwards a client's
cancel request; here the client is gone, so dbkeeper sends the KILL itself).

A statement keeps running on the server after its client is gone: MariaDB reads a COM_QUIT only
after the statement ends, and notices a closed socket only when a statement checks for it (SLEEP
after ~5 s; most never do, and an UPDATE runs to the end holding its locks). Without the layer the
function's own socket would have died with it; through dbkeeper the upstream lives on, so dbkeeper
is the one component that knows the statement is orphaned: when a session ends mid-reply (the
function killed at a timeout, its socket closed) and at SHUTDOWN.

`KILL CONNECTION <id>` goes over an idle pooled connection when there is one, else over a side
connection opened for the purpose and closed right after (not counted against the pool size: it
exists for one round trip, while the connection it kills is on its way out).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .config import Config
from .credentials import Target
from .errors import UpstreamError
from .log import Logger
from .upstream import UpstreamConnection


class IdleConnections(Protocol):
    """What the janitor needs of the pool (pool.Pool): an idle connection to send its KILLs over,
    and a way to hand it back."""

    @property
    def profile(self) -> int: ...

    def take_idle(self) -> UpstreamConnection | None: ...

    def give_back_clean(self, connection: UpstreamConnection) -> None: ...

    def discard(self, connection: UpstreamConnection, reason: str) -> None: ...

    async def side_login(self) -> tuple[Target, dict[str, str]]: ...


class Janitor:
    def __init__(self, config: Config, log: Logger, pool: IdleConnections):
        self._config = config
        self._log = log
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._queued: list[int] = []
        self._in_progress: list[int] = []  # the batch the queue's task is killing now
        self._task: asyncio.Task[None] | None = None

    def kill_later(self, connection_id: int, reason: str) -> None:
        """Queue a KILL; one task works the queue, so a burst of broken sessions costs one side
        connection at a time."""
        self._log.info("orphan_kill_queued", connection_id=connection_id, reason=reason)
        self._queued.append(connection_id)
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        while self._queued:
            self._in_progress, self._queued = self._queued, []
            await self.kill_now(self._in_progress, self._loop.time() + 2 * self._config.connect_timeout)
            self._in_progress = []

    def take_pending(self) -> list[int]:
        """At SHUTDOWN: every id queued or being killed, taken over by the caller (a SHUTDOWN
        right after a client vanished must not drop its KILL with the queue; a second KILL of the
        same id is answered "unknown thread" and does no harm)."""
        ids = self._in_progress + self._queued
        self._in_progress, self._queued = [], []
        if self._task is not None and not self._task.done():
            self._task.cancel()
        return ids

    async def kill_now(self, connection_ids: list[int], deadline: float) -> int:
        """KILL every id before `deadline` (loop time) if at all possible. Returns how many the
        server killed. Never raises: there is nothing more to do for a statement we cannot stop."""
        remaining = deadline - self._loop.time()
        if remaining <= 0:
            self._log.warning("kill_skipped", connection_ids=connection_ids, reason="no time left")
            return 0
        connection = self._pool.take_idle()
        borrowed = connection is not None
        try:
            if connection is None:
                connection = UpstreamConnection(self._config, self._log, self._pool.profile)
                await asyncio.wait_for(connection.open(*await self._pool.side_login()), remaining)
            killed = await asyncio.wait_for(connection.kill(connection_ids), max(deadline - self._loop.time(), 0.001))
        except (TimeoutError, UpstreamError) as exc:
            self._log.warning("kill_failed", connection_ids=connection_ids, error=str(exc) or "timed out")
            if connection is not None:
                if borrowed:
                    self._pool.discard(connection, "kill_failed")
                else:
                    connection.abort()
            return 0
        except asyncio.CancelledError:
            if connection is not None and not borrowed:
                connection.abort()
            raise
        if borrowed:
            self._pool.give_back_clean(connection)
        else:
            connection.quit()
        self._log.info("orphans_killed", connection_ids=connection_ids, killed=killed)
        return killed

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
