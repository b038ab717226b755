"""The upstream side under faults: a full server, a busy pool, a connection killed mid-command or
while idle, a server that restarts. The function sees what a MySQL server would make it see, and
the next session works."""

from __future__ import annotations

import threading
import time

import pymysql
import pytest

from tests.polling import wait_until

TOO_MANY_CONNECTIONS = 1040
LOST_CONNECTION = (2013, 2006)



def query(running, sql="SELECT CONNECTION_ID()", **kwargs):
    with pymysql.connect(**running.connect_kwargs(**kwargs)) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_a_full_server_at_init_is_retried_and_the_sandbox_recovers(dbkeeper_factory, fresh_mariadb):
    # given a server with every connection slot taken
    fresh_mariadb.set_global("max_connections", 3)
    hogs = []
    with pytest.raises(pymysql.err.OperationalError, match=str(TOO_MANY_CONNECTIONS)):
        for _ in range(10):
            hogs.append(fresh_mariadb.connect())
    running = dbkeeper_factory(fresh_mariadb, DBKEEPER_INIT_CONNECT_BUDGET_MS="300", DBKEEPER_BORROW_TIMEOUT_MS="300")
    # then INIT did not wait for it, and the INIT-time connect was retried in the background
    running.wait_for_event("upstream_unavailable", timeout=5)
    init_attempts = [e for e in running.events("upstream_connect_failed") if e["reason"] == "init"]
    assert len(init_attempts) >= 2 and {e["errno"] for e in init_attempts} == {TOO_MANY_CONNECTIONS}
    # a client gets the server's own error from one attempt, as it would connecting directly
    with pytest.raises(pymysql.err.OperationalError) as caught:
        query(running)
    assert caught.value.args[0] == TOO_MANY_CONNECTIONS
    # when a slot frees up, the next session just works
    for hog in hogs:
        hog.close()
    assert query(running) > 0


def test_a_client_beyond_the_pool_waits_then_gets_a_clear_error(dbkeeper_factory, mariadb):
    running = dbkeeper_factory(mariadb, DBKEEPER_POOL_SIZE="1", DBKEEPER_BORROW_TIMEOUT_MS="300")
    running.wait_for_event("upstream_connected")
    holder = pymysql.connect(**running.connect_kwargs())
    holder.cursor().execute("SET @pinned = 1")  # a session that cannot move keeps its connection
    try:
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as caught:
            query(running)
        waited = time.monotonic() - started
        assert caught.value.args[0] == TOO_MANY_CONNECTIONS
        assert "DBKEEPER_POOL_SIZE=1" in caught.value.args[1]
        assert 0.25 < waited < 3
    finally:
        holder.close()
    assert query(running) > 0  # the connection went back to the pool


def test_a_waiting_client_gets_the_connection_as_soon_as_it_is_released(dbkeeper_factory, mariadb):
    running = dbkeeper_factory(mariadb, DBKEEPER_POOL_SIZE="1", DBKEEPER_BORROW_TIMEOUT_MS="5000")
    holder = pymysql.connect(**running.connect_kwargs())
    holder.cursor().execute("SET @pinned = 1")  # a session that cannot move keeps its connection
    result = {}
    waiter = threading.Thread(target=lambda: result.update(id=query(running)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # still waiting for the only connection
    holder.close()
    waiter.join(5)
    assert result.get("id", 0) > 0


def test_an_upstream_killed_mid_command_fails_that_command_only(dbkeeper, mariadb):
    conn = pymysql.connect(**dbkeeper.connect_kwargs())
    upstream_id = conn.thread_id()
    killer = threading.Timer(0.3, lambda: mariadb.query(f"KILL CONNECTION {upstream_id}"))
    killer.start()
    with pytest.raises(pymysql.err.OperationalError) as caught:
        conn.cursor().execute("SELECT SLEEP(5)")
    killer.join()
    assert caught.value.args[0] in LOST_CONNECTION
    conn.close()
    assert query(dbkeeper) != upstream_id  # a fresh upstream, transparently


def test_an_upstream_killed_while_idle_is_replaced_transparently(dbkeeper, mariadb):
    upstream_id = query(dbkeeper)
    mariadb.query(f"KILL CONNECTION {upstream_id}")
    assert wait_until(lambda: not any(row["ID"] == upstream_id for row in mariadb.processlist()))
    assert query(dbkeeper) != upstream_id


def test_an_upstream_timed_out_by_the_server_while_idle_is_replaced_transparently(dbkeeper_factory, fresh_mariadb):
    fresh_mariadb.set_global("wait_timeout", 1)
    running = dbkeeper_factory(fresh_mariadb)
    first = query(running)
    # the server drops the idle session after wait_timeout; this is the time passing, not a sync
    assert wait_until(lambda: not any(row["ID"] == first for row in fresh_mariadb.processlist()), timeout=10)
    assert query(running) != first


def test_a_server_restart_between_sessions_is_invisible(dbkeeper_factory, fresh_mariadb):
    running = dbkeeper_factory(fresh_mariadb)
    assert query(running, "SELECT 1") == 1
    fresh_mariadb.kill()
    fresh_mariadb.restart()
    assert query(running, "SELECT 1") == 1
    assert running.alive()


def test_a_client_arriving_after_the_database_came_back_does_not_wait_out_a_backoff(dbkeeper_factory, fresh_mariadb):
    # given a database that was down through INIT, so dbkeeper's INIT-time connect is still retrying,
    # its backoff grown towards a second
    fresh_mariadb.stop()
    running = dbkeeper_factory(fresh_mariadb, DBKEEPER_BORROW_TIMEOUT_MS="200", DBKEEPER_CONNECT_TIMEOUT_MS="100")
    assert wait_until(lambda: len(running.events("upstream_connect_failed")) >= 5)
    # when the database is back and a client connects at once, with little patience
    fresh_mariadb.restart()
    # then it is served: its arrival made the retrying connect try again now
    assert query(running, "SELECT 1") == 1


def test_the_declared_client_flags_let_a_found_rows_driver_reuse_the_init_connection(dbkeeper_factory, fresh_mariadb):
    from pymysql.constants import CLIENT

    # given SQLAlchemy-style sessions (CLIENT_FOUND_ROWS), declared up front
    running = dbkeeper_factory(fresh_mariadb, DBKEEPER_CLIENT_FLAGS="FOUND_ROWS,MULTI_RESULTS")
    running.wait_for_event("upstream_connected")
    opened = fresh_mariadb.connections_opened()
    for _ in range(3):
        assert query(running, client_flag=CLIENT.FOUND_ROWS) > 0
    # then no connection was opened for them
    assert fresh_mariadb.connections_opened() == opened


def test_a_client_with_undeclared_session_flags_costs_one_reconnect_then_none(dbkeeper_factory, fresh_mariadb):
    from pymysql.constants import CLIENT

    running = dbkeeper_factory(fresh_mariadb)  # default: PyMySQL's flags
    running.wait_for_event("upstream_connected")
    opened = fresh_mariadb.connections_opened()
    ids = {query(running, client_flag=CLIENT.FOUND_ROWS) for _ in range(3)}
    assert fresh_mariadb.connections_opened() == opened + 1
    assert len(ids) == 1
    assert running.wait_for_event("upstream_closed", reason="profile_changed")


def test_a_database_gone_between_greeting_and_login_gives_the_client_a_clear_error(dbkeeper_factory, fresh_mariadb):
    running = dbkeeper_factory(fresh_mariadb, DBKEEPER_BORROW_TIMEOUT_MS="300", DBKEEPER_CONNECT_TIMEOUT_MS="200")
    assert query(running, "SELECT 1") == 1
    # when the server dies while its (idle, pooled) connection is handed to a new client
    fresh_mariadb.kill()
    with pytest.raises(pymysql.err.OperationalError) as caught:
        query(running, "SELECT 1")
    # then the client gets the usual "can't connect" error, not a bare hang-up
    assert caught.value.args[0] == 2003
    fresh_mariadb.restart()
    assert query(running, "SELECT 1") == 1
