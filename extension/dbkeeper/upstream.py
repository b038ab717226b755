"""Server side: one connection to the real database (PgBouncer's server.c).

Opens and authenticates the connection (TLS verified when used), runs the few commands dbkeeper
issues itself (reset, USE, SET NAMES, multi-statement switch, QUIT), and hands its byte stream to
a Relay while a client session owns it.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, cast

from pymysql.charset import charset_by_id
from pymysql.constants import CLIENT, COMMAND, SERVER_STATUS

from . import __version__
from .config import SESSION_FLAGS, Config
from .credentials import Target
from .errors import ProtocolError, UpstreamError
from .log import Logger
from .protocol import auth, handshake, messages
from .protocol.commands import COM_RESET_CONNECTION
from .protocol.packets import Packet, PacketBuffer, frame, read_lenenc_bytes
from .protocol.session import OBSERVE_STATEMENT, TRACKING_STATEMENT, tracked_variable
from .relay import Relay, enable_nodelay

if TYPE_CHECKING:  # pool imports this module
    from .pool import MemberState

# Capability bits that change what a session means (affected-rows semantics, parser flags,
# multi-result framing). The upstream must have the same ones as its client, so they form the
# pool's "profile"; every other bit is either fixed by dbkeeper or only shapes the handshake.
PROFILE_BITS = sum(getattr(CLIENT, name) for name in SESSION_FLAGS)
_BASE_CAPABILITIES = (CLIENT.LONG_PASSWORD | CLIENT.LONG_FLAG | CLIENT.PROTOCOL_41 | CLIENT.TRANSACTIONS
                      | CLIENT.SECURE_CONNECTION | CLIENT.MULTI_STATEMENTS | CLIENT.PLUGIN_AUTH
                      | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT.CONNECT_ATTRS
                      # the server reports session state changes (protocol/session.py); the local
                      # hop never offers it, the relay strips what it adds to OK packets
                      | CLIENT.SESSION_TRACK)
UTF8MB4_GENERAL_CI = 45
MAX_PACKET = 1 << 30
_SET_OPTION_MULTI_STATEMENTS_ON = b"\x00\x00"
_SET_OPTION_MULTI_STATEMENTS_OFF = b"\x01\x00"
_QUIT = frame(bytes((COMMAND.COM_QUIT,)), 0)
# poll events of a connection that is gone, or says something while nobody asked it anything
_DEAD_OR_SPEAKING = select.POLLIN | select.POLLPRI | select.POLLRDHUP | select.POLLHUP | select.POLLERR


class SessionSettings(NamedTuple):
    """What a client asked for in its handshake that the upstream session must match."""
    collation_id: int
    database: str | None
    multi_statements: bool


class UpstreamConnection(asyncio.Protocol):
    # Slots: the hot path reads attributes on every packet; past 30 instance attributes CPython
    # gives up its fast instance-attribute reads (relay.py measured it).
    __slots__ = ("_attributes", "_config", "_inbox", "_leftover", "_log", "_loop", "_lost", "_packets", "_probe",
                 "_relay", "_target", "_waiter", "capabilities", "collation_id", "database", "greeting", "last_used",
                 "multi_statements", "observe_for", "pool_state", "profile", "reset_started", "resetting", "secure",
                 "short_wait", "short_wait_s", "status", "tracked", "transport")

    def __init__(self, config: Config, log: Logger, profile: int):
        self._loop = asyncio.get_running_loop()  # made inside the loop; asking again costs a getpid()
        self._config = config
        self._log = log
        self.profile = profile
        self.transport: asyncio.Transport | None = None
        self._probe: select.poll | None = None  # the socket's descriptor, for looks_dead
        self._packets = PacketBuffer(max_packet=MAX_PACKET)
        self._inbox: list[Packet] = []
        self._waiter: asyncio.Future[None] | None = None
        self._lost: Exception | None = None
        self._relay: Relay | None = None  # the Relay of the session that owns this connection
        self.greeting: handshake.Greeting | None = None
        self.secure = False
        self.capabilities = 0
        self.collation_id = UTF8MB4_GENERAL_CI
        self.database: str | None = config.db_name
        self._target = Target(config.db_host, config.db_port, config.db_user, config.db_password, config.db_name)
        self._attributes = {"program_name": "dbkeeper"}
        self.multi_statements: bool | None = True
        self.status: int = SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
        self.resetting: asyncio.Task[None] | None = None
        self.pool_state: MemberState | None = None  # pool.MemberState, changed only by the pool's _change_state
        self.last_used = (time.monotonic(), time.time())  # when a session or a reset last ended
        self.reset_started = 0.0
        self.short_wait = False  # session wait_timeout is DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S (idle in the pool)
        self._leftover = 0  # replies to a relay's own statements the next reset reads first
        # the short wait_timeout in effect (LEAST of the server's and DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S)
        self.short_wait_s = float(config.upstream_wait_timeout)
        # the server reports this session's state changes (CLIENT_SESSION_TRACK and the trackers on),
        # so a session on it can be moved to another connection (protocol/session.py)
        self.tracked = False
        # set when a session moves off this connection (connection sharing): the next reset first
        # reads what that session's next statement could still ask about (ROW_COUNT(), FOUND_ROWS())
        self.observe_for: Callable[[tuple[int, int] | None], None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream connection's transport (asyncio's or uvloop's); the cast is for the type checker only
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        enable_nodelay(sock)
        # the descriptor outlives a start_tls; looks_dead polls it directly (one poll object for the
        # connection's life: asked before every command after a quiet spell, it must be cheap)
        if sock is not None:
            self._probe = select.poll()
            self._probe.register(sock.fileno(), _DEAD_OR_SPEAKING)

    def data_received(self, data: bytes) -> None:
        relay = self._relay
        if relay is not None:
            relay.upstream_data(data)
            return
        try:
            self._inbox += self._packets.feed(data)
        except ProtocolError as exc:
            self._fail(UpstreamError(f"upstream sent a malformed packet: {exc}"))
            return
        self._wake()

    def eof_received(self) -> bool:
        return False  # a half-closed upstream is a closed upstream

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = UpstreamError(f"upstream connection lost: {exc or 'closed by server'}")
        self._probe = None  # the descriptor may be reused by another socket from now on
        relay = self._relay
        if relay is not None:
            relay.upstream_lost()
        self._wake()

    def pause_writing(self) -> None:
        if self._relay is not None:
            self._relay.upstream_congested(True)

    def resume_writing(self) -> None:
        if self._relay is not None:
            self._relay.upstream_congested(False)

    # --- state --------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._lost is not None or self.transport is None or self.transport.is_closing()

    @property
    def connection_id(self) -> int:
        return self.greeting.connection_id if self.greeting else 0

    def looks_dead(self) -> bool:
        """After a freeze the socket may be dead with its close not yet seen by the loop: ask the
        kernel without a round trip. An idle upstream has nothing to say, so any byte (an ERR
        the server sent before closing, a TLS alert) or EOF means it is gone."""
        if self.closed:
            return True
        probe = self._probe
        if probe is None:
            return False
        return bool(probe.poll(0))  # one poll() syscall: no event while the connection is quiet

    def mark_used(self) -> None:
        self.last_used = (time.monotonic(), time.time())

    def attach(self, relay: Relay) -> None:
        if self._inbox or self._packets.take_rest():
            raise UpstreamError("upstream sent unsolicited data")
        self._relay = relay

    def detach(self) -> None:
        self._relay = None

    # --- opening ------------------------------------------------------------------------------
    async def open(self, target: Target | None = None, attributes: dict[str, str] | None = None) -> None:
        """`target`: where and as whom (credentials.py; default: the settings); `attributes`: the
        connection attributes the server shows in performance_schema (credentials.SandboxIdentity)."""
        config = self._config
        loop = self._loop
        if target is not None:
            self._target = target
            self.database = target.database
        if attributes is not None:
            self._attributes = attributes
        target = self._target
        try:
            await asyncio.wait_for(self._open(loop), config.connect_timeout)
            if self.capabilities & CLIENT.SESSION_TRACK and config.session_moves:
                self.write_packet(bytes((COMMAND.COM_QUERY,)) + TRACKING_STATEMENT, 0)
                await asyncio.wait_for(self._read_tracking(), config.connect_timeout)
        except TimeoutError as exc:
            self.abort()
            raise UpstreamError(f"connect to {target.host}:{target.port} timed out "
                                f"after {config.connect_timeout * 1000:.0f} ms") from exc
        except (UpstreamError, ProtocolError) as exc:
            self.abort()
            raise UpstreamError(str(exc), getattr(exc, "errno", None), getattr(exc, "sqlstate", None)) from exc
        except OSError as exc:
            self.abort()
            raise UpstreamError(f"connect to {target.host}:{target.port} failed: {exc.strerror or exc}") from exc

    async def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        config, target = self._config, self._target
        await loop.create_connection(lambda: self, target.host, target.port)
        packet = await self.read_packet()
        if messages.is_err(packet.payload):
            raise _server_error("upstream refused the connection", packet.payload)
        greeting = self.greeting = handshake.parse_greeting(packet.payload)
        capabilities = (_BASE_CAPABILITIES | self.profile) & (greeting.capabilities | CLIENT.LONG_PASSWORD)
        if not config.session_moves:
            capabilities &= ~CLIENT.SESSION_TRACK  # replies stay exactly what the client gets
        if target.database:
            capabilities |= CLIENT.CONNECT_WITH_DB
        sequence = 1
        if config.db_tls != "disabled" and greeting.capabilities & CLIENT.SSL:
            capabilities |= CLIENT.SSL
            self.write_packet(handshake.build_ssl_request(capabilities, MAX_PACKET, UTF8MB4_GENERAL_CI), sequence)
            sequence += 1
            await self._start_tls(loop)
        elif config.db_tls == "required":
            raise UpstreamError("DBKEEPER_DB_TLS=required but the server does not offer TLS")
        plugin = greeting.auth_plugin
        if plugin not in (handshake.NATIVE_PASSWORD, handshake.CACHING_SHA2_PASSWORD, handshake.CLEAR_PASSWORD):
            plugin = handshake.NATIVE_PASSWORD  # the server will switch us to what it wants
        response = handshake.HandshakeResponse(
            capabilities=capabilities, max_packet=MAX_PACKET, collation_id=UTF8MB4_GENERAL_CI,
            user=target.user,
            auth_response=auth.upstream_proof(plugin, target.password, greeting.scramble, self.secure),
            database=target.database, auth_plugin=plugin,
            attributes={"_client_name": "dbkeeper", "_client_version": __version__, **self._attributes},
        )
        self.capabilities = capabilities
        self.write_packet(handshake.build_handshake_response(response), sequence)
        await self._finish_authentication(plugin, greeting.scramble)

    async def _start_tls(self, loop: asyncio.AbstractEventLoop) -> None:
        import ssl  # only when the server offers TLS: it costs start-up time

        context = ssl.create_default_context(cafile=self._config.db_tls_ca or self._default_ca())
        transport = self.transport
        assert transport is not None  # connected: _open has awaited create_connection
        try:
            self.transport = await loop.start_tls(transport, self, context,
                                                  server_hostname=self._target.host)
        except ssl.SSLError as exc:
            raise UpstreamError(f"TLS with the upstream failed: {exc}") from exc
        self.secure = True

    def _default_ca(self) -> str | None:
        """With IAM authentication (RDS) and no DBKEEPER_DB_TLS_CA: the layer's RDS CA bundle
        (/opt/dbkeeper/rds-ca-bundle.pem, shipped by build.sh; docs/AWS.md), if present; else the
        system trust store."""
        if not self._config.aws.iam_auth:
            return None
        bundle = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "rds-ca-bundle.pem")
        return bundle if os.path.exists(bundle) else None

    async def _finish_authentication(self, plugin: str, scramble: bytes) -> None:
        password = self._target.password
        while True:
            packet = await self.read_packet()
            payload = packet.payload
            if messages.is_ok(payload):
                self.status = messages.ok_status(payload)
                return
            if messages.is_err(payload):
                raise _server_error("upstream authentication failed", payload)
            if payload[:1] == b"\xfe":
                plugin, scramble = handshake.parse_auth_switch(payload)
                self.write_packet(auth.upstream_proof(plugin, password, scramble, self.secure), packet.sequence_id + 1)
            elif payload[:1] == b"\x01" and plugin == handshake.CACHING_SHA2_PASSWORD:
                if payload[1:2] == b"\x03":  # fast authentication succeeded; OK follows
                    continue
                if payload[1:2] == b"\x04":  # full authentication: only over a secure channel
                    if not self.secure:
                        raise UpstreamError("caching_sha2_password full authentication needs TLS "
                                            "(set DBKEEPER_DB_TLS=required) or a cached login")
                    self.write_packet(password.encode() + b"\0", packet.sequence_id + 1)
                else:
                    raise UpstreamError("unexpected caching_sha2_password exchange")
            else:
                raise UpstreamError(f"unexpected authentication reply 0x{payload[:1].hex()}")

    # --- control-phase I/O --------------------------------------------------------------------
    def write_packet(self, payload: bytes, sequence_id: int) -> None:
        transport = self.transport
        assert transport is not None  # control-phase packets go only over an open connection
        transport.write(frame(payload, sequence_id))

    async def read_packet(self) -> Packet:
        while not self._inbox:
            if self._lost is not None:
                raise self._lost
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._inbox.pop(0)

    async def command(self, code: int, argument: bytes = b"") -> bytes:
        """Run a command whose reply is one packet (OK/ERR/EOF); return that payload."""
        self.write_packet(bytes((code,)) + argument, 0)
        payload = (await self.read_packet()).payload
        if messages.is_ok(payload):
            self.status = messages.ok_status(payload)
        return payload

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        self._lost = error
        self.abort()
        self._wake()

    # --- session management -------------------------------------------------------------------
    async def prepare(self, wanted: SessionSettings) -> bytes | None:
        """Make this session look like the one the client asked for. Returns an ERR payload to
        pass on to the client (e.g. unknown database), or None."""
        if wanted.collation_id != self.collation_id:
            reply = await self._set_names(wanted.collation_id)
            if reply is not None:
                return reply
        if wanted.database and wanted.database != self.database:
            reply = await self.command(COMMAND.COM_INIT_DB, wanted.database.encode())
            if messages.is_err(reply):
                return reply
            self.database = wanted.database
        if wanted.multi_statements != self.multi_statements:
            option = _SET_OPTION_MULTI_STATEMENTS_ON if wanted.multi_statements else _SET_OPTION_MULTI_STATEMENTS_OFF
            reply = await self.command(COMMAND.COM_SET_OPTION, option)
            if messages.is_err(reply):
                return reply
            self.multi_statements = wanted.multi_statements
        return None

    async def _set_names(self, collation_id: int) -> bytes | None:
        """SET NAMES for the client's handshake collation. A collation the server does not know
        (MySQL 8's utf8mb4_0900_ai_ci, id 255, on MariaDB) gets the character set's default
        collation, as the server itself does for such a handshake; what works is remembered."""
        statements = _SET_NAMES.get(collation_id)
        if statements is None:
            statements = _SET_NAMES[collation_id] = _set_names_candidates(collation_id)
        for index, statement in enumerate(statements):
            reply = await self.command(COMMAND.COM_QUERY, statement)
            if messages.is_ok(reply):
                _SET_NAMES[collation_id] = statements[index:]
                self.collation_id = collation_id
                return None
            if messages.parse_err(reply).errno != messages.ER_UNKNOWN_COLLATION or index == len(statements) - 1:
                return reply
        return None  # a collation PyMySQL does not know: leave the connection's own

    def forget_options(self) -> None:
        """A client changed a session option dbkeeper tracks (COM_SET_OPTION): set it anew next time."""
        self.multi_statements = None

    async def reset(self) -> None:
        """Forget everything the last session did: COM_RESET_CONNECTION rolls back, drops temporary
        tables, user variables, prepared statements and locks, and restores the handshake's
        character set. It keeps the current database, so the default one is selected again. The
        character set the last session started with is set again too (the next session of the
        same driver asks for the same): all pipelined, one round trip, off the client's path."""
        kept_collation = self.collation_id
        # The reply to a SELECT of a fresh nonce comes last, after every reply owed before it: if
        # any reply the relay lost count of is still on its way, the replies read here are out of
        # step and the nonce does not match, so the connection is never lent in that state.
        nonce = os.urandom(8).hex().encode()
        while self._leftover:
            await self.read_packet()  # OK or ERR of a wait_timeout the last session's relay set
            self._leftover -= 1
        observe, self.observe_for = self.observe_for, None
        if observe is not None:
            try:
                self.write_packet(bytes((COMMAND.COM_QUERY,)) + OBSERVE_STATEMENT, 0)
                observe(await self._read_counts())
            except BaseException:
                observe(None)
                raise
        self.write_packet(bytes((COM_RESET_CONNECTION,)), 0)
        default = self._target.database
        if default:
            self.write_packet(bytes((COMMAND.COM_INIT_DB,)) + default.encode(), 0)
        else:
            self.write_packet(bytes((COMMAND.COM_QUERY,)) + b"SELECT DATABASE()", 0)
        set_names = _SET_NAMES.get(kept_collation) if kept_collation != UTF8MB4_GENERAL_CI else None
        if set_names:  # the statement that worked for this collation before
            self.write_packet(bytes((COMMAND.COM_QUERY,)) + set_names[0], 0)
        track = bool(self.capabilities & CLIENT.SESSION_TRACK) and self._config.session_moves
        if track:  # the reset returned the trackers to the server's defaults (before the wait_timeout: reported)
            self.write_packet(bytes((COMMAND.COM_QUERY,)) + TRACKING_STATEMENT, 0)
        short_wait = self._write_short_wait()
        self.write_packet(bytes((COMMAND.COM_QUERY,)) + b"SELECT '" + nonce + b"'", 0)
        reply = (await self.read_packet()).payload
        if not messages.is_ok(reply):
            raise _server_error("COM_RESET_CONNECTION failed", reply)
        self.collation_id = UTF8MB4_GENERAL_CI
        if default:
            reply = (await self.read_packet()).payload
            if not messages.is_ok(reply):
                raise _server_error("selecting the default database failed", reply)
            self.status = messages.ok_status(reply)
        else:
            row = await self._read_one_value()
            if row != b"\xfb":
                raise UpstreamError("a session selected a database and none is configured to return to "
                                    "(set DBKEEPER_DB_NAME)")
        self.database = default
        if set_names:
            reply = (await self.read_packet()).payload
            if messages.is_ok(reply):
                self.collation_id = kept_collation
            elif not messages.is_err(reply):
                raise UpstreamError("reset out of step with the server (SET NAMES)")
            # an ERR leaves the handshake's character set, which the next session's prepare() sees
        if track:
            await self._read_tracking()
        if short_wait:
            await self._read_short_wait()
        if await self._read_one_value() != bytes((len(nonce),)) + nonce:
            raise UpstreamError("reset out of step with the server (sync marker)")

    # While a connection sits idle in the pool its session wait_timeout is short: a sandbox that
    # Lambda reclaims without SHUTDOWN (no FIN ever reaches the server) leaves it for that long, not
    # the server's 8 hours. The pool checks an idle connection before lending it, so the server
    # closing it costs at most a reconnect; a session lent it gets the server's own value back
    # (restore_wait_timeout, sent in front of its first command).
    def _write_short_wait(self) -> bool:
        if not self._config.upstream_wait_timeout:
            return False
        self.write_packet(self._wait_statement(True), 0)
        return True

    async def _read_short_wait(self) -> None:
        reply = (await self.read_packet()).payload
        if not messages.is_ok(reply):
            raise _server_error("setting the idle wait_timeout failed", reply)
        # the value in effect, never above the server's own (else the setting's value stands)
        value = tracked_variable(reply, b"wait_timeout") if self.tracked else None
        if value is not None and value.isdigit():
            self.short_wait_s = int(value)
        self.short_wait = True

    async def _read_tracking(self) -> None:
        """The reply to TRACKING_STATEMENT. A server without the trackers (older than MariaDB 10.3 /
        MySQL 5.7) refuses it: sessions on this connection then cannot move (ERR is no failure)."""
        reply = (await self.read_packet()).payload
        if not messages.is_ok(reply) and not messages.is_err(reply):
            raise UpstreamError("reset out of step with the server (session tracking)")
        self.tracked = messages.is_ok(reply)

    async def shorten_wait(self) -> None:
        """For a fresh connection going idle into the pool (the INIT-time one)."""
        if self._write_short_wait():
            await self._read_short_wait()

    def wait_command(self, short: bool) -> bytes:
        """The command (a whole packet) that gives this session the pool's short wait_timeout, or
        the server's own (interactive clients: interactive_timeout, as the server does). For a
        relay that makes the wait_timeout follow its session (relay.py)."""
        self.short_wait = short
        return frame(self._wait_statement(short), 0)

    def _wait_statement(self, short: bool) -> bytes:
        if short:  # never longer than the server's own: a short server wait_timeout is the operator's choice
            return bytes((COMMAND.COM_QUERY,)) + b"SET SESSION wait_timeout = LEAST(@@GLOBAL.wait_timeout, %d)" \
                % self._config.upstream_wait_timeout
        source = b"interactive_timeout" if self.profile & CLIENT.INTERACTIVE else b"wait_timeout"
        return bytes((COMMAND.COM_QUERY,)) + b"SET SESSION wait_timeout = @@GLOBAL." + source

    def expect_leftover(self, replies: int, started: bytes) -> None:
        """A relay left this connection with replies to its own statements still on their way
        (`started`: the bytes of one already begun): the next reset reads them first."""
        self._leftover += replies
        if started:
            self.data_received(started)

    def restore_wait_timeout(self) -> bytes | None:
        """The command (a whole packet) that gives a lent session the server's own wait_timeout
        back (interactive clients start from interactive_timeout, as the server does), or None."""
        return self.wait_command(False) if self.short_wait else None

    async def _read_counts(self) -> tuple[int, int] | None:
        """The row of OBSERVE_STATEMENT: two integers (None if the server said something else)."""
        first = (await self.read_packet()).payload
        if messages.is_err(first):
            return None
        if first != b"\x02":
            raise UpstreamError("reset out of step with the server (observed counts)")
        packets = [(await self.read_packet()).payload for _ in range(5)]
        if packets[2][:1] != b"\xfe" or packets[4][:1] != b"\xfe":
            raise UpstreamError("reset out of step with the server (observed counts)")
        try:
            row_count, position = read_lenenc_bytes(packets[3], 0)
            found_rows, _ = read_lenenc_bytes(packets[3], position)
            return int(row_count), int(found_rows)
        except (ProtocolError, ValueError):
            return None

    async def statement(self, payload: bytes) -> bytes:
        """Run one command whose reply may be a result set; return the reply's last packet."""
        self.write_packet(payload, 0)
        packet = (await self.read_packet()).payload
        if messages.is_ok(packet) or messages.is_err(packet):
            if messages.is_ok(packet):
                self.status = messages.ok_status(packet)
            return packet
        eofs = 0
        while eofs < 2:
            packet = (await self.read_packet()).payload
            if packet[:1] == b"\xfe" and len(packet) < 9:
                eofs += 1
            elif messages.is_err(packet):
                return packet
        return packet

    async def _read_one_value(self) -> bytes:
        """The one row of a one-column, one-row text result (column count, definition, EOF, row,
        EOF); the row's raw payload. UpstreamError if the replies have another shape."""
        packets = [(await self.read_packet()).payload for _ in range(5)]
        if packets[0] != b"\x01" or packets[2][:1] != b"\xfe" or packets[4][:1] != b"\xfe" \
                or len(packets[2]) >= 9 or len(packets[4]) >= 9:
            raise UpstreamError("reset out of step with the server (unexpected reply shape)")
        return packets[3]

    async def ping(self, timeout: float) -> bool:
        """One COM_PING round trip, bounded: is the server still there?"""
        try:
            return messages.is_ok(await asyncio.wait_for(self.command(COMMAND.COM_PING), timeout))
        except (TimeoutError, UpstreamError, ProtocolError):
            return False

    async def kill(self, connection_ids: list[int]) -> int:
        """KILL CONNECTION each id, pipelined: the statement running there stops and its locks are
        released (a user may always kill its own threads). Returns how many the server killed;
        an id already gone is not an error."""
        for connection_id in connection_ids:
            self.write_packet(bytes((COMMAND.COM_QUERY,)) + b"KILL CONNECTION %d" % connection_id, 0)
        killed = 0
        for connection_id in connection_ids:
            reply = (await self.read_packet()).payload
            if messages.is_ok(reply):
                killed += 1
            elif messages.is_err(reply) and messages.parse_err(reply).errno != messages.ER_NO_SUCH_THREAD:
                self._log.warning("kill_failed", connection_id=connection_id, error=messages.parse_err(reply).message)
        return killed

    def quit(self) -> None:
        """Say goodbye so the server ends the session at once, then close. Never waits."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            transport.write(_QUIT)
        finally:
            transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _server_error(context: str, payload: bytes) -> UpstreamError:
    if not messages.is_err(payload):
        return UpstreamError(f"{context}: unexpected reply 0x{payload[:1].hex()}")
    error = messages.parse_err(payload)
    return UpstreamError(f"{context}: ({error.errno}) {error.message}", error.errno, error.sqlstate)


def _set_names_candidates(collation_id: int) -> list[bytes]:
    try:
        charset = charset_by_id(collation_id)
    except KeyError:
        return []
    return [f"SET NAMES {charset.name} COLLATE {charset.collation}".encode(), f"SET NAMES {charset.name}".encode()]


# collation id -> the SET NAMES statements worth trying, first the one known to work
_SET_NAMES: dict[int, list[bytes]] = {}
