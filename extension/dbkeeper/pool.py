"""The pooler (PgBouncer's pooler.c): which upstream connection a client session gets.

A session has exclusive use of one connection. Released connections are reset in the background
(off the next invocation's path) and checked for death without a round trip before reuse. At
most `pool_size` connections exist; a borrower beyond that waits up to the borrow timeout.

No timer is ever armed across a possible freeze: Lambda may stop the process at any moment and
thaw it hours later, when every old deadline has already passed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque

from pymysql.constants import CLIENT

from .config import Config
from .errors import PoolTimeout, UpstreamError
from .log import Logger
from .protocol.session_setup import ProvenSetup
from .upstream import UpstreamConnection

# Server errors worth retrying: the server is starting, full, or briefly refusing us.
_RETRYABLE_ERRNOS = frozenset((1040, 1203, 1205, 1226, 1290, 2002, 2003, 2006, 2013, 1927, 4031))
_BACKOFF_FIRST = 0.05
_BACKOFF_CAP = 1.0


class Pool:
    def __init__(self, config: Config, log: Logger):
        self._loop = asyncio.get_running_loop()  # made inside the loop; asking again costs a getpid()
        self._config = config
        self._log = log
        self._idle: deque[UpstreamConnection] = deque()
        self._members: set[UpstreamConnection] = set()
        self._opening = 0
        self._changed: asyncio.Future | None = None
        self._closing = False
        self._warm_task: asyncio.Task | None = None
        self._hurry: asyncio.Future | None = None  # set while an open waits out its backoff
        # the session-shaping flags the next connection is opened with: DBKEEPER_CLIENT_FLAGS at
        # first, then those of the last client that needed a connection of its own
        self.profile = sum(getattr(CLIENT, name) for name in config.client_flags)
        self.opened = 0  # connections opened over the sandbox's life
        self.proven_setup = ProvenSetup()  # setup statements the server accepted (relay.py holds them)
        self.last_error: UpstreamError | None = None

    # --- borrowing ----------------------------------------------------------------------------
    async def acquire(self, profile: int | None = None) -> UpstreamConnection:
        """A connection for one client session, quickly: it may still be resetting after its last
        session, which `make_ready` waits for while the client authenticates. `profile` None takes
        any idle connection."""
        loop = self._loop
        deadline = loop.time() + self._config.borrow_timeout
        while True:
            if self._closing:
                raise UpstreamError("dbkeeper is shutting down")
            while self._idle:
                connection = self._idle.popleft()
                if connection.closed:
                    self._discard(connection, "closed")
                    continue
                return connection
            if len(self._members) < self._config.pool_size and not self._opening:
                return await self._open(profile if profile is not None else self.profile, deadline, "borrow")
            remaining = deadline - loop.time()
            if remaining <= 0:
                if self._opening and self.last_error is not None:
                    raise self.last_error  # waiting on a connect that keeps failing: say why
                raise PoolTimeout(f"no upstream connection became free within "
                                  f"{self._config.borrow_timeout * 1000:.0f} ms "
                                  f"(DBKEEPER_POOL_SIZE={self._config.pool_size})")
            if self._hurry is not None and not self._hurry.done():
                self._hurry.set_result(None)  # a client is waiting: the open in backoff tries again now
            await self._wait_for_change(remaining)

    async def make_ready(self, connection: UpstreamConnection, profile: int) -> UpstreamConnection:
        """Wait for the connection's reset, then make sure it is alive and has the client's
        profile; otherwise replace it. The result is exclusively the caller's."""
        loop = self._loop
        deadline = loop.time() + self._config.borrow_timeout
        while True:
            reason = None
            if connection.resetting is not None:
                done, _ = await asyncio.wait((connection.resetting,), timeout=max(deadline - loop.time(), 0))
                if not done:
                    reason = "reset_timeout"
            if reason is None:
                if connection.closed or connection not in self._members:
                    reason = "closed"
                elif connection.looks_dead():
                    reason = "stale"  # e.g. the server's wait_timeout ran out while we were frozen
                elif connection.profile != profile:
                    reason = "profile_changed"
                else:
                    return connection
            self._discard(connection, reason)
            connection = await self.acquire(profile)

    def release(self, connection: UpstreamConnection, reusable: bool) -> None:
        connection.detach()
        if connection.resetting is not None and reusable and not self._closing:
            # the session ended before make_ready finished: it sent nothing, the reset goes on
            self._idle.append(connection)
        elif self._closing or not reusable or connection.closed:
            self._discard(connection, "not_reusable" if not reusable else "closed")
        else:
            connection.resetting = self._loop.create_task(self._reset(connection))
            self._idle.append(connection)
        self._notify()

    def give_back_clean(self, connection: UpstreamConnection) -> None:
        """Return a connection no session has used (nothing to reset)."""
        connection.detach()
        self._idle.appendleft(connection)
        self._notify()

    async def _reset(self, connection: UpstreamConnection) -> None:
        started = time.monotonic()
        try:
            await connection.reset()
        except UpstreamError as exc:
            self._log.warning("upstream_reset_failed", connection_id=connection.connection_id, error=str(exc))
            self._discard(connection, "reset_failed")
        else:
            if self._log.enabled("debug"):
                self._log.debug("upstream_reset", connection_id=connection.connection_id,
                                ms=round((time.monotonic() - started) * 1000, 3))
        finally:
            connection.resetting = None
            self._notify()

    # --- opening ------------------------------------------------------------------------------
    def warm(self) -> None:
        """Open the first connection in the background, overlapping the function's own INIT."""
        deadline = self._loop.time() + self._config.init_connect_budget
        self._warm_task = self._loop.create_task(self._warm(deadline))

    async def _warm(self, deadline: float) -> None:
        try:
            connection = await self._open(self.profile, deadline, "init")
        except UpstreamError as exc:
            self._log.warning("upstream_unavailable", error=str(exc), errno=exc.errno,
                              detail="will connect again when a client needs it")
            return
        self.give_back_clean(connection)

    async def _open(self, profile: int, deadline: float, reason: str) -> UpstreamConnection:
        loop = self._loop
        attempt = 0
        self._opening += 1
        try:
            while True:
                attempt += 1
                connection = UpstreamConnection(self._config, self._log, profile)
                self._members.add(connection)
                started = time.monotonic()
                try:
                    await connection.open()
                except UpstreamError as exc:
                    self._members.discard(connection)
                    self.last_error = exc
                    retryable = exc.errno is None or exc.errno in _RETRYABLE_ERRNOS
                    backoff = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** (attempt - 1)))
                    last = not retryable or self._closing or loop.time() + backoff >= deadline
                    self._log.warning("upstream_connect_failed", attempt=attempt, error=str(exc),
                                      errno=exc.errno, retrying=not last)
                    if last:
                        raise
                    await self._back_off(backoff)
                    continue
                if self._closing:
                    connection.quit()
                    self._members.discard(connection)
                    raise UpstreamError("dbkeeper is shutting down")
                self.opened += 1
                self.last_error = None
                self.profile = profile
                greeting = connection.greeting
                self._log.info("upstream_connected", reason=reason, attempt=attempt,
                               ms=round((time.monotonic() - started) * 1000, 3),
                               connection_id=greeting.connection_id, server_version=greeting.server_version,
                               tls=connection.secure, opened_total=self.opened)
                return connection
        finally:
            self._opening -= 1
            self._notify()

    async def _back_off(self, seconds: float) -> None:
        """Jittered backoff between connect attempts, cut short by a client that needs a connection:
        the database may be back, and the client must not wait out a backoff chosen before."""
        self._hurry = self._loop.create_future()
        try:
            await asyncio.wait((self._hurry,), timeout=seconds)
        finally:
            self._hurry = None

    # --- bookkeeping --------------------------------------------------------------------------
    def _discard(self, connection: UpstreamConnection, reason: str) -> None:
        if connection in self._idle:
            self._idle.remove(connection)
        if connection in self._members:
            self._members.discard(connection)
            self._log.info("upstream_closed", connection_id=connection.connection_id, reason=reason)
        connection.quit()

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    async def _wait_for_change(self, timeout: float) -> None:
        if self._changed is None:
            self._changed = self._loop.create_future()
        await asyncio.wait((self._changed,), timeout=timeout)

    async def close(self) -> int:
        """Close every connection with COM_QUIT. Returns how many were open."""
        self._closing = True
        if self._warm_task is not None:
            self._warm_task.cancel()
        members = list(self._members)
        for connection in members:
            if connection.resetting is not None:
                connection.resetting.cancel()
            connection.quit()
        self._members.clear()
        self._idle.clear()
        self._notify()
        return len(members)
