"""Every command's reply is followed exactly: after each kind of command, a client that vanishes
without COM_QUIT leaves an upstream that is reused (its reply was known complete) — and one that
vanishes mid-reply leaves one that is replaced."""

from __future__ import annotations

import struct

import pytest
from pymysql.constants import COMMAND, SERVER_STATUS

from tests.integration.raw_mysql import RawClient

CURSOR_TYPE_READ_ONLY = 0x01


def login(dbkeeper) -> RawClient:
    client = RawClient.connect(host=dbkeeper.host, port=dbkeeper.port)
    client.login(dbkeeper.upstream.user, dbkeeper.upstream.password, dbkeeper.upstream.database)
    return client


def upstream_id(client: RawClient) -> int:
    return int(client.scalar("SELECT CONNECTION_ID()"))


def read_until_eof(client: RawClient) -> list[bytes]:
    packets = []
    while True:
        payload = client.read_packet()
        if payload[:1] == b"\xfe" and len(payload) < 9:
            return packets
        assert payload[:1] != b"\xff", payload
        packets.append(payload)


def prepare(client: RawClient, sql: bytes) -> tuple[int, int, int]:
    client.command(COMMAND.COM_STMT_PREPARE, sql)
    ok = client.read_packet()
    assert ok[:1] == b"\x00", ok
    statement_id, columns, params = struct.unpack_from("<IHH", ok, 1)
    if params:
        read_until_eof(client)
    if columns:
        read_until_eof(client)
    return statement_id, columns, params


def execute(client: RawClient, statement_id: int, flags: int = 0, params: bytes = b"") -> bytes:
    client.command(COMMAND.COM_STMT_EXECUTE, struct.pack("<IBI", statement_id, flags, 1) + params)
    return client.read_packet()


def field_list(client):
    client.query("CREATE TABLE IF NOT EXISTS coverage_t (a INT, b VARCHAR(10))")
    client.command(COMMAND.COM_FIELD_LIST, b"coverage_t\0")
    assert len(read_until_eof(client)) == 2


def statistics(client):
    client.command(COMMAND.COM_STATISTICS)
    assert client.read_packet().startswith(b"Uptime")


def cursor_fetch(client):
    statement_id, _, _ = prepare(client, b"SELECT seq FROM seq_1_to_100")
    first = execute(client, statement_id, flags=CURSOR_TYPE_READ_ONLY)
    assert first[0] == 1  # one column
    client.read_packet()  # the column definition
    eof = client.read_packet()
    assert struct.unpack_from("<H", eof, 3)[0] & SERVER_STATUS.SERVER_STATUS_CURSOR_EXISTS
    client.command(COMMAND.COM_STMT_FETCH, struct.pack("<II", statement_id, 10))
    assert len(read_until_eof(client)) == 10


def long_data(client):
    statement_id, _, params = prepare(client, b"SELECT LENGTH(?)")
    assert params == 1
    client.command(COMMAND.COM_STMT_SEND_LONG_DATA, struct.pack("<IH", statement_id, 0) + b"x" * (1 << 20))
    # null bitmap, new-params-bound flag, type MYSQL_TYPE_BLOB (252); the value came as long data
    reply = execute(client, statement_id, params=b"\x00\x01\xfc\x00")
    assert reply[0] == 1
    read_until_eof(client)
    rows = read_until_eof(client)
    assert rows[0][2:] == struct.pack("<i", 1 << 20)  # header, NULL bitmap, then LENGTH() as a 4-byte INT
    client.command(COMMAND.COM_STMT_RESET, struct.pack("<I", statement_id))
    assert client.read_packet()[:1] == b"\x00"
    client.command(COMMAND.COM_STMT_CLOSE, struct.pack("<I", statement_id))  # no reply at all


def set_option(client):
    for option in (b"\x00\x00", b"\x01\x00"):
        client.command(COMMAND.COM_SET_OPTION, option)
        assert client.read_packet()[:1] in (b"\xfe", b"\x00")


def multi_results(client):
    client.command(COMMAND.COM_SET_OPTION, b"\x00\x00")
    client.read_packet()
    results = client.query("SELECT 1; DO 0; SELECT 2, 3")
    assert len(results) == 3


def server_error(client):
    client.command(COMMAND.COM_QUERY, b"SELECT * FROM no_such_table")
    assert client.read_packet()[:1] == b"\xff"


def ping_and_init_db(client):
    client.ping()
    client.command(COMMAND.COM_INIT_DB, b"appdb")
    assert client.read_packet()[:1] == b"\x00"


@pytest.mark.parametrize("scenario", [field_list, statistics, cursor_fetch, long_data, set_option, multi_results,
                                      server_error, ping_and_init_db], ids=lambda f: f.__name__)
def test_after_each_command_an_abrupt_disconnect_leaves_a_reusable_upstream(dbkeeper, scenario):
    client = login(dbkeeper)
    before = upstream_id(client)
    scenario(client)
    client.abort()  # no COM_QUIT: dbkeeper must know by itself that every reply was complete
    again = login(dbkeeper)
    assert upstream_id(again) == before
    assert again.scalar("SELECT 1") == "1"
    again.close()


def test_a_client_vanishing_mid_reply_leaves_an_upstream_that_is_replaced(dbkeeper):
    client = login(dbkeeper)
    before = upstream_id(client)
    client.command(COMMAND.COM_QUERY, b"SELECT REPEAT('x', 1000) FROM seq_1_to_100000")
    client.read_some(4096)
    client.abort()
    again = login(dbkeeper)
    assert upstream_id(again) != before
    assert again.scalar("SELECT 1") == "1"
    again.close()
