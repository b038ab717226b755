"""A tiny raw-packet MySQL client for tests that must misbehave on the wire.

Plain sockets, no driver: read the server greeting, answer it (mysql_native_password), send any
bytes at all, read packets back one at a time. Only what the bad-input tests need:

    c = RawClient.connect(host="127.0.0.1", port=3306)       # or unix_socket="/tmp/x.sock"
    c.login("app", "secret", "appdb")                        # raises ServerError(errno, sqlstate)
    c.query("SELECT 1")                                      # -> [Result(columns, rows, ok)]
    c.send_raw(b"\\xff\\xff\\xff\\x01garbage")                 # anything at all
    c.abort()                                                # RST, no COM_QUIT

Also ``HandshakeRecorder``: a TCP relay that records each client's handshake response (capability
flags, charset, plugin), so tests can show what every driver asks a server for.

Names come from ``pymysql.constants``; the password scramble is pymysql's.
"""

from __future__ import annotations

import dataclasses
import select
import socket
import struct
import threading
import time
from typing import Any

from pymysql._auth import scramble_native_password
from pymysql.constants import CLIENT, COMMAND, SERVER_STATUS

__all__ = [
    "RawClient", "ServerError", "ConnectionClosed", "Handshake", "Result", "Ok",
    "HandshakeRecorder", "HandshakeResponse", "capability_names", "packet", "split_packets",
    "DEFAULT_CAPABILITIES",
]

MAX_PAYLOAD = 0xFFFFFF

# capability bits pymysql.constants.CLIENT does not name (MySQL 8 / MariaDB additions)
_EXTRA_CAPS = {
    1 << 14: "RESERVED",
    1 << 25: "OPTIONAL_RESULTSET_METADATA",
    1 << 26: "ZSTD_COMPRESSION",
    1 << 27: "QUERY_ATTRIBUTES",
    1 << 28: "MULTI_FACTOR_AUTH",
    1 << 29: "CAPABILITY_EXTENSION",
    1 << 30: "SSL_VERIFY_SERVER_CERT",
    1 << 31: "REMEMBER_OPTIONS",
}
# MariaDB's extended capabilities (handshake bytes 19..22 of the filler, when bit 0 is clear)
MARIADB_CAPS = {
    1 << 0: "MARIADB_CLIENT_PROGRESS",
    1 << 1: "MARIADB_CLIENT_COM_MULTI",
    1 << 2: "MARIADB_CLIENT_STMT_BULK_OPERATIONS",
    1 << 3: "MARIADB_CLIENT_EXTENDED_METADATA",
    1 << 4: "MARIADB_CLIENT_CACHE_METADATA",
    1 << 5: "MARIADB_CLIENT_BULK_UNIT_RESULTS",
}

DEFAULT_CAPABILITIES = (
    CLIENT.LONG_PASSWORD | CLIENT.LONG_FLAG | CLIENT.PROTOCOL_41 | CLIENT.TRANSACTIONS
    | CLIENT.SECURE_CONNECTION | CLIENT.MULTI_RESULTS | CLIENT.PLUGIN_AUTH
    | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA
)
UTF8MB4_GENERAL_CI = 45


def capability_names(flags: int, *, mariadb_ext: int = 0) -> list[str]:
    """Symbolic names of the set capability bits (MariaDB's extended ones prefixed MARIADB_)."""
    names = {v: k for k, v in vars(CLIENT).items() if k.isupper() and isinstance(v, int) and v and not v & (v - 1)}
    names.update(_EXTRA_CAPS)
    out = [names.get(1 << bit, f"BIT{bit}") for bit in range(32) if flags & (1 << bit)]
    out += [MARIADB_CAPS.get(1 << bit, f"MARIADB_BIT{bit}") for bit in range(32) if mariadb_ext & (1 << bit)]
    return out


# --------------------------------------------------------------------------- framing


def packet(payload: bytes, seq: int, *, length: int | None = None) -> bytes:
    """One packet: 3-byte little-endian length (``length`` overrides it, to lie), 1-byte seq id."""
    n = len(payload) if length is None else length
    return struct.pack("<I", n)[:3] + bytes([seq & 0xFF]) + payload


def split_packets(payload: bytes, seq: int) -> tuple[bytes, int]:
    """A logical payload as wire packets (split at 16 MB - 1); returns (bytes, next seq)."""
    out = bytearray()
    while True:
        chunk, payload = payload[:MAX_PAYLOAD], payload[MAX_PAYLOAD:]
        out += packet(chunk, seq)
        seq = (seq + 1) & 0xFF
        if len(chunk) < MAX_PAYLOAD:
            return bytes(out), seq


def _lenenc_int(data: bytes, pos: int) -> tuple[int | None, int]:
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFB:
        return None, pos + 1
    if first == 0xFC:
        return struct.unpack_from("<H", data, pos + 1)[0], pos + 3
    if first == 0xFD:
        return int.from_bytes(data[pos + 1 : pos + 4], "little"), pos + 4
    return struct.unpack_from("<Q", data, pos + 1)[0], pos + 9


def _lenenc_bytes(data: bytes, pos: int) -> tuple[bytes | None, int]:
    n, pos = _lenenc_int(data, pos)
    if n is None:
        return None, pos
    return bytes(data[pos : pos + n]), pos + n


def lenenc(n: int) -> bytes:
    if n < 0xFB:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def _cstring(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.index(b"\0", pos)
    return bytes(data[pos:end]), end + 1


# --------------------------------------------------------------------------- results


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (EOF or reset) while we were reading."""


class ServerError(Exception):
    """An ERR packet: ``errno``, ``sqlstate`` (None for pre-4.1 style), ``message``."""

    def __init__(self, errno: int, sqlstate: str | None, message: str) -> None:
        super().__init__(errno, sqlstate, message)
        self.errno, self.sqlstate, self.message = errno, sqlstate, message

    @classmethod
    def parse(cls, payload: bytes) -> ServerError:
        errno = struct.unpack_from("<H", payload, 1)[0]
        if payload[3:4] == b"#":
            return cls(errno, payload[4:9].decode("ascii", "replace"), payload[9:].decode("utf-8", "replace"))
        return cls(errno, None, payload[3:].decode("utf-8", "replace"))


@dataclasses.dataclass
class Ok:
    affected_rows: int
    last_insert_id: int
    status: int
    warnings: int
    info: bytes

    @classmethod
    def parse(cls, payload: bytes) -> Ok:
        affected, pos = _lenenc_int(payload, 1)
        insert_id, pos = _lenenc_int(payload, pos)
        status, warnings = struct.unpack_from("<HH", payload, pos)
        return cls(affected or 0, insert_id or 0, status, warnings, bytes(payload[pos + 4 :]))


@dataclasses.dataclass
class Result:
    """One result of a COM_QUERY: a result set (columns, rows of bytes|None) or just an OK."""

    columns: list[str]
    rows: list[tuple[bytes | None, ...]]
    ok: Ok | None = None
    status: int = 0

    def text_rows(self) -> list[tuple[str | None, ...]]:
        return [tuple(None if v is None else v.decode() for v in r) for r in self.rows]


@dataclasses.dataclass
class Handshake:
    protocol_version: int
    server_version: str
    connection_id: int
    salt: bytes
    capabilities: int
    mariadb_capabilities: int
    charset: int
    status: int
    auth_plugin: str

    @classmethod
    def parse(cls, payload: bytes) -> Handshake:
        if payload[:1] == b"\xff":
            raise ServerError.parse(payload)
        proto = payload[0]
        version, pos = _cstring(payload, 1)
        conn_id = struct.unpack_from("<I", payload, pos)[0]
        pos += 4
        salt = payload[pos : pos + 8]
        pos += 9  # 8 bytes + filler
        cap_low = struct.unpack_from("<H", payload, pos)[0]
        pos += 2
        charset, status, cap_high, salt_len = struct.unpack_from("<BHHB", payload, pos)
        pos += 6
        mariadb_caps = struct.unpack_from("<I", payload, pos + 6)[0]
        pos += 10
        caps = cap_low | (cap_high << 16)
        if caps & CLIENT.SECURE_CONNECTION:
            n = max(13, salt_len - 8)
            salt += payload[pos : pos + n]
            pos += n
        plugin = b""
        if caps & CLIENT.PLUGIN_AUTH and pos < len(payload):
            plugin = payload[pos:].split(b"\0", 1)[0]
        return cls(
            proto, version.decode(), conn_id, bytes(salt[:20]), caps,
            mariadb_caps if not caps & CLIENT.LONG_PASSWORD else 0, charset, status, plugin.decode(),
        )


@dataclasses.dataclass
class HandshakeResponse:
    """What a client answered to the greeting (parsed by ``HandshakeRecorder``)."""

    capabilities: int
    mariadb_capabilities: int
    max_packet: int
    charset: int
    user: str
    database: str | None
    auth_plugin: str | None
    attributes: dict[str, str]

    @property
    def capability_names(self) -> list[str]:
        return capability_names(self.capabilities, mariadb_ext=self.mariadb_capabilities)

    @classmethod
    def parse(cls, payload: bytes) -> HandshakeResponse:
        caps, max_packet, charset = struct.unpack_from("<IIB", payload, 0)
        filler = payload[9:32]
        mariadb_caps = 0 if caps & CLIENT.LONG_PASSWORD else struct.unpack_from("<I", filler, 19)[0]
        user, pos = _cstring(payload, 32)
        if caps & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            _, pos = _lenenc_bytes(payload, pos)
        elif caps & CLIENT.SECURE_CONNECTION:
            pos += 1 + payload[pos]
        else:
            _, pos = _cstring(payload, pos)
        db = plugin = None
        if caps & CLIENT.CONNECT_WITH_DB and pos < len(payload):
            raw, pos = _cstring(payload, pos)
            db = raw.decode()
        if caps & CLIENT.PLUGIN_AUTH and pos < len(payload):
            raw, pos = _cstring(payload, pos)
            plugin = raw.decode()
        attrs: dict[str, str] = {}
        if caps & CLIENT.CONNECT_ATTRS and pos < len(payload):
            total, pos = _lenenc_int(payload, pos)
            end = pos + (total or 0)
            while pos < end:
                k, pos = _lenenc_bytes(payload, pos)
                v, pos = _lenenc_bytes(payload, pos)
                attrs[(k or b"").decode()] = (v or b"").decode()
        return cls(caps, mariadb_caps, max_packet, charset, user.decode(), db, plugin, attrs)


# --------------------------------------------------------------------------- the client


class RawClient:
    """One connection; every read has ``timeout`` seconds (socket.timeout past it)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.seq = 0
        self.handshake: Handshake | None = None
        self.capabilities = 0
        self._buf = bytearray()

    @classmethod
    def connect(
        cls, *, host: str | None = None, port: int | None = None, unix_socket: str | None = None,
        timeout: float = 5.0,
    ) -> RawClient:
        if unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(unix_socket)
        else:
            sock = socket.create_connection((host or "127.0.0.1", port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, timeout)

    # ---------------------------------------------------------------- bytes and packets
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_packet(self, payload: bytes, seq: int | None = None) -> None:
        """Send ``payload`` (split if >= 16 MB) starting at ``seq`` (default: the expected one)."""
        data, self.seq = split_packets(payload, self.seq if seq is None else seq)
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self._buf)))
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise ConnectionClosed(f"reset after {len(self._buf)} of {n} bytes") from exc
            if not chunk:
                raise ConnectionClosed(f"EOF after {len(self._buf)} of {n} bytes")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read_packet(self) -> bytes:
        """One logical packet's payload (joins 16 MB continuation packets); tracks the seq id."""
        payload = bytearray()
        while True:
            header = self._recv_exact(4)
            n = int.from_bytes(header[:3], "little")
            self.seq = (header[3] + 1) & 0xFF
            payload += self._recv_exact(n)
            if n < MAX_PAYLOAD:
                return bytes(payload)

    def read_some(self, limit: int) -> int:
        """Read up to ``limit`` raw bytes (at least one); returns how many (0 = EOF)."""
        try:
            return len(self.sock.recv(limit))
        except (ConnectionResetError, BrokenPipeError):
            return 0

    # ---------------------------------------------------------------- connection phase
    def read_handshake(self) -> Handshake:
        self.handshake = Handshake.parse(self.read_packet())
        return self.handshake

    def handshake_response(
        self, user: str, password: str, database: str | None = None, *,
        capabilities: int = DEFAULT_CAPABILITIES, charset: int = UTF8MB4_GENERAL_CI,
        plugin: str = "mysql_native_password",
    ) -> bytes:
        """The HandshakeResponse41 payload for the greeting already read."""
        assert self.handshake is not None, "read_handshake() first"
        if database:
            capabilities |= CLIENT.CONNECT_WITH_DB
        capabilities &= self.handshake.capabilities | CLIENT.LONG_PASSWORD | CLIENT.CONNECT_WITH_DB
        auth = scramble_native_password(password.encode(), self.handshake.salt) if password else b""
        out = struct.pack("<IIB23s", capabilities, MAX_PAYLOAD, charset, b"")
        out += user.encode() + b"\0"
        if capabilities & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            out += lenenc(len(auth)) + auth
        else:
            out += bytes([len(auth)]) + auth
        if database:
            out += database.encode() + b"\0"
        if capabilities & CLIENT.PLUGIN_AUTH:
            out += plugin.encode() + b"\0"
        self.capabilities = capabilities
        return out

    def login(
        self, user: str, password: str, database: str | None = None, *,
        capabilities: int = DEFAULT_CAPABILITIES,
    ) -> Ok:
        """Greeting, response, auth switch (native password only), OK. ServerError on ERR."""
        if self.handshake is None:
            self.read_handshake()
        self.send_packet(self.handshake_response(user, password, database, capabilities=capabilities), seq=1)
        while True:
            reply = self.read_packet()
            kind = reply[:1]
            if kind == b"\x00":
                return Ok.parse(reply)
            if kind == b"\xff":
                raise ServerError.parse(reply)
            if kind == b"\xfe":  # auth switch request: plugin name, then the new salt
                name, pos = _cstring(reply, 1)
                if name != b"mysql_native_password":
                    raise NotImplementedError(f"auth plugin {name!r}")
                salt = reply[pos:].rstrip(b"\0")
                self.send_packet(scramble_native_password(password.encode(), salt) if password else b"")
                continue
            if kind == b"\x01":  # auth more data (e.g. caching_sha2 fast-auth ok): keep reading
                continue
            raise AssertionError(f"unexpected packet during auth: {reply[:40]!r}")

    # ---------------------------------------------------------------- command phase
    def command(self, cmd: int, arg: bytes = b"") -> None:
        self.send_packet(bytes([cmd]) + arg, seq=0)

    def _is_eof(self, payload: bytes) -> bool:
        return payload[:1] == b"\xfe" and len(payload) < 9

    def read_result(self) -> Result:
        """One result of a command: OK, ERR (raised) or a text-protocol result set."""
        first = self.read_packet()
        if first[:1] == b"\x00":
            ok = Ok.parse(first)
            return Result([], [], ok, ok.status)
        if first[:1] == b"\xff":
            raise ServerError.parse(first)
        if first[:1] == b"\xfb":
            raise AssertionError("server asked for a LOCAL INFILE; this client never sends files")
        ncols, _ = _lenenc_int(first, 0)
        names = []
        for _ in range(ncols or 0):
            col = self.read_packet()
            pos = 0
            for _skip in range(4):  # catalog, schema, table, org_table
                _, pos = _lenenc_bytes(col, pos)
            name, pos = _lenenc_bytes(col, pos)
            names.append((name or b"").decode())
        deprecate_eof = bool(self.capabilities & CLIENT.DEPRECATE_EOF)
        if not deprecate_eof:
            eof = self.read_packet()
            assert self._is_eof(eof), f"expected EOF after column definitions, got {eof[:20]!r}"
        rows = []
        while True:
            pkt = self.read_packet()
            if pkt[:1] == b"\xff":
                raise ServerError.parse(pkt)
            if pkt[:1] == b"\xfe" and len(pkt) < (0xFFFFFF if deprecate_eof else 9):
                status = Ok.parse(pkt).status if deprecate_eof else struct.unpack_from("<H", pkt, 3)[0]
                return Result(names, rows, None, status)
            pos, row = 0, []
            while pos < len(pkt):
                val, pos = _lenenc_bytes(pkt, pos)
                row.append(val)
            rows.append(tuple(row))

    def query(self, sql: str | bytes) -> list[Result]:
        """COM_QUERY; all results (more than one for multi-statements / procedures)."""
        self.command(COMMAND.COM_QUERY, sql.encode() if isinstance(sql, str) else sql)
        results = [self.read_result()]
        while results[-1].status & SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS:
            results.append(self.read_result())
        return results

    def scalar(self, sql: str) -> Any:
        """First column of the first row of the last result, as text (None for NULL)."""
        res = self.query(sql)[-1]
        value = res.rows[0][0]
        return None if value is None else value.decode()

    def ping(self) -> Ok:
        self.command(COMMAND.COM_PING)
        res = self.read_result()
        assert res.ok is not None
        return res.ok

    # ---------------------------------------------------------------- endings
    def quit(self) -> None:
        try:
            self.command(COMMAND.COM_QUIT)
        except OSError:
            pass
        self.sock.close()

    def abort(self) -> None:
        """Close with a TCP RST (SO_LINGER 0) and no COM_QUIT: a crashed client."""
        try:
            if self.sock.family != socket.AF_UNIX:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def wait_closed(self, timeout: float) -> list[bytes]:
        """Read until the server closes the connection; returns the packets it sent meanwhile.

        Raises TimeoutError if it is still open after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        packets: list[bytes] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"server kept the connection open for {timeout}s; got {packets!r}")
            self.sock.settimeout(left)
            try:
                packets.append(self.read_packet())
            except ConnectionClosed:
                return packets
            except TimeoutError:
                continue
            except OSError:  # e.g. ECONNRESET surfacing from recv
                return packets
            finally:
                self.sock.settimeout(self.timeout)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- recorder


class HandshakeRecorder:
    """A TCP relay (127.0.0.1:<free port>) to ``upstream`` that records handshake responses.

    Every client connection is relayed byte for byte in both directions; the client's first packet
    (the HandshakeResponse) is parsed into ``responses``. A relay thread per connection; all of
    them stop at ``close()``.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.host, self.port = self.listener.getsockname()
        self.responses: list[HandshakeResponse] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._relay, args=(client,), daemon=True)
            self._threads.append(t)
            t.start()

    def _relay(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        self._socks += [client, server]
        first = bytearray()
        parsed = False
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for s in ready:
                    data = s.recv(1 << 20)
                    if not data:
                        return
                    (server if s is client else client).sendall(data)
                    if s is client and not parsed:
                        first += data
                        if len(first) >= 4 and len(first) >= 4 + int.from_bytes(first[:3], "little"):
                            parsed = True
                            n = int.from_bytes(first[:3], "little")
                            try:
                                self.responses.append(HandshakeResponse.parse(bytes(first[4 : 4 + n])))
                            except Exception:  # a client that speaks SSL first etc.: record nothing
                                pass
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for t in [self._accept_thread, *self._threads]:
            t.join(timeout=2)
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> HandshakeRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
