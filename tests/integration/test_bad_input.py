"""Spec: a misbehaving client harms nobody but itself.

For every bad input (sent with the raw-packet client ``raw_mysql``):

    given a well-behaved session through dbkeeper is open,
    when another client sends the bad input,
    then the offending client is closed (or gets an ERR and is then closed),
    and the extension process is still alive,
    and the well-behaved session keeps working,
    and the next session gets a clean upstream (no @x left over, no half-read result).

The cases also run against MariaDB itself (``direct``) as a control for the test itself.
Plus: wrong password -> ERR 1045 / 28000; the TCP listener is loopback-only; the Unix socket is
0600. (LOAD DATA LOCAL INFILE, and packets that answer no request: test_local_infile.py.)
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.integration.client_ops import TRANSPORTS, Target, dbkeeper_target_of
from tests.integration.raw_mysql import RawClient, ServerError, packet

CLOSE_DEADLINE_S = 3.0  # how long a server may take to hang up on a client it must drop (MariaDB: ~0)


# --------------------------------------------------------------------------- fixtures


class Side:
    """A target with its liveness check: dbkeeper's process, or the MariaDB server itself."""

    def __init__(self, name: str, target: Target, alive: Callable[[], bool]) -> None:
        self.name, self.target, self.alive = name, target, alive


@pytest.fixture
def side_of(direct, upstream, request) -> Callable[[str], Side]:
    def get(name: str) -> Side:
        if name == "direct":
            return Side(name, direct, lambda: upstream.running)
        d = request.getfixturevalue("dbk")
        return Side(name, dbkeeper_target_of(d), d.alive)
    return get


# --------------------------------------------------------------------------- helpers


def endpoint(target: Target, transport: str) -> dict[str, Any]:
    return {"unix_socket": target.unix_socket} if transport == "unix" else {"host": target.host, "port": target.port}


def connect(target: Target, transport: str, **kw: Any) -> pymysql.connections.Connection:
    params: dict[str, Any] = dict(user=target.user, password=target.password, database=target.database,
                                  charset="utf8mb4", connect_timeout=10, read_timeout=30, autocommit=True)
    params.update(kw)
    return pymysql.connect(**endpoint(target, transport), **params)


def one(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def raw(target: Target, transport: str) -> RawClient:
    return RawClient.connect(**endpoint(target, transport), timeout=CLOSE_DEADLINE_S)


def logged_in(target: Target, transport: str) -> RawClient:
    """A raw session that logged in and left a user variable behind."""
    c = raw(target, transport)
    c.login(target.user, target.password, target.database)
    c.query("SET @x = 'dirty'")
    return c


def assert_dropped(c: RawClient) -> None:
    """The server hangs up on ``c`` (it may send ERR packets first, nothing else)."""
    try:
        packets = c.wait_closed(CLOSE_DEADLINE_S)
    finally:
        c.close()
    assert all(p[:1] == b"\xff" for p in packets), f"expected at most ERR packets, got {packets!r}"


def assert_unharmed(side: Side, good: pymysql.connections.Connection, transport: str) -> None:
    # the process is alive
    assert side.alive(), f"{side.name} died"
    # the concurrent well-behaved session keeps working
    marker = os.urandom(4).hex()
    assert one(good, "SELECT %s", (marker,)) == marker
    # the next session's upstream is clean: no leftover variable, transaction or result
    with connect(side.target, transport) as nxt:
        with nxt.cursor() as cur:
            cur.execute("SELECT @x, %s, @@in_transaction, DATABASE(), CONNECTION_ID()", (marker,))
            row = cur.fetchone()
            assert row[:4] == (None, marker, 0, side.target.database), row
            cur.execute("SELECT COUNT(*) FROM seq_1_to_10")
            assert cur.fetchall() == ((10,),)


# --------------------------------------------------------------------------- the cases


def garbage_before_handshake_response(c: RawClient, t: Target) -> bool:
    c.read_handshake()
    c.send_raw(b"GET / HTTP/1.1\r\nHost: dbkeeper\r\n\r\n")  # a header claiming 5 MB with seq 32
    return True


def garbage_packet_as_handshake_response(c: RawClient, t: Target) -> bool:
    c.read_handshake()
    c.send_raw(packet(b"\x01\x02\xfe" + b"\xff" * 40, 1))
    return True


def truncated_handshake_response(c: RawClient, t: Target) -> bool:
    c.read_handshake()
    full = c.handshake_response(t.user, t.password, t.database)
    c.send_raw(packet(full[:34], 1))  # well framed, cut in the middle of the user name
    return True


def truncated_packet_then_eof(c: RawClient, t: Target) -> bool:
    c.read_handshake()
    c.send_raw(packet(b"\x00" * 10, 1, length=100))  # claims 100 bytes, sends 10
    c.sock.shutdown(socket.SHUT_WR)
    return True


def wrong_sequence_id_in_handshake_response(c: RawClient, t: Target) -> bool:
    c.read_handshake()
    c.send_raw(packet(c.handshake_response(t.user, t.password, t.database), 0))  # must be 1
    return True


def oversized_header_before_auth_then_close(c: RawClient, t: Target) -> bool:
    c.read_handshake()
    c.send_raw(b"\xff\xff\xff\x01" + b"\x00" * 4096)  # claims 16 MB - 1, sends 4 KB
    c.abort()
    return False


def wrong_sequence_id_after_auth(c: RawClient, t: Target) -> bool:
    c.login(t.user, t.password, t.database)
    c.query("SET @x = 'dirty'")
    c.send_raw(packet(b"\x03SELECT 1", 3))  # a command must start at seq 0
    return True


def oversized_header_after_auth_then_close(c: RawClient, t: Target) -> bool:
    c.login(t.user, t.password, t.database)
    c.query("SET @x = 'dirty'")
    c.send_raw(b"\xff\xff\xff\x00\x03SELECT '" + b"x" * 8192)  # a 16 MB COM_QUERY, 8 KB of it
    c.abort()
    return False


def client_killed_mid_result(c: RawClient, t: Target) -> bool:
    c.login(t.user, t.password, t.database)
    c.query("SET @x = 'dirty'")
    c.command(0x03, b"SELECT seq, REPEAT('x', 1000) FROM seq_1_to_20000")  # a 20 MB result
    got = 0
    while got < 8192:
        n = c.read_some(8192 - got)
        assert n, "server closed before sending the result"
        got += n
    c.abort()  # gone, mid-result, no COM_QUIT
    return False


CASES = {f.__name__: f for f in (
    garbage_before_handshake_response, garbage_packet_as_handshake_response,
    truncated_handshake_response, truncated_packet_then_eof, wrong_sequence_id_in_handshake_response,
    oversized_header_before_auth_then_close, wrong_sequence_id_after_auth,
    oversized_header_after_auth_then_close, client_killed_mid_result,
)}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("target_name", ["direct", "dbkeeper"])
def test_bad_client_harms_nobody_else(target_name, transport, case, side_of):
    side = side_of(target_name)
    # given a well-behaved session is open
    with connect(side.target, transport) as good:
        assert one(good, "SELECT 1") == 1
        # when a client misbehaves
        c = raw(side.target, transport)
        still_open = CASES[case](c, side.target)
        # then the server hangs up on it (if it did not hang up itself)
        if still_open:
            assert_dropped(c)
        # and nobody else notices
        assert_unharmed(side, good, transport)


# --------------------------------------------------------------------------- random streams

_DANGEROUS = {0x08, 0x0C}  # COM_SHUTDOWN, COM_PROCESS_KILL: could hit other sessions of the app user


def _frames(stream: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 4 <= len(stream):
        n = int.from_bytes(stream[pos : pos + 3], "little")
        out.append(stream[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


framed = st.lists(
    st.tuples(st.integers(0, 255) | st.just(0), st.binary(min_size=1, max_size=64)), min_size=1, max_size=4
).map(lambda ps: b"".join(packet(p, seq) for seq, p in ps))
unframed = st.binary(min_size=1, max_size=300)


@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stream=st.one_of(framed, unframed))
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("target_name", ["direct", "dbkeeper"])
def test_random_bytes_after_auth_harm_nobody_else(target_name, transport, side_of, stream):
    assume(not any(f[:1] and f[0] in _DANGEROUS for f in _frames(stream)))
    side = side_of(target_name)
    with connect(side.target, transport) as good:
        # given a logged-in client that left state behind
        c = logged_in(side.target, transport)
        # when it sends random bytes and then ends its stream (FIN, so all of them are read)
        try:
            c.send_raw(stream)
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server already hung up on the first bad packet: fine
            pass
        # then the server answers whatever it parsed and hangs up (the client sent EOF)
        try:
            c.wait_closed(CLOSE_DEADLINE_S)
        finally:
            c.close()
        assert_unharmed(side, good, transport)


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("target_name", ["direct", "dbkeeper"])
def test_wrong_password_gets_err_1045_28000(target_name, transport, side_of):
    side = side_of(target_name)
    t = side.target
    # given a client with the wrong password, when it logs in, then ERR 1045 / 28000 and hang-up
    c = raw(t, transport)
    with pytest.raises(ServerError) as err:
        c.login(t.user, t.password + "-wrong", t.database)
    assert (err.value.errno, err.value.sqlstate) == (1045, "28000"), err.value
    assert_dropped(c)
    # and PyMySQL reports OperationalError 1045
    with pytest.raises(pymysql.err.OperationalError) as perr:
        connect(t, transport, password="wrong")
    assert perr.value.args[0] == 1045
    assert side.alive()


# --------------------------------------------------------------------------- exposure


def _non_loopback_ipv4() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    addrs = [line.split()[3].split("/")[0] for line in out.splitlines() if " inet " in line]
    return [a for a in addrs if not a.startswith("127.")]


def test_tcp_listener_is_not_reachable_on_a_non_loopback_address(dbk):
    addrs = _non_loopback_ipv4()
    if not addrs:
        pytest.skip("this machine has no non-loopback IPv4 address")
    # given dbkeeper listens on 127.0.0.1:port, when a client dials this machine's own
    # non-loopback address on that port, then the connection is refused
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((addrs[0], dbk.port), timeout=3).close()
    # (while loopback answers)
    with socket.create_connection(("127.0.0.1", dbk.port), timeout=3):
        pass


def test_unix_socket_is_mode_0600(dbk):
    st_ = os.stat(dbk.unix_socket)
    assert stat.S_ISSOCK(st_.st_mode)
    assert stat.S_IMODE(st_.st_mode) == 0o600, oct(stat.S_IMODE(st_.st_mode))
