"""ResponseTracker knows exactly where each reply ends, however the bytes are cut into chunks."""

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
