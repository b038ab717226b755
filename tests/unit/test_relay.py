"""The Relay forwards every byte untouched and, whatever the chunking and whichever shortcut it
takes, knows at the end of a session whether the upstream is between replies: LOAD DATA LOCAL
INFILE exchanges included, and a client packet that answers no server request makes the upstream
one never lent again."""

from hypothesis import given, settings
from hypothesis import strategies as st
from mysql_replies import AUTOCOMMIT, MORE, eof, err, ok, query_reply, stream, text_result
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


def test_a_reset_after_a_whole_reply_is_settled():
    session, _, _ = relay()
    session.client_data(frame(b"\x03SELECT 1", 0))
    session.upstream_data(stream(text_result([[b"1"]])))
    reset = frame(b"\x1f", 0)
    assert session.client_data(reset) == reset
    assert session.settle()


def test_a_reset_sent_after_the_column_definitions_is_not_mistaken_for_the_end_of_the_reply():
    # found by the in-process fuzzer: the definitions' EOF ends the last chunk, the rows are still owed
    session, _, _ = relay()
    reply = stream(text_result([[b"1"]]))
    columns_end = reply.index(b"\xfe") + 5  # the EOF after the column definitions
    session.client_data(frame(b"\x03SELECT 1", 0))
    session.upstream_data(reply[:columns_end])
    reset = frame(b"\x1f", 0)
    assert session.client_data(reset) == reset
    assert not session.settle()


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


# --------------------------------------------------------------------------- LOCAL INFILE

LOAD = frame(b"\x03LOAD DATA LOCAL INFILE '/tmp/rows.csv' INTO TABLE t", 0)
REQUEST = frame(b"\xfb/tmp/rows.csv", 1)


def file_of(chunks):
    """The client's file packets (sequence ids 2, 3, ...) and the empty packet that ends it."""
    return b"".join(frame(chunk, 2 + index) for index, chunk in enumerate(chunks)) + frame(b"", 2 + len(chunks))


def load(session, chunks, sizes=(), answer=None):
    """One LOAD DATA LOCAL INFILE through the relay; returns the bytes each side was sent."""
    up, down = LOAD + file_of(chunks), REQUEST + frame(answer or ok(affected=len(chunks)), 3 + len(chunks))
    assert session.client_data(LOAD) is None
    session.upstream_data(REQUEST)
    for piece in chunks_of(file_of(chunks), list(sizes)):
        assert session.client_data(piece) is None
    session.upstream_data(down[len(REQUEST):])
    return up, down


file_chunk = st.binary(min_size=1, max_size=80) | st.binary(max_size=20).map(lambda b: b"\x01" + b)


@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(file_chunk, max_size=6), sizes=st.lists(st.integers(min_value=1, max_value=50), max_size=8),
       answer=st.sampled_from([None, err()]))
def test_a_load_local_infile_is_relayed_whole_and_leaves_the_upstream_reusable(chunks, sizes, answer):
    # given a session that loads a file (possibly empty: the client found none), cut anyhow
    session, client, upstream = relay()
    up, down = load(session, chunks, sizes, answer)
    # then every byte went through untouched, file bytes that look like COM_QUIT included
    assert b"".join(upstream.transport.written) == up
    assert b"".join(client.transport.written) == down
    # and the file is not commands: one command, then the session goes on
    assert session.commands == 1
    assert session.client_data(frame(b"\x03SELECT 1", 0)) is None
    session.upstream_data(stream(text_result([[b"1"]])))
    assert session.commands == 2
    assert session.settle()


def test_a_client_gone_in_the_middle_of_its_file_leaves_an_upstream_that_is_not_reusable():
    session, _, _ = relay()
    session.client_data(LOAD)
    session.upstream_data(REQUEST)
    session.client_data(frame(b"1,2\n", 2))
    assert not session.settle()


def test_a_client_gone_before_the_answer_to_its_file_leaves_an_upstream_that_is_not_reusable():
    session, _, _ = relay()
    session.client_data(LOAD)
    session.upstream_data(REQUEST)
    session.client_data(file_of([b"1,2\n"]))
    assert not session.settle()
    assert session.tracker.broken is None  # not unfollowable: the answer is merely still due


def test_a_load_among_multi_statements_is_followed_to_the_last_result():
    session, _, _ = relay()
    session.client_data(frame(b"\x03LOAD DATA LOCAL INFILE 'a' INTO TABLE t; SELECT 1", 0))
    session.upstream_data(REQUEST)
    session.client_data(file_of([b"1\n"]))
    session.upstream_data(frame(ok(AUTOCOMMIT | MORE, affected=1), 4))
    assert not session.settle()
    session.upstream_data(stream(text_result([[b"1"]])))
    assert session.settle()


@settings(max_examples=100, deadline=None)
@given(sequence_id=st.integers(min_value=1, max_value=255), payload=st.sampled_from([b"", b"\x03SELECT 1", b"\x01"]),
       after_a_reply=st.booleans())
def test_a_client_packet_answering_no_request_makes_the_upstream_never_reused(sequence_id, payload, after_a_reply):
    # given a session between replies (the fast path's precondition holds)
    session, _, upstream = relay()
    if after_a_reply:
        session.client_data(frame(b"\x03SELECT 1", 0))
        session.upstream_data(stream(text_result([[b"1"]])))
    # when the client sends a packet that does not start at sequence id 0 (a whole command's shape
    # or not); MariaDB answers 1156 "Got packets out of order" and hangs up
    stray = frame(payload, sequence_id)
    assert session.client_data(stray) is None
    session.upstream_data(frame(err(), sequence_id + 1))
    # then it was forwarded, is not counted as a command, and the upstream is not reusable
    assert upstream.transport.written[-1] == stray
    assert session.commands == int(after_a_reply)
    assert not session.settle()


def test_an_empty_packet_alone_is_a_command_sent_at_once():
    session, _, upstream = relay()
    assert session.client_data(frame(b"", 0)) is None
    assert upstream.transport.written == [frame(b"", 0)]
    assert session.commands == 1 and not session.settle()  # the server owes it an ERR 1047
    session.upstream_data(frame(err(), 1))
    assert session.settle()
