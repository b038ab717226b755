"""CommandScanner sees every command of the client's stream, whatever the chunking, and stops
before a command dbkeeper answers itself without having forwarded any byte of it."""

from hypothesis import given, settings
from hypothesis import strategies as st
from pymysql.constants import COMMAND

from dbkeeper.protocol.commands import COM_RESET_CONNECTION, CommandScanner
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
