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

from .aws.metrics import Counters
from .config import Config
from .credentials import Credentials, SandboxIdentity
from .errors import DbkeeperError, PoolTimeout, UpstreamError
from .log import Logger
from .protocol.session_setup import ProvenSetup
from .upstream import UpstreamConnection

# Server errors worth retrying: the server is starting, full, or briefly refusing us.
_RETRYABLE_ERRNOS = frozenset((1040, 1203, 1205, 1226, 1290, 2002, 2003, 2006, 2013, 1927, 4031))
_BACKOFF_FIRST = 0.05
_BACKOFF_CAP = 1.0
ER_ACCESS_DENIED = 1045


class Pool:
    def __init__(self, config: Config, log: Logger, credentials: Credentials | None = None, budget=None,
                 counters: Counters | None = None, identity: SandboxIdentity | None = None):
        self._loop = asyncio.get_running_loop()  # made inside the loop; asking again costs a getpid()
        self._config = config
        self._log = log
        # hooks (credentials.py, aws/): where a connect logs in, the fleet budget, the metrics' counters
        self._credentials = credentials or Credentials(config)
        self._budget = budget  # aws.budget.Budget or None: a lease around every upstream connection
        self._leases: dict[UpstreamConnection, object] = {}
        self.counters = counters or Counters()
        self._identity = identity or SandboxIdentity(config.aws.function_name, config.aws.function_version)
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
        self.counters_session_ended = None  # called after every client session (metrics: no timer)
        self._releases: set[asyncio.Task] = set()
        self.leases_released = 0

    # --- borrowing ----------------------------------------------------------------------------
    async def acquire(self, profile: int | None = None) -> UpstreamConnection:
        """A connection for one client session, quickly: it may still be resetting after its last
        session, which `make_ready` waits for while the client authenticates. `profile` None takes
        any idle connection."""
        started = self._loop.time()
        try:
            connection = await self._acquire(profile)
        except PoolTimeout:
            self.counters.rejected_too_many += 1  # the client gets 1040
            raise
        self.counters.waited((self._loop.time() - started) * 1000)
        return connection

    async def _acquire(self, profile: int | None) -> UpstreamConnection:
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
                if self._budget is not None and self._budget.waiting:
                    raise self._budget.full()  # the open under way waits for a lease: say so
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
                elif self._budget is None or await self._lease_still_held(connection):
                    return connection
                else:
                    reason = "lease_lost"
            self._discard(connection, reason)
            connection = await self.acquire(profile)

    async def _lease_still_held(self, connection: UpstreamConnection) -> bool:
        """The connection's budget lease, renewed when due; False when it was lost (reaped while
        this sandbox was frozen: the server may have killed the session already)."""
        try:
            lease = await self._budget.check(self._leases.get(connection), connection)
        except DbkeeperError as exc:  # DynamoDB unreachable: keep serving on the lease we have
            self._log.warning("budget_call_failed", operation="renew", error=str(exc))
            return True
        if lease is None:
            self._leases.pop(connection, None)
            return False
        self._leases[connection] = lease
        return True

    def release(self, connection: UpstreamConnection, reusable: bool) -> None:
        self.counters.sessions += 1
        if self.counters_session_ended is not None:
            self.counters_session_ended()
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
            self.counters.resets += 1
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
        lease = None
        try:
            if self._budget is not None:
                lease = await self._take_lease(deadline)
            while True:
                attempt += 1
                connection = UpstreamConnection(self._config, self._log, profile)
                self._members.add(connection)
                started = time.monotonic()
                target = None
                try:
                    target = await self._login()
                    await connection.open(target, self._identity.attributes(lease.token if lease else None))
                except UpstreamError as exc:
                    self._members.discard(connection)
                    self.last_error = exc
                    if exc.errno == ER_ACCESS_DENIED and target is not None and self._credentials.invalidate(target):
                        # the password was rotated: the provider has another one to try, now
                        self._log.warning("upstream_connect_failed", attempt=attempt, error=str(exc),
                                          errno=exc.errno, retrying=True, credentials=target.source)
                        continue
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
                if lease is not None:
                    self._leases[connection] = lease
                    await self._budget_opened(lease, connection)
                    lease = None  # the connection's now: given back when it closes
                self.opened += 1
                self.counters.upstreams_opened += 1
                self.last_error = None
                self.profile = profile
                greeting = connection.greeting
                self._log.info("upstream_connected", reason=reason, attempt=attempt,
                               ms=round((time.monotonic() - started) * 1000, 3),
                               connection_id=greeting.connection_id, server_version=greeting.server_version,
                               tls=connection.secure, opened_total=self.opened)
                return connection
        finally:
            if lease is not None:  # taken, but no connection came of it
                self._give_back(lease)
            self._opening -= 1
            self._notify()

    async def _login(self):
        """The provider's target (settings, secret, IAM token); its failures are connect failures."""
        try:
            return await self._credentials.get()
        except UpstreamError:
            raise
        except DbkeeperError as exc:
            raise UpstreamError(f"credentials unavailable: {exc}") from exc

    async def _take_lease(self, deadline: float):
        try:
            return await self._budget.acquire(deadline)
        except PoolTimeout:
            raise
        except DbkeeperError as exc:  # DynamoDB unreachable: fail like an unreachable database
            raise UpstreamError(f"the fleet connection budget is unavailable: {exc}") from exc

    async def _budget_opened(self, lease, connection: UpstreamConnection) -> None:
        try:
            await self._budget.opened(lease, connection)
        except DbkeeperError as exc:
            self._log.warning("budget_call_failed", operation="opened", error=str(exc))

    def _give_back(self, lease) -> None:
        task = self._loop.create_task(self._budget.release(lease))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

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
            self.counters.closed(reason)
            self._log.info("upstream_closed", connection_id=connection.connection_id, reason=reason)
        connection.quit()
        lease = self._leases.pop(connection, None)
        if lease is not None:  # after the COM_QUIT: the server never holds more sessions than leases
            self._give_back(lease)

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
            self.counters.closed("shutdown")
        self._members.clear()
        self._idle.clear()
        self._notify()
        if self._budget is not None:  # after every COM_QUIT, within SHUTDOWN's budget
            self._leases.clear()
            self.leases_released = await self._budget.close(timeout=1.0, pending=list(self._releases))
        return len(members)
