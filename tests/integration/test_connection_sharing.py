"""Spec: connection sharing (issue 9). Many clients share few upstream connections; a session
that cannot move keeps its upstream; a session that moved finds its own state, and only its own.

dbkeeper tracks every client's session. A client is *movable* while it has no open transaction,
no LOCK TABLES, no GET_LOCK lock, no temporary table, no user variable, no prepared statement
(binary or SQL PREPARE), nothing pending (SQL_CALC_FOUND_ROWS' count, the last statement's
warnings or errors) and nothing else the server's session trackers report as changed; otherwise
it is *pinned* and keeps its upstream connection.

- Sticky: a client keeps its upstream while nobody else needs one; while the pool has room
  (DBKEEPER_POOL_SIZE) a new client gets a new upstream.
- Shared: when every upstream is taken and another client needs one, a movable client's idle
  upstream is lent to it; the moved client gets an upstream again at its next command, with its
  database, session variables (time_zone, sql_mode, autocommit, character set, isolation level,
  wait_timeout, ...) and LAST_INSERT_ID() replayed first. Its CONNECTION_ID() changes (README).
- A client that finds no upstream within DBKEEPER_BORROW_TIMEOUT_MS gets 1040.
- Logged at debug: `session_pinned` {reason} and `session_moved` {reason: shared | upstream_lost,
  from_connection_id, to_connection_id}.

Tests: 64 clients with global connections on 4 upstreams; every pin reason (the pinned client
keeps its upstream and its state, and a transient pin ends); moved sessions (state replayed,
nothing of another session visible); SHOW WARNINGS / SHOW ERRORS under contention. That nothing
leaks from one client session to the next is test_session_isolation.py's, unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest
from pymysql.constants import COMMAND

from tests.integration.raw_mysql import RawClient, ServerError
from tests.integration.sharing_workload import SCHEMA, run_clients, worker_process
from tests.polling import wait_until

RUN_ID = os.urandom(3).hex()
ER_CON_COUNT_ERROR = 1040  # Too many connections: no upstream within DBKEEPER_BORROW_TIMEOUT_MS
ER_NOT_LOCKED = 1100       # Table '...' was not locked with LOCK TABLES
ER_NO_SUCH_TABLE = 1146


# --------------------------------------------------------------------------- helpers


def through(running, **kw: Any) -> pymysql.connections.Connection:
    """A PyMySQL client of dbkeeper (autocommit on unless asked otherwise)."""
    params: dict[str, Any] = dict(connect_timeout=10, read_timeout=30, autocommit=True)
    params.update(kw)
    return pymysql.connect(**running.connect_kwargs(**params))


def rows(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        out = [tuple(r) for r in cur.fetchall()] if cur.description else []
        while cur.nextset():
            pass
        return out


def one(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> Any:
    return rows(conn, sql, args)[0][0]


def errno_of(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> int:
    with pytest.raises(pymysql.MySQLError) as info:
        rows(conn, sql, args)
    return info.value.args[0]


def another_client(running, **kw: Any) -> tuple[pymysql.connections.Connection | None, int | None]:
    """Client B connects and runs one statement: (its connection, still open, None), or
    (None, the errno it got) - 1040 at connect or at the statement, wherever dbkeeper waits."""
    try:
        b = through(running, **kw)
    except pymysql.MySQLError as exc:
        return None, exc.args[0]
    try:
        assert one(b, "SELECT 'B'") == "B"
    except pymysql.MySQLError as exc:
        with contextlib.suppress(Exception):
            b.close()
        return None, exc.args[0]
    return b, None


def one_upstream(dbkeeper_factory, db, borrow_timeout_ms: int = 300, pool_size: int = 1):
    """A dbkeeper with `pool_size` upstream connections that makes a client wait at most
    `borrow_timeout_ms` for one, its INIT-time connection open."""
    running = dbkeeper_factory(db, DBKEEPER_POOL_SIZE=str(pool_size),
                               DBKEEPER_BORROW_TIMEOUT_MS=str(borrow_timeout_ms))
    running.wait_for_event("upstream_connected")
    return running


def moves(running, reason: str = "shared") -> list[dict]:
    return [e for e in running.events("session_moved") if e.get("reason") == reason]


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Connections to close after the test, whatever state it left them in."""
    conns: list[Any] = []
    yield conns
    for conn in reversed(conns):
        with contextlib.suppress(Exception):
            conn.close()


@dataclasses.dataclass(frozen=True)
class Names:
    other_db: str   # a second database the app user may use
    seq: str        # appdb: id AUTO_INCREMENT, tag
    five: str       # appdb: ids 1..5
    plain: str      # appdb: a table to LOCK
    proc: str       # appdb: CALL proc() sets @from_proc = 7
    func: str       # appdb: SELECT func() sets @hidden = 42 (only the session tracker can tell)


@pytest.fixture(scope="module")
def names(mariadb) -> Iterator[Names]:
    n = Names(other_db=f"share_other_{RUN_ID}", seq=f"share_seq_{RUN_ID}", five=f"share_five_{RUN_ID}",
              plain=f"share_plain_{RUN_ID}", proc=f"share_proc_{RUN_ID}", func=f"share_func_{RUN_ID}")
    with mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{n.other_db}`")
        cur.execute(f"GRANT ALL PRIVILEGES ON `{n.other_db}`.* TO '{mariadb.user}'@'%'")
        cur.execute(f"CREATE TABLE appdb.`{n.seq}` (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(40)) ENGINE=InnoDB")
        cur.execute(f"CREATE TABLE appdb.`{n.five}` (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO appdb.`{n.five}` VALUES (1), (2), (3), (4), (5)")
        cur.execute(f"CREATE TABLE appdb.`{n.plain}` (id INT) ENGINE=InnoDB")
        cur.execute(f"CREATE PROCEDURE appdb.`{n.proc}`() BEGIN SET @from_proc = 7; END")
        cur.execute(f"CREATE FUNCTION appdb.`{n.func}`() RETURNS INT DETERMINISTIC "
                    "BEGIN SET @hidden = 42; RETURN 1; END")
    yield n
    with mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{n.other_db}`")
        for table in (n.seq, n.five, n.plain):
            cur.execute(f"DROP TABLE IF EXISTS appdb.`{table}`")
        cur.execute(f"DROP PROCEDURE IF EXISTS appdb.`{n.proc}`")
        cur.execute(f"DROP FUNCTION IF EXISTS appdb.`{n.func}`")


# --------------------------------------------------------------------------- 64 clients, 4 upstreams

CLIENTS_HERE = 32            # threads of the test process
WORKERS, CLIENTS_PER_WORKER = 2, 16
TRANSACTIONS = 1000
POOL_SIZE = 4


def test_64_clients_with_global_connections_run_1000_transactions_on_4_upstream_connections(
        dbkeeper_factory, fresh_mariadb):
    """(Must show b.) Each client keeps one connection for its whole life (PyMySQL defaults:
    autocommit off) and runs short transactions (lock its counter row, bump it, write a ledger
    row, COMMIT). With DBKEEPER_POOL_SIZE=4 every client is served, every transaction takes
    effect exactly once, and the server never sees more than 4 of dbkeeper's connections."""
    db = fresh_mariadb  # of its own: every session of the app user on it is one of dbkeeper's
    clients = CLIENTS_HERE + WORKERS * CLIENTS_PER_WORKER
    with db.admin(database=db.database) as conn, conn.cursor() as cur:
        for statement in SCHEMA:
            cur.execute(statement)
        cur.executemany("INSERT INTO counters VALUES (%s, 0)", [(c,) for c in range(clients)])
    running = dbkeeper_factory(db, DBKEEPER_POOL_SIZE=str(POOL_SIZE))
    running.wait_for_event("upstream_connected")

    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:  # dbkeeper's sessions on the server, every ~20 ms
        while not stop.is_set():
            samples.append(len(db.processlist(user=db.user)))
            stop.wait(0.02)

    mp = multiprocessing.get_context("spawn")
    tickets = mp.Value("i", 0)
    start = mp.Barrier(clients, timeout=60)
    results = mp.Queue()
    kwargs = running.connect_kwargs(connect_timeout=10, read_timeout=60)  # otherwise the driver's defaults
    workers = [mp.Process(target=worker_process, name=f"clients-{w}", daemon=True,
                          args=(kwargs, list(range(CLIENTS_HERE + w * CLIENTS_PER_WORKER,
                                                   CLIENTS_HERE + (w + 1) * CLIENTS_PER_WORKER)),
                                tickets, TRANSACTIONS, start, results))
               for w in range(WORKERS)]
    sampler = threading.Thread(target=sample, daemon=True)
    began = time.monotonic()
    sampler.start()
    try:
        for worker in workers:
            worker.start()
        outcomes = [run_clients(kwargs, list(range(CLIENTS_HERE)), tickets, TRANSACTIONS, start)]
        outcomes += [results.get(timeout=120) for _ in workers]
    finally:
        stop.set()
        sampler.join()
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    elapsed = time.monotonic() - began

    committed = sorted(t for o in outcomes for t in o["committed"])
    errors = [e for o in outcomes for e in o["errors"]]
    by_errno = collections.Counter(e[2] for e in errors)
    shared = wait_until(lambda: moves(running), timeout=2) or []
    print(f"\n{clients} clients, DBKEEPER_POOL_SIZE={POOL_SIZE}: {len(committed)}/{TRANSACTIONS} transactions "
          f"committed, {len(errors)} errors {dict(by_errno)}, max {max(samples, default=0)} upstream sessions "
          f"in {len(samples)} samples, {elapsed:.1f} s, {len(shared)} session_moved (shared) events")

    assert not errors, f"{len(errors)} errors, first: {errors[:3]}"
    assert len(samples) >= 10 and max(samples) <= POOL_SIZE, f"upstream sessions sampled: max {max(samples)}"
    ledger = db.query("SELECT ticket, client, seen FROM appdb.ledger")
    assert sorted(r["ticket"] for r in ledger) == committed == list(range(TRANSACTIONS))  # each exactly once
    counters = {r["client"]: r["n"] for r in db.query("SELECT client, n FROM appdb.counters")}
    seen: dict[int, list[int]] = collections.defaultdict(list)
    for r in ledger:
        seen[r["client"]].append(r["seen"])
    for client in range(clients):  # a client's transactions ran one after another, none split or lost
        assert sorted(seen[client]) == list(range(counters[client])), f"client {client}"
    assert shared, "no session was ever moved: 64 clients cannot have had 4 upstream connections"


# --------------------------------------------------------------------------- pinned sessions


@dataclasses.dataclass
class Ctx:
    db: Any          # tests.mariadb.MariaDB: a direct look at the server (root)
    names: Names
    a_id: int        # A's CONNECTION_ID() before it pinned itself
    tag: str
    lock: str


@dataclasses.dataclass
class Pin:
    """given(a): A establishes state that pins it; intact(a): A (and the server) find it as it was;
    release(a): A ends a transient pin (None: it lasts); after(a): A after taking an upstream back."""
    given: Callable[[Any, Ctx], None]
    intact: Callable[[Any, Ctx], None]
    release: Callable[[Any, Ctx], None] | None = None
    after: Callable[[Any, Ctx], None] | None = None


def _root_one(ctx: Ctx, sql: str, args: Any = None) -> Any:
    return next(iter(ctx.db.query(sql, args)[0].values()))


def _tx_given(a, ctx):
    rows(a, "BEGIN")
    rows(a, f"INSERT INTO appdb.`{ctx.names.seq}` (tag) VALUES (%s)", (ctx.tag,))


def _tx_intact(a, ctx):
    assert one(a, "SELECT @@in_transaction") == 1
    assert one(a, f"SELECT COUNT(*) FROM appdb.`{ctx.names.seq}` WHERE tag = %s", (ctx.tag,)) == 1
    assert _root_one(ctx, f"SELECT COUNT(*) FROM appdb.`{ctx.names.seq}` WHERE tag = %s", (ctx.tag,)) == 0


def _tx_after(a, ctx):
    assert one(a, f"SELECT COUNT(*) FROM appdb.`{ctx.names.seq}` WHERE tag = %s", (ctx.tag,)) == 1
    assert _root_one(ctx, f"SELECT COUNT(*) FROM appdb.`{ctx.names.seq}` WHERE tag = %s", (ctx.tag,)) == 1


def _lock_tables_given(a, ctx):
    rows(a, f"LOCK TABLES appdb.`{ctx.names.plain}` WRITE")


def _lock_tables_intact(a, ctx):
    assert errno_of(a, f"SELECT COUNT(*) FROM appdb.`{ctx.names.five}`") == ER_NOT_LOCKED  # still in LOCK TABLES
    assert one(a, f"SELECT COUNT(*) FROM appdb.`{ctx.names.plain}`") == 0  # (and that error's diagnostics cleared)
    in_use = ctx.db.query(f"SHOW OPEN TABLES FROM appdb LIKE '{ctx.names.plain}'")
    assert [r["In_use"] for r in in_use] == [1]


def _lock_tables_after(a, ctx):
    assert one(a, f"SELECT COUNT(*) FROM appdb.`{ctx.names.five}`") == 5
    assert [r["In_use"] for r in ctx.db.query(f"SHOW OPEN TABLES FROM appdb LIKE '{ctx.names.plain}'")] in ([], [0])


def _user_lock_given(a, ctx):
    assert one(a, "SELECT GET_LOCK(%s, 0)", (ctx.lock,)) == 1


def _user_lock_intact(a, ctx):
    assert _root_one(ctx, "SELECT IS_USED_LOCK(%s)", (ctx.lock,)) == ctx.a_id
    assert one(a, "SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (ctx.lock,)) == 1


def _temp_given(a, ctx):
    rows(a, "CREATE TEMPORARY TABLE pin_tmp (id INT)")
    rows(a, "INSERT INTO pin_tmp VALUES (1), (2)")


def _temp_intact(a, ctx):
    assert one(a, "SELECT COUNT(*) FROM pin_tmp") == 2


def _uvar_given(a, ctx):
    rows(a, "SET @v = 'kept'")


def _uvar_intact(a, ctx):
    assert one(a, "SELECT @v") == "kept"


def _sql_prepare_given(a, ctx):
    rows(a, "PREPARE pin_ps FROM 'SELECT 41 + 1'")


def _sql_prepare_intact(a, ctx):
    assert one(a, "EXECUTE pin_ps") == 42


def _found_rows_given(a, ctx):
    assert rows(a, f"SELECT SQL_CALC_FOUND_ROWS id FROM appdb.`{ctx.names.five}` ORDER BY id LIMIT 1") == [(1,)]


def _found_rows_intact(a, ctx):  # the next statement: it also ends the pin
    assert one(a, "SELECT FOUND_ROWS()") == 5


def _call_given(a, ctx):
    rows(a, f"CALL appdb.`{ctx.names.proc}`()")


def _call_intact(a, ctx):
    assert one(a, "SELECT @from_proc") == 7


def _tracked_given(a, ctx):  # nothing in the statement's text says it; the session tracker does
    assert one(a, f"SELECT appdb.`{ctx.names.func}`()") == 1


def _tracked_intact(a, ctx):
    assert one(a, "SELECT @hidden") == 42


def _nothing(a, ctx):
    pass


PINS: dict[str, Pin] = {  # keyed by the session_pinned reason
    "transaction": Pin(_tx_given, _tx_intact, lambda a, ctx: rows(a, "COMMIT"), _tx_after),
    "lock_tables": Pin(_lock_tables_given, _lock_tables_intact, lambda a, ctx: rows(a, "UNLOCK TABLES"),
                       _lock_tables_after),
    "user_lock": Pin(_user_lock_given, _user_lock_intact),
    "temporary_table": Pin(_temp_given, _temp_intact),
    "user_variable": Pin(_uvar_given, _uvar_intact),
    "prepared_statement": Pin(_sql_prepare_given, _sql_prepare_intact),
    "found_rows": Pin(_found_rows_given, _found_rows_intact, _nothing),  # FOUND_ROWS() read: nothing pending
    "stored_program": Pin(_call_given, _call_intact),
    "state_change": Pin(_tracked_given, _tracked_intact),
}


@pytest.mark.parametrize("reason", list(PINS))
def test_a_pinned_session_keeps_its_upstream_and_its_state(reason, dbkeeper_factory, mariadb, names, closing):
    pin = PINS[reason]
    running = one_upstream(dbkeeper_factory, mariadb)  # one upstream; B waits 300 ms at most
    a = through(running)
    closing.append(a)
    ctx = Ctx(mariadb, names, one(a, "SELECT CONNECTION_ID()"), tag=f"{reason}-{RUN_ID}", lock=f"pin_{RUN_ID}")
    # given A holds session state that cannot be moved to another connection
    pin.given(a, ctx)
    # when B needs an upstream connection, and the only one is A's
    b, errno = another_client(running)
    closing.append(b)
    # then B gets none: A keeps its upstream
    assert errno == ER_CON_COUNT_ERROR, "B was served on the only upstream connection, which is pinned by A"
    # ... with its state as it left it, and dbkeeper said why
    pin.intact(a, ctx)
    assert one(a, "SELECT CONNECTION_ID()") == ctx.a_id
    running.wait_for_event("session_pinned", timeout=2, reason=reason)
    if pin.release is None:
        return
    # when A ends the state (a transient pin)
    pin.release(a, ctx)
    # then B is served on A's upstream at once
    b, errno = another_client(running)
    closing.append(b)
    assert errno is None, f"B got {errno} after A's {reason} ended"
    # and A, needing one again, gets it back from the idle B
    assert one(a, "SELECT 1") == 1
    if pin.after is not None:
        pin.after(a, ctx)


# The binary protocol (COM_STMT_PREPARE / COM_STMT_EXECUTE), spoken raw: a statement id that
# only exists on the server connection that prepared it.


def _login(running) -> RawClient:
    client = RawClient.connect(host=running.host, port=running.port, timeout=10)
    client.login(running.upstream.user, running.upstream.password, running.upstream.database)
    return client


def _stmt_prepare(client: RawClient, sql: str) -> int:
    client.command(COMMAND.COM_STMT_PREPARE, sql.encode())
    first = client.read_packet()
    if first[:1] == b"\xff":
        raise ServerError.parse(first)
    stmt_id, columns, params = struct.unpack_from("<IHH", first, 1)
    for count in (params, columns):  # definitions, each list ended by an EOF
        for _ in range(count):
            client.read_packet()
        if count:
            client.read_packet()
    return stmt_id


def _stmt_execute_int(client: RawClient, stmt_id: int) -> int:
    """COM_STMT_EXECUTE of a one-column integer statement without parameters: its one value."""
    client.command(COMMAND.COM_STMT_EXECUTE, struct.pack("<IBI", stmt_id, 0, 1))
    first = client.read_packet()
    if first[:1] == b"\xff":
        raise ServerError.parse(first)
    assert first == b"\x01", f"one column expected, got {first!r}"
    column = client.read_packet()
    kind = column[-6]  # type, then flags (2), decimals (1), filler (2)
    client.read_packet()  # EOF after the column definitions
    row = client.read_packet()
    assert client.read_packet()[:1] == b"\xfe"  # EOF: one row only
    size = {0x03: 4, 0x08: 8}[kind]  # LONG, LONGLONG; row: 0x00, NULL bitmap (1 byte), value
    return int.from_bytes(row[2:2 + size], "little", signed=True)


def test_a_session_with_a_binary_prepared_statement_keeps_its_upstream(dbkeeper_factory, mariadb, closing):
    running = one_upstream(dbkeeper_factory, mariadb)
    a = _login(running)
    closing.append(a)
    a_id = int(a.scalar("SELECT CONNECTION_ID()"))
    # given A prepared a statement with COM_STMT_PREPARE
    stmt = _stmt_prepare(a, "SELECT 41 + 1")
    assert _stmt_execute_int(a, stmt) == 42
    # when B needs the only upstream connection
    b = RawClient.connect(host=running.host, port=running.port, timeout=10)
    closing.append(b)
    with pytest.raises(ServerError) as refused:
        b.login(running.upstream.user, running.upstream.password, running.upstream.database)
        b.query("SELECT 'B'")
    # then B gets none, and A's statement id still works on its own connection
    assert refused.value.errno == ER_CON_COUNT_ERROR
    assert _stmt_execute_int(a, stmt) == 42
    assert int(a.scalar("SELECT CONNECTION_ID()")) == a_id
    running.wait_for_event("session_pinned", timeout=2, reason="prepared_statement")


# --------------------------------------------------------------------------- moved sessions

STATE = ("SELECT DATABASE(), @@session.time_zone, @@session.sql_mode, @@autocommit, @@character_set_client, "
         "@@character_set_connection, @@character_set_results, @@session.tx_isolation, @@session.wait_timeout, "
         "LAST_INSERT_ID()")


def _set_state(conn, names: Names, *, database: str, time_zone: str, sql_mode: str, autocommit: bool,
               charset: str, isolation: str, wait_timeout: int) -> tuple[Any, ...]:
    """Replayable session state, set the ways a function sets it; what STATE reads back after."""
    rows(conn, f"USE `{database}`")  # COM_QUERY
    rows(conn, "SET time_zone = %s", (time_zone,))
    rows(conn, "SET SESSION sql_mode = %s", (sql_mode,))
    conn.autocommit(autocommit)  # PyMySQL: SET AUTOCOMMIT = n
    rows(conn, f"INSERT INTO appdb.`{names.seq}` (tag) VALUES ('moved')")
    conn.commit()
    insert_id = one(conn, "SELECT LAST_INSERT_ID()")
    rows(conn, f"SET NAMES {charset}")
    rows(conn, f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation}")
    rows(conn, "SET SESSION wait_timeout = %s", (wait_timeout,))
    expected = (database, time_zone, sql_mode, int(autocommit), charset, charset, charset,
                isolation.replace(" ", "-"), wait_timeout, insert_id)
    assert rows(conn, STATE) == [expected]
    assert one(conn, "SELECT @@in_transaction") == 0  # movable
    return expected


def test_a_moved_session_finds_its_state_replayed_and_nothing_of_the_session_that_had_its_upstream(
        dbkeeper_factory, mariadb, names, closing):
    """(Must show c.) Two upstream connections: C pins one for good, A holds the other, idle.
    B arrives: A's upstream is lent to B (a new session: nothing of A's), who fills it with state of
    its own and pins it. C leaves. A's next command runs on another connection (C's, reset, or a
    new one), with A's state replayed first."""
    running = one_upstream(dbkeeper_factory, mariadb, borrow_timeout_ms=1000, pool_size=2)
    a = through(running, autocommit=False)  # PyMySQL's default
    closing.append(a)
    a_first = one(a, "SELECT CONNECTION_ID()")
    c = through(running)
    closing.append(c)
    rows(c, "SET @c_secret = 'c-only'")  # pins C on the second connection for good
    c_id = one(c, "SELECT CONNECTION_ID()")
    assert c_id != a_first  # the pool had room: C got a connection of its own, A kept its own (sticky)
    # given A set state of every replayable kind, then went idle
    expected = _set_state(a, names, database=names.other_db, time_zone="+03:00", sql_mode="ANSI_QUOTES",
                          autocommit=False, charset="latin1", isolation="READ COMMITTED", wait_timeout=12345)
    # when B needs a connection: the pool is full, C is pinned, A is idle and movable
    b, errno = another_client(running)
    closing.append(b)
    assert errno is None, f"B got {errno}: A's idle upstream was not lent"
    assert one(b, "SELECT CONNECTION_ID()") == a_first
    with mariadb.connect(autocommit=True) as fresh:  # B's session is a new one: nothing of A's
        assert rows(b, STATE) == rows(fresh, STATE)
    rows(b, "SET time_zone = '-05:00', SESSION sql_mode = 'PIPES_AS_CONCAT', SESSION wait_timeout = 999")
    rows(b, "SET @secret = 'b-only'")
    rows(b, "CREATE TEMPORARY TABLE b_tmp (id INT)")
    rows(b, f"INSERT INTO appdb.`{names.seq}` (tag) VALUES ('b')")  # another LAST_INSERT_ID() on that connection
    # and C leaves, freeing the other connection
    c.close()
    # then A's next command runs on a new upstream, with everything A had set
    assert rows(a, STATE) == [expected]
    a_now = one(a, "SELECT CONNECTION_ID()")
    assert a_now != a_first  # documented: a moved session sees a new CONNECTION_ID()
    # and nothing of B's session nor of C's
    assert rows(a, "SELECT @secret, @c_secret") == [(None, None)]
    assert errno_of(a, "SELECT COUNT(*) FROM appdb.b_tmp") == ER_NO_SUCH_TABLE
    moved = running.wait_for_event("session_moved", timeout=2, reason="shared", from_connection_id=a_first)
    assert moved["to_connection_id"] == a_now
    # and B, pinned, kept its upstream and its state
    assert rows(b, "SELECT CONNECTION_ID(), @secret, @@session.time_zone") == [(a_first, "b-only", "-05:00")]
    assert one(b, "SELECT COUNT(*) FROM b_tmp") == 0


def test_two_movable_sessions_trading_one_upstream_each_see_only_their_own_state(
        dbkeeper_factory, mariadb, names, closing):
    """One upstream connection, two clients with different state of every replayable kind: each
    command of one moves the other off the connection, and each always finds its own state."""
    running = one_upstream(dbkeeper_factory, mariadb, borrow_timeout_ms=1000)
    a = through(running, autocommit=False)
    closing.append(a)
    expected_a = _set_state(a, names, database=names.other_db, time_zone="+03:00", sql_mode="ANSI_QUOTES",
                            autocommit=False, charset="latin1", isolation="READ COMMITTED", wait_timeout=12345)
    b = through(running, autocommit=False)  # served on A's upstream: A is idle and movable
    closing.append(b)
    expected_b = _set_state(b, names, database="appdb", time_zone="-05:00", sql_mode="PIPES_AS_CONCAT",
                            autocommit=True, charset="utf8mb4", isolation="SERIALIZABLE", wait_timeout=23456)
    assert all(x != y for x, y in zip(expected_a, expected_b, strict=True)), (expected_a, expected_b)
    for _ in range(3):
        assert rows(a, STATE) == [expected_a]
        assert rows(b, STATE) == [expected_b]
    assert wait_until(lambda: len(moves(running)) >= 6, timeout=2), f"{len(moves(running))} session_moved events"


# --------------------------------------------------------------------------- what the last statement did

AFTERMATH = {  # a statement, and a function that reports on it when asked as the next statement
    "ROW_COUNT": ("INSERT INTO appdb.`{seq}` (tag) VALUES ('rc'), ('rc'), ('rc')", "SELECT ROW_COUNT()"),
    "FOUND_ROWS": ("SELECT id FROM appdb.`{five}` ORDER BY id LIMIT 2", "SELECT FOUND_ROWS()"),
}


@pytest.mark.parametrize("function", list(AFTERMATH))
def test_a_function_about_the_previous_statement_answers_as_directly_whether_or_not_the_session_moved(
        function, dbkeeper_factory, mariadb, names, closing):
    """Between the statement and the question B needs the only upstream: dbkeeper either keeps A
    there (B gets 1040) or lends it and answers A's question as the server would have."""
    statement, ask = (sql.format(seq=names.seq, five=names.five) for sql in AFTERMATH[function])
    expected = _direct(mariadb, [statement, ask])
    assert expected[1] in ([(3,)], [(2,)]), expected
    running = one_upstream(dbkeeper_factory, mariadb)
    a = through(running)
    closing.append(a)
    got = [_run(a, statement)]
    b, errno = another_client(running)
    closing.append(b)
    assert errno in (None, ER_CON_COUNT_ERROR)
    got.append(_run(a, ask))
    assert got == expected


# --------------------------------------------------------------------------- warnings and errors
#
# The server keeps a session's diagnostics (SHOW WARNINGS, SHOW ERRORS, SHOW COUNT(*) ...) until a
# statement that uses a table: SELECT 1, SET, DO, USE, COMMIT or SHOW WARNINGS itself leave them in
# place (and report 0 warnings of their own). Whatever dbkeeper does - keep such a session pinned,
# or capture its diagnostics - the client reads what it would read on a connection of its own.

DIAGNOSTICS = {  # statement that leaves diagnostics, and the SHOW statements that read them
    "warning": ("SELECT CAST('12abc' AS SIGNED)", "SHOW WARNINGS", "SHOW COUNT(*) WARNINGS"),
    "error": ("SELECT * FROM appdb.no_such_table_here", "SHOW ERRORS", "SHOW COUNT(*) ERRORS"),
}


def _run(conn, sql: str) -> Any:
    """Rows, or ('error', errno)."""
    try:
        return rows(conn, sql)
    except pymysql.MySQLError as exc:
        return ("error", exc.args[0])


def _direct(mariadb, sequence: list[str]) -> list[Any]:
    """What the same statements give on a connection of the server's own (the oracle)."""
    with mariadb.connect(autocommit=True) as conn:
        return [_run(conn, sql) for sql in sequence]


def _clearing(names: Names) -> str:
    """A statement that uses a table: it clears the session's diagnostics."""
    return f"SELECT COUNT(*) FROM appdb.`{names.five}`"


@pytest.mark.parametrize("kind", list(DIAGNOSTICS))
def test_show_warnings_right_after_a_statement_that_left_some_is_the_clients_own(
        kind, dbkeeper_factory, mariadb, names, closing):
    statement, show, count = DIAGNOSTICS[kind]
    clearing = _clearing(names)
    expected = _direct(mariadb, [statement, show, count, clearing, show, count])
    assert expected[1] and expected[2] == [(1,)] and expected[4] == [] and expected[5] == [(0,)], expected
    running = one_upstream(dbkeeper_factory, mariadb)
    a = through(running)
    closing.append(a)
    # given A's last statement left a warning (an error)
    got = [_run(a, statement)]
    # when B needs the only upstream connection meanwhile
    b, errno = another_client(running)
    closing.append(b)
    # then A is not moved at that point: B gets none, and A reads its own diagnostics
    assert errno == ER_CON_COUNT_ERROR
    got += [_run(a, show), _run(a, count)]
    assert got == expected[:3]
    running.wait_for_event("session_pinned", timeout=2, reason="warnings")
    # when A's next statement clears them, A is movable again: B is served on its upstream
    got.append(_run(a, clearing))
    b, errno = another_client(running)
    closing.append(b)
    assert errno is None, f"B got {errno} after A's diagnostics were cleared"
    # and A, back on an upstream with its state replayed, sees no diagnostics of the replay's or B's
    got += [_run(a, show), _run(a, count)]
    assert got == expected


@pytest.mark.parametrize("kept_by", ["SELECT 1", "SET time_zone = '+01:00'", "COMMIT"])
def test_diagnostics_a_statement_without_tables_leaves_in_place_are_still_the_clients_own(
        kept_by, dbkeeper_factory, mariadb, names, closing):
    """A statement that uses no table does not clear the diagnostics: after it, a client that
    asks gets the earlier warning, as directly - whether dbkeeper kept it pinned (B gets 1040)
    or lent its upstream and kept the warning for it. Nothing of it reaches B."""
    statement, show, count = DIAGNOSTICS["warning"]
    expected = _direct(mariadb, [statement, kept_by, show, count])
    assert expected[2] and expected[3] == [(1,)], expected
    running = one_upstream(dbkeeper_factory, mariadb)
    a = through(running)
    closing.append(a)
    got = [_run(a, statement), _run(a, kept_by)]
    b, errno = another_client(running)
    closing.append(b)
    assert errno in (None, ER_CON_COUNT_ERROR)
    if b is not None:  # served on A's upstream: B's diagnostics are those of its own 'SELECT 'B''
        assert rows(b, show) == [] and rows(b, count) == [(0,)]
    got += [_run(a, show), _run(a, count)]
    assert got == expected


def test_another_clients_warnings_never_reach_a_client_moved_onto_its_upstream(
        dbkeeper_factory, mariadb, names, closing):
    """B, on A's old upstream, leaves a warning that a following SELECT 1 keeps. When A needs the
    upstream again, A either waits (B is pinned while its warning can be read) or is served with
    its own diagnostics - never B's."""
    statement, show, count = DIAGNOSTICS["warning"]
    clearing = _clearing(names)
    running = one_upstream(dbkeeper_factory, mariadb)
    a = through(running)
    closing.append(a)
    assert _run(a, clearing) == [(5,)]  # A's diagnostics: none
    b, errno = another_client(running)  # A is movable: B gets its upstream
    closing.append(b)
    assert errno is None, f"B got {errno}"
    assert _run(b, statement) == [(12,)]
    assert _run(b, "SELECT 1") == [(1,)]  # B's warning is still there to be read
    # when A reads its diagnostics
    mine = _run(a, show)
    # then they are A's own (none), or A waited in vain for B's pinned upstream
    assert mine in ([], ("error", ER_CON_COUNT_ERROR)), mine
    # and B's warning is still B's
    assert rows(b, show) == _direct(mariadb, [statement, "SELECT 1", show])[2]
    if mine != []:  # A waited: once B's warning is cleared, A is served, and finds no diagnostics of B's
        assert _run(b, clearing) == [(5,)]
        assert _run(a, clearing) == [(5,)]
        assert rows(a, show) == [] and rows(a, count) == [(0,)]


def test_show_warnings_is_the_clients_own_while_another_client_waits_for_its_upstream(
        dbkeeper_factory, mariadb, names, closing):
    statement, show, count = DIAGNOSTICS["warning"]
    clearing = _clearing(names)
    expected = _direct(mariadb, [statement, show, count, clearing, show])
    running = one_upstream(dbkeeper_factory, mariadb, borrow_timeout_ms=5000)
    a = through(running)
    closing.append(a)
    got = [_run(a, statement)]
    # given B is waiting for the only upstream connection while A's warning is pending
    b_result: dict[str, Any] = {}
    waiting = threading.Event()

    def client_b() -> None:
        waiting.set()
        started = time.monotonic()
        b_result["conn"], b_result["errno"] = another_client(running)
        b_result["ms"] = (time.monotonic() - started) * 1000

    b_thread = threading.Thread(target=client_b, daemon=True)
    b_thread.start()
    assert waiting.wait(5)
    # when A asks for its warnings: they are A's own (A was not moved while they could be read)
    got += [_run(a, show), _run(a, count)]
    # and once A's next statement clears them, B is served on A's upstream
    got.append(_run(a, clearing))
    b_thread.join(10)
    closing.append(b_result.get("conn"))
    assert b_result.get("errno") is None, f"B got {b_result.get('errno')} after {b_result.get('ms', 0):.0f} ms"
    # and A, moved back, sees no warning of anyone's
    got.append(_run(a, show))
    assert got == expected
