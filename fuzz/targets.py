"""In-process fuzz targets: every parser and state machine of protocol/ and the relay, each with
oracles that must hold for ANY input.

`run_one(data)` is the single entry point (atheris calls it; the corpus replay and the coverage
measurement call it too). Its first byte picks the target, the rest is decoded by `Draw`.
Oracles:
  * only the project's own errors escape a parser (ProtocolError / DbkeeperError); anything
    else, or a broken oracle, raises `Finding`;
  * re-framing rebuilds the input (packets, greetings, handshake responses, ERR/OK, auth switch);
  * chunked and whole feeding end in the same state (PacketBuffer, CommandScanner,
    ResponseTracker);
  * the scanner agrees with an independent reading of the packet stream;
  * the ResponseTracker is never idle while a reply is unfinished;
  * classifying a session-setup statement takes linear time (a CPU-time bound);
  * the relay, driven with fake transports against a model of the server (server_model.py),
    forwards the client's bytes unchanged and in order, gives each client only its own replies,
    and never calls an upstream reusable while the server still owes replies.
"""

from __future__ import annotations

import os
import time

from pymysql.constants import CLIENT, COMMAND

from dbkeeper.errors import DbkeeperError, ProtocolError
from dbkeeper.protocol import auth, handshake, messages, packets, session_setup
from dbkeeper.protocol.commands import EMPTY_PACKET, FILE_DATA, FILE_END, INTERCEPTED, CommandScanner
from dbkeeper.protocol.responses import ResponseTracker, closes_reply
from dbkeeper.protocol.session import SessionModel
from dbkeeper.relay import Relay

from .draw import Draw
from .server_model import ModelServer, frames

MAX_FRAME = packets.MAX_FRAME
CLASSIFY_CPU_LIMIT_S = 0.25  # a linear match of <= 64 KiB takes well under 1 ms


class Finding(AssertionError):
    """An oracle failed: the input shows a defect."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Finding(message)


def chunks(draw: Draw, data: bytes, most: int = 64) -> list[bytes]:
    """`data` cut at points drawn from the input (possibly whole, possibly one byte at a time)."""
    pieces, position = [], 0
    while position < len(data):
        size = draw.int_in(0, most) or len(data)
        pieces.append(data[position:position + size])
        position += size
    return pieces


# --------------------------------------------------------------------------- packets

def target_packets(draw: Draw) -> None:
    limit = draw.pick((16, 255, 4096, 1 << 16))
    stream = draw.rest()
    whole, pieces = packets.PacketBuffer(max_packet=limit), packets.PacketBuffer(max_packet=limit)
    split = chunks(Draw(stream[::-1]), stream, 9)  # cut points come from the bytes themselves
    try:
        got_whole = whole.feed(stream)
        rest_whole = whole.take_rest()
    except ProtocolError as exc:
        got_whole, rest_whole = exc, None
    try:
        got_pieces = []
        for piece in split:
            got_pieces += pieces.feed(piece)
        rest_pieces = pieces.take_rest()
    except ProtocolError as exc:
        got_pieces, rest_pieces = exc, None
    check(type(got_whole) is type(got_pieces), f"whole {got_whole!r} vs chunked {got_pieces!r}")
    if isinstance(got_whole, ProtocolError):
        return
    check(got_whole == got_pieces and rest_whole == rest_pieces, "chunked feeding differs from whole")
    rebuilt = b"".join(frames(p.payload, p.sequence_id)[0] for p in got_whole) + rest_whole
    check(rebuilt == stream, "re-framing does not rebuild the stream")
    for packet in got_whole:  # length-encoded values in a payload: read, or a ProtocolError
        position = 0
        try:
            while position < len(packet.payload):
                _, position = packets.read_lenenc_bytes(packet.payload, position)
        except ProtocolError:
            pass
    value = int.from_bytes(stream[:8].ljust(8, b"\0"), "little") >> (stream[8] % 64 if len(stream) > 8 else 0)
    encoded = packets.lenenc_int(value) + b"tail"
    check(packets.read_lenenc_int(encoded, 0) == (value, len(encoded) - 4), f"lenenc {value} does not round-trip")


# --------------------------------------------------------------------------- handshake

_PLUGINS = (handshake.NATIVE_PASSWORD, handshake.CACHING_SHA2_PASSWORD, handshake.CLEAR_PASSWORD, "dialog", "")


def _text(draw: Draw, most: int) -> str:
    return bytes(b % 0x5F + 0x20 for b in draw.raw(most)).decode()


def target_handshake(draw: Draw) -> None:
    mode = draw.int_in(0, 5)
    if mode == 0:  # arbitrary bytes as the upstream's greeting
        try:
            greeting = handshake.parse_greeting(draw.rest())
        except ProtocolError:
            return
        # what client.py greets its clients with: the upstream's identity, dbkeeper's own scramble
        local = greeting._replace(scramble=b"s" * handshake.SCRAMBLE_LENGTH, auth_plugin=handshake.NATIVE_PASSWORD)
        check(handshake.parse_greeting(handshake.build_greeting(local)).server_version == greeting.server_version,
              "the upstream's server version does not survive into dbkeeper's own greeting")
    elif mode == 1:  # arbitrary bytes as a handshake response
        try:
            handshake.parse_handshake_response(draw.rest())
        except ProtocolError:
            pass
    elif mode == 2:  # arbitrary bytes as an auth switch
        try:
            plugin, data = handshake.parse_auth_switch(draw.rest())
        except ProtocolError:
            return
        check(isinstance(plugin, str) and isinstance(data, bytes), "auth switch parsed to the wrong types")
    elif mode == 3:  # a greeting dbkeeper builds is read back the same
        scramble = bytes(b % 255 + 1 for b in draw.raw(20)).ljust(20, b"x")
        capabilities = (draw.int_in(0, 0xFFFFFFFF) | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH)
        greeting = handshake.Greeting(_text(draw, 40), draw.int_in(0, 0xFFFFFFFF), scramble, capabilities,
                                      draw.int_in(0, 255), draw.int_in(0, 0xFFFF), draw.pick(_PLUGINS) or "x",
                                      0 if capabilities & handshake.CLIENT_MYSQL else draw.int_in(0, 0xFFFFFFFF))
        check(handshake.parse_greeting(handshake.build_greeting(greeting)) == greeting,
              f"greeting does not round-trip: {greeting!r}")
    elif mode == 4:  # a handshake response dbkeeper builds is read back the same
        capabilities = draw.int_in(0, 0xFFFFFFFF) | CLIENT.PROTOCOL_41
        if not capabilities & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            capabilities |= CLIENT.SECURE_CONNECTION
        attributes = {_text(draw, 8): _text(draw, 20) for _ in range(draw.int_in(0, 3))}
        response = handshake.HandshakeResponse(
            capabilities, draw.int_in(0, 0xFFFFFFFF), draw.int_in(0, 255), _text(draw, 16),
            draw.raw(255 if capabilities & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA else 250),
            (_text(draw, 16) or None) if capabilities & CLIENT.CONNECT_WITH_DB else None,
            (draw.pick(_PLUGINS) or None) if capabilities & CLIENT.PLUGIN_AUTH else None,
            attributes if capabilities & CLIENT.CONNECT_ATTRS else {})
        parsed = handshake.parse_handshake_response(handshake.build_handshake_response(response))
        expected = response._replace(auth_plugin=response.auth_plugin or (handshake.NATIVE_PASSWORD
                                     if capabilities & CLIENT.PLUGIN_AUTH else None))
        check(parsed == expected, f"handshake response does not round-trip: {response!r} -> {parsed!r}")
        ssl = handshake.parse_handshake_response(handshake.build_ssl_request(capabilities, 1 << 24, 45))
        check(ssl.ssl_request, "an SSLRequest is not recognised")
    else:  # auth switch round trip
        plugin = draw.pick(_PLUGINS) or "x"
        scramble = bytes(b % 255 + 1 for b in draw.raw(20))
        check(handshake.parse_auth_switch(handshake.build_auth_switch(plugin, scramble)) == (plugin, scramble),
              "auth switch does not round-trip")


# --------------------------------------------------------------------------- auth

def target_auth(draw: Draw) -> None:
    password = _text(draw, 24)
    scramble = bytes(b % 255 + 1 for b in draw.raw(20)).ljust(20, b"s")
    stored = auth.native_password_hash(password)
    proof = auth.native_proof(password, scramble)
    check(auth.verify_native(stored, scramble, proof), "the right proof is refused")
    other = draw.raw(24)
    if other != proof:
        check(not auth.verify_native(stored, scramble, other), "a wrong proof is accepted")
    try:
        auth.upstream_proof(draw.pick(_PLUGINS), password, scramble, draw.boolean())
    except DbkeeperError:
        pass


# --------------------------------------------------------------------------- messages

def target_messages(draw: Draw) -> None:
    mode = draw.int_in(0, 2)
    if mode == 0:
        data = draw.rest()
        for parse in (messages.parse_err, messages.ok_status):
            try:
                parse(data)
            except ProtocolError:
                pass
        closes_reply(data)
    elif mode == 1:
        errno, sqlstate = draw.int_in(0, 0xFFFF), bytes(b % 26 + 65 for b in draw.raw(5)).decode().ljust(5, "0")
        message = _text(draw, 80)
        parsed = messages.parse_err(messages.err_payload(errno, sqlstate, message))
        check(parsed == messages.ServerError(errno, sqlstate, message), "ERR does not round-trip")
    else:
        status, affected, insert_id = draw.int_in(0, 0xFFFF), draw.log_int(1 << 63), draw.log_int(1 << 63)
        payload = messages.ok_payload(status, affected, insert_id, draw.int_in(0, 0xFFFF))
        check(messages.ok_status(payload) == status and messages.is_ok(payload), "OK does not round-trip")


# --------------------------------------------------------------------------- commands scanner

def client_packets(draw: Draw, most_packets: int = 8) -> list[bytes]:
    """Client bytes in the command phase, piece by piece: commands of every kind, empty packets,
    lying lengths; often led by the setup statements drivers send first."""
    out = []
    if draw.int_in(0, 2) == 0:
        out += [frames(b"\x03" + draw.pick(_SETUP), 0)[0] for _ in range(draw.int_in(1, 3))]
    for _ in range(draw.int_in(0, most_packets)):
        shape = draw.int_in(0, 11)
        if shape == 10:  # a packet of a LOCAL INFILE file
            out.append(frames(draw.raw(16) or b"x", draw.int_in(2, 4))[0])
        elif shape == 11:  # the empty packet that ends a LOCAL INFILE file
            out.append(b"\x00\x00\x00" + bytes((draw.int_in(2, 5),)))
        elif shape == 0:
            out.append(b"\x00\x00\x00\x00")  # an empty packet (a command: COM_SLEEP to the server)
        elif shape == 1:
            out.append(draw.raw(12))  # garbage, lying headers
        elif shape == 2:  # a header announcing more than follows, or a 16 MiB continuation frame
            out.append((draw.pick((MAX_FRAME, draw.int_in(1, 300)))).to_bytes(3, "little") + b"\x00" + draw.raw(8))
        else:
            code = draw.pick(_COMMAND_CODES) if draw.int_in(0, 3) else draw.byte()
            argument = draw.pick(_SQL) if code == COMMAND.COM_QUERY and draw.boolean() else draw.raw(24)
            out.append(frames(bytes((code,)) + argument, 0 if draw.int_in(0, 3) else draw.int_in(1, 255))[0])
    return out


def client_stream(draw: Draw, most_packets: int = 8) -> bytes:
    return b"".join(client_packets(draw, most_packets))


_SETUP = (b"SET NAMES utf8mb4", b"SET autocommit=0", b"SET AUTOCOMMIT = 1", b"SET NAMES latin1",
          b"SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci")
_COMMAND_CODES = tuple(c for c in range(0x20) if c != COMMAND.COM_PROCESS_KILL) + (COMMAND.COM_QUERY,) * 12
_SQL = (b"LOAD DATA LOCAL INFILE '/tmp/fuzz.csv' INTO TABLE t",
        b"SELECT 1", b"SET NAMES utf8mb4", b"SET autocommit=0", b"SET AUTOCOMMIT = 1", b"DO SLEEP(1)",
        b"SET NAMES latin1 COLLATE latin1_swedish_ci", b"BEGIN", b"SELECT 'secret'")


def scan_reference(stream: bytes) -> tuple[list[int], int | None, bool]:
    """(command codes, offset where an intercepted command starts, at a boundary at the end), read
    as commands.py documents it: a packet starting with sequence id 0 is a command (an empty one is
    COM_SLEEP to the server); any other sequence id continues an exchange (file data)."""
    codes, position, continuation = [], 0, False
    while position < len(stream):
        if position + 4 > len(stream):  # header incomplete
            return codes, None, False
        length = int.from_bytes(stream[position:position + 3], "little")
        if not continuation:
            if stream[position + 3]:
                codes.append(FILE_DATA if length else FILE_END)
            elif not length:
                codes.append(EMPTY_PACKET)
            elif position + 4 == len(stream):  # command byte not here yet
                return codes, None, False
            else:
                code = stream[position + 4]
                if code in INTERCEPTED:
                    return codes, position, True
                codes.append(code)
        continuation = length == MAX_FRAME
        position += 4 + length
        if position > len(stream):
            return codes, None, False
    return codes, None, not continuation


def target_scanner(draw: Draw) -> None:
    stream = client_stream(draw, 12)
    codes, intercept_at, boundary = scan_reference(stream)
    scanner = CommandScanner()
    forwarded, seen, rest = [], [], None
    for piece in chunks(draw, stream, 16):
        forward, commands, rest = scanner.feed(piece)
        forwarded.append(forward)
        seen += commands
        if rest is not None:
            break
    forwarded = b"".join(forwarded)
    check(seen == codes, f"scanner saw commands {seen}, the stream has {codes}")
    if intercept_at is None:
        check(rest is None, "an intercepted command was reported that is not there")
        check(scanner.at_boundary == boundary, "at_boundary disagrees with the stream")
        check(stream.startswith(forwarded) and len(stream) - len(forwarded) <= 4 and
              (len(forwarded) == len(stream) or not boundary), "bytes were lost or held back without reason")
    else:
        check(rest is not None and forwarded == stream[:intercept_at], "intercepted command not cut at its start")
        check(stream[intercept_at:].startswith(rest), "the intercepted command's bytes were altered")


# --------------------------------------------------------------------------- responses tracker

def target_responses(draw: Draw) -> None:
    server = ModelServer(draw)
    commands = []
    for _ in range(draw.int_in(1, 5)):
        code = draw.pick(_TRACKED)
        commands.append(code)
        server.receive(frames(bytes((code,)) + b"x", 0)[0])
    stream = server.take(1 << 30)
    ends, total = set(), 0
    for size in server.reply_sizes:
        total += size
        ends.add(total)
    whole, pieces = ResponseTracker(), ResponseTracker()
    for code in commands:
        whole.expect(code)
        pieces.expect(code)
    fed = 0
    for piece in chunks(draw, stream, 24):
        pieces.feed(piece)
        fed += len(piece)
        if pieces.idle:
            check(fed == len(stream), f"tracker idle after {fed} of {len(stream)} reply bytes")
    whole.feed(stream)
    state = lambda t: (t.idle, t.outstanding, t.broken)  # noqa: E731
    check(state(whole) == state(pieces), f"whole {state(whole)} vs chunked {state(pieces)}")
    check(whole.idle, f"tracker not idle after every reply: {whole.broken or whole.outstanding}")


# Commands whose replies the tracker knows (the rest it refuses to follow, which is safe).
_TRACKED = (COMMAND.COM_QUERY, COMMAND.COM_QUERY, COMMAND.COM_STMT_PREPARE, COMMAND.COM_STMT_EXECUTE,
            COMMAND.COM_STMT_FETCH, COMMAND.COM_FIELD_LIST, COMMAND.COM_PING, COMMAND.COM_INIT_DB,
            COMMAND.COM_STATISTICS, COMMAND.COM_SET_OPTION, COMMAND.COM_STMT_RESET, COMMAND.COM_PROCESS_INFO)


# --------------------------------------------------------------------------- session setup

_WS = (b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c")


def setup_statement(draw: Draw) -> bytes:
    """A statement shaped like the setup statements drivers send, with whitespace runs of any
    length and stray bytes: the grammar classify() must decide on."""
    def ws(at_least: int) -> bytes:
        return draw.pick(_WS) * max(at_least, draw.log_int(1 << 16) if draw.int_in(0, 3) == 0 else draw.int_in(0, 2))

    def name() -> bytes:
        word = draw.pick((b"utf8mb4", b"latin1", b"utf8mb4_unicode_ci", b"x", b"1", b"ON"))
        quote = draw.pick((b"", b"", b"'", b'"', b"`"))
        return quote + word + quote

    parts = [ws(0), draw.pick((b"SET", b"set", b"SeT")), ws(1)]
    if draw.boolean():
        parts += [b"NAMES", ws(1), name()]
        if draw.boolean():
            parts += [ws(1), b"COLLATE", ws(1), name()]
    else:
        parts += [draw.pick((b"", b"SESSION ", b"@@", b"@@SESSION.")), b"autocommit", ws(0), b"=", ws(0),
                  draw.pick((b"0", b"1", b"ON", b"OFF", b"TRUE", b"false", b"'ON'", b"'OFF'", b"2"))]
    parts += [ws(0), draw.pick((b"", b";")), ws(0)]
    if draw.boolean():  # a stray tail: no longer a setup statement
        parts.append(draw.raw(4) or b"x")
    statement = b"".join(parts)
    for _ in range(draw.int_in(0, 2)):  # a byte changed anywhere
        at = draw.int_in(0, len(statement))
        statement = statement[:at] + bytes((draw.byte(),)) + statement[at + 1:]
    return statement


def target_session_setup(draw: Draw) -> None:
    command = (b"\x03" if draw.int_in(0, 7) else bytes((draw.byte(),))) + setup_statement(draw)
    started = time.thread_time()
    effect = session_setup.classify(command)
    spent = time.thread_time() - started
    check(spent < CLASSIFY_CPU_LIMIT_S,
          f"classify() took {spent:.2f} s of CPU for a {len(command)}-byte statement (super-linear matching)")
    proven = session_setup.ProvenSetup()
    reply = draw.pick((messages.ok_payload(), messages.ok_payload(warnings=1), messages.err_payload(1064, "42000", "x"),
                       draw.raw(12)))
    try:
        proven.learn(command, reply)
    except ProtocolError:
        return
    statement = proven.get(command)
    check((statement is not None) == (effect is not None and messages.is_ok(reply)),
          "a statement was learned that is not a setup statement, or an accepted one was not")
    if statement is not None:
        status = draw.int_in(0, 0xFFFF)
        payload, after = session_setup.answer(statement, status)
        check(messages.ok_status(payload) == after, "the local OK carries other status flags than it reports")
        if statement.autocommit is not None:
            check(bool(after & 2) == statement.autocommit, "autocommit flag not what the statement sets")


# --------------------------------------------------------------------------- relay

class _Transport:
    def __init__(self, sink):
        self.sink = sink
        self.reading = True

    def write(self, data):
        self.sink(data)

    def is_closing(self):
        return False

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True


class _Upstream:
    tracked = False  # the model server sends no session-tracking data

    def __init__(self, server: ModelServer):
        self.transport = _Transport(server.receive)
        self.status = 2
        self.options_forgotten = 0

    def forget_options(self):
        self.options_forgotten += 1


class _Client:
    def __init__(self):
        self.received_local = bytearray()   # written while the relay handled client bytes
        self.received_relayed = bytearray()  # written while it handled upstream bytes
        self.in_upstream_data = False
        self.transport = _Transport(self._write)
        self.failed = False
        self.reading = True

    def _write(self, data):
        (self.received_relayed if self.in_upstream_data else self.received_local).extend(data)

    def setup_failed(self, reply):
        self.failed = True

    def set_reading(self, reading):
        self.reading = reading

    def upstream_lost(self):
        self.failed = True

    def session_pinned(self, pins):
        pass


def target_relay(draw: Draw) -> None:
    """Sessions one after another on one upstream connection, as the pool lends it: each client
    sends a command stream in chunks, the model server answers, the client may hang up at any
    moment; when the relay calls the upstream reusable it is lent to the next session."""
    server = ModelServer(draw)
    proven = session_setup.ProvenSetup()
    for session in range(draw.int_in(1, 4)):
        server.mark()
        client, upstream = _Client(), _Upstream(server)
        sent_upstream = bytearray()
        upstream.transport.sink = lambda data, sent=sent_upstream: (sent.extend(data), server.receive(data))
        model = SessionModel(None, draw.boolean(), tracked=True) if draw.boolean() else None
        relay = Relay(client, upstream, proven if draw.int_in(0, 3) else None, session=model)
        packets_sent = client_packets(draw)
        pieces = list(packets_sent) if draw.boolean() else chunks(draw, b"".join(packets_sent), 40)
        sent = bytearray()
        delivered = bytearray()
        reusable = None
        while reusable is None:
            step = draw.int_in(0, 7)
            if step <= 3 and pieces:  # the client sends its next chunk
                piece = pieces.pop(0)
                sent += piece
                rest = relay.client_data(piece)
                check(bytes(sent).startswith(bytes(sent_upstream)), "the relay altered or reordered client bytes")
                if rest is not None:
                    check(bytes(sent).endswith(rest) and rest[4] in INTERCEPTED, "intercepted bytes altered")
                    # client.py: COM_QUIT ends the session; a reset or change of user settles first
                    reusable = relay.settle()
            elif step <= 6 and server.pending:  # the server's reply bytes arrive
                piece = server.take(draw.int_in(1, 96))
                delivered += piece
                client.in_upstream_data = True
                relay.upstream_data(piece)
                client.in_upstream_data = False
                if draw.int_in(0, 15) == 0:
                    relay.client_congested(draw.boolean())
                    relay.upstream_congested(draw.boolean())
            else:  # the client hangs up (or has nothing more to say and the input ends)
                reusable = relay.settle()
            if client.failed:
                if server.pending:  # what is still on its way goes nowhere
                    relay.upstream_data(server.take(draw.int_in(1, 96)))
                reusable = relay.settle()
        if not client.failed:
            # the client got its own replies, nothing else: the OKs of setup statements answered
            # locally, then the server's stream less the replies to those statements
            skip = sum(server.reply_sizes[:_count_packets(client.received_local)])
            own = client.received_relayed == delivered[skip:] if len(delivered) >= skip else not client.received_relayed
            check(own, "the client received bytes that are not its replies")
        if model is not None:
            blockers = relay.blockers()  # asked by the pool and the client at any time: must not fail
            check(blockers is None or reusable, "a session may move while its upstream is not reusable")
        if not reusable:
            relay.why_not_idle  # noqa: B018 (logged by client.py: must not fail either)
            return  # the pool closes the connection: nothing of it can reach anyone
        check(not server.owes,
              f"session {session}: upstream called reusable while the server still owes "
              f"{len(server.pending)} reply bytes / an unfinished packet (commands {server.commands})")


def _count_packets(data: bytearray) -> int:
    count, position = 0, 0
    while position + 4 <= len(data):
        position += 4 + int.from_bytes(data[position:position + 3], "little")
        count += 1
    return count


# --------------------------------------------------------------------------- dispatch

TARGETS = (
    ("packets", target_packets),
    ("handshake", target_handshake),
    ("auth", target_auth),
    ("messages", target_messages),
    ("scanner", target_scanner),
    ("responses", target_responses),
    ("session_setup", target_session_setup),
    ("relay", target_relay),
)


ONLY = os.environ.get("DBKEEPER_FUZZ_TARGET")  # one target's name: every input goes to it


def run_one(data: bytes) -> None:
    if not data:
        return
    name, target = TARGETS[data[0] % len(TARGETS)]
    if ONLY:
        name, target = next(t for t in TARGETS if t[0] == ONLY)
    try:
        target(Draw(data[1:]))
    except Finding:
        raise
    except DbkeeperError:
        pass  # the project's own errors are the documented way to refuse input
    except Exception as exc:
        raise Finding(f"{name}: {type(exc).__name__} escaped: {exc}") from exc
