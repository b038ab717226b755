"""Spec: the three defects a fuzzing campaign found stay fixed (each test is its reproducer).

1. Replies owed are counted as the server answers: an empty packet is a command (MariaDB reads it
   as COM_SLEEP and answers ERR 1047), so a session that leaves with replies still on their way
   never hands its upstream to the next session, which would read the first session's rows.
2. A client that goes away while dbkeeper opens an upstream connection for it leaks no pool slot.
3. Classifying a session's first statement is linear in its length: a long run of spaces does not
   stall every other session.
"""

from __future__ import annotations

import os
import signal
import threading

from pymysql.constants import COMMAND

from tests.integration.raw_mysql import RawClient, packet
from tests.polling import wait_until


def _login(running, timeout: float = 10.0) -> RawClient:
    client = RawClient.connect(host=running.host, port=running.port, timeout=timeout)
    client.login(running.upstream.user, running.upstream.password, running.upstream.database)
    return client


def _query_packet(sql: str) -> bytes:
    return packet(bytes((COMMAND.COM_QUERY,)) + sql.encode(), 0)


def test_a_session_that_leaves_with_replies_owed_never_passes_them_to_the_next(dbkeeper_factory, mariadb):
    secret = "secret of session A " + os.urandom(4).hex()
    # one upstream connection: session B must get whatever A left behind, unless dbkeeper closes it
    running = dbkeeper_factory(mariadb, DBKEEPER_POOL_SIZE="1")
    a = _login(running)
    a.send_raw(b"\x00\x00\x00\x00" * 3 + _query_packet("DO SLEEP(0.5)") + _query_packet("DO SLEEP(1)")
               + _query_packet(f"SELECT SLEEP(3), '{secret}'"))
    for _ in range(3):
        reply = a.read_packet()
        assert reply[:1] == b"\xff" and int.from_bytes(reply[1:3], "little") == 1047  # ER_UNKNOWN_COM_ERROR
    a.close()

    b = _login(running)
    assert b.query("SELECT 'B' AS who, 1 AS one")[0].text_rows() == [("B", "1")]
    assert b.query("SELECT 'B again'")[0].text_rows() == [("B again",)]
    b.quit()
    # A's statements were not left to run for nobody
    wait_until(lambda: not [p for p in mariadb.processlist() if secret in (p.get("INFO") or "")], timeout=5)
    assert not [p for p in mariadb.processlist() if secret in (p.get("INFO") or "")]


def test_a_client_leaving_while_its_upstream_connection_opens_leaks_no_pool_slot(dbkeeper_factory, fresh_mariadb):
    db = fresh_mariadb
    running = dbkeeper_factory(db, DBKEEPER_POOL_SIZE="2", DBKEEPER_CONNECT_TIMEOUT_MS="3000",
                               DBKEEPER_BORROW_TIMEOUT_MS="2000")
    running.wait_for_event("upstream_connected")
    # the INIT-time connection dies, so the next borrow has to open one
    with db.admin() as admin, admin.cursor() as cursor:
        for process in db.processlist(user=db.user):
            cursor.execute(f"KILL CONNECTION {process['ID']}")
    os.kill(db.pid, signal.SIGSTOP)  # connects are accepted by the kernel, never answered
    try:
        for _ in range(4):
            opening = _openings(running)
            client = RawClient.connect(host=running.host, port=running.port, timeout=10)
            client.read_handshake()
            user = running.upstream
            client.send_packet(client.handshake_response(user.user, user.password, user.database), seq=1)
            # authenticated: dbkeeper now opens an upstream connection for it...
            assert wait_until(lambda opening=opening: _openings(running) > opening, timeout=5)
            client.abort()            # ...and the client goes away meanwhile
    finally:
        os.kill(db.pid, signal.SIGCONT)
    wait_until(lambda: len(running.events("upstream_connect_failed")) + len(running.events("upstream_connected")) >= 2,
               timeout=10)
    for _ in range(3):
        client = _login(running)
        assert client.scalar("SELECT 1") == "1"
        client.quit()


def _openings(running) -> int:
    return sum(1 for event in running.events("upstream_state") if event.get("new") == "opening")


def test_a_long_first_statement_does_not_stall_other_sessions(dbkeeper_factory, mariadb):
    running = dbkeeper_factory(mariadb, DBKEEPER_POOL_SIZE="2")
    other = _login(running, timeout=5)
    assert other.scalar("SELECT 1") == "1"
    # a quadratic classifier spent ~14 s on this before anything else ran (one packet that
    # arrives in one read, as 64 KB do on loopback)
    attacker = _login(running, timeout=60)
    attacker.send_raw(_query_packet("SET NAMES utf8mb4" + " " * 64_000 + "x"))
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(_reply_or_error(attacker)), daemon=True)
    thread.start()
    for _ in range(5):  # each read gives up after the client's 5 s timeout
        assert other.scalar("SELECT 1") == "1"
    thread.join(60)
    assert outcome and outcome[0] == 1064  # the server's own verdict on the statement: a syntax error
    other.quit()


def _reply_or_error(client: RawClient) -> object:
    reply = client.read_packet()
    return int.from_bytes(reply[1:3], "little") if reply[:1] == b"\xff" else reply
