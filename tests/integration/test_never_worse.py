"""Spec: a function with the layer does at least as well as the same function without it.

- Work nobody waits for does not go on running on the server: a statement in flight at SHUTDOWN,
  or when the function's connection vanishes mid-query, is KILLed (MariaDB itself reads a COM_QUIT
  only after the statement, and notices a closed socket late or never; an UPDATE runs to its end
  holding its locks).
- Fail fast: a database that refuses connections is reported to each client by one attempt, as a
  direct connect would; the first client after the database is back gets through.
- Clients authenticate before they get an upstream connection: a flood of handshakes that never
  finish does not keep a real client out.
- A long pause (a freeze, a SnapStart restore) is followed by a check of the pooled connection
  before it is lent; one that died silently is replaced without the client seeing an error.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import statistics
import threading
import time

import pymysql
import pytest

from tests.integration.raw_mysql import RawClient, packet
from tests.polling import wait_until

CR_CONN_HOST_ERROR = 2003


def _login(running, timeout: float = 10.0) -> RawClient:
    client = RawClient.connect(host=running.host, port=running.port, timeout=timeout)
    client.login(running.upstream.user, running.upstream.password, running.upstream.database)
    return client


def _send_query(client: RawClient, sql: str) -> None:
    client.send_raw(packet(b"\x03" + sql.encode(), 0))


def _running_statements(db, tag: str) -> list[dict]:
    return [p for p in db.processlist() if tag in (p.get("INFO") or "")]


# --------------------------------------------------------------------------- work nobody waits for


def _sleeping_session(dbkeeper_factory, db, seconds: int, tag: str):
    """A dbkeeper and a client whose SELECT SLEEP(seconds) is running on the server (not read)."""
    running = dbkeeper_factory(db)
    client = _login(running)
    _send_query(client, f"SELECT SLEEP({seconds}), '{tag}'")
    assert wait_until(lambda: _running_statements(db, tag), timeout=5)
    return running, client


def test_shutdown_kills_a_statement_in_flight_within_the_deadline(dbkeeper_factory, mariadb):
    tag = f"in flight at shutdown {os.urandom(3).hex()}"
    running, client = _sleeping_session(dbkeeper_factory, mariadb, 60, tag)
    started = time.monotonic()
    report = running.sandbox.shutdown()
    assert wait_until(lambda: not _running_statements(mariadb, tag), timeout=2.0), "still running 2 s after SHUTDOWN"
    gone_after = time.monotonic() - started
    extension = report.extensions["dbkeeper"]
    assert extension.exit_code == 0 and not extension.killed
    complete = running.wait_for_event("shutdown_complete")
    assert complete["statements_killed"] == 1 and complete["ms_left_before_deadline"] > 0
    print(f"statement gone {gone_after * 1000:.0f} ms after the SHUTDOWN began")
    client.close()


def test_shutdown_frees_the_row_lock_of_a_transaction_whose_statement_is_still_running(dbkeeper_factory, mariadb):
    table = f"lock_{os.urandom(3).hex()}"
    with mariadb.connect() as setup, setup.cursor() as cursor:
        cursor.execute(f"CREATE TABLE `{table}` (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
        cursor.execute(f"INSERT INTO `{table}` VALUES (1, 'orig')")
        setup.commit()
    running = dbkeeper_factory(mariadb)
    client = _login(running)
    client.query("START TRANSACTION")
    client.query(f"UPDATE `{table}` SET v = 'locked' WHERE id = 1")
    _send_query(client, "SELECT SLEEP(60)")
    with mariadb.connect() as other, other.cursor() as cursor:
        cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")
        with pytest.raises(pymysql.err.OperationalError):  # 1205: the row is locked
            cursor.execute(f"UPDATE `{table}` SET v = 'other' WHERE id = 1")
        running.sandbox.shutdown()
        cursor.execute("SET SESSION innodb_lock_wait_timeout = 2")
        assert cursor.execute(f"UPDATE `{table}` SET v = 'other' WHERE id = 1") == 1  # waits at most 2 s
        other.commit()
    client.close()


def test_a_client_that_vanishes_mid_query_leaves_no_statement_running(dbkeeper_factory, mariadb):
    tag = f"orphaned {os.urandom(3).hex()}"
    running, client = _sleeping_session(dbkeeper_factory, mariadb, 30, tag)
    client.abort()  # the function's process killed at its timeout
    # MariaDB alone notices a closed socket during SLEEP only after ~5 s, and never during most statements
    assert wait_until(lambda: not _running_statements(mariadb, tag), timeout=2.0), "the statement ran on"
    killed = running.wait_for_event("orphans_killed")
    assert killed["killed"] == 1
    # and the next session is served as usual
    after = _login(running)
    assert after.scalar("SELECT 1") == "1"
    after.quit()


# --------------------------------------------------------------------------- fail fast


def test_a_database_refusing_connections_is_reported_at_once_and_recovery_is_seen_at_once(
        dbkeeper_factory, fresh_mariadb):
    running = dbkeeper_factory(fresh_mariadb)
    running.wait_for_event("upstream_connected")
    fresh_mariadb.stop()
    direct, through = [], []
    for _ in range(20):
        for times, where in ((direct, dict(host="127.0.0.1", port=fresh_mariadb.port)),
                             (through, dict(host=running.host, port=running.port))):
            started = time.monotonic()
            with pytest.raises(pymysql.err.OperationalError) as caught:
                pymysql.connect(user=fresh_mariadb.user, password=fresh_mariadb.password, connect_timeout=10, **where)
            times.append(time.monotonic() - started)
            assert caught.value.args[0] == CR_CONN_HOST_ERROR
    def attempts() -> list[dict]:
        return [e for e in running.events("upstream_connect_failed") if e["reason"] == "borrow"]

    wait_until(lambda: len(attempts()) >= 20, timeout=5)  # the extension's log is read asynchronously
    assert len(attempts()) == 20  # one attempt per client, never a retry loop
    print(f"time to 2003: direct p50 {statistics.median(direct) * 1000:.1f} ms max {max(direct) * 1000:.1f} ms; "
          f"through dbkeeper p50 {statistics.median(through) * 1000:.1f} ms max {max(through) * 1000:.1f} ms")
    fresh_mariadb.start()
    with pymysql.connect(**running.connect_kwargs()) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # the first client after recovery gets through
        assert cursor.fetchone() == (1,)


# --------------------------------------------------------------------------- handshakes


def test_a_flood_of_unfinished_handshakes_does_not_keep_a_real_client_out(dbkeeper_factory, mariadb):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}: cannot hold 1,000 sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    running = dbkeeper_factory(mariadb, DBKEEPER_POOL_SIZE="2")
    running.wait_for_event("upstream_connected")
    flood = []
    try:
        for _ in range(1000):
            sock = socket.create_connection((running.host, running.port), timeout=5)
            flood.append(sock)  # reads nothing, answers nothing
        started = time.monotonic()
        with (pymysql.connect(**running.connect_kwargs(), connect_timeout=10) as connection,
              connection.cursor() as cursor):
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        print(f"real client's connect + SELECT 1 during the flood: {(time.monotonic() - started) * 1000:.1f} ms")
        assert len(mariadb.processlist(user=mariadb.user)) <= 2  # the flood took no upstream connection
        assert running.events("client_handshake_evicted")
    finally:
        for sock in flood:
            sock.close()


# --------------------------------------------------------------------------- pauses and SnapStart


class CuttableProxy:
    """A TCP relay in front of the database whose existing connections can be cut silently: the
    database side is closed (the server ends that session) while the client side stays open and
    never hears anything again, as after a restore from a snapshot or a failover without RST."""

    def __init__(self, target_port: int):
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._silenced: set[socket.socket] = set()  # client sides that must hear nothing more
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            with self._lock:
                self._pairs.append((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if sink in self._silenced:
                    return
                sink.sendall(data)
        except OSError:
            return
        if sink not in self._silenced:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def cut_silently(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            self._silenced.add(client)
            server.shutdown(socket.SHUT_RDWR)  # the database ends the session; the client side hears nothing

    def close(self) -> None:
        self._listener.close()


def _idle_events(running) -> int:
    return sum(1 for event in running.events("upstream_state") if event.get("new") == "idle")


def test_snap_start_opens_no_upstream_during_init_and_a_silently_dead_one_is_replaced_after_a_pause(
        dbkeeper_factory, fresh_mariadb):
    db = fresh_mariadb
    proxy = CuttableProxy(db.port)
    try:
        running = dbkeeper_factory(db, AWS_LAMBDA_INITIALIZATION_TYPE="snap-start", DBKEEPER_DB_PORT=str(proxy.port),
                                   DBKEEPER_VERIFY_AFTER_IDLE_MS="300", DBKEEPER_CONNECT_TIMEOUT_MS="500")
        running.wait_for_event("upstream_deferred")
        assert not db.processlist(user=db.user)  # nothing to carry into a snapshot
        first = _login(running)
        first_id = first.scalar("SELECT CONNECTION_ID()")
        idle_before = _idle_events(running)
        first.quit()
        assert wait_until(lambda: _idle_events(running) > idle_before, timeout=5)  # reset done

        # the snapshot is restored: the process was not running, its upstream died without a word
        os.kill(running.pid, signal.SIGSTOP)
        try:
            proxy.cut_silently()
            assert wait_until(lambda: not db.processlist(user=db.user), timeout=5)
            time.sleep(0.5)  # the pause itself: longer than DBKEEPER_VERIFY_AFTER_IDLE_MS
        finally:
            os.kill(running.pid, signal.SIGCONT)

        after = _login(running, timeout=5)
        assert after.scalar("SELECT 1") == "1"  # no error: the dead connection was replaced first
        assert after.scalar("SELECT CONNECTION_ID()") != first_id
        after.quit()
        assert running.wait_for_event("upstream_closed", reason="ping_failed")
    finally:
        proxy.close()


# --------------------------------------------------------------------------- idle connections


def test_an_idle_upstream_carries_the_short_wait_timeout_and_a_lent_one_the_servers_own(dbkeeper_factory,
                                                                                        fresh_mariadb):
    db = fresh_mariadb
    running = dbkeeper_factory(db, DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S="1")
    running.wait_for_event("upstream_connected")
    assert len(db.processlist(user=db.user)) == 1
    # idle in the pool: the server itself ends it after 1 s (nothing of dbkeeper's runs meanwhile)
    assert wait_until(lambda: not db.processlist(user=db.user), timeout=1 + 5)
    # the next session does not notice: the dead idle connection is replaced before it is lent
    with pymysql.connect(**running.connect_kwargs()) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT @@SESSION.wait_timeout, @@GLOBAL.wait_timeout")
        session_value, global_value = cursor.fetchone()
        assert session_value == global_value  # a lent session has the server's own wait_timeout
    # seen closed by the event loop (or, after a freeze, as stale at the borrow)
    assert {e["reason"] for e in running.events("upstream_closed")} & {"closed", "stale"}


@pytest.mark.parametrize("autocommit, begin", [(False, ""), (True, "BEGIN")], ids=["autocommit_off", "begin"])
def test_a_session_idle_in_a_transaction_keeps_its_connection_past_the_short_wait_timeout(
        dbkeeper_factory, fresh_mariadb, autocommit, begin):
    """A lent connection has the pool's short wait_timeout only while its session could move: idle
    in an open transaction it has the server's own (a direct connection would keep it for hours);
    after the COMMIT the short one again (the server drops it, and the next statement moves)."""
    db = fresh_mariadb
    running = dbkeeper_factory(db, DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S="1")
    with pymysql.connect(**running.connect_kwargs(), autocommit=autocommit) as connection, \
            connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS held (id INT PRIMARY KEY) ENGINE=InnoDB")
        connection.commit()
        if begin:
            cursor.execute(begin)
        cursor.execute("INSERT INTO held VALUES (1)")
        cursor.execute("SELECT CONNECTION_ID()")
        (first,) = cursor.fetchone()
        time.sleep(2.5)  # the idleness under test: past the short wait_timeout (1 s), in a transaction
        cursor.execute("INSERT INTO held VALUES (2)")
        connection.commit()
        assert db.query(f"SELECT COUNT(*) AS n FROM {db.database}.held")[0]["n"] == 2
        assert not running.events("upstream_lost_while_idle")
        # out of the transaction: the short wait_timeout applies again, the server ends the
        # connection, and the session goes on on another one
        assert wait_until(lambda: first not in {row["ID"] for row in db.processlist(user=db.user)}, timeout=1 + 5)
        cursor.execute("SELECT COUNT(*), CONNECTION_ID() FROM held")
        count, second = cursor.fetchone()
        assert count == 2 and second != first
        assert running.events("upstream_lost_while_idle")


def test_connections_a_burst_opened_are_closed_once_idle_past_the_idle_timeout(dbkeeper_factory, fresh_mariadb):
    db = fresh_mariadb
    running = dbkeeper_factory(db, DBKEEPER_IDLE_TIMEOUT_S="1", DBKEEPER_POOL_SIZE="3")
    burst = [pymysql.connect(**running.connect_kwargs()) for _ in range(3)]
    for connection in burst:
        connection.close()
    assert wait_until(lambda: len(db.processlist(user=db.user)) == 3, timeout=5)
    time.sleep(1.2)  # the idle time itself, past DBKEEPER_IDLE_TIMEOUT_S: no timer in dbkeeper to wait for
    with pymysql.connect(**running.connect_kwargs()) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    # decided when that session ended: the two connections idle past the limit are closed
    assert wait_until(lambda: len(db.processlist(user=db.user)) == 1, timeout=5), db.processlist(user=db.user)
    assert len([e for e in running.events("upstream_closed") if e["reason"] == "idle_timeout"]) == 2
