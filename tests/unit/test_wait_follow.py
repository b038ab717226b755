"""The session's wait_timeout follows the session (relay.py), as playbooks: a lent connection keeps
the pool's short wait_timeout while its session could move (a sandbox reclaimed without SHUTDOWN
leaves it on the server that long), and has the server's own whenever the session could not move
(an open transaction: a direct connection would keep it for hours). dbkeeper's own statement goes
in the same write as the client's command, in front of it, whenever the transition is known then;
the reply end sets right what was guessed wrong. No sockets."""

from __future__ import annotations

from mysql_replies import AUTOCOMMIT, err, ok, stream, text_result
from pymysql.constants import COMMAND, SERVER_STATUS
from relay_doubles import Side

from dbkeeper.protocol.packets import frame
from dbkeeper.protocol.session import SessionModel
from dbkeeper.relay import Relay

IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS
SERVER_WAIT = frame(bytes((COMMAND.COM_QUERY,)) + b"SET wait_timeout = server's", 0)
SHORT_WAIT = frame(bytes((COMMAND.COM_QUERY,)) + b"SET wait_timeout = short", 0)
OWN_OK = frame(ok(AUTOCOMMIT), 1)  # the reply to either (dropped before the client's)


def query(sql: str) -> bytes:
    return frame(bytes((COMMAND.COM_QUERY,)) + sql.encode(), 0)


class Client(Side):
    def session_pinned(self, pins):
        pass


class Upstream(Side):
    """A lent connection with the pool's short wait_timeout."""
    tracked = True

    def __init__(self, status):
        super().__init__(status)
        self.short_wait = True

    def wait_command(self, short):
        self.short_wait = short
        return SHORT_WAIT if short else SERVER_WAIT


def relay(status=AUTOCOMMIT):
    client, upstream = Client(), Upstream(status)
    return Relay(client, upstream, session=SessionModel("app", False, tracked=True), follow_wait=True), client, upstream


def test_a_transaction_opened_with_autocommit_off_gets_the_servers_wait_timeout_in_the_same_write():
    r, client, upstream = relay(status=0)
    r.client_data(query("INSERT INTO t VALUES (1)"))
    assert upstream.transport.written == [SERVER_WAIT + query("INSERT INTO t VALUES (1)")]
    r.upstream_data(OWN_OK + frame(ok(IN_TRANS, affected=1), 1))
    assert client.transport.written == [frame(ok(IN_TRANS, affected=1), 1)]
    r.client_data(query("SELECT * FROM t"))
    r.upstream_data(stream(text_result([[b"1"]], status=IN_TRANS)))
    # and the short one goes back in front of the COMMIT of a session that can move afterwards
    r.client_data(query("COMMIT"))
    r.upstream_data(OWN_OK + frame(ok(0), 1))
    assert upstream.transport.written[1:] == [query("SELECT * FROM t"), SHORT_WAIT + query("COMMIT")]
    assert client.transport.written[-1] == frame(ok(0), 1) and upstream.short_wait
    assert r.blockers() == set()


def test_begin_gets_the_servers_wait_timeout_with_autocommit_on():
    r, _, upstream = relay()
    r.client_data(query("BEGIN"))
    r.upstream_data(OWN_OK + frame(ok(AUTOCOMMIT | IN_TRANS), 1))
    r.client_data(query("ROLLBACK"))
    r.upstream_data(OWN_OK + frame(ok(AUTOCOMMIT), 1))
    assert upstream.transport.written == [SERVER_WAIT + query("BEGIN"), SHORT_WAIT + query("ROLLBACK")]


def test_a_statement_with_autocommit_on_costs_nothing():
    r, client, upstream = relay()
    for _ in range(3):
        r.client_data(query("SELECT * FROM t"))
        r.upstream_data(stream(text_result([[b"1"]])))
    assert upstream.transport.written == [query("SELECT * FROM t")] * 3 and upstream.short_wait
    assert client.transport.written == [stream(text_result([[b"1"]]))] * 3


def test_a_wrong_guess_is_set_right_at_the_reply_and_stops_the_guessing_until_a_transaction_opens_unguessed():
    r, client, upstream = relay(status=0)
    r.client_data(query("SELECT * FROM not_transactional"))
    r.upstream_data(OWN_OK + stream(text_result([[b"1"]], status=0)))
    # no transaction after all: the short wait_timeout again before the client can idle
    assert upstream.transport.written == [SERVER_WAIT + query("SELECT * FROM not_transactional"), SHORT_WAIT]
    r.upstream_data(OWN_OK)
    r.client_data(query("SELECT * FROM not_transactional"))
    r.upstream_data(stream(text_result([[b"1"]], status=0)))
    assert upstream.transport.written[-1] == query("SELECT * FROM not_transactional")
    # a transaction that opens unguessed gets the server's wait_timeout right after its reply
    r.client_data(query("UPDATE t SET a = 1"))
    r.upstream_data(frame(ok(IN_TRANS, affected=1), 1))
    assert upstream.transport.written[-2:] == [query("UPDATE t SET a = 1"), SERVER_WAIT] and not upstream.short_wait
    assert client.transport.written[-1] == frame(ok(IN_TRANS, affected=1), 1)


def test_a_failed_statement_with_autocommit_off_may_have_opened_a_transaction():
    r, client, upstream = relay(status=0)
    r.client_data(query("SELECT 1"))  # no table: no guess
    r.upstream_data(frame(err(), 1))
    assert upstream.transport.written == [query("SELECT 1"), SERVER_WAIT] and not upstream.short_wait
    assert client.transport.written == [frame(err(), 1)]


def test_a_failed_commit_keeps_the_servers_wait_timeout():
    r, _, upstream = relay(status=0)
    r.client_data(query("INSERT INTO t VALUES (1)"))
    r.upstream_data(OWN_OK + frame(ok(IN_TRANS, affected=1), 1))
    r.client_data(query("COMMIT"))
    r.upstream_data(OWN_OK + frame(err(), 1))
    assert upstream.transport.written[-2:] == [SHORT_WAIT + query("COMMIT"), SERVER_WAIT]
    assert not upstream.short_wait


def test_a_statement_that_may_read_the_wait_timeout_finds_the_servers_own():
    r, client, upstream = relay()
    r.client_data(query("SHOW VARIABLES LIKE 'wait_timeout'"))
    reply = stream(text_result([[b"wait_timeout"]]))
    r.upstream_data(OWN_OK + reply)
    assert client.transport.written == [reply]
    assert upstream.transport.written == [SERVER_WAIT + query("SHOW VARIABLES LIKE 'wait_timeout'"), SHORT_WAIT]


def test_dbkeepers_statement_never_goes_inside_a_command_or_a_local_infile():
    r, _, upstream = relay()
    long_query = query("SELECT 'VARIABLES' FROM t WHERE a = '" + "x" * 100 + "'")
    r.client_data(long_query[:40])
    r.client_data(long_query[40:])
    assert b"".join(upstream.transport.written) == long_query
    r.upstream_data(stream(text_result([[b"1"]])))
    upstream.transport.written.clear()
    r.client_data(query("LOAD DATA LOCAL INFILE '/tmp/x.csv' INTO TABLE t"))
    r.upstream_data(frame(b"\xfb/tmp/x.csv", 1))  # the server asks for the file
    file_data = frame(b"TIMEOUT,VARIABLES\n", 2) + frame(b"", 3)
    r.client_data(file_data)
    assert upstream.transport.written == [query("LOAD DATA LOCAL INFILE '/tmp/x.csv' INTO TABLE t"), file_data]


def test_what_a_statement_says_is_read_once_per_distinct_statement():
    from dbkeeper.protocol.session import (
        Q_BEGINS,
        Q_ENDS,
        Q_READS_WAIT,
        Q_USES_TABLE,
        Q_WORDS,
        QUERY_FLAGS,
        query_flags,
    )

    cases = {
        "SELECT 1": 0,
        "INSERT INTO t VALUES (1)": Q_USES_TABLE,
        "select * from t": Q_USES_TABLE,
        "START TRANSACTION READ ONLY": Q_BEGINS | Q_WORDS,  # "TRANSACTION": the model reads the text
        "begin": Q_BEGINS,
        "COMMIT": Q_ENDS,
        "rollback work;": Q_ENDS | Q_WORDS,  # ';': the model reads the text
        "ROLLBACK TO SAVEPOINT a": 0,  # the transaction goes on
        "COMMIT AND CHAIN": 0,
        "SHOW VARIABLES LIKE 'wait_timeout'": Q_READS_WAIT,
        "SELECT @a": Q_WORDS,
    }
    for sql, flags in cases.items():
        assert query_flags(query(sql)) == flags, sql
        assert QUERY_FLAGS[query(sql)] == flags
    query_flags(query("SELECT '" + "x" * 600 + "'"))
    assert query("SELECT '" + "x" * 600 + "'") not in QUERY_FLAGS
    for n in range(600):  # bounded: a session of ever-new statements does not grow it
        query_flags(query(f"SELECT {n}"))
    assert len(QUERY_FLAGS) <= 256
