"""Session-setup statements: which are recognised, what the relay answers itself, and that the
server still receives exactly what the client sent, in order, with only the held statements'
replies removed from what the client sees."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mysql_replies import AUTOCOMMIT, err, ok, stream, text_result
from pymysql.constants import COMMAND
from relay_doubles import Side

from dbkeeper.protocol import session_setup
from dbkeeper.protocol.packets import PacketBuffer, frame
from dbkeeper.relay import Relay

SET_NAMES = b"\x03SET NAMES utf8mb4"
AUTOCOMMIT_OFF = b"\x03SET AUTOCOMMIT = 0"
SELECT = b"\x03SELECT 1"


@pytest.mark.parametrize("statement, autocommit", [
    (b"SET NAMES utf8mb4", None),
    (b"set names 'utf8mb4' collate 'utf8mb4_general_ci'", None),
    (b"SET NAMES `latin1`;", None),
    (b"SET AUTOCOMMIT = 0", False),
    (b"SET autocommit=1", True),
    (b"SET @@session.autocommit = OFF", False),
    (b"SET SESSION autocommit = ON", True),
])
def test_driver_setup_statements_are_recognised_with_their_effect_on_autocommit(statement, autocommit):
    assert session_setup.classify(b"\x03" + statement) == session_setup.Effect(autocommit)


@pytest.mark.parametrize("statement", [
    b"SET NAMES utf8mb4; DROP TABLE t",          # a second statement rides along
    b"SET NAMES utf8mb4, autocommit = 0",        # a list: more than one effect
    b"/* x */ SET NAMES utf8mb4",                # comments: not the exact shape
    b"SET AUTOCOMMIT = 2",
    b"SET @@global.autocommit = 0",              # global, not this session's
    b"SET CHARACTER SET utf8mb4",
    b"SELECT 1",
])
def test_anything_else_is_not_a_setup_statement(statement):
    assert session_setup.classify(b"\x03" + statement) is None


def test_only_com_query_can_hold_a_setup_statement():
    assert session_setup.classify(bytes((COMMAND.COM_INIT_DB,)) + b"SET NAMES utf8mb4") is None


def test_only_an_ok_proves_a_statement_and_its_warnings_are_remembered():
    proven = session_setup.ProvenSetup()
    proven.learn(SET_NAMES, err())
    proven.learn(SELECT, ok())
    assert len(proven) == 0
    proven.learn(SET_NAMES, b"\x00\x00\x00\x02\x00\x01\x00")  # one warning
    assert proven.get(SET_NAMES) == session_setup.SetupStatement(None, 1)


# --- the relay ---------------------------------------------------------------------------------

def proven_relay(*statements):
    proven = session_setup.ProvenSetup()
    for statement in statements:
        proven.learn(statement, ok())
    client, upstream = Side(), Side()
    return Relay(client, upstream, proven), client, upstream, proven


def replies(data):
    return [p.payload for p in PacketBuffer(max_packet=1 << 24).feed(data)]


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=6))
def test_proven_setup_is_answered_at_once_and_sent_in_front_of_the_first_real_command(cuts):
    # given a session whose driver's two setup statements this server accepted before
    session, client, upstream, _ = proven_relay(SET_NAMES, AUTOCOMMIT_OFF)
    # when the client sends them, it is answered at once and nothing goes upstream
    assert session.client_data(frame(SET_NAMES, 0)) is None
    assert session.client_data(frame(AUTOCOMMIT_OFF, 0)) is None
    assert upstream.transport.written == []
    answers = [replies(chunk)[0] for chunk in client.transport.written]
    assert [a[0] for a in answers] == [0, 0]
    assert [int.from_bytes(a[3:5], "little") & AUTOCOMMIT for a in answers] == [AUTOCOMMIT, 0]
    # when its first real command comes, the server gets all three, in order, back to back
    assert session.client_data(frame(SELECT, 0)) is None
    assert b"".join(upstream.transport.written) == frame(SET_NAMES, 0) + frame(AUTOCOMMIT_OFF, 0) + frame(SELECT, 0)
    # and whatever the chunking of the server's replies, the client sees only the SELECT's
    result = stream(text_result([[b"1"]], status=0))
    reply_bytes = stream([ok()]) + stream([ok(status=0)]) + result
    start = 0
    for cut in cuts + [len(reply_bytes)]:
        session.upstream_data(reply_bytes[start:start + cut])
        start += cut
        if start >= len(reply_bytes):
            break
    assert b"".join(client.transport.written[2:]) == result
    assert session.settle()


def test_an_unproven_setup_statement_is_forwarded_and_proven_by_its_ok():
    session, client, upstream, proven = proven_relay()
    assert session.client_data(frame(SET_NAMES, 0)) is None
    assert upstream.transport.written == [frame(SET_NAMES, 0)]
    session.upstream_data(frame(ok(), 1))
    assert client.transport.written == [frame(ok(), 1)]
    session.client_data(frame(SELECT, 0))  # the client read the reply: it was an OK
    assert proven.get(SET_NAMES) is not None


def test_a_setup_statement_the_server_refused_is_not_proven():
    session, client, upstream, proven = proven_relay()
    session.client_data(frame(b"\x03SET NAMES nonesuch", 0))
    session.upstream_data(frame(err(), 1))
    session.client_data(frame(SELECT, 0))
    assert len(proven) == 0


def test_a_held_statement_that_fails_after_all_ends_the_session_and_is_forgotten():
    session, client, upstream, proven = proven_relay(SET_NAMES)
    session.client_data(frame(SET_NAMES, 0))
    session.client_data(frame(SELECT, 0))
    session.upstream_data(frame(err(), 1) + stream(text_result([[b"1"]])))
    assert client.failures == [err()]
    assert client.transport.written == [frame(ok(), 1)]  # only the OK given at the time
    assert proven.get(SET_NAMES) is None
    assert not session.settle()


def test_held_statements_are_dropped_when_the_session_ends_or_resets():
    session, client, upstream, _ = proven_relay(SET_NAMES)
    session.client_data(frame(SET_NAMES, 0))
    rest = session.client_data(frame(bytes((COMMAND.COM_QUIT,)), 0))
    assert rest == frame(bytes((COMMAND.COM_QUIT,)), 0)
    assert upstream.transport.written == []
    assert session.settle()


def test_only_a_sessions_leading_statements_are_held():
    session, client, upstream, _ = proven_relay(SET_NAMES)
    session.client_data(frame(SELECT, 0))
    session.upstream_data(stream(text_result([[b"1"]])))
    session.client_data(frame(SET_NAMES, 0))
    assert upstream.transport.written == [frame(SELECT, 0), frame(SET_NAMES, 0)]


def test_without_proven_statements_nothing_is_held():
    client, upstream = Side(), Side()
    session = Relay(client, upstream, None)
    session.client_data(frame(SET_NAMES, 0))
    assert upstream.transport.written == [frame(SET_NAMES, 0)]


# --- the whole exchange, as a property --------------------------------------------------------

SETUP_STATEMENTS = [SET_NAMES, AUTOCOMMIT_OFF, b"\x03SET autocommit=1"]
command_st = st.one_of(st.sampled_from(SETUP_STATEMENTS), st.sampled_from([SELECT, b"\x03SELECT 2"]))


def server_reply(command):
    """What a server answers, as one stream: OK to a SET, a one-row result to a SELECT."""
    if session_setup.classify(command) is not None:
        return stream([ok()])
    return stream(text_result([[command[-1:]]]))


@settings(max_examples=200, deadline=None)
@given(sessions=st.lists(st.lists(command_st, min_size=1, max_size=6), min_size=1, max_size=4),
       cuts=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=8))
def test_over_many_sessions_the_server_runs_what_each_client_sent_and_each_client_gets_its_replies(sessions, cuts):
    # given sessions of synchronous clients sharing one ProvenSetup, as one pool's sessions do
    proven = session_setup.ProvenSetup()
    for commands in sessions:
        client, upstream = Side(), Side()
        session = Relay(client, upstream, proven)
        executed = 0  # bytes of upstream writes the server has run
        server_got = []
        autocommit = True
        for command in commands:
            before = len(client.transport.written)
            effect = session_setup.classify(command)
            if effect is not None and effect.autocommit is not None:
                autocommit = effect.autocommit
            # when the client sends a command and waits for its reply
            assert session.client_data(frame(command, 0)) is None
            sent = b"".join(upstream.transport.written)
            if len(sent) == executed:
                # answered here: one OK, whose status tells the session's autocommit as it now is
                (answer,) = replies_of(client.transport.written[before:])
                assert answer[0] == 0 and bool(answer[3] & AUTOCOMMIT) == autocommit
                continue
            if len(sent) > executed:
                # the server runs whatever arrived, in order, and its replies come back in pieces
                replies = b""
                for packet in PacketBuffer(max_packet=1 << 24).feed(sent[executed:]):
                    server_got.append(packet.payload)
                    replies += server_reply(packet.payload)
                executed = len(sent)
                start, index = 0, 0
                while start < len(replies):
                    cut = cuts[index % len(cuts)]
                    session.upstream_data(replies[start:start + cut])
                    start, index = start + cut, index + 1
            # then the client got exactly one reply: its own
            received = replies_of(client.transport.written[before:])
            expected = replies_of([server_reply(command)])
            assert [r[:1] for r in received] == [e[:1] for e in expected]
            assert received[-1:] == expected[-1:] or session_setup.classify(command) is not None
        # and the server ran the client's commands in order, but for held ones never sent
        sent_commands = [c for c in commands]
        assert server_got == sent_commands[:len(server_got)]
        assert all(proven.get(c) is not None for c in sent_commands[len(server_got):])
        assert session.settle()


def replies_of(chunks):
    return [p.payload for p in PacketBuffer(max_packet=1 << 24).feed(b"".join(chunks))]
