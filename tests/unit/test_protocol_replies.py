"""ResponseTracker knows exactly where each reply ends, however the bytes are cut into chunks,
LOAD DATA LOCAL INFILE exchanges included; what it cannot follow it calls broken, never idle."""

from hypothesis import given, settings
from hypothesis import strategies as st
from mysql_replies import AUTOCOMMIT, MORE, column, eof, err, ok, query_reply, stream, text_result
from pymysql.constants import COMMAND, SERVER_STATUS

from dbkeeper.protocol.packets import MAX_FRAME, frame, lenenc_int
from dbkeeper.protocol.responses import ResponseTracker, closes_reply


def cut(data, points):
    points = sorted({p % (len(data) + 1) for p in points})
    pieces, start = [], 0
    for point in points + [len(data)]:
        pieces.append(data[start:point])
        start = point
    return [p for p in pieces if p]


@settings(max_examples=200, deadline=None)
@given(reply=query_reply(), points=st.lists(st.integers(min_value=0), max_size=8))
def test_a_query_reply_is_complete_exactly_at_its_last_byte(reply, points):
    tracker = ResponseTracker()
    tracker.expect(COMMAND.COM_QUERY)
    fed = 0
    for piece in cut(reply, points):
        assert not tracker.idle
        tracker.feed(piece)
        fed += len(piece)
    assert tracker.idle and tracker.broken is None


@settings(max_examples=100, deadline=None)
@given(replies=st.lists(query_reply(), min_size=2, max_size=4), points=st.lists(st.integers(min_value=0), max_size=8))
def test_pipelined_replies_are_followed_one_after_another(replies, points):
    tracker = ResponseTracker()
    for _ in replies:
        tracker.expect(COMMAND.COM_QUERY)
    data = b"".join(replies)
    pieces = cut(data, points)
    for index, piece in enumerate(pieces):
        tracker.feed(piece)
        assert tracker.idle == (index == len(pieces) - 1)


def test_a_prepare_reply_with_params_and_columns_ends_after_the_second_eof():
    prepare_ok = (b"\x00" + (7).to_bytes(4, "little") + (2).to_bytes(2, "little") + (3).to_bytes(2, "little")
                  + b"\x00\x00\x00")
    packets = [prepare_ok] + [column()] * 3 + [eof()] + [column()] * 2 + [eof()]
    tracker = ResponseTracker()
    tracker.expect(COMMAND.COM_STMT_PREPARE)
    data = stream(packets)
    tracker.feed(data[:-1])
    assert not tracker.idle
    tracker.feed(data[-1:])
    assert tracker.idle


def test_an_execute_that_opens_a_cursor_ends_after_the_column_definitions_and_fetch_reads_rows():
    tracker = ResponseTracker()
    tracker.expect(COMMAND.COM_STMT_EXECUTE)
    tracker.feed(stream([b"\x01", column(), eof(AUTOCOMMIT | SERVER_STATUS.SERVER_STATUS_CURSOR_EXISTS)]))
    assert tracker.idle
    tracker.expect(COMMAND.COM_STMT_FETCH)
    tracker.feed(stream([b"\x00\x00\x01", b"\x00\x00\x02"]))
    assert not tracker.idle
    tracker.feed(stream([eof(AUTOCOMMIT | SERVER_STATUS.SERVER_STATUS_LAST_ROW_SENT)]))
    assert tracker.idle


def test_a_binary_result_row_starting_with_fe_is_not_mistaken_for_eof():
    tracker = ResponseTracker()
    tracker.expect(COMMAND.COM_STMT_EXECUTE)
    tracker.feed(stream([b"\x01", column(), eof(), b"\x00\x00" + b"\xfe" * 12]))
    assert not tracker.idle
    tracker.feed(frame(eof(), 9))
    assert tracker.idle


def test_a_row_larger_than_16_mib_is_one_row_not_many_packets():
    big_value = b"\xfe" * (MAX_FRAME + 10)  # continuation frames start with 0xfe: must not look like EOF
    row = lenenc_int(len(big_value)) + big_value
    tracker = ResponseTracker()
    tracker.expect(COMMAND.COM_QUERY)
    data = frame(b"\x01", 1) + frame(column(), 2) + frame(eof(), 3) + frame(row, 4)
    for start in range(0, len(data), 1 << 20):
        tracker.feed(data[start:start + (1 << 20)])
        assert not tracker.idle
    tracker.feed(frame(eof(), 6))
    assert tracker.idle


def test_statistics_set_option_and_field_list_replies():
    tracker = ResponseTracker()
    tracker.expect(COMMAND.COM_STATISTICS)
    tracker.feed(frame(b"Uptime: 5  Threads: 1", 1))
    assert tracker.idle
    tracker.expect(COMMAND.COM_SET_OPTION)
    tracker.feed(frame(eof(), 1))
    assert tracker.idle
    tracker.expect(COMMAND.COM_FIELD_LIST)
    tracker.feed(stream([column(), column()]))
    assert not tracker.idle
    tracker.feed(frame(eof(), 3))
    assert tracker.idle


def test_an_unknown_command_makes_the_stream_unfollowable_rather_than_guessed():
    tracker = ResponseTracker()
    tracker.expect(COMMAND.COM_BINLOG_DUMP)
    tracker.feed(frame(b"\x00" * 30, 1))
    assert tracker.broken and not tracker.idle


def test_reply_bytes_with_nothing_outstanding_break_the_stream():
    tracker = ResponseTracker()
    tracker.feed(frame(ok(), 1))
    assert tracker.broken


def test_the_final_reply_witness_sees_only_a_closing_packet():
    assert closes_reply(stream(text_result([[b"1"]])))
    assert not closes_reply(stream(text_result([[b"1"]], status=AUTOCOMMIT | MORE)))
    assert closes_reply(stream([ok()])) and closes_reply(stream([err()]))
    assert not closes_reply(stream([ok(AUTOCOMMIT | MORE)]))
    assert not closes_reply(stream([ok(), ok()])[:-1])


# --------------------------------------------------------------------------- LOCAL INFILE
# A COM_QUERY reply may be a request for a file (0xFB + name, sequence id 1); the client sends the
# file (sequence ids 2, 3, ...) and an empty packet; the server then answers that result with OK
# or ERR, which may announce more results.

def infile_request(name=b"/tmp/rows.csv", sequence_id=1):
    return frame(b"\xfb" + name, sequence_id)


def after_request(packets_sent=0):
    """The tracker of a session whose server has just asked for a file."""
    tracker = ResponseTracker()
    tracker.expect(COMMAND.COM_QUERY)
    tracker.feed(infile_request())
    for _ in range(packets_sent):
        tracker.file_packet(empty=False)
    return tracker


@settings(max_examples=100, deadline=None)
@given(packets=st.integers(min_value=0, max_value=5), ending=st.sampled_from(["ok", "err"]),
       points=st.lists(st.integers(min_value=0), max_size=4))
def test_a_load_is_one_reply_that_ends_with_the_ok_or_err_after_the_file(packets, ending, points):
    # given the server asked for a file (cut anywhere) and the client sent it, then its end
    tracker = ResponseTracker()
    tracker.expect(COMMAND.COM_QUERY)
    for piece in cut(infile_request(), points):
        tracker.feed(piece)
    for _ in range(packets):
        tracker.file_packet(empty=False)
        assert not tracker.idle
    tracker.file_packet(empty=True)
    # then the reply goes on until the server's answer, and ends with it
    assert not tracker.idle
    tracker.feed(frame(ok(affected=packets) if ending == "ok" else err(), packets + 3))
    assert tracker.idle and tracker.broken is None


def test_a_load_among_multi_statements_hands_over_to_the_next_result():
    tracker = after_request(packets_sent=1)
    tracker.file_packet(empty=True)
    tracker.feed(frame(ok(AUTOCOMMIT | MORE, affected=2), 4))
    assert not tracker.idle
    # the next statement loads a file too
    tracker.feed(frame(b"\xfbother.csv", 5))
    tracker.file_packet(empty=True)
    tracker.feed(frame(ok(AUTOCOMMIT | MORE), 7))
    tracker.feed(stream(text_result([[b"2"]])))
    assert tracker.idle and tracker.broken is None


def test_file_packets_with_no_request_to_answer_break_the_stream():
    # given no LOCAL INFILE request (the server answers such a packet with 1156 and hangs up)
    idle = ResponseTracker()
    idle.file_packet(empty=True)
    assert idle.broken and not idle.idle
    # nor while a query's reply is a result set
    reading = ResponseTracker()
    reading.expect(COMMAND.COM_QUERY)
    reading.feed(stream(text_result([[b"1"]]))[:12])
    reading.file_packet(empty=False)
    assert reading.broken


def test_file_packets_before_the_whole_request_came_break_the_stream():
    tracker = ResponseTracker()
    tracker.expect(COMMAND.COM_QUERY)
    tracker.feed(infile_request()[:6])
    tracker.file_packet(empty=False)
    assert tracker.broken


def test_file_packets_after_the_file_ended_break_the_stream():
    tracker = after_request()
    tracker.file_packet(empty=True)
    tracker.file_packet(empty=False)
    assert tracker.broken


def test_a_load_with_commands_pipelined_behind_it_cannot_be_followed():
    tracker = ResponseTracker()
    tracker.expect(COMMAND.COM_QUERY)
    tracker.expect(COMMAND.COM_QUERY)
    tracker.feed(infile_request())
    tracker.file_packet(empty=True)
    assert tracker.broken


def test_a_server_speaking_before_the_file_ended_breaks_the_stream():
    tracker = after_request(packets_sent=2)
    tracker.feed(frame(err(), 4))
    assert tracker.broken and not tracker.idle


def test_anything_but_ok_or_err_after_a_file_breaks_the_stream():
    tracker = after_request()
    tracker.file_packet(empty=True)
    tracker.feed(frame(b"\x01", 3))  # a column count
    assert tracker.broken
