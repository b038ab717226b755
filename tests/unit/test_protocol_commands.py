"""CommandScanner sees every command of the client's stream, whatever the chunking, and stops
before a command dbkeeper answers itself without having forwarded any byte of it. A packet that
does not start with sequence id 0 is no command: it is a LOCAL INFILE's file data (or its end)."""

from hypothesis import given, settings
from hypothesis import strategies as st
from pymysql.constants import COMMAND

from dbkeeper.protocol.commands import COM_RESET_CONNECTION, EMPTY_PACKET, FILE_DATA, FILE_END, CommandScanner
from dbkeeper.protocol.packets import MAX_FRAME, frame

RELAYED = [COMMAND.COM_QUERY, COMMAND.COM_PING, COMMAND.COM_STMT_PREPARE, COMMAND.COM_STMT_EXECUTE,
           COMMAND.COM_STMT_CLOSE, COMMAND.COM_STMT_SEND_LONG_DATA, COMMAND.COM_INIT_DB]
commands = st.lists(st.tuples(st.sampled_from(RELAYED), st.binary(max_size=60)), min_size=1, max_size=6)


def scan_all(scanner, pieces):
    forwarded, seen, rest = b"", [], None
    for index, piece in enumerate(pieces):
        forward, codes, rest = scanner.feed(piece)
        forwarded += forward
        seen += codes
        if rest is not None:
            return forwarded, seen, rest + b"".join(pieces[index + 1:])
    return forwarded, seen, None


def pieces_of(data, points):
    points = sorted({p % (len(data) + 1) for p in points})
    bounds = [0] + points + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@settings(max_examples=200, deadline=None)
@given(cmds=commands, points=st.lists(st.integers(min_value=0), max_size=10))
def test_every_command_is_seen_and_every_byte_forwarded(cmds, points):
    data = b"".join(frame(bytes((code,)) + argument, 0) for code, argument in cmds)
    scanner = CommandScanner()
    forwarded, seen, rest = scan_all(scanner, pieces_of(data, points))
    assert rest is None
    assert seen == [code for code, _ in cmds]
    assert forwarded == data
    assert scanner.at_boundary


@settings(max_examples=200, deadline=None)
@given(before=commands, intercepted=st.sampled_from([COMMAND.COM_QUIT, COMMAND.COM_CHANGE_USER, COM_RESET_CONNECTION]),
       points=st.lists(st.integers(min_value=0), max_size=10))
def test_an_intercepted_command_is_never_forwarded(before, intercepted, points):
    head = b"".join(frame(bytes((code,)) + argument, 0) for code, argument in before)
    tail = frame(bytes((intercepted,)) + b"user\0", 0) + frame(b"\x03SELECT 1", 0)
    forwarded, seen, rest = scan_all(CommandScanner(), pieces_of(head + tail, points))
    assert forwarded == head
    assert seen == [code for code, _ in before]
    assert rest == tail


def test_a_packet_larger_than_16_mib_is_one_command():
    payload = bytes((COMMAND.COM_QUERY,)) + b"\x01" * (MAX_FRAME + 100)
    data = frame(payload, 0) + frame(b"\x0e", 0)
    scanner = CommandScanner()
    forwarded, seen, rest = scan_all(scanner, [data[i:i + 65536] for i in range(0, len(data), 65536)])
    assert seen == [COMMAND.COM_QUERY, COMMAND.COM_PING] and forwarded == data and rest is None


def test_a_stream_cut_mid_packet_is_not_at_a_boundary():
    scanner = CommandScanner()
    scanner.feed(frame(b"\x03SELECT 1", 0)[:7])
    assert not scanner.at_boundary


# --------------------------------------------------------------------------- LOCAL INFILE


def file_packets(chunks, first_sequence=2):
    """A client's file as LOCAL INFILE sends it: data packets numbered on, then an empty one."""
    packets = [frame(chunk, first_sequence + index) for index, chunk in enumerate(chunks)]
    return b"".join(packets) + frame(b"", first_sequence + len(chunks))


intercepted_first = st.binary(min_size=1, max_size=40).map(lambda rest: bytes((COMMAND.COM_QUIT,)) + rest)
file_chunks = st.lists(st.one_of(st.binary(min_size=1, max_size=60), intercepted_first), max_size=5)


@settings(max_examples=200, deadline=None)
@given(before=commands, chunks=file_chunks, after=commands, points=st.lists(st.integers(min_value=0), max_size=12))
def test_file_packets_are_reported_as_file_data_not_commands_however_they_start(before, chunks, after, points):
    # given a query, the file its LOCAL INFILE sends (data that may start like COM_QUIT), more commands
    head = b"".join(frame(bytes((code,)) + argument, 0) for code, argument in before)
    tail = b"".join(frame(bytes((code,)) + argument, 0) for code, argument in after)
    data = head + file_packets(chunks) + tail
    scanner = CommandScanner()
    # when the stream is scanned in any chunking
    forwarded, seen, rest = scan_all(scanner, pieces_of(data, points))
    # then every byte is forwarded, nothing is intercepted, and the file is data, then its end
    assert rest is None and forwarded == data and scanner.at_boundary
    assert seen == [code for code, _ in before] + [FILE_DATA] * len(chunks) + [FILE_END] + [code for code, _ in after]


def test_an_empty_packet_alone_is_forwarded_at_once():
    # the end of a file, or a client's empty packet (which the server reads as COM_SLEEP): the
    # sender waits for a reply, so nothing of it may wait for more bytes
    for sequence_id, code in ((3, FILE_END), (0, EMPTY_PACKET)):
        scanner = CommandScanner()
        assert scanner.feed(frame(b"", sequence_id)) == (frame(b"", sequence_id), [code], None)
        assert scanner.at_boundary


def test_a_command_whose_command_byte_has_not_come_is_held_back():
    scanner = CommandScanner()
    quit_packet = frame(bytes((COMMAND.COM_QUIT,)), 0)
    assert scanner.feed(quit_packet[:4]) == (b"", [], None)
    assert scanner.feed(quit_packet[4:]) == (b"", [], quit_packet)


def test_a_file_packet_larger_than_16_mib_is_one_packet():
    data = frame(b"\x03" * (MAX_FRAME + 5), 2) + frame(b"", 4)
    forwarded, seen, rest = scan_all(CommandScanner(), [data[i:i + 65536] for i in range(0, len(data), 65536)])
    assert seen == [FILE_DATA, FILE_END] and forwarded == data and rest is None
