"""Spec: nothing one client session did is visible to the next one that dbkeeper serves.

dbkeeper keeps one upstream connection and hands it from session to session, so it must reset
the upstream session (COM_RESET_CONNECTION + the client's database and charset) in between:

    given session A through dbkeeper created some session state (and can see it),
    when A disconnects - cleanly (COM_QUIT) or abruptly (RST, no COM_QUIT) -
    and session B connects through dbkeeper over the same transport,
    then B sees none of A's state.

The same scenarios run against MariaDB itself (``direct``) as a control: there every session is a
new server connection, so they must pass; a failure there is a bug in the test.

Also: connect-query-close 100 times through dbkeeper opens at most one upstream connection.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
from pymysql.constants import COMMAND

from tests.integration.client_ops import (
    OTHER_DB,
    TRANSPORTS,
    Target,
    dbkeeper_target_of,
)

RUN_ID = os.urandom(3).hex()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def target_of(direct, request) -> Callable[[str], Target]:
    def get(name: str) -> Target:
        return direct if name == "direct" else dbkeeper_target_of(request.getfixturevalue("dbk"))
    return get


# --------------------------------------------------------------------------- helpers


def connect(target: Target, transport: str, **kw: Any) -> pymysql.connections.Connection:
    """A PyMySQL session that sets nothing itself (autocommit=None: no SET AUTOCOMMIT)."""
    where = {"unix_socket": target.unix_socket} if transport == "unix" else {"host": target.host, "port": target.port}
    params: dict[str, Any] = dict(user=target.user, password=target.password, database=target.database,
                                  charset="utf8mb4", autocommit=None, connect_timeout=10, read_timeout=30)
    params.update(kw)
    return pymysql.connect(**where, **params)


def rows(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        out = list(cur.fetchall()) if cur.description else []
        while cur.nextset():
            pass
        return out


def one(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> Any:
    return rows(conn, sql, args)[0][0]


def errno_of(conn: pymysql.connections.Connection, sql: str) -> int:
    with pytest.raises(pymysql.MySQLError) as info:
        rows(conn, sql)
    return info.value.args[0]


def abrupt_close(conn: pymysql.connections.Connection) -> None:
    """Drop the connection like a crashed client: RST on TCP, no COM_QUIT at all."""
    sock = conn._sock
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    conn._force_close()  # PyMySQL forgets the socket: it never sends COM_QUIT


def eventually(cond: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)  # polling interval under the deadline


@dataclasses.dataclass
class Ctx:
    target: Target
    direct: Target
    transport: str
    table: str
    lock: str


# --------------------------------------------------------------------------- the states


@dataclasses.dataclass
class State:
    given: Callable[[pymysql.connections.Connection, Ctx], None]
    then: Callable[[pymysql.connections.Connection, Ctx], None]
    needs_table: bool = False


def _temp_given(a, ctx):
    rows(a, "CREATE TEMPORARY TABLE tmp_leak (id INT)")
    rows(a, "INSERT INTO tmp_leak VALUES (1)")
    assert one(a, "SELECT COUNT(*) FROM tmp_leak") == 1


def _temp_then(b, ctx):
    assert errno_of(b, "SELECT * FROM tmp_leak") == 1146  # ER_NO_SUCH_TABLE


def _uvar_given(a, ctx):
    rows(a, "SET @x = 'leaked', @y = 42")
    assert one(a, "SELECT @x") == "leaked"


def _uvar_then(b, ctx):
    assert rows(b, "SELECT @x, @y") == [(None, None)]


def _tx_given(a, ctx):
    rows(a, "START TRANSACTION")
    rows(a, f"UPDATE `{ctx.table}` SET v = 'dirty' WHERE id = 1")
    rows(a, f"INSERT INTO `{ctx.table}` VALUES (2, 'uncommitted')")
    assert rows(a, f"SELECT id, v FROM `{ctx.table}` ORDER BY id") == [(1, "dirty"), (2, "uncommitted")]


def _tx_then(b, ctx):
    assert rows(b, f"SELECT id, v FROM `{ctx.table}` ORDER BY id") == [(1, "orig")]
    assert one(b, "SELECT @@in_transaction") == 0
    # and the row lock is gone: a direct session updates the row without waiting
    with connect(ctx.direct, "tcp") as d:
        rows(d, "SET SESSION innodb_lock_wait_timeout = 1")
        rows(d, "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
        # A's insert is rolled back (the server does that when it has processed A's end)
        eventually(lambda: one(d, f"SELECT COUNT(*) FROM `{ctx.table}`") == 1, "A's insert is rolled back")
        with d.cursor() as cur:  # ER_LOCK_WAIT_TIMEOUT (1205) after 1 s if A's lock is still held
            assert cur.execute(f"UPDATE `{ctx.table}` SET v = 'direct' WHERE id = 1") == 1
        d.commit()


def _lock_given(a, ctx):
    assert one(a, "SELECT GET_LOCK(%s, 0)", (ctx.lock,)) == 1


def _lock_then(b, ctx):
    # a lock is server-wide: the server frees it when it has processed A's end, which (on MariaDB
    # itself too) may land a moment after B's connect - so: free within a short deadline
    eventually(lambda: one(b, "SELECT IS_FREE_LOCK(%s)", (ctx.lock,)) == 1, f"lock {ctx.lock} is free")


def _ps_given(a, ctx):
    rows(a, "PREPARE s_leak FROM 'SELECT 1'")
    assert one(a, "EXECUTE s_leak") == 1


def _ps_then(b, ctx):
    assert errno_of(b, "EXECUTE s_leak") == 1243  # ER_UNKNOWN_STMT_HANDLER


_SESSION_VARS = ("SELECT @@session.sql_mode, @@autocommit, @@session.time_zone, @@session.tx_isolation,"
                 " @@session.wait_timeout, @@session.sql_select_limit")


def _vars_given(a, ctx):
    rows(a, "SET SESSION sql_mode = 'ANSI_QUOTES,NO_BACKSLASH_ESCAPES'")
    rows(a, "SET autocommit = 0")
    rows(a, "SET SESSION time_zone = '+05:00', SESSION wait_timeout = 12345, SESSION sql_select_limit = 3")
    rows(a, "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    assert rows(a, _SESSION_VARS) == [("ANSI_QUOTES,NO_BACKSLASH_ESCAPES", 0, "+05:00", "SERIALIZABLE", 12345, 3)]


def _vars_then(b, ctx):
    with connect(ctx.direct, "tcp") as fresh:  # what a brand-new MariaDB session has
        expected = rows(fresh, _SESSION_VARS)
    assert expected[0][1] == 1
    assert rows(b, _SESSION_VARS) == expected


_CHARSET_VARS = ("SELECT @@character_set_client, @@character_set_connection, @@character_set_results, "
                 "@@collation_connection")


def _charset_given(a, ctx):
    rows(a, "SET NAMES latin1")
    assert one(a, "SELECT @@character_set_client") == "latin1"


def _charset_then(b, ctx):
    with connect(ctx.direct, "tcp") as fresh:
        expected = rows(fresh, _CHARSET_VARS)
    assert rows(b, _CHARSET_VARS) == expected
    assert one(b, "SELECT %s", ("ü😀",)) == "ü😀"


def _db_given(a, ctx):
    rows(a, f"USE {OTHER_DB}")
    assert one(a, "SELECT DATABASE()") == OTHER_DB


def _db_then(b, ctx):
    assert one(b, "SELECT DATABASE()") == ctx.target.database


def _insert_id_given(a, ctx):
    rows(a, f"INSERT INTO `{ctx.table}` (v) VALUES ('auto')")
    assert one(a, "SELECT LAST_INSERT_ID()") > 0


def _insert_id_then(b, ctx):
    assert one(b, "SELECT LAST_INSERT_ID()") == 0


def _multi_option_given(a, ctx):
    # COM_SET_OPTION(MYSQL_OPTION_MULTI_STATEMENTS_ON): a client turning multi-statements on later.
    # A server (or dbkeeper) may refuse it with an ERR: then there is no state to leak.
    a._execute_command(COMMAND.COM_SET_OPTION, b"\x00\x00")
    try:
        a._read_packet()
    except pymysql.MySQLError:
        return
    assert rows(a, "SELECT 1; SELECT 2") == [(1,)]


def _multi_option_then(b, ctx):
    # B did not ask for CLIENT_MULTI_STATEMENTS: "a; b" is a syntax error for it
    assert errno_of(b, "SELECT 1; SELECT 2") == 1064


STATES: dict[str, State] = {
    "temporary_table": State(_temp_given, _temp_then),
    "user_variable": State(_uvar_given, _uvar_then),
    "uncommitted_rows_and_row_locks": State(_tx_given, _tx_then, needs_table=True),
    "named_lock": State(_lock_given, _lock_then),
    "prepared_statement": State(_ps_given, _ps_then),
    "session_variables": State(_vars_given, _vars_then),
    "charset": State(_charset_given, _charset_then),
    "current_database": State(_db_given, _db_then),
    "last_insert_id": State(_insert_id_given, _insert_id_then, needs_table=True),
    "multi_statements_option": State(_multi_option_given, _multi_option_then),
}


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("ending", ["clean", "abrupt"])
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("target_name", ["direct", "dbkeeper"])
def test_state_does_not_leak_to_the_next_session(target_name, transport, ending, state, direct, target_of):
    target = target_of(target_name)
    spec = STATES[state]
    n = f"{RUN_ID}_{target_name[0]}{transport[0]}{ending[0]}_{state[:12]}"
    ctx = Ctx(target, direct, transport, table=f"iso_{n}", lock=f"k_{n}")
    if spec.needs_table:
        with connect(direct, "tcp", autocommit=True) as d:
            rows(d, f"CREATE TABLE `{ctx.table}` (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
            rows(d, f"INSERT INTO `{ctx.table}` VALUES (1, 'orig')")
    try:
        # given session A left state behind
        a = connect(target, transport)
        spec.given(a, ctx)
        # when it disconnects
        if ending == "clean":
            a.close()
        else:
            abrupt_close(a)
        # and the next session connects
        with connect(target, transport) as b:
            # then it sees none of it (and is a working session)
            spec.then(b, ctx)
            assert one(b, "SELECT 'alive'") == "alive"
    finally:
        if spec.needs_table:
            with connect(direct, "tcp", autocommit=True) as d:
                rows(d, f"DROP TABLE IF EXISTS `{ctx.table}`")


# --------------------------------------------------------------------------- the anti-pattern


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_query_close_100_times_opens_at_most_one_upstream_connection(transport, dbk, upstream):
    target = dbkeeper_target_of(dbk)
    # given dbkeeper is running (and the helper connection of connections_opened() is open)
    upstream.connections_opened()
    before = upstream.connections_opened()
    # when a function connects, queries and closes 100 times, the anti-pattern
    for i in range(100):
        conn = connect(target, transport)
        try:
            assert rows(conn, "SELECT %s, DATABASE(), @x", (i,)) == [(i, target.database, None)]
        finally:
            conn.close()
    # then every answer was right and at most one upstream connection was opened for all of them
    opened = upstream.connections_opened() - before
    assert opened <= 1, f"{opened} upstream connections for 100 client sessions"
