"""Session setup through dbkeeper: once the server has accepted a driver's SET NAMES / SET
autocommit, later sessions get them answered at once (no round trip each), and the server still
runs them, in order, in front of the session's first real command."""

from __future__ import annotations

import os
import signal

import pymysql
import pytest

from tests.polling import wait_until

SESSION_FACTS = "SELECT @@autocommit, @@character_set_client, @@collation_connection, DATABASE()"



def one_invocation(running, **kwargs):
    """The connect-per-invocation pattern: connect (PyMySQL sends its setup), one query, close."""
    with pymysql.connect(**running.connect_kwargs(**kwargs)) as conn, conn.cursor() as cur:
        cur.execute(SESSION_FACTS)
        return cur.fetchone()


def direct_facts(db, **kwargs):
    with pymysql.connect(host=db.host, port=db.port, user=db.user, password=db.password, database=db.database,
                         **kwargs) as conn, conn.cursor() as cur:
        cur.execute(SESSION_FACTS)
        return cur.fetchone()


def settled(running, sessions):
    """Every session so far has ended and its upstream reset has finished."""
    return wait_until(lambda: len(running.events("upstream_reset")) >= sessions)


@pytest.fixture
def stopped():
    """stopped(db): SIGSTOP the server for the with-block, SIGCONT after, whatever happens."""
    class Stopped:
        def __init__(self, db):
            self.pid = db.pid

        def __enter__(self):
            os.kill(self.pid, signal.SIGSTOP)

        def __exit__(self, *exc):
            os.kill(self.pid, signal.SIGCONT)
    return Stopped


def test_a_drivers_setup_needs_no_round_trip_once_the_server_accepted_it(dbkeeper_factory, fresh_mariadb, stopped):
    # given a function whose previous invocations ran PyMySQL's setup through dbkeeper
    running = dbkeeper_factory(fresh_mariadb)
    expected = direct_facts(fresh_mariadb)
    for _ in range(3):
        assert one_invocation(running) == expected
    assert settled(running, 3)
    # when the server cannot answer anything
    with stopped(fresh_mariadb):
        # then a new session still connects and gets its SET NAMES and SET AUTOCOMMIT answered
        conn = pymysql.connect(**running.connect_kwargs(read_timeout=3))
    # and once the server is back, its first query sees the session those statements made
    with conn, conn.cursor() as cur:
        cur.execute(SESSION_FACTS)
        assert cur.fetchone() == expected == (0, "utf8mb4", "utf8mb4_general_ci", fresh_mariadb.database)


def test_held_setup_really_runs_on_the_server_and_ends_with_the_session(dbkeeper_factory, fresh_mariadb):
    # given a table, and dbkeeper that has seen PyMySQL's setup accepted
    with fresh_mariadb.connect() as app, app.cursor() as cur:
        cur.execute("CREATE TABLE held (id INT PRIMARY KEY) ENGINE=InnoDB")
    running = dbkeeper_factory(fresh_mariadb)
    for _ in range(3):
        one_invocation(running)
    # when a session whose SET AUTOCOMMIT = 0 was held inserts and leaves without committing
    with pymysql.connect(**running.connect_kwargs()) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO held VALUES (1)")
        cur.execute("SELECT @@autocommit, @@in_transaction")
        # then the server did run it: the insert opened a transaction
        assert cur.fetchone() == (0, 1)
    # and the next session neither sees the row nor inherits autocommit=0
    assert one_invocation(running, autocommit=True)[0] == 1
    with pymysql.connect(**running.connect_kwargs()) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM held")
        assert cur.fetchone() == (0,)


def test_with_hold_setup_off_every_setup_statement_goes_to_the_server(dbkeeper_factory, fresh_mariadb, stopped):
    # given dbkeeper told not to hold setup statements, after the same invocations
    running = dbkeeper_factory(fresh_mariadb, DBKEEPER_HOLD_SETUP="false")
    for _ in range(3):
        one_invocation(running)
    assert settled(running, 3)
    # when the server cannot answer, then the connect's SET NAMES waits for it and times out
    with stopped(fresh_mariadb), pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(**running.connect_kwargs(read_timeout=1))


def test_a_driver_with_another_character_set_finds_it_restored_by_the_reset(dbkeeper_factory, fresh_mariadb, stopped):
    # given a driver whose handshake asks for latin1 (not the upstream handshake's utf8mb4)
    running = dbkeeper_factory(fresh_mariadb)
    expected = direct_facts(fresh_mariadb, charset="latin1")
    for _ in range(3):
        assert one_invocation(running, charset="latin1") == expected
    assert settled(running, 3)
    # when the server cannot answer, then a new session of that driver still connects: the reset
    # already set its character set again, and its own SET NAMES is held
    with stopped(fresh_mariadb):
        conn = pymysql.connect(**running.connect_kwargs(read_timeout=3, charset="latin1"))
    # and its session has the character set it asked for
    with conn, conn.cursor() as cur:
        cur.execute(SESSION_FACTS)
        assert cur.fetchone() == expected
        assert expected[1:3] == ("latin1", "latin1_swedish_ci")
