"""Who may use the local socket: the upstream's user and password by default, a local password
for deployments whose upstream credentials the function never sees, or trust on the 0600 socket."""

import pymysql
import pytest

ACCESS_DENIED = 1045


def select_one(**kwargs):
    with pymysql.connect(**kwargs) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        return cur.fetchone()[0]


def test_the_upstream_credentials_open_a_session(dbkeeper):
    assert select_one(**dbkeeper.connect_kwargs()) == 1


@pytest.mark.parametrize("override", [{"password": "wrong"}, {"password": ""}, {"user": "root"}, {"user": "app2"}])
def test_wrong_credentials_are_refused_as_a_server_would(dbkeeper, override):
    with pytest.raises(pymysql.err.OperationalError) as caught:
        select_one(**dbkeeper.connect_kwargs(**override))
    assert caught.value.args[0] == ACCESS_DENIED
    assert "Access denied" in caught.value.args[1]
    dbkeeper.wait_for_event("client_auth_failed")
    assert all("wrong" not in str(line) for line in dbkeeper.logs())  # no password in the log


def test_a_client_asking_for_another_auth_plugin_is_switched_to_native_password(dbkeeper):
    import mysql.connector

    conn = mysql.connector.connect(host=dbkeeper.host, port=dbkeeper.port, user=dbkeeper.upstream.user,
                                   password=dbkeeper.upstream.password, auth_plugin="caching_sha2_password",
                                   use_pure=True)
    cur = conn.cursor()
    cur.execute("SELECT 2")
    assert cur.fetchone() == (2,)
    conn.close()


def test_a_local_password_replaces_the_upstream_one(dbkeeper_factory, mariadb):
    running = dbkeeper_factory(mariadb, DBKEEPER_CLIENT_PASSWORD="local-only")
    assert select_one(**running.connect_kwargs(password="local-only")) == 1
    with pytest.raises(pymysql.err.OperationalError) as caught:
        select_one(**running.connect_kwargs())  # the upstream password is not accepted locally
    assert caught.value.args[0] == ACCESS_DENIED


def test_trust_on_the_unix_socket_only(dbkeeper_factory, mariadb):
    running = dbkeeper_factory(mariadb, DBKEEPER_TRUST_UNIX_SOCKET="true")
    assert select_one(unix_socket=running.unix_socket, user=mariadb.user, password="anything") == 1
    with pytest.raises(pymysql.err.OperationalError) as caught:
        select_one(**running.connect_kwargs(password="anything"))  # TCP is still verified
    assert caught.value.args[0] == ACCESS_DENIED


def test_a_client_that_never_finishes_its_handshake_is_dropped(dbkeeper_factory, mariadb):
    import socket
    import time

    running = dbkeeper_factory(mariadb, DBKEEPER_CLIENT_HANDSHAKE_TIMEOUT_MS="300")
    silent = socket.create_connection((running.host, running.port))
    silent.settimeout(5)
    started = time.monotonic()
    received = b""
    while chunk := silent.recv(4096):  # the greeting, then ERR 1043, then the close
        received += chunk
    assert 0.25 < time.monotonic() - started < 3
    assert b"Bad handshake (timed out)" in received
    assert select_one(**running.connect_kwargs()) == 1
