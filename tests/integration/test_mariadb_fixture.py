"""The throwaway MariaDB used by every other test behaves as promised (tests/mariadb.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pymysql
import pytest

from tests import mariadb as mariadb_module
from tests.mariadb import MariaDB, MariaDBNotInstalled


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_app_user_owns_appdb_over_tcp_and_socket(mariadb: MariaDB) -> None:
    # given the shared server, when the app user connects over TCP and over the Unix socket
    with mariadb.connect() as tcp, tcp.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), DATABASE(), @@port")
        assert cur.fetchone() == ("app@%", "appdb", mariadb.port)
        cur.execute("CREATE TABLE IF NOT EXISTS fixture_probe (id INT PRIMARY KEY)")
        cur.execute("DROP TABLE fixture_probe")
    with mariadb.connect(host=None, unix_socket=mariadb.socket) as unix, unix.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == ("app@%",)
    # then it may not create other databases, and a wrong password is refused
    with mariadb.connect() as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as denied:
            cur.execute("CREATE DATABASE not_for_app")
        assert denied.value.args[0] == 1044  # ER_DBACCESS_DENIED_ERROR
    with pytest.raises(pymysql.err.OperationalError) as refused:
        mariadb.connect(password="wrong")
    assert refused.value.args[0] == 1045  # ER_ACCESS_DENIED_ERROR


def test_server_is_private_and_listens_where_asked(mariadb: MariaDB) -> None:
    assert mariadb.port != 3306
    assert mariadb.host == "127.0.0.1"
    rows = mariadb.query("SELECT @@bind_address AS b, @@datadir AS d, @@socket AS s")
    assert rows[0]["b"] == "127.0.0.1"
    assert rows[0]["d"].rstrip("/") == mariadb.datadir
    assert rows[0]["s"] == mariadb.socket


def test_connections_opened_counts_exactly_the_new_connections(mariadb: MariaDB) -> None:
    before = mariadb.connections_opened()
    conns = [mariadb.connect() for _ in range(3)]
    try:
        assert mariadb.connections_opened() - before == 3
    finally:
        for c in conns:
            c.close()


def test_processlist_shows_app_sessions_but_not_its_own(mariadb: MariaDB) -> None:
    with mariadb.connect() as conn:
        conn_id = conn.thread_id()
        rows = mariadb.processlist(user="app")
        mine = [r for r in rows if r["ID"] == conn_id]
        assert len(mine) == 1 and mine[0]["DB"] == "appdb" and mine[0]["COMMAND"] == "Sleep"
        assert all(r["USER"] == "app" for r in rows)
        helper_id = mariadb.query("SELECT CONNECTION_ID() AS id")[0]["id"]
        assert helper_id not in {r["ID"] for r in mariadb.processlist()}
    # the server notices the COM_QUIT asynchronously
    wait_until(lambda: conn_id not in {r["ID"] for r in mariadb.processlist()}, what="session gone")


def test_kill_then_restart_keeps_committed_data_and_port(fresh_mariadb: MariaDB) -> None:
    db = fresh_mariadb
    port, sock = db.port, db.socket
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (v VARCHAR(20))")
        cur.execute("INSERT INTO kept VALUES ('before-kill')")
        conn.commit()
    survivor = db.connect()

    # when the server is SIGKILLed
    db.kill()
    # then it is gone: the port refuses, open sessions break
    assert not db.running
    assert not port_accepts(db.host, port)
    with pytest.raises((pymysql.err.OperationalError, pymysql.err.InterfaceError)):
        with survivor.cursor() as cur:
            cur.execute("SELECT 1")
    survivor.close()

    # when it is restarted, then same port and socket, and the committed row survived the crash
    db.restart()
    assert (db.port, db.socket) == (port, sock)
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT v FROM kept")
        assert cur.fetchall() == (("before-kill",),)


def test_clean_stop_then_start_again(fresh_mariadb: MariaDB) -> None:
    db = fresh_mariadb
    port = db.port
    db.stop()
    assert not db.running and not port_accepts(db.host, port)
    assert "Shutdown complete" in open(db.error_log).read()
    db.start()
    assert db.port == port and db.connections_opened() >= 1


def test_set_global_applies_to_new_sessions(fresh_mariadb: MariaDB) -> None:
    fresh_mariadb.set_global("wait_timeout", 7)
    assert int(fresh_mariadb.get_global("wait_timeout")) == 7
    with fresh_mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@SESSION.wait_timeout")
        assert cur.fetchone() == (7,)
    with pytest.raises(ValueError):
        fresh_mariadb.set_global("wait_timeout = 1; DROP DATABASE appdb; --", 1)


def test_two_servers_at_once_are_independent(mariadb_factory: Callable[..., MariaDB]) -> None:
    a = mariadb_factory()
    b = mariadb_factory(bind_address="0.0.0.0", extra_args=["--max-connections=17"])
    assert a.port != b.port and a.socket != b.socket and a.datadir != b.datadir
    with a.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE only_in_a (x INT)")
    assert b.query("SELECT @@bind_address AS b, @@max_connections AS m")[0] == {"b": "0.0.0.0", "m": 17}
    with b.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW TABLES LIKE 'only_in_a'")
        assert cur.fetchall() == ()
    a.kill()
    with b.connect() as conn, conn.cursor() as cur:  # b does not care
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_missing_server_binaries_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(mariadb_module, "_SEARCH_DIRS", ())
    with pytest.raises(MariaDBNotInstalled, match="apt-get install mariadb-server"):
        MariaDB()
