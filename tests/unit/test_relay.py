"""The Relay forwards every byte untouched and, whatever the chunking and whichever shortcut it
takes, knows at the end of a session whether the upstream is between replies."""

from hypothesis import given, settings
from hypothesis import strategies as st
from mysql_replies import eof, err, ok, query_reply, stream, text_result
from pymysql.constants import COMMAND
from relay_doubles import Side

from dbkeeper.protocol.packets import frame
from dbkeeper.relay import Relay


def relay():
    client, upstream = Side(), Side()
    return Relay(client, upstream), client, upstream


def chunks_of(data, sizes):
    pieces, start = [], 0
    for size in sizes:
        if start >= len(data):
            break
        pieces.append(data[start:start + size])
        start += size
    if start < len(data):
        pieces.append(data[start:])
    return pieces


exchange = st.tuples(query_reply(), st.lists(st.integers(min_value=1, max_value=200), max_size=5))


@settings(max_examples=150, deadline=None)
@given(exchanges=st.lists(exchange, min_size=1, max_size=6))
def test_a_synchronous_client_leaves_the_upstream_reusable_and_every_byte_is_forwarded(exchanges):
    session, client, upstream = relay()
    sent_up, sent_down = [], []
    for index, (reply, sizes) in enumerate(exchanges):
        command = frame(b"\x03SELECT %d" % index, 0)
        assert session.client_data(command) is None
        sent_up.append(command)
        for piece in chunks_of(reply, sizes):
            session.upstream_data(piece)
            sent_down.append(piece)
    assert b"".join(upstream.transport.written) == b"".join(sent_up)
    assert b"".join(client.transport.written) == b"".join(sent_down)
    assert session.commands == len(exchanges)
    assert session.settle()


@settings(max_examples=150, deadline=None)
@given(exchanges=st.lists(exchange, min_size=1, max_size=4), cut=st.integers(min_value=1))
def test_a_client_vanishing_mid_reply_leaves_an_upstream_that_is_not_reusable(exchanges, cut):
    session, _, _ = relay()
    for index, (reply, sizes) in enumerate(exchanges):
        session.client_data(frame(b"\x03SELECT %d" % index, 0))
        if index == len(exchanges) - 1:
            reply = reply[:cut % len(reply)]  # the last reply is cut short
        for piece in chunks_of(reply, sizes):
            session.upstream_data(piece)
    assert not session.settle()


def test_pipelined_commands_are_followed_exactly():
    session, _, _ = relay()
    first, second = stream(text_result([[b"1"]])), stream([ok()])
    session.client_data(frame(b"\x03SELECT 1", 0) + frame(b"\x03DO 1", 0))
    session.upstream_data(first)
    assert not session.settle()  # the second reply has not come
    session.upstream_data(second)
    assert session.settle()


def test_a_reply_ending_in_err_or_a_single_ok_needs_no_walk_but_is_still_exact():
    session, _, _ = relay()
    for reply in (stream([err()]), stream([ok()]), stream(text_result([[b"x"]] * 3))):
        session.client_data(frame(b"\x03Q", 0))
        session.upstream_data(reply)
    assert session.settle()


def test_commands_without_a_reply_and_option_changes_are_accounted_for():
    session, _, upstream = relay()
    session.client_data(frame(bytes((COMMAND.COM_STMT_CLOSE,)) + b"\x01\x00\x00\x00", 0))
    session.client_data(frame(bytes((COMMAND.COM_SET_OPTION,)) + b"\x00\x00", 0))
    session.upstream_data(frame(eof(), 1))
    assert upstream.options_forgotten == 1
    assert session.settle()


def test_an_intercepted_command_is_returned_not_forwarded():
    session, _, upstream = relay()
    quit_packet = frame(bytes((COMMAND.COM_QUIT,)), 0)
    assert session.client_data(quit_packet) == quit_packet
    assert upstream.transport.written == []


def test_a_client_quitting_right_after_the_column_definitions_leaves_an_upstream_that_is_not_reusable():
    # given an unbuffered cursor's session: the reply so far ends with the columns' EOF, rows to come
    reply = stream(text_result([[b""], [b""]]))
    columns_end = len(stream(text_result([[b""], [b""]])[:3]))
    session, _, _ = relay()
    session.client_data(frame(b"\x03SELECT ''", 0))
    session.upstream_data(reply[:columns_end])
    # when the client quits there, then the end of its session is not mistaken for the end of the reply
    quit_packet = frame(bytes((COMMAND.COM_QUIT,)), 0)
    assert session.client_data(quit_packet) == quit_packet
    assert not session.settle()


def test_a_reset_after_a_whole_reply_needs_no_walk_to_be_settled():
    session, _, _ = relay()
    session.client_data(frame(b"\x03SELECT 1", 0))
    session.upstream_data(stream(text_result([[b"1"]])))
    reset = frame(b"\x1f", 0)
    assert session.client_data(reset) == reset
    assert session.settle(after_command=True)


def test_a_final_eof_split_across_two_chunks_still_proves_the_reply_ended():
    session, _, _ = relay()
    reply = stream(text_result([[b"x" * 50]]))
    session.client_data(frame(b"\x03SELECT 1", 0))
    session.upstream_data(reply[:-4])
    session.upstream_data(reply[-4:])
    walked = []
    session.tracker.feed = walked.append  # the exact (slow) path would hand the chunks over here
    assert session.client_data(frame(b"\x03SELECT 2", 0)) is None
    assert walked == []  # proven from the last 9 bytes alone
    del session.tracker.feed
    session.upstream_data(stream([ok()]))
    assert session.settle()
