"""The pooler (PgBouncer's pooler.c + objects.c): which upstream connection a client session gets.

Every member has one named state, changed only by `_change_state` (PgBouncer's
`change_server_state()`), which keeps the state's collection, the member count the pool bound
applies to, and the waiters in step: a connection can't be counted without being reachable, and
can't be reachable after it is closed, whatever exception or cancellation interrupts its owner.

    OPENING ──> LENT ──> RESETTING ──> IDLE ──> LENT ...
       │          │          │           │
       └──────────┴──────────┴───────────┴──> CLOSED   (failed, discarded, orphaned, shut down)

A session has exclusive use of one connection. Released connections are reset in the background
(off the next invocation's path) and checked before reuse: for death without a round trip always,
with a COM_PING after a long pause (a freeze, a SnapStart restore). At most `pool_size` members
exist; a borrower beyond that waits up to the borrow timeout.

Connecting for a client is one attempt, never a retry loop: when the database refuses, the client
hears it as fast as it would directly ("never worse than no layer"). Only the INIT-time warm-up
retries, in the background.

No timer is ever armed across a possible freeze: Lambda may stop the process at any moment and
thaw it hours later, when every old deadline has already passed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from enum import Enum
from typing import TYPE_CHECKING, NotRequired, Protocol, TypedDict

from pymysql.constants import CLIENT

from .aws.metrics import Counters
from .config import Config
from .credentials import Credentials, SandboxIdentity, Target
from .errors import DbkeeperError, PoolTimeout, UpstreamError
from .log import Logger
from .protocol import messages
from .protocol.handshake import Greeting
from .protocol.session_setup import ProvenSetup
from .upstream import UpstreamConnection

if TYPE_CHECKING:
    from .aws.budget import Budget, Lease

_BACKOFF_FIRST = 0.05
_BACKOFF_CAP = 1.0
# A wall or boot clock that ran this much further than the monotonic clock since a connection was
# last used means the process was not running meanwhile in a way the monotonic clock hides (a
# restore from a snapshot): check the connection as after a long pause.
_CLOCK_JUMP = 5.0


class OrphanKiller(Protocol):
    """What the pool needs of the janitor (janitor.Janitor), which in turn borrows from the pool."""

    def kill_later(self, connection_id: int, reason: str) -> None: ...

    def take_pending(self) -> list[int]: ...

    async def kill_now(self, connection_ids: list[int], deadline: float) -> int: ...

    def close(self) -> None: ...


class IdleSession(Protocol):
    """A client session that may give its upstream connection up (client.ClientConnection)."""

    @property
    def idle_since(self) -> float | None: ...

    def give_up_upstream(self) -> UpstreamConnection | None: ...


class Demand:
    """Borrowers waiting while every connection is lent. A relay that has just passed a reply's
    end tells it (the session may now be idle and able to give its connection up): a waiter
    looks again at once instead of at the next change of a member's state."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self.waiting = 0
        self.reply_ended = notify


class CloseReport(TypedDict):
    """What Pool.close did, for the shutdown_complete log line."""
    upstreams_closed: int
    statements_killed: int
    leases_released: NotRequired[int]  # with a fleet budget


class MemberState(Enum):
    OPENING = "opening"
    IDLE = "idle"
    RESETTING = "resetting"
    LENT = "lent"
    CLOSED = "closed"


_LENDABLE = (MemberState.IDLE, MemberState.RESETTING)


class Pool:
    def __init__(self, config: Config, log: Logger, credentials: Credentials | None = None,
                 budget: Budget | None = None, counters: Counters | None = None,
                 identity: SandboxIdentity | None = None) -> None:
        self._loop = asyncio.get_running_loop()  # made inside the loop; asking again costs a getpid()
        self._config = config
        self._log = log
        # hooks (credentials.py, aws/): where a connect logs in, the fleet budget, the metrics' counters
        self._credentials = credentials or Credentials(config)
        self._budget = budget  # aws.budget.Budget or None: a lease around every upstream connection
        self._leases: dict[UpstreamConnection, Lease] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self.counters = counters or Counters()
        self.counters_session_ended: Callable[[], None] | None = None  # after every client session (metrics)
        self._identity = identity or SandboxIdentity(config.aws.function_name, config.aws.function_version)
        self._lendable: deque[UpstreamConnection] = deque()  # IDLE and RESETTING, oldest first
        self._members: set[UpstreamConnection] = set()       # every state but CLOSED
        self._changed: asyncio.Future[None] | None = None
        self._closing = False
        self._warm_task: asyncio.Task[None] | None = None
        self._warm_attempt: asyncio.Future[bool] | None = None  # done (True: connected) when the INIT-time attempt ends
        # janitor.Janitor: kills the statements of connections nobody waits for
        self.janitor: OrphanKiller | None = None
        # the client sessions that hold upstream connections (server.py): when every member is
        # lent, an idle one whose session can move gives its connection up (connection sharing)
        self.sessions: Callable[[], Iterable[IdleSession]] | None = None
        self.demand = Demand(self._notify)
        # the session-shaping flags the next connection is opened with: DBKEEPER_CLIENT_FLAGS at
        # first, then those of the last client that needed a connection of its own
        self.profile: int = sum(getattr(CLIENT, name) for name in config.client_flags)
        self.opened = 0  # connections opened over the sandbox's life
        self.proven_setup = ProvenSetup()  # setup statements the server accepted (relay.py holds them)
        self.identity: Greeting | None = None  # the server's greeting, for greeting clients
        self.last_error: UpstreamError | None = None
        self._slow_failure_at: float | None = None  # when an attempt last failed by timing out

    # --- states -------------------------------------------------------------------------------
    def _change_state(self, connection: UpstreamConnection, new: MemberState, reason: str = "") -> None:
        old = connection.pool_state
        if old is new or old is MemberState.CLOSED:
            return
        connection.pool_state = new
        if old in _LENDABLE:
            self._lendable.remove(connection)
        if new in _LENDABLE:
            self._lendable.append(connection)
        if new is MemberState.CLOSED:
            self._members.discard(connection)
            if old is not MemberState.OPENING:
                self.counters.closed(reason)
                self._log.info("upstream_closed", connection_id=connection.connection_id, reason=reason)
            lease = self._leases.pop(connection, None)
            if lease is not None:  # a task: it runs after the caller's COM_QUIT (or abort) is written
                self._give_back(lease)
        else:
            self._members.add(connection)
        if self._log.enabled("debug"):
            self._log.debug("upstream_state", connection_id=connection.connection_id, old=old.value if old else None,
                            new=new.value, reason=reason or None)
        self._notify()

    def _close(self, connection: UpstreamConnection, reason: str, *, orphaned: bool = False) -> None:
        """Take a member out of the pool for good. `orphaned`: a statement of a session that is
        gone may still run on it; the server would run it to the end (and hold its locks), so
        the janitor KILLs it."""
        if connection.pool_state is MemberState.CLOSED:
            return
        # a connection the server already dropped runs nothing: no KILL (nor its side connection)
        orphaned = orphaned and not connection.closed
        self._change_state(connection, MemberState.CLOSED, reason)
        if orphaned and self.janitor is not None and connection.greeting is not None:
            self.janitor.kill_later(connection.connection_id, reason)
            connection.abort()
        else:
            connection.quit()

    def discard(self, connection: UpstreamConnection, reason: str) -> None:
        """Close a LENT connection whose stream is in an unknown state (no KILL: nothing of a
        session runs there)."""
        connection.detach()
        if connection.pool_state is MemberState.LENT:
            self._close(connection, reason)

    def _next_lendable(self, prefer: int = 0) -> UpstreamConnection:
        """The preferred one if it is lendable, else the most recently used IDLE connection (the
        others age out under DBKEEPER_IDLE_TIMEOUT_S), else the one whose reset began first."""
        if prefer:
            for connection in self._lendable:
                if connection.connection_id == prefer:
                    return connection
        for connection in reversed(self._lendable):
            if connection.pool_state is MemberState.IDLE:
                return connection
        return self._lendable[0]

    def likely_connection_id(self) -> int:
        """For a greeting, before the session has a connection: the one it will most likely get."""
        return self._next_lendable().connection_id if self._lendable else 0

    def take_idle(self) -> UpstreamConnection | None:
        """An IDLE connection, LENT to the caller (the janitor runs its KILLs on one)."""
        for connection in self._lendable:
            if connection.pool_state is MemberState.IDLE and not connection.looks_dead():
                self._change_state(connection, MemberState.LENT)
                return connection
        return None

    # --- borrowing ----------------------------------------------------------------------------
    async def borrow(self, profile: int, prefer: int = 0) -> UpstreamConnection:
        """A ready connection with `profile`, exclusively the caller's (LENT). Raises PoolTimeout
        or UpstreamError, and then the caller holds nothing: whatever interrupts the borrow
        (an error, the client's task cancelled) leaves every member counted where it is.
        `prefer`: the connection id the client was greeted with, taken when it is still free (a
        driver's thread_id() then names the session's own connection, e.g. for KILL QUERY)."""
        started = self._loop.time()
        try:
            connection = await self._borrow(profile, prefer)
        except PoolTimeout:
            self.counters.rejected_too_many += 1  # the client gets 1040
            raise
        self.counters.waited((self._loop.time() - started) * 1000)
        return connection

    async def _borrow(self, profile: int, prefer: int) -> UpstreamConnection:
        loop = self._loop
        deadline = loop.time() + self._config.borrow_timeout
        while True:
            if self._closing:
                raise UpstreamError("dbkeeper is shutting down")
            if self._lendable:
                connection = self._next_lendable(prefer)
                resetting = connection.pool_state is MemberState.RESETTING
                self._change_state(connection, MemberState.LENT)
                try:
                    if await self._ready(connection, profile, deadline, resetting):
                        return connection
                except BaseException:
                    # the client went away meanwhile: a reset goes on in the pool's hands; a ping
                    # cut off leaves a reply in the stream, so that connection goes
                    if connection.pool_state is MemberState.LENT:
                        if connection.resetting is not None:
                            self._change_state(connection, MemberState.RESETTING)
                        else:
                            self._close(connection, "borrow_interrupted")
                    raise
                continue
            warming = self._warm_attempt
            if warming is not None and not warming.done():
                # the INIT-time connect is under way: its connection, or its error, is this client's
                # too (a second connect now would leave two where one is wanted)
                await asyncio.wait((warming,), timeout=max(deadline - loop.time(), 0))
                if self._lendable or warming.done() and warming.result():
                    continue
            if len(self._members) < self._config.pool_size:
                return await self._open_for_client(profile, deadline)
            if self._take_from_idle_session():
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                if self._budget is not None and self._budget.waiting:
                    raise self._budget.full()  # the open under way waits for a lease: say so
                raise PoolTimeout(f"no upstream connection became free within "
                                  f"{self._config.borrow_timeout * 1000:.0f} ms "
                                  f"(DBKEEPER_POOL_SIZE={self._config.pool_size})")
            self.demand.waiting += 1
            try:
                await self._wait_for_change(remaining)
            finally:
                self.demand.waiting -= 1

    def _take_from_idle_session(self) -> bool:
        """Connection sharing: the session idle longest among those that can move gives its
        connection up; it is reset and lent (the session gets one back at its next command).
        A session keeps its connection while nobody else needs one (this runs only when every
        member is lent), so a lone client's session never moves."""
        if self.sessions is None:
            return False
        idle = [(since, session) for session in self.sessions() if (since := session.idle_since) is not None]
        idle.sort(key=lambda item: item[0])
        for _, session in idle:
            connection = session.give_up_upstream()
            if connection is not None:
                self.release(connection, reusable=True, session_ended=False)
                return True
        return False

    async def _ready(self, connection: UpstreamConnection, profile: int, deadline: float, resetting: bool) -> bool:
        """Is this LENT connection fit for a new session? If not, it is closed (False)."""
        if resetting and connection.resetting is not None:
            # A reset is one round trip: one that takes longer than a whole connect is stuck behind
            # something (a statement the reset queued behind, a connection dead without a word)
            bound = min(deadline - self._loop.time(), self._config.connect_timeout)
            done, _ = await asyncio.wait((connection.resetting,), timeout=max(bound, 0))
            if not done:
                self._close(connection, "reset_timeout", orphaned=True)
                return False
        if connection.closed:
            reason = "closed"
        elif connection.looks_dead():
            reason = "stale"  # e.g. the server's wait_timeout ran out while we were frozen
        elif connection.profile != profile:
            reason = "profile_changed"
        elif connection.short_wait and time.monotonic() - connection.last_used[0] > connection.short_wait_s - 1.0:
            reason = "wait_timeout_near"  # the server drops it any moment, maybe under the client's command
        elif self._paused(connection) and not await connection.ping(self._config.connect_timeout):
            reason = "ping_failed"  # silently gone: a restore from a snapshot, a failover
        elif self._budget is not None and not await self._lease_still_held(connection):
            reason = "lease_lost"  # reaped while this sandbox was frozen: the server may have killed it
        else:
            return True
        self._close(connection, reason)
        return False

    def _paused(self, connection: UpstreamConnection) -> bool:
        """Idle longer than DBKEEPER_VERIFY_AFTER_IDLE_MS by any clock, or the clocks disagree."""
        mono, wall = connection.last_used
        mono_idle = time.monotonic() - mono
        wall_idle = time.time() - wall
        return max(mono_idle, wall_idle) > self._config.verify_after_idle or wall_idle - mono_idle > _CLOCK_JUMP \
            or mono_idle < 0 or wall_idle < -_CLOCK_JUMP

    async def _lease_still_held(self, connection: UpstreamConnection) -> bool:
        """The connection's budget lease, renewed when due; False when it was lost."""
        assert self._budget is not None
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

    def release(self, connection: UpstreamConnection, reusable: bool, session_ended: bool = True) -> None:
        """The session that borrowed `connection` is over, or (`session_ended` False) has moved
        off it. Not `reusable`: something may still run on it, or its stream is lost: closed,
        its statement killed."""
        if session_ended:
            self.counters.sessions += 1
            if self.counters_session_ended is not None:
                self.counters_session_ended()
        connection.detach()
        if connection.pool_state is not MemberState.LENT:
            return
        if self._closing or connection.closed:
            self._close(connection, "closed")
        elif not reusable:
            self._close(connection, "not_reusable", orphaned=True)
        else:
            self._change_state(connection, MemberState.RESETTING)
            connection.reset_started = time.monotonic()
            connection.resetting = self._loop.create_task(self._reset(connection))

    def give_back_clean(self, connection: UpstreamConnection) -> None:
        """Return a LENT connection no session has changed (nothing to reset)."""
        connection.detach()
        if connection.pool_state is MemberState.LENT:
            connection.mark_used()
            self._change_state(connection, MemberState.IDLE)

    async def _reset(self, connection: UpstreamConnection) -> None:
        started = time.monotonic()
        try:
            await connection.reset()
        except UpstreamError as exc:
            self._log.warning("upstream_reset_failed", connection_id=connection.connection_id, error=str(exc))
            self._close(connection, "reset_failed", orphaned=True)
        else:
            self.counters.resets += 1
            connection.mark_used()
            if connection.pool_state is MemberState.RESETTING:
                self._change_state(connection, MemberState.IDLE)
                self._close_long_idle()
            if self._log.enabled("debug"):
                self._log.debug("upstream_reset", connection_id=connection.connection_id,
                                ms=round((time.monotonic() - started) * 1000, 3))
        finally:
            connection.resetting = None
            self._notify()

    def _close_long_idle(self) -> None:
        """Connections a burst opened and nobody has needed since: closed once idle longer than
        DBKEEPER_IDLE_TIMEOUT_S, the most recently used one kept. Decided here, when a session
        ends, never by a timer (a timer would fire in a burst after every thaw)."""
        limit = self._config.idle_timeout
        if not limit:
            return
        now = time.monotonic()
        idle = [c for c in self._lendable if c.pool_state is MemberState.IDLE]
        if len(idle) < 2:
            return
        newest = max(idle, key=lambda c: c.last_used[0])
        for connection in idle:
            if connection is not newest and now - connection.last_used[0] > limit:
                self._close(connection, "idle_timeout")

    # --- opening ------------------------------------------------------------------------------
    def warm(self) -> None:
        """Open the first connection in the background, overlapping the function's own INIT."""
        deadline = self._loop.time() + self._config.init_connect_budget
        self._warm_task = self._loop.create_task(self._warm(deadline))

    async def _warm(self, deadline: float) -> None:
        attempt = 0
        while not self._closing and not self._members:
            attempt += 1
            attempt_done = self._warm_attempt = self._loop.create_future()
            try:
                connection = await self._open(self.profile, "init", attempt, deadline)
            except UpstreamError as exc:
                attempt_done.set_result(False)
                backoff = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** (attempt - 1)))
                if self._closing or self._loop.time() + backoff >= deadline:
                    self._log.warning("upstream_unavailable", error=str(exc), errno=exc.errno,
                                      detail="will connect again when a client needs it")
                    return
                await asyncio.sleep(backoff)
                continue
            except PoolTimeout as exc:  # the fleet budget stayed full for the whole INIT budget
                attempt_done.set_result(False)
                self._log.warning("upstream_unavailable", error=str(exc), errno=None,
                                  detail="will connect again when a client needs it")
                return
            except BaseException:
                attempt_done.set_result(False)
                raise
            try:
                await connection.shorten_wait()
            except UpstreamError as exc:
                attempt_done.set_result(False)
                self._log.warning("upstream_reset_failed", connection_id=connection.connection_id, error=str(exc))
                self.discard(connection, "reset_failed")
                return
            except BaseException:
                attempt_done.set_result(False)
                self.discard(connection, "shutdown")
                raise
            self.give_back_clean(connection)
            attempt_done.set_result(True)
            return

    async def ensure_identity(self) -> Greeting:
        """The server's greeting, connecting once if no connection ever succeeded (the first
        client after a SnapStart restore, or after an INIT that could not reach the database)."""
        warming = self._warm_attempt
        if warming is not None and not warming.done():
            # its connection is the one this client will most likely get: greet with its id
            await asyncio.wait((warming,), timeout=self._config.connect_timeout)
        if self.identity is None:
            connection = await self.borrow(self.profile)
            self.give_back_clean(connection)
        assert self.identity is not None
        return self.identity

    async def _open_for_client(self, profile: int, deadline: float) -> UpstreamConnection:
        slow_at = self._slow_failure_at
        if slow_at is not None and self.last_error is not None \
                and time.monotonic() - slow_at < self._config.connect_timeout:
            # the last attempt hung until its timeout a moment ago: don't make this client wait too
            raise self.last_error
        return await self._open(profile, "borrow", 1, deadline)

    async def _open(self, profile: int, reason: str, attempt: int, deadline: float) -> UpstreamConnection:
        """One connect attempt (with the fleet budget's lease, when there is one; `deadline`, loop
        time, bounds the wait for it). A refusal (1045) of credentials the provider can replace
        (a rotated secret) is retried at once with the new ones. The new member is LENT to the
        caller, or CLOSED on any exception."""
        connection = UpstreamConnection(self._config, self._log, profile)
        self._change_state(connection, MemberState.OPENING)
        started = time.monotonic()
        lease = None
        try:
            if self._budget is not None:
                try:
                    lease = await self._take_lease(deadline)
                finally:
                    started = time.monotonic()  # waiting for a lease (or for DynamoDB) is not a slow connect
            while True:
                target = await self._login()
                try:
                    await connection.open(target, self._identity.attributes(lease.token if lease else None))
                    break
                except UpstreamError as exc:
                    if exc.errno != messages.ER_ACCESS_DENIED_ERROR or not self._credentials.invalidate(target):
                        raise
                    self._log.warning("upstream_connect_failed", reason=reason, attempt=attempt, error=str(exc),
                                      errno=exc.errno, credentials=target.source, retrying=True)
                    replaced, connection = connection, UpstreamConnection(self._config, self._log, profile)
                    self._change_state(connection, MemberState.OPENING)
                    self._change_state(replaced, MemberState.CLOSED, "connect_failed")
            if self._closing:
                raise UpstreamError("dbkeeper is shutting down")
            if lease is not None:
                await self._budget_opened(lease, connection)
        except BaseException as exc:
            self._change_state(connection, MemberState.CLOSED, "connect_failed")
            connection.abort()
            if lease is not None:  # taken, but no connection came of it
                self._give_back(lease)
            if isinstance(exc, UpstreamError):
                self.last_error = exc
                took = time.monotonic() - started
                self._slow_failure_at = time.monotonic() if took >= self._config.connect_timeout * 0.9 else None
                self._log.warning("upstream_connect_failed", reason=reason, attempt=attempt, error=str(exc),
                                  errno=exc.errno, ms=round(took * 1000, 3))
            raise
        if lease is not None:
            self._leases[connection] = lease  # given back when the connection closes
        self._change_state(connection, MemberState.LENT)
        connection.mark_used()
        self.opened += 1
        self.counters.upstreams_opened += 1
        self.last_error = None
        self._slow_failure_at = None
        self.profile = profile
        greeting = self.identity = connection.greeting
        assert greeting is not None  # the connection is open: the server has greeted it
        self._log.info("upstream_connected", reason=reason, attempt=attempt,
                       ms=round((time.monotonic() - started) * 1000, 3),
                       connection_id=greeting.connection_id, server_version=greeting.server_version,
                       tls=connection.secure, opened_total=self.opened)
        return connection

    async def _login(self) -> Target:
        """The provider's target (settings, secret, IAM token); its failures are connect failures."""
        try:
            return await self._credentials.get()
        except UpstreamError:
            raise
        except DbkeeperError as exc:
            raise UpstreamError(f"credentials unavailable: {exc}") from exc

    async def side_login(self) -> tuple[Target, dict[str, str]]:
        """Target and connection attributes for a connection outside the pool (the janitor's KILLs)."""
        return await self._login(), self._identity.attributes()

    async def _take_lease(self, deadline: float) -> Lease:
        assert self._budget is not None
        try:
            return await self._budget.acquire(deadline)
        except PoolTimeout:
            raise
        except DbkeeperError as exc:  # DynamoDB unreachable: fail like an unreachable database
            raise UpstreamError(f"the fleet connection budget is unavailable: {exc}") from exc

    async def _budget_opened(self, lease: Lease, connection: UpstreamConnection) -> None:
        assert self._budget is not None
        try:
            await self._budget.opened(lease, connection)
        except DbkeeperError as exc:
            self._log.warning("budget_call_failed", operation="opened", error=str(exc))

    def _give_back(self, lease: Lease) -> None:
        assert self._budget is not None
        task = self._loop.create_task(self._budget.release(lease))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    # --- bookkeeping --------------------------------------------------------------------------
    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    async def _wait_for_change(self, timeout: float) -> None:
        if self._changed is None:
            self._changed = self._loop.create_future()
        await asyncio.wait((self._changed,), timeout=timeout)

    async def close(self, busy: set[UpstreamConnection], deadline: float) -> CloseReport:
        """Shut down: KILL what runs on `busy` connections (and on any still resetting), bounded
        by `deadline` (loop time), then COM_QUIT every connection. Returns counts for the log."""
        self._closing = True
        if self._warm_task is not None:
            self._warm_task.cancel()
        members = list(self._members)
        # A reset is one round trip: one still running after a connect's bound is queued behind
        # something a session left running. A younger one just ends before the COM_QUIT is read.
        stuck = time.monotonic() - self._config.connect_timeout
        doomed = [c for c in members if c in busy or c.pool_state is MemberState.OPENING
                  or c.pool_state is MemberState.RESETTING and c.reset_started < stuck]
        to_kill = [c.connection_id for c in doomed
                   if c.greeting is not None and c.pool_state is not MemberState.OPENING]
        for connection in members:
            if connection.resetting is not None:
                connection.resetting.cancel()  # its COM_QUIT (or KILL) below ends it on the server
        killed = 0
        if self.janitor is not None:
            to_kill += self.janitor.take_pending()
        if to_kill and self.janitor is not None:
            killed = await self.janitor.kill_now(to_kill, deadline)
        for connection in members:
            self._change_state(connection, MemberState.CLOSED, "shutdown")
            if connection in doomed:
                connection.abort()  # a COM_QUIT would be read only after the statement ends
            else:
                connection.quit()
        if self.janitor is not None:
            self.janitor.close()
        report: CloseReport = {"upstreams_closed": len(members), "statements_killed": killed}
        self.counters.killed_at_shutdown += killed
        if self._budget is not None:  # after every COM_QUIT: the server never holds more sessions than leases
            timeout = max(0.05, min(1.0, deadline - self._loop.time()))
            report["leases_released"] = await self._budget.close(timeout, pending=list(self._releases))
        return report
