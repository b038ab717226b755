"""Commands dbkeeper answers itself: COM_RESET_CONNECTION and COM_CHANGE_USER reset the session
as a server would, and a client's COM_QUIT ends only its session, never the upstream."""

import mysql.connector
import pymysql
import pytest


@pytest.fixture
def connector(dbkeeper):
    conn = mysql.connector.connect(host=dbkeeper.host, port=dbkeeper.port, user=dbkeeper.upstream.user,
                                   password=dbkeeper.upstream.password, database=dbkeeper.upstream.database,
                                   use_pure=True)
    yield conn
    conn.close()


def scalar(conn, sql):
    cur = conn.cursor()
    cur.execute(sql)
    (value,) = cur.fetchone()
    cur.close()
    return value


def test_reset_connection_forgets_session_state_and_keeps_the_session(connector):
    upstream_id = scalar(connector, "SELECT CONNECTION_ID()")
    scalar(connector, "SELECT @x := 42")
    connector.cmd_reset_connection()
    assert scalar(connector, "SELECT @x") is None
    assert scalar(connector, "SELECT CONNECTION_ID()") == upstream_id
    assert scalar(connector, "SELECT DATABASE()") == "appdb"


def test_change_user_to_the_same_user_resets_like_a_server(connector, dbkeeper):
    scalar(connector, "SELECT @y := 1")
    connector.cmd_change_user(username=dbkeeper.upstream.user, password=dbkeeper.upstream.password,
                              database=dbkeeper.upstream.database)
    assert scalar(connector, "SELECT @y") is None
    assert scalar(connector, "SELECT 1") == 1


def test_change_user_with_a_wrong_password_is_denied(connector, dbkeeper):
    with pytest.raises(mysql.connector.Error) as caught:
        connector.cmd_change_user(username=dbkeeper.upstream.user, password="wrong", database="appdb")
    assert caught.value.errno == 1045


def test_quit_ends_the_session_and_the_upstream_lives_on(dbkeeper, mariadb):
    conn = pymysql.connect(**dbkeeper.connect_kwargs())
    upstream_id = conn.thread_id()
    conn.close()  # COM_QUIT
    assert any(row["ID"] == upstream_id for row in mariadb.processlist())
    again = pymysql.connect(**dbkeeper.connect_kwargs())
    assert again.thread_id() == upstream_id
    again.close()


def test_a_truncated_change_user_from_a_client_that_hangs_up_closes_only_that_client(dbkeeper):
    import socket
    import time

    from tests.integration.raw_mysql import RawClient

    client = RawClient.connect(host=dbkeeper.host, port=dbkeeper.port)
    client.login(dbkeeper.upstream.user, dbkeeper.upstream.password, dbkeeper.upstream.database)
    # a COM_CHANGE_USER header announcing 100 bytes, of which 5 arrive, then the client's FIN
    client.send_raw((100).to_bytes(3, "little") + b"\x00\x11user")
    client.sock.shutdown(socket.SHUT_WR)
    started = time.monotonic()
    client.wait_closed(3.0)
    assert time.monotonic() - started < 1.0  # noticed at once, not after a read timeout
    assert dbkeeper.alive()
    with pymysql.connect(**dbkeeper.connect_kwargs()) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
