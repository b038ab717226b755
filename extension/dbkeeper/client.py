"""Client side: one connection from the function (PgBouncer's client.c).

Plays the MySQL server: greets with the upstream's own identity (minus TLS and compression,
which a loopback hop does not need), verifies the client's password, borrows an upstream
connection, makes its session match what the client asked for, then hands both to a Relay.
Commands dbkeeper must answer itself (COM_QUIT, COM_RESET_CONNECTION, COM_CHANGE_USER) come back
here. Whatever a client does, only that client is affected.

The session outlives its upstream connection when it can move (protocol/session.py): if the
connection dies while the client is idle (KILL, a freeze past wait_timeout, a database restart or
failover), or another client needs it and every pooled one is lent (connection sharing), the
client is DETACHED; its next command gets a connection again, its state replayed first.

    HANDSHAKE ──> ATTACHED <──> DETACHED          (ANSWERING: a command dbkeeper answers itself)
                     │  ^
                     v  │
                  ANSWERING                       any state ──> CLOSED
"""

from __future__ import annotations

import asyncio
import time
from enum import Enum
from typing import cast

from pymysql.constants import CLIENT, COMMAND, SERVER_STATUS

from .config import Config
from .credentials import LocalAuth
from .errors import DbkeeperError, PoolTimeout, ProtocolError, UpstreamError
from .log import Logger
from .pool import Pool
from .protocol import auth, handshake, messages
from .protocol.commands import COM_RESET_CONNECTION
from .protocol.packets import HEADER_SIZE, Packet, PacketBuffer, frame, read_nul_bytes
from .protocol.session import TRANSIENT, Pin, SessionModel
from .relay import Relay
from .upstream import PROFILE_BITS, UTF8MB4_GENERAL_CI, SessionSettings, UpstreamConnection

# What the local hop offers: everything a client may need, but no TLS, compression, or features
# that would change the framing the relay follows (DEPRECATE_EOF, session tracking). LOCAL_FILES
# is offered and, being in the session profile, reaches the upstream only for a client that set it
# itself: that client's driver reads the file and sends it through; dbkeeper never opens one.
_OFFERED = (CLIENT.LONG_PASSWORD | CLIENT.FOUND_ROWS | CLIENT.LONG_FLAG | CLIENT.CONNECT_WITH_DB
            | CLIENT.NO_SCHEMA | CLIENT.ODBC | CLIENT.LOCAL_FILES | CLIENT.IGNORE_SPACE | CLIENT.PROTOCOL_41
            | CLIENT.INTERACTIVE
            | CLIENT.IGNORE_SIGPIPE | CLIENT.TRANSACTIONS | CLIENT.SECURE_CONNECTION | CLIENT.MULTI_STATEMENTS
            | CLIENT.MULTI_RESULTS | CLIENT.PS_MULTI_RESULTS | CLIENT.PLUGIN_AUTH | CLIENT.CONNECT_ATTRS
            | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA)
_MAX_CONTROL_PACKET = 1 << 16
# A client quiet this long may have been frozen: its upstream connection is checked (one poll()
# of its socket) before the next command goes on it, since the close the server sent meanwhile may
# not have been read yet when the client's command is (both wait for the loop after a thaw). A
# freeze can be a few milliseconds (the e2e harness kills an idle upstream inside one): 10 ms
# missed some, 1 ms does not. A command that follows its previous one closer than this is not
# checked: that costs nothing in a busy session.
_QUIET = 0.001
_CLOCK_JUMP = 5.0  # as in pool.py: wall time ran ahead of the monotonic clock (a restore)
_WAIT_MARGIN = 1.0  # a connection idle this close to its short wait_timeout is not used again


class ClientState(Enum):
    HANDSHAKE = "handshake"
    ATTACHED = "attached"    # a relay joins the session to its upstream connection
    DETACHED = "detached"    # the session has no upstream connection; its next command gets one
    MOVING = "moving"        # getting one (or checking the old one after a pause)
    ANSWERING = "answering"  # a command dbkeeper answers itself
    CLOSED = "closed"


class PacketsOutOfOrder(ProtocolError):
    """A client packet carried the wrong sequence id."""


class ClientConnection(asyncio.Protocol):
    # Slots: the hot path reads attributes on every packet; past 30 instance attributes CPython
    # gives up its fast instance-attribute reads (relay.py measured it).
    __slots__ = ("_active_at", "_active_wall", "_carried", "_closed", "_config", "_deadline", "_inbox",
                 "_intercepted", "_local_auth", "_log", "_loop", "_move_reason", "_moved_from", "_observed",
                 "_over_unix", "_packets", "_pending", "_pool", "_profile", "_registry", "_relay", "_scramble",
                 "_session", "_settings", "_started", "_stash", "_task", "_transient_reported", "_trusted",
                 "_upstream", "_upstream_in_use", "_waiter", "state", "transport")

    def __init__(self, config: Config, pool: Pool, log: Logger, registry: set[ClientConnection], *,
                 local_auth: LocalAuth, over_unix: bool, pending: dict[ClientConnection, None]) -> None:
        self._config = config
        self._local_auth = local_auth
        self._over_unix = over_unix
        self._pool = pool
        self._log = log
        self._registry = registry
        self._pending = pending  # clients in their handshake, oldest first (shared by the server)
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop  # set by connection_made, before anything uses it
        self._packets = PacketBuffer(max_packet=_MAX_CONTROL_PACKET)
        self._inbox: list[Packet] = []
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._relay: Relay | None = None
        self._upstream: UpstreamConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._intercepted: bytes | None = None
        self._scramble = b""
        self._settings: SessionSettings | None = None
        self._trusted = False
        self._started = 0.0
        self._upstream_in_use = False  # a command of dbkeeper's own is in flight upstream
        self._deadline: asyncio.TimerHandle | None = None
        self.state = ClientState.HANDSHAKE
        self._session: SessionModel | None = None
        self._profile = 0
        self._carried: tuple[list[bytes], int] | None = None  # for the relay of the next upstream
        self._stash = b""  # what the client sent while it had no relay (DETACHED, MOVING)
        self._active_at = 0.0  # monotonic and wall time the client last sent something
        self._active_wall = 0.0
        self._moved_from = 0  # the connection the session left, and why (for the session_moved line)
        self._move_reason = ""
        self._transient_reported: frozenset[Pin] = frozenset()
        self._observed: asyncio.Future[tuple[int, int] | None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        # a stream connection's transport (asyncio's or uvloop's); the cast is for the type checker only
        self.transport = cast(asyncio.Transport, transport)
        self._registry.add(self)
        self._pending[self] = None
        if len(self._pending) > self._config.max_pending_clients:
            # A flood of clients that never finish their handshake must not lock out real ones:
            # the oldest unfinished handshake goes (a real client finishes in well under 1 ms).
            oldest = next(iter(self._pending))
            oldest._reject(messages.ER_CON_COUNT_ERROR, "08004",
                           f"Too many connections ({len(self._pending) - 1} clients still in their handshake)",
                           "client_handshake_evicted", sequence_id=0)
            self._pending.pop(oldest, None)
        self._started = time.monotonic()
        self._trusted = self._config.trust_unix_socket and self._over_unix
        self._arm_deadline()
        self._task = self._loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        relay = self._relay
        if relay is not None:
            now = time.monotonic()
            if now - self._active_at > _QUIET and self._check_upstream(now, data):
                return
            self._active_at = now
            rest = relay.client_data(data)
            if rest is not None:
                self._intercept(rest)
            return
        if self.state is ClientState.DETACHED or self.state is ClientState.MOVING:
            self._stash += data
            if self.state is ClientState.DETACHED:
                self._move()
            return
        try:
            self._inbox += self._packets.feed(data)
        except ProtocolError as exc:
            self._reject(messages.ER_HANDSHAKE_ERROR, "08S01", f"Bad handshake ({exc})", "client_protocol_error")
            return
        self._wake()

    def eof_received(self) -> bool:
        return False  # a half-closed client is gone: close both directions

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.state = ClientState.CLOSED
        self._registry.discard(self)
        self._pending.pop(self, None)
        self._disarm_deadline()
        self._wake()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._end_session("client_closed")

    def pause_writing(self) -> None:
        if self._relay is not None:
            self._relay.client_congested(True)

    def resume_writing(self) -> None:
        if self._relay is not None:
            self._relay.client_congested(False)

    def upstream_busy(self) -> UpstreamConnection | None:
        """At shutdown: this session's upstream, if a statement or reply may still be under way on it."""
        upstream = self._upstream
        if upstream is None:
            return None
        relay = self._relay
        if relay is None:
            return upstream if self._upstream_in_use else None
        return None if relay.settle() else upstream

    # --- called by the Relay ------------------------------------------------------------------
    def set_reading(self, reading: bool) -> None:
        transport = self.transport
        if not self._closed:
            assert transport is not None  # connected: a relay exists
            (transport.resume_reading if reading else transport.pause_reading)()

    def setup_failed(self, reply: bytes) -> None:
        fields: dict[str, object] = {}
        if messages.is_err(reply):
            error = messages.parse_err(reply)
            fields = {"errno": error.errno, "error": error.message}
        assert self._upstream is not None  # called by the session's relay
        self._log.warning("session_setup_failed", connection_id=self._upstream.connection_id, **fields)
        self.close()

    def upstream_lost(self) -> None:
        if self.state is not ClientState.ATTACHED:
            return  # MOVING: the check of this connection under way sees it gone
        relay, upstream = self._relay, self._upstream
        assert relay is not None and upstream is not None  # called by the session's relay
        blockers = relay.blockers(connection_lost=True)
        if blockers is not None and not blockers:
            # idle and movable: its next command gets another connection, state replayed
            self._log.info("upstream_lost_while_idle", connection_id=upstream.connection_id)
            self._detach(reusable=False)
            return
        # The client sees the connection drop, as it would if the server died (CR 2013 on its side).
        self._log.warning("upstream_lost_mid_session", connection_id=upstream.connection_id,
                          pinned=sorted(pin.value for pin in blockers) if blockers else None)
        self.close()

    def session_pinned(self, pins: list[Pin]) -> None:
        for pin in pins:
            self._pool.counters.pinned(pin.value)
        if self._log.enabled("debug"):
            for pin in pins:
                self._log.debug("session_pinned", reason=pin.value,
                                connection_id=self._upstream.connection_id if self._upstream else None)

    def _report_transient(self, blockers: set[Pin]) -> None:
        """A session another client waits for, held by an open transaction or its last
        statement's warnings: said once per stretch (the lasting pins were said when they began)."""
        transient = frozenset(pin for pin in blockers if pin in TRANSIENT)
        if transient and transient != self._transient_reported:
            self.session_pinned(sorted(transient - self._transient_reported, key=lambda pin: pin.value))
        self._transient_reported = transient

    # --- moving a session between upstream connections ---------------------------------------
    @property
    def idle_since(self) -> float | None:
        """For connection sharing (pool.py): when this ATTACHED client last sent something."""
        return self._active_at if self.state is ClientState.ATTACHED and not self._upstream_in_use else None

    def give_up_upstream(self) -> UpstreamConnection | None:
        """Connection sharing: hand the upstream connection to the pool if the session is idle and
        can move (the pool resets it and lends it); the session gets another at its next command."""
        relay, upstream = self._relay, self._upstream
        if relay is None or upstream is None or self.state is not ClientState.ATTACHED:
            return None
        # (bytes waiting on an idle connection mean it is gone, unless a reply of ours is due)
        if not relay.leftover()[0] and upstream.looks_dead():
            return None
        blockers = relay.blockers()
        if blockers is None or blockers:
            if blockers:
                self._report_transient(blockers)
            return None
        self._let_go("shared", reusable=True)
        # what the session's next statement could still ask about the last one, read off the
        # connection before its reset (in the same round trip), made so again after the move
        observed: asyncio.Future[tuple[int, int] | None] = self._loop.create_future()
        self._observed = observed

        def deliver(counts: tuple[int, int] | None) -> None:
            if not observed.done():
                observed.set_result(counts)

        upstream.observe_for = deliver
        return upstream

    def _detach(self, reusable: bool, reason: str = "upstream_lost") -> None:
        """The session leaves its connection (dead, or about to be dropped by the server): back to
        the pool, reset if `reusable`, else closed."""
        self._pool.release(self._let_go(reason, reusable), reusable=reusable, session_ended=False)

    def _let_go(self, reason: str, reusable: bool) -> UpstreamConnection:
        """ATTACHED -> DETACHED: what the relay still holds for the session goes with it; a
        connection that will be reused gets the replies to the relay's own statements."""
        relay, upstream = self._relay, self._upstream
        assert relay is not None and upstream is not None
        self._carried = relay.carry()
        self._relay = None
        self._upstream = None
        self.state = ClientState.DETACHED
        self._moved_from = upstream.connection_id
        self._move_reason = reason
        if reusable:
            self._hand_back_leftover(relay, upstream)
        return upstream

    def _check_upstream(self, now: float, data: bytes) -> bool:
        """After a quiet spell: is the upstream connection still there? (After a thaw the close
        the server sent during the freeze and the client's command wait for the loop together:
        one poll() of the socket tells, before the command goes on a dead connection.) If it is
        gone, or must be asked after a long pause, or is close to its short wait_timeout, the
        command waits (True) while that is settled."""
        upstream, relay = self._upstream, self._relay
        assert upstream is not None and relay is not None  # ATTACHED
        wall = time.time()
        quiet, quiet_wall = now - self._active_at, wall - self._active_wall
        self._active_at, self._active_wall = now, wall
        if relay.leftover()[0]:
            return False  # a reply of dbkeeper's own is on its way: bytes waiting are no sign of death
        dead = upstream.looks_dead()
        if not dead and upstream.short_wait and max(quiet, quiet_wall) > upstream.short_wait_s - _WAIT_MARGIN:
            # the server is about to drop it (its short wait_timeout), maybe while this command is on
            # its way: the session (movable, or the wait would be the server's own) moves first
            blockers = relay.blockers(connection_lost=True)
            if blockers is not None and not blockers:
                self._stash = data
                assert self.transport is not None
                self.transport.pause_reading()
                self._detach(reusable=True, reason="wait_timeout_near")
                self._move()
                return True
        paused = quiet > self._config.verify_after_idle or quiet_wall - quiet > _CLOCK_JUMP or quiet_wall < -_CLOCK_JUMP
        if not dead and not paused:
            return False
        self._stash = data
        assert self.transport is not None
        self.transport.pause_reading()
        self.state = ClientState.MOVING
        self._task = self._loop.create_task(self._verify_or_move(dead))
        return True

    async def _verify_or_move(self, dead: bool) -> None:
        relay, upstream = self._relay, self._upstream
        assert relay is not None and upstream is not None and self.transport is not None
        if not dead and relay.leftover()[0]:
            self._resume_relay()  # a reply of ours is on its way: the connection answers, alive
            return
        if not dead:
            upstream.detach()  # the ping's reply comes to the connection, not the relay
            dead = not await upstream.ping(self._config.connect_timeout)
            if self._closed:
                return
            if not dead:
                upstream.attach(relay)
                self._resume_relay()
                return
        blockers = relay.blockers(connection_lost=True)
        if blockers is None or blockers:
            self._log.warning("upstream_lost_mid_session", connection_id=upstream.connection_id,
                              pinned=sorted(pin.value for pin in blockers) if blockers else None)
            self.close()
            return
        self._log.info("upstream_lost_while_idle", connection_id=upstream.connection_id)
        self._detach(reusable=False)
        self.state = ClientState.MOVING
        await self._reattach()

    def _move(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()
        self.state = ClientState.MOVING
        self._task = self._loop.create_task(self._reattach())

    async def _reattach(self) -> None:
        """A DETACHED session's next command came: get a connection, prepare it for the session's
        handshake settings, replay what the session set, then relay as before."""
        settings, session = self._settings, self._session
        assert settings is not None and session is not None  # set by the handshake
        started = time.monotonic()
        try:
            upstream = await self._pool.borrow(self._profile)
        except (PoolTimeout, UpstreamError) as exc:
            self._answer_stash_with(exc)
            return
        except asyncio.CancelledError:
            return
        self._upstream = upstream
        self._upstream_in_use = True
        observed, self._observed = self._observed, None
        try:
            counts = None
            if observed is not None:  # read during the old connection's reset, done by now
                await asyncio.wait((observed,), timeout=self._config.connect_timeout)
                counts = observed.result() if observed.done() else None
            if session.sets_own_wait_timeout:
                upstream.restore_wait_timeout()  # the replay sets the session's own
            error = await upstream.prepare(settings)
            replayed = 0
            if error is None:
                for command in session.replay(settings.database, counts):
                    reply = await upstream.statement(command)
                    if messages.is_err(reply):
                        error = reply
                        break
                    replayed += 1
        except asyncio.CancelledError:
            return
        except DbkeeperError as exc:
            self._log.warning("session_move_failed", error=str(exc))
            self.close()
            return
        self._upstream_in_use = False
        if error is not None:
            # the session's state cannot be rebuilt here: it ends, as it would have directly
            fields = messages.parse_err(error) if messages.is_err(error) else None
            self._log.warning("session_move_failed", connection_id=upstream.connection_id,
                              errno=fields.errno if fields else None, error=fields.message if fields else None)
            self.close()
            return
        if self._closed:
            return
        if not upstream.tracked:
            session.pins.add(Pin.UNTRACKED)
        reason = self._move_reason
        self._pool.counters.moved(reason)
        if self._log.enabled("debug"):
            self._log.debug("session_moved", reason=reason, from_connection_id=self._moved_from,
                            to_connection_id=upstream.connection_id, replayed=replayed,
                            ms=round((time.monotonic() - started) * 1000, 3))
        carried, self._carried = self._carried, None
        self._attach_relay(upstream, session, fresh=False, carried=carried)
        self._resume_relay()

    def _attach_relay(self, upstream: UpstreamConnection, session: SessionModel, fresh: bool,
                      carried: tuple[list[bytes], int] | None = None) -> None:
        """A relay between this client and `upstream` for `session` (`fresh`: a new session;
        else a moved one, with the setup statements it was answered but has not run, `carried`).
        The connection's wait_timeout follows the session (relay.py) only where a dead connection
        can be hidden (the server tracks session state, a short wait_timeout is set) and the
        session did not set its own; otherwise the server's own is restored in front of the first
        command."""
        follow = upstream.tracked and self._config.upstream_wait_timeout > 0 and not session.sets_own_wait_timeout
        hold = self._config.hold_setup and (fresh or carried is not None)
        self._relay = Relay(self, upstream, self._pool.proven_setup if hold else None,
                            prefix=None if follow else upstream.restore_wait_timeout(), session=session,
                            carried=carried, demand=self._pool.demand, follow_wait=follow)
        upstream.attach(self._relay)

    def _hand_back_leftover(self, relay: Relay, upstream: UpstreamConnection) -> None:
        replies, started = relay.leftover()
        upstream.detach()
        if replies:
            upstream.expect_leftover(replies, started)

    def _resume_relay(self) -> None:
        self.state = ClientState.ATTACHED
        self._active_at, self._active_wall = time.monotonic(), time.time()
        stash, self._stash = self._stash, b""
        assert self.transport is not None
        self.transport.resume_reading()
        if stash:
            relay = self._relay
            assert relay is not None
            rest = relay.client_data(stash)
            if rest is not None:
                self._intercept(rest)

    def _answer_stash_with(self, error: PoolTimeout | UpstreamError) -> None:
        """No connection for a DETACHED session's command: that command gets the error (1040, or
        the connect error) and the session stays, as long as it was one whole command."""
        stash = self._stash
        size = len(stash)
        whole = size > HEADER_SIZE and stash[3] == 0 \
            and (stash[0] | stash[1] << 8 | stash[2] << 16) == size - HEADER_SIZE
        if isinstance(error, PoolTimeout):
            errno, sqlstate, message = messages.ER_CON_COUNT_ERROR, "08004", f"Too many connections ({error})"
        else:
            errno, sqlstate = error.errno or messages.CR_CONN_HOST_ERROR, error.sqlstate or "HY000"
            message = f"Can't connect to MySQL server through dbkeeper: {error}"
        self._log.warning("session_move_failed", errno=errno, error=message)
        if not whole or stash[HEADER_SIZE] == COMMAND.COM_QUIT:
            self.close()
            return
        self._stash = b""
        self._write(messages.err_payload(errno, sqlstate, message), 1)
        self.state = ClientState.DETACHED
        assert self.transport is not None
        self.transport.resume_reading()

    # --- the session --------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            await self._handshake()
        except asyncio.CancelledError:
            pass
        except PacketsOutOfOrder as exc:
            self._reject(messages.ER_NET_PACKETS_OUT_OF_ORDER, "08S01", f"Got packets out of order ({exc})",
                         "client_protocol_error")
        except ProtocolError as exc:
            self._reject(messages.ER_HANDSHAKE_ERROR, "08S01", f"Bad handshake ({exc})", "client_protocol_error")
        except DbkeeperError as exc:
            self._log.warning("client_session_failed", error=str(exc))
            self.close()
        except Exception as exc:  # a bug must cost one client its session, never the extension
            self._log.error("client_session_crashed", error=repr(exc))
            self.close()

    async def _handshake(self) -> None:
        # Greet and authenticate before borrowing: a client that never finishes its handshake
        # costs a socket (bounded by DBKEEPER_MAX_PENDING_CLIENTS and the handshake timeout), never
        # an upstream connection.
        try:
            identity = await self._pool.ensure_identity()
        except (PoolTimeout, UpstreamError) as exc:
            self._reject_for_upstream(exc, sequence_id=0)  # instead of a greeting, as a full server does
            return
        self._scramble = auth.new_scramble()
        offered = _OFFERED & (identity.capabilities | CLIENT.LONG_PASSWORD)
        greeted_id = self._pool.likely_connection_id()
        self._write(handshake.build_greeting(handshake.Greeting(
            server_version=identity.server_version, connection_id=greeted_id,
            scramble=self._scramble, capabilities=offered, collation_id=UTF8MB4_GENERAL_CI,
            status=SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT, auth_plugin=handshake.NATIVE_PASSWORD)), 0)

        packet = await self._read_packet(expected_sequence=1)
        response = handshake.parse_handshake_response(packet.payload)
        if response.ssl_request:
            raise ProtocolError("TLS requested, but the local hop does not offer it")
        sequence = packet.sequence_id
        proof, sequence = await self._switch_to_native(response.auth_plugin, response.auth_response, sequence)
        if not await self._verify(response.user, proof):
            self._deny(response.user, bool(proof), sequence + 1)
            return
        capabilities = response.capabilities & offered
        database = response.database if capabilities & CLIENT.CONNECT_WITH_DB else None
        settings = SessionSettings(response.collation_id, database, bool(capabilities & CLIENT.MULTI_STATEMENTS))
        self._profile = capabilities & PROFILE_BITS
        try:
            upstream = self._upstream = await self._pool.borrow(self._profile, prefer=greeted_id)
        except (PoolTimeout, UpstreamError) as exc:
            self._reject_for_upstream(exc, sequence_id=sequence + 1)
            return
        self._upstream_in_use = True
        error = await upstream.prepare(settings)
        self._upstream_in_use = False
        if error is not None:
            self._write(error, sequence + 1)
            self.close()
            return
        if self._closed:
            return
        self._settings = settings
        self._start_relay(messages.ok_payload(status=upstream.status), sequence + 1, self._packets.take_rest())
        if self._log.enabled("debug"):
            self._log.debug("client_session_started", connection_id=upstream.connection_id,
                            ms=round((time.monotonic() - self._started) * 1000, 3))

    async def _switch_to_native(self, plugin: str | None, proof: bytes, sequence: int) -> tuple[bytes, int]:
        if plugin in (None, handshake.NATIVE_PASSWORD):
            return proof, sequence
        self._write(handshake.build_auth_switch(handshake.NATIVE_PASSWORD, self._scramble), sequence + 1)
        packet = await self._read_packet(expected_sequence=(sequence + 2) & 0xFF)
        return packet.payload, packet.sequence_id

    async def _verify(self, user: str, proof: bytes) -> bool:
        return await self._local_auth.verify(user, self._scramble, proof, trusted=self._trusted)

    def _reject_for_upstream(self, error: PoolTimeout | UpstreamError, sequence_id: int) -> None:
        if isinstance(error, PoolTimeout):
            self._reject(messages.ER_CON_COUNT_ERROR, "08004", f"Too many connections ({error})",
                         "client_rejected", sequence_id=sequence_id)
        else:
            self._reject(error.errno or messages.CR_CONN_HOST_ERROR, error.sqlstate or "HY000",
                         f"Can't connect to MySQL server through dbkeeper: {error}", "client_rejected",
                         sequence_id=sequence_id)

    def _deny(self, user: str, used_password: bool, sequence_id: int) -> None:
        self._reject(messages.ER_ACCESS_DENIED_ERROR, "28000",
                     f"Access denied for user '{user}'@'localhost' "
                     f"(using password: {'YES' if used_password else 'NO'})",
                     "client_auth_failed", sequence_id=sequence_id, user=user)

    def _start_relay(self, ok: bytes, sequence_id: int, pending: bytes) -> None:
        """Send the client its OK with the relay already in place: the client's next command
        follows at once, and must not wait for dbkeeper's bookkeeping."""
        self._disarm_deadline()
        self._pending.pop(self, None)
        upstream, settings = self._upstream, self._settings
        assert upstream is not None and settings is not None  # borrowed and prepared
        # a new session (after the handshake, a reset or a change of user): nothing set yet
        self._session = SessionModel(settings.database, settings.multi_statements, upstream.tracked)
        self._attach_relay(upstream, self._session, fresh=True)
        self.state = ClientState.ATTACHED
        self._active_at, self._active_wall = time.monotonic(), time.time()
        self._write(ok, sequence_id)
        if pending:
            self.data_received(pending)

    # --- commands dbkeeper answers itself -----------------------------------------------------
    def _intercept(self, rest: bytes) -> None:
        self._intercepted = rest
        self.state = ClientState.ANSWERING
        assert self.transport is not None  # the relay saw the command on it
        self.transport.pause_reading()
        if rest[4] == COMMAND.COM_QUIT:
            self.close()
            return
        self._task = self._loop.create_task(self._answer_intercepted())

    async def _answer_intercepted(self) -> None:
        relay = self._relay
        # all set when the relay started and when it handed this command back (_intercept)
        assert relay is not None and self._upstream is not None and self.transport is not None
        assert self._intercepted is not None and self._settings is not None
        if not relay.settle():
            # A pipelining client: replies it asked for are still on their way. Rare enough to end
            # the session cleanly rather than wait for them.
            self.close()
            return
        self._relay = None
        self._hand_back_leftover(relay, self._upstream)
        self._packets = PacketBuffer(max_packet=_MAX_CONTROL_PACKET)
        # Reading resumes at once: the rest of the command may still be on its way, and a client
        # that hangs up meanwhile must be noticed.
        self.transport.resume_reading()
        self._arm_deadline()
        try:
            self._inbox = self._packets.feed(self._intercepted)
            packet = await self._read_packet(expected_sequence=0)
            if packet.payload[0] == COM_RESET_CONNECTION:
                sequence = packet.sequence_id
            else:
                accepted, sequence = await self._change_user(packet)
                if not accepted:
                    return
            self._upstream_in_use = True
            await self._upstream.reset()
            error = await self._upstream.prepare(self._settings)
            self._upstream_in_use = False
            if error is not None:
                self._write(error, sequence + 1)
                self.close()
                return
            ok = messages.ok_payload(status=self._upstream.status)
        except asyncio.CancelledError:
            return
        except PacketsOutOfOrder as exc:
            self._reject(messages.ER_NET_PACKETS_OUT_OF_ORDER, "08S01", f"Got packets out of order ({exc})",
                         "client_protocol_error", sequence_id=1)
            return
        except DbkeeperError as exc:
            self._log.warning("client_session_failed", error=str(exc))
            self.close()
            return
        # Commands the client sent meanwhile go to the relay as they came.
        pending = b"".join(frame(p.payload, p.sequence_id) for p in self._inbox) + self._packets.take_rest()
        self._inbox = []
        self._start_relay(ok, sequence + 1, pending)

    async def _change_user(self, packet: Packet) -> tuple[bool, int]:
        payload = packet.payload
        try:
            user, position = read_nul_bytes(payload, 1)
            length = payload[position]
            proof = payload[position + 1:position + 1 + length]
            position += 1 + length
            database, position = read_nul_bytes(payload, position) if position < len(payload) else (b"", position)
            collation_id = (int.from_bytes(payload[position:position + 2], "little")
                            if position + 2 <= len(payload) else None)
            position += 2
            plugin = (read_nul_bytes(payload, position)[0].decode("ascii", "replace")
                      if position < len(payload) else None)
        except IndexError as exc:
            raise ProtocolError("truncated COM_CHANGE_USER") from exc
        proof, sequence = await self._switch_to_native(plugin, proof, packet.sequence_id)
        if not await self._verify(user.decode("utf-8", "replace"), proof):
            self._deny(user.decode("utf-8", "replace"), bool(proof), sequence + 1)
            return False, sequence
        assert self._settings is not None  # set by the handshake, before any command was intercepted
        self._settings = SessionSettings(collation_id or self._settings.collation_id,
                                         database.decode("utf-8", "replace") or None,
                                         self._settings.multi_statements)
        return True, sequence

    # --- I/O helpers --------------------------------------------------------------------------
    async def _read_packet(self, expected_sequence: int | None = None) -> Packet:
        while not self._inbox:
            if self._closed:
                raise asyncio.CancelledError
            self._waiter = self._loop.create_future()
            await self._waiter
        packet = self._inbox.pop(0)
        if expected_sequence is not None and packet.sequence_id != expected_sequence:
            raise PacketsOutOfOrder(f"got packet {packet.sequence_id}, expected {expected_sequence}")
        return packet

    # One timer per control phase (not one per packet read): a client that stops half-way
    # through its handshake or an intercepted command is dropped.
    def _arm_deadline(self) -> None:
        self._deadline = self._loop.call_later(self._config.client_handshake_timeout, self._deadline_passed)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        self._reject(messages.ER_HANDSHAKE_ERROR, "08S01", "Bad handshake (timed out)", "client_protocol_error")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _write(self, payload: bytes, sequence_id: int) -> None:
        if not self._closed:
            assert self.transport is not None  # connection_made came first
            self.transport.write(frame(payload, sequence_id))

    def _reject(self, errno: int, sqlstate: str, message: str, event: str, sequence_id: int = 2,
                **fields: object) -> None:
        self._log.warning(event, errno=errno, error=message, **fields)
        self._write(messages.err_payload(errno, sqlstate, message), sequence_id)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _end_session(self, reason: str) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is None:
            return
        relay, self._relay = self._relay, None
        if relay is None:
            # ended before or between relays: reusable unless one of our own commands was cut off
            self._pool.release(upstream, reusable=not self._upstream_in_use and not upstream.closed)
            return
        reusable = relay.settle()
        if not reusable:
            self._log.info("upstream_not_reusable", connection_id=upstream.connection_id, reason=relay.why_not_idle)
        else:
            self._hand_back_leftover(relay, upstream)
        self._pool.release(upstream, reusable)
        if self._log.enabled("debug"):
            self._log.debug("client_session_ended", reason=reason, commands=relay.commands, reusable=reusable,
                            ms=round((time.monotonic() - self._started) * 1000, 3))
