"""Spec: a client's session lives in dbkeeper and survives its upstream connection.

- A session whose upstream connection dies while the client is idle (KILL CONNECTION, the
  server's wait_timeout, a restart) gets its next command served on a new connection, its state
  replayed first: no error, nothing for the function to do.
- A pinned session (a user variable, a temporary table, an open transaction ...) is not moved:
  its client sees the connection drop (2013), as it would directly.
- When every pooled connection is lent, an idle session that can move gives its connection to
  another client (connection sharing), and gets one back, state replayed, at its next command.
"""

from __future__ import annotations

import threading

import pymysql
import pytest

from tests.polling import wait_until

LOST_CONNECTION = (2013, 2006)


def _dbkeeper_sessions(db) -> list[dict]:
    return [p for p in db.processlist(db.user) if p.get("COMMAND") != "Killed"]


def _kill(db, connection_id: int) -> None:
    with db.admin() as admin, admin.cursor() as cursor:
        cursor.execute(f"KILL CONNECTION {connection_id}")
    assert wait_until(lambda: all(p["ID"] != connection_id for p in db.processlist()), timeout=5)


def _server_id(conn) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        return cursor.fetchone()[0]


def _one(conn, sql: str):
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()


@pytest.fixture
def running(dbkeeper_factory, fresh_mariadb):
    return dbkeeper_factory(fresh_mariadb, DBKEEPER_LOG_LEVEL="debug")


def test_a_session_whose_upstream_was_killed_while_idle_goes_on_with_its_state(running, fresh_mariadb):
    conn = pymysql.connect(**running.connect_kwargs())  # PyMySQL defaults: SET AUTOCOMMIT = 0
    with conn.cursor() as cursor:
        cursor.execute("SET time_zone = '+03:00'")
        cursor.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
        cursor.execute("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        cursor.execute("INSERT INTO t (v) VALUES (1), (2)")
        cursor.execute("INSERT INTO t (v) VALUES (3)")
    conn.commit()
    first = _server_id(conn)
    _kill(fresh_mariadb, first)
    # the next command: no error, a new connection, the session as it was
    assert _one(conn, "SELECT @@time_zone, @@sql_mode, @@autocommit, LAST_INSERT_ID(), DATABASE()") == \
        ("+03:00", "ANSI_QUOTES", 0, 3, fresh_mariadb.database)
    assert _server_id(conn) != first
    moved = running.wait_for_event("session_moved", reason="upstream_lost")
    assert moved["from_connection_id"] == first
    conn.close()


def test_a_session_survives_a_database_restart_while_idle(running, fresh_mariadb):
    conn = pymysql.connect(**running.connect_kwargs(autocommit=True))
    with conn.cursor() as cursor:
        cursor.execute("SET NAMES latin1")
    fresh_mariadb.restart()
    assert _one(conn, "SELECT @@character_set_client, 1") == ("latin1", 1)
    conn.close()


@pytest.mark.parametrize("state, check", [
    ("SET @secret = 42", "SELECT @secret"),
    ("CREATE TEMPORARY TABLE tmp (a INT)", "SELECT * FROM tmp"),
    ("BEGIN", "SELECT 1"),
])
def test_a_pinned_session_sees_its_connection_drop_as_it_would_directly(running, fresh_mariadb, state, check):
    conn = pymysql.connect(**running.connect_kwargs(autocommit=True))
    with conn.cursor() as cursor:
        cursor.execute(state)
    _kill(fresh_mariadb, _server_id(conn))
    with pytest.raises(pymysql.err.OperationalError) as caught:
        _one(conn, check)
    assert caught.value.args[0] in LOST_CONNECTION
    # and the extension goes on serving other clients
    with pymysql.connect(**running.connect_kwargs()) as other:
        assert _one(other, "SELECT 1") == (1,)


def test_an_idle_movable_session_gives_its_connection_to_another_client(dbkeeper_factory, fresh_mariadb):
    running = dbkeeper_factory(fresh_mariadb, DBKEEPER_LOG_LEVEL="debug", DBKEEPER_POOL_SIZE="1")
    a = pymysql.connect(**running.connect_kwargs(autocommit=True))
    with a.cursor() as cursor:
        cursor.execute("SET time_zone = '+05:00'")
    # B needs the only connection: A is idle and movable, so B gets it
    b = pymysql.connect(**running.connect_kwargs(autocommit=True))
    with b.cursor() as cursor:
        cursor.execute("SET @mine = 'b only'")  # B is pinned now
        cursor.execute("SELECT @@time_zone")
        assert cursor.fetchone() == ("SYSTEM",)  # nothing of A's session
    b.close()
    # A's next command gets a connection again, its state replayed
    assert _one(a, "SELECT @@time_zone, @mine") == ("+05:00", None)
    assert running.wait_for_event("session_moved", reason="shared")
    assert len(_dbkeeper_sessions(fresh_mariadb)) <= 1
    a.close()


def test_many_clients_share_few_connections(dbkeeper_factory, fresh_mariadb):
    running = dbkeeper_factory(fresh_mariadb, DBKEEPER_POOL_SIZE="2")
    with fresh_mariadb.connect(database=fresh_mariadb.database) as setup, setup.cursor() as cursor:
        cursor.execute("CREATE TABLE done (client INT, n INT, PRIMARY KEY (client, n))")
        setup.commit()
    errors: list[BaseException] = []
    most = [0]
    stop = threading.Event()

    def client(number: int) -> None:
        try:
            conn = pymysql.connect(**running.connect_kwargs())
            for n in range(10):
                with conn.cursor() as cursor:
                    cursor.execute("INSERT INTO done VALUES (%s, %s)", (number, n))
                conn.commit()
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - counted and reported
            errors.append(exc)

    def sample() -> None:
        while not stop.is_set():
            most[0] = max(most[0], len(_dbkeeper_sessions(fresh_mariadb)) - 0)
            stop.wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=client, args=(number,)) for number in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    sampler.join()
    assert not errors, errors[:3]
    assert fresh_mariadb.query(f"SELECT COUNT(*) AS n FROM `{fresh_mariadb.database}`.done")[0]["n"] == 120
    assert most[0] <= 2
    print(f"12 clients, pool size 2: 120 transactions, most upstream sessions seen {most[0]}")



def test_a_session_whose_last_statement_changed_rows_or_left_warnings_is_recovered_too(running, fresh_mariadb):
    """ROW_COUNT() and warnings describe the statement before: they hold a session on a live
    connection (a move would change them), not one whose connection died (directly, the client
    would have lost everything)."""
    conn = pymysql.connect(**running.connect_kwargs(autocommit=True))
    with conn.cursor() as cursor:
        cursor.execute("CREATE TABLE w (a TINYINT)")
        cursor.execute("INSERT INTO w VALUES (1), (2)")  # ROW_COUNT() = 2
    _kill(fresh_mariadb, _server_id(conn))
    assert _one(conn, "SELECT COUNT(*) FROM w") == (2,)
    with conn.cursor() as cursor:
        cursor.execute("INSERT IGNORE INTO w VALUES (1000)")  # a warning: out of range
    _kill(fresh_mariadb, _server_id(conn))
    assert _one(conn, "SELECT COUNT(*) FROM w") == (3,)
    conn.close()


def test_with_session_moves_off_a_session_keeps_its_one_connection_as_before(dbkeeper_factory, fresh_mariadb):
    """DBKEEPER_SESSION_MOVES=false: no session tracking upstream, no moves: a session whose
    connection dies while it is idle sees it drop, as it would directly."""
    running = dbkeeper_factory(fresh_mariadb, DBKEEPER_SESSION_MOVES="false")
    conn = pymysql.connect(**running.connect_kwargs(autocommit=True))
    assert _one(conn, "SELECT @@session_track_state_change") == (0,)  # the server's default: not asked for
    _kill(fresh_mariadb, _server_id(conn))
    with pytest.raises(pymysql.err.OperationalError) as caught:
        _one(conn, "SELECT 1")
    assert caught.value.args[0] in LOST_CONNECTION
