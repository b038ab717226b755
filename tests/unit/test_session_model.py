"""The session model (protocol/session.py) and the relay that feeds it, as playbooks: the bytes a
client and a server exchange go in; what the session may do (move or not, and why), what a move
replays, and what the client receives come out. The server's bytes are those MariaDB 10.11 sends
to a session that negotiated CLIENT_SESSION_TRACK with every tracker on (recorded with a raw
client). No sockets."""

from __future__ import annotations

import pytest
from mysql_replies import AUTOCOMMIT, eof, err, stream, text_result
from pymysql.constants import COMMAND, SERVER_STATUS
from relay_doubles import Side

from dbkeeper.protocol.packets import frame
from dbkeeper.protocol.responses import WARNED
from dbkeeper.protocol.session import (
    SERVER_SESSION_STATE_CHANGED,
    Ending,
    Pin,
    SessionModel,
    ending_of,
    found_rows_statement,
    parse_ok,
    untracked_ok,
)
from dbkeeper.relay import Relay

# OK packets MariaDB sends a tracking session (payloads)
SET_AUTOCOMMIT_0 = bytes.fromhex("000000004000000014000f0a6175746f636f6d6d6974034f4646020131")
SET_TIME_ZONE = bytes.fromhex("00000000400000001600110974696d655f7a6f6e65062b30313a3030020131")
USE_MYSQL = bytes.fromhex("00000000400000000b0106056d7973716c020131")
SET_USER_VARIABLE = bytes.fromhex("000000004000000003020131")
PREPARE = bytes.fromhex("000000004000001253746174656d656e7420707265706172656403020131")
SET_CHARSET_RESULTS_NULL = bytes.fromhex("00000000400000001c0017156368617261637465725f7365745f726573756c747300020131")
PLAIN_OK = bytes.fromhex("00000000000000")


def query(sql: str) -> bytes:
    return frame(bytes((COMMAND.COM_QUERY,)) + sql.encode(), 0)


def model(multi_statements: bool = False) -> SessionModel:
    return SessionModel("app", multi_statements, tracked=True)


# --- what the server's OK packets say ---------------------------------------------------------


def test_an_ok_reporting_a_change_is_rewritten_to_what_an_untracked_session_gets():
    ok = parse_ok(SET_AUTOCOMMIT_0)
    assert ok.status == SERVER_SESSION_STATE_CHANGED and ok.changes == [(0, b"\nautocommit\x03OFF"), (2, b"1")]
    assert untracked_ok(ok, SET_AUTOCOMMIT_0) == PLAIN_OK  # what MariaDB sends without tracking
    prepared = parse_ok(PREPARE)  # an info string is kept, length-encoded as MariaDB sends it
    assert untracked_ok(prepared, PREPARE) == bytes.fromhex("000000000000001253746174656d656e74207072657061726564")


def test_system_variables_and_the_database_are_replayed_in_one_set_and_a_use():
    session = model()
    for payload in (SET_AUTOCOMMIT_0, SET_TIME_ZONE, USE_MYSQL, SET_CHARSET_RESULTS_NULL):
        assert session.ok(parse_ok(payload)) == []
    assert session.blockers(Ending(0, 0, False, 0)) == set()
    assert session.replay("app") == [
        bytes((COMMAND.COM_INIT_DB,)) + b"mysql",
        bytes((COMMAND.COM_QUERY,)) + b"SET SESSION character_set_results = NULL, autocommit = 'OFF', "
                                      b"time_zone = '+01:00'",
    ]


def test_a_change_reported_without_a_variable_or_database_pins_for_good():
    session = model()
    assert session.ok(parse_ok(SET_USER_VARIABLE)) == [Pin.STATE_CHANGE]  # e.g. a procedure's SET @x
    assert session.blockers(Ending(0, 0, False, 0)) == {Pin.STATE_CHANGE}


def test_the_last_insert_id_is_replayed():
    session = model()
    session.ok(parse_ok(bytes.fromhex("00012a02000000")))  # 1 row, insert id 42
    assert session.replay("app")[-1] == bytes((COMMAND.COM_QUERY,)) + b"DO LAST_INSERT_ID(42)"


# --- what the client's statements say ---------------------------------------------------------


@pytest.mark.parametrize("sql, pin", [
    ("SET @a = 1", Pin.USER_VARIABLE),
    ("SELECT @a := 1", Pin.USER_VARIABLE),
    ("select get_lock('job', 0)", Pin.USER_LOCK),
    ("LOCK TABLES t WRITE", Pin.LOCK_TABLES),
    ("FLUSH TABLES WITH READ LOCK", Pin.LOCK_TABLES),
    ("CREATE TEMPORARY TABLE t (a INT)", Pin.TEMPORARY_TABLE),
    ("PREPARE s FROM 'SELECT 1'", Pin.PREPARED_STATEMENT),
    ("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1", Pin.FOUND_ROWS),
    ("  CALL refresh()", Pin.STORED_PROGRAM),
    ("HANDLER t OPEN", Pin.HANDLER),
    ("XA START 'x'", Pin.XA),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Pin.TRANSACTION_CHARACTERISTICS),
    ("SELECT LAST_INSERT_ID(5)", Pin.LAST_INSERT_ID),
])
def test_statements_that_hold_what_no_replay_rebuilds_pin_the_session(sql, pin):
    session = model()
    assert session.command(query(sql), 4) == [pin]
    assert pin in session.blockers(Ending(0, 0, False, 0))


@pytest.mark.parametrize("sql", [
    "SELECT id, name FROM users WHERE id = 42",
    "INSERT INTO t (a) VALUES (1)",
    "SELECT @@time_zone, LAST_INSERT_ID()",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",  # a session variable: tracked, replayed
    "SELECT * FROM t LOCK IN SHARE MODE",  # a row lock: an open transaction says so
    "UPDATE examples SET xa = 1",
])
def test_ordinary_statements_do_not_pin(sql):
    session = model()
    assert session.command(query(sql), 4) == []


def test_a_multi_statement_query_pins_only_when_the_client_enabled_them():
    assert model(multi_statements=True).command(query("SELECT 1; SELECT 2"), 4) == [Pin.MULTI_STATEMENT]
    assert model(multi_statements=True).command(query("SELECT 1;"), 4) == []
    assert model().command(query("SELECT 1; SELECT 2"), 4) == []  # the server refuses it


def test_binary_prepared_statements_pin():
    assert model().command(bytes((COMMAND.COM_STMT_PREPARE,)) + b"SELECT ?") == [Pin.PREPARED_STATEMENT]


def test_unlock_tables_and_a_later_select_release_their_pins():
    session = model()
    session.command(query("LOCK TABLES t READ"), 4)
    session.command(query("UNLOCK TABLES"), 4)
    session.command(query("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1"), 4)
    assert session.pins == {Pin.FOUND_ROWS}
    session.command(query("SELECT FOUND_ROWS()"), 4)
    assert session.pins == set()


# --- what the last reply says -----------------------------------------------------------------


def test_an_open_transaction_warnings_an_error_or_affected_rows_hold_the_session_for_now():
    session = model()
    in_trans = SERVER_STATUS.SERVER_STATUS_IN_TRANS
    assert session.blockers(ending_of(eof(in_trans))) == {Pin.TRANSACTION}
    assert session.blockers(ending_of(err())) == {Pin.WARNINGS}
    assert session.blockers(Ending(AUTOCOMMIT, 1, False, 0)) == {Pin.WARNINGS}
    assert session.blockers(Ending(AUTOCOMMIT, 0, False, 3)) == {Pin.ROW_COUNT}  # ROW_COUNT() = 3
    assert session.blockers(ending_of(eof(AUTOCOMMIT))) == set()


def test_warnings_stay_until_a_statement_that_uses_a_table_ends_cleanly():
    session = model()
    assert session.reply_ended(WARNED) == [Pin.WARNINGS]  # e.g. INSERT with a truncated value
    session.command(query("SELECT 1"), 4)  # uses no table: MariaDB keeps the warnings
    assert Pin.WARNINGS in session.blockers(Ending(AUTOCOMMIT, 0, False, None))
    session.command(query("SELECT COUNT(*) FROM t"), 4)
    assert session.blockers(Ending(AUTOCOMMIT, 0, False, None)) == set()


def test_found_rows_and_row_count_read_before_a_move_are_made_so_again():
    commands = model().replay("app", observed=(0, 7))
    assert commands == [bytes((COMMAND.COM_QUERY,)) + found_rows_statement(7), bytes((COMMAND.COM_QUERY,)) + b"DO 0"]
    assert model().replay("app", observed=(-1, 0)) == [bytes((COMMAND.COM_QUERY,)) + b"SELECT 1 FROM DUAL WHERE 0"]


# --- the relay feeding it ---------------------------------------------------------------------


class TrackedSide(Side):
    tracked = True
    pins: list

    def __init__(self):
        super().__init__()
        self.pins = []

    def session_pinned(self, pins):
        self.pins += pins


def test_the_relay_rewrites_a_tracked_ok_and_learns_from_it():
    client, upstream = TrackedSide(), TrackedSide()
    session = model()
    relay = Relay(client, upstream, session=session)
    relay.client_data(query("SET time_zone = '+01:00'"))
    relay.upstream_data(frame(SET_TIME_ZONE, 1))
    assert client.transport.written == [frame(PLAIN_OK, 1)]
    assert session.variables == {b"time_zone": b"+01:00"}
    assert relay.blockers() == set()


def test_the_relay_pins_on_the_text_and_reports_it_once():
    client, upstream = TrackedSide(), TrackedSide()
    session = model()
    relay = Relay(client, upstream, session=session)
    relay.client_data(query("SELECT @a := 1"))
    relay.upstream_data(stream(text_result([[b"1"]])))
    relay.client_data(query("SET @b = 2"))
    assert client.pins == [Pin.USER_VARIABLE]
    assert relay.blockers() is None  # SET @b's reply is still to come
    relay.upstream_data(frame(SET_USER_VARIABLE, 1))
    assert relay.blockers() == {Pin.USER_VARIABLE}


def test_a_result_set_leaving_a_transaction_open_holds_the_session():
    client, upstream = TrackedSide(), TrackedSide()
    relay = Relay(client, upstream, session=model())
    relay.client_data(query("SELECT * FROM t FOR UPDATE"))
    relay.upstream_data(stream(text_result([[b"1"]], status=SERVER_STATUS.SERVER_STATUS_IN_TRANS)))
    assert relay.blockers() == {Pin.TRANSACTION}
    relay.client_data(query("COMMIT"))
    relay.upstream_data(frame(PLAIN_OK, 1))
    assert relay.blockers() == set()


def test_pipelined_commands_pin_the_session():
    client, upstream = TrackedSide(), TrackedSide()
    relay = Relay(client, upstream, session=model())
    relay.client_data(query("SELECT 1") + query("SELECT 2"))
    assert client.pins == [Pin.UNFOLLOWED]
