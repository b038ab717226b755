"""What a MariaDB server sends back on a connection in the command phase, as far as the framing
and the number of replies go: the reference the relay is checked against.

It reads the byte stream the relay forwards exactly as the server's network layer does (frames,
16 MiB continuations) and queues one reply for every packet that is a command. MariaDB answers
EVERY such packet, an empty one included (ERR 1047 "Unknown command"), except
COM_STMT_SEND_LONG_DATA and COM_STMT_CLOSE (no reply) and COM_QUIT (it closes). The content of a
reply (OK, ERR, result sets, multi-results, prepare and cursor replies) is drawn from the input:
the relay must follow all of them. No I/O.
"""

from __future__ import annotations

from pymysql.constants import COMMAND, SERVER_STATUS

from .draw import Draw

MAX_FRAME = 0xFFFFFF
MORE = SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS
AUTOCOMMIT = SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
CURSOR = SERVER_STATUS.SERVER_STATUS_CURSOR_EXISTS
COM_RESET_CONNECTION = 0x1F
NO_REPLY = frozenset((COMMAND.COM_STMT_SEND_LONG_DATA, COMMAND.COM_STMT_CLOSE))
# Commands answered with exactly one OK (or ERR) packet.
_ONE_OK = frozenset((COMMAND.COM_INIT_DB, COMMAND.COM_PING, COMMAND.COM_REFRESH, COMMAND.COM_STMT_RESET,
                     COMMAND.COM_PROCESS_KILL, COMMAND.COM_DEBUG, COM_RESET_CONNECTION))


def lenenc(value: int) -> bytes:
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def ok(status: int = AUTOCOMMIT, affected: int = 0, warnings: int = 0) -> bytes:
    return b"\x00" + lenenc(affected) + b"\x00" + status.to_bytes(2, "little") + warnings.to_bytes(2, "little")


def eof(status: int = AUTOCOMMIT) -> bytes:
    return b"\xfe\x00\x00" + status.to_bytes(2, "little")


def err(errno: int = 1064, message: bytes = b"You have an error in your SQL syntax") -> bytes:
    return b"\xff" + errno.to_bytes(2, "little") + b"#42000" + message


UNKNOWN_COMMAND = err(1047, b"Unknown command")


def column(name: bytes = b"c") -> bytes:
    return (b"\x03def\x00\x00\x00" + lenenc(len(name)) + name
            + b"\x00\x0c\x21\x00\x0b\x00\x00\x00\x08\x80\x00\x00\x00\x00")


def frames(payload: bytes, sequence: int) -> tuple[bytes, int]:
    out = []
    while True:
        chunk, payload = payload[:MAX_FRAME], payload[MAX_FRAME:]
        out.append(len(chunk).to_bytes(3, "little") + bytes((sequence & 0xFF,)) + chunk)
        sequence += 1
        if len(chunk) < MAX_FRAME:
            return b"".join(out), sequence


class ModelServer:
    """One upstream connection's server side. `receive` what the relay wrote upstream; `take`
    reply bytes to hand to the relay; `owes` says whether a reply (or the rest of a client
    packet the server is still reading) is outstanding."""

    def __init__(self, draw: Draw):
        self._draw = draw
        self._inbox = bytearray()
        self._partial: list[bytes] = []
        self._inbox_sequence = 0
        self.pending = bytearray()   # reply bytes produced, not yet taken
        self.reply_sizes: list[int] = []  # each reply's size in bytes, in order, since the last `mark`
        self.commands: list[int] = []     # command codes received (-1: empty packet)
        self.closed = False
        self._file_sequence: int | None = None  # LOCAL INFILE: the next sequence id of the reply

    @property
    def reading_file(self) -> bool:
        return self._file_sequence is not None

    @property
    def owes(self) -> bool:
        return bool(self.pending) or bool(self._inbox) or bool(self._partial) or self.reading_file

    def mark(self) -> None:
        """A new session starts on this connection: count its replies afresh."""
        self.reply_sizes = []
        self.commands = []

    def receive(self, data: bytes) -> None:
        if self.closed:
            return
        self._inbox += data
        while len(self._inbox) >= 4:
            length = self._inbox[0] | self._inbox[1] << 8 | self._inbox[2] << 16
            if len(self._inbox) < 4 + length:
                return
            if not self._partial:
                self._inbox_sequence = self._inbox[3]
            self._partial.append(bytes(self._inbox[4:4 + length]))
            del self._inbox[:4 + length]
            if length == MAX_FRAME:
                continue
            payload = b"".join(self._partial)
            sequence = self._inbox_sequence
            self._partial = []
            if self.reading_file:
                self._file_packet(payload, sequence)
            else:
                self._answer(payload)
            if self.closed:
                return

    def take(self, most: int) -> bytes:
        piece = bytes(self.pending[:most])
        del self.pending[:most]
        return piece

    # --- replies ------------------------------------------------------------------------------
    def _file_packet(self, payload: bytes, sequence: int) -> None:
        """LOAD DATA LOCAL INFILE: the server reads the file's packets to the empty one that ends
        it, then ends the result with OK or ERR."""
        if payload:
            return
        final, _ = frames(ok(affected=len(payload)) if self._draw.int_in(0, 3) else err(1261, b"Row 1 doesn't "
                          b"contain data for all columns"), sequence + 1)
        self._file_sequence = None
        self.pending += final
        self.reply_sizes[-1] += len(final)

    def _answer(self, payload: bytes) -> None:
        code = payload[0] if payload else -1
        self.commands.append(code)
        if code in NO_REPLY:
            return
        if code == COMMAND.COM_QUIT:
            self.closed = True
            return
        draw = self._draw
        if code == -1:
            packets = [UNKNOWN_COMMAND]
        elif code == COMMAND.COM_QUERY:
            packets = self._query(payload)
        elif code == COMMAND.COM_PROCESS_INFO:
            packets = self._result_set(binary=False, last=True)
        elif code == COMMAND.COM_STMT_PREPARE:
            packets = self._prepare()
        elif code == COMMAND.COM_STMT_EXECUTE:
            packets = [err()] if draw.int_in(0, 5) == 0 else self._execute()
        elif code == COMMAND.COM_STMT_FETCH:
            packets = [err()] if draw.int_in(0, 5) == 0 else self._rows(binary=True, status=AUTOCOMMIT | CURSOR)
        elif code == COMMAND.COM_FIELD_LIST:
            packets = [err()] if draw.boolean() else [column() for _ in range(draw.int_in(0, 3))] + [eof()]
        elif code == COMMAND.COM_STATISTICS:
            packets = [b"Uptime: 1  Threads: 1  Questions: 1"]
        elif code == COMMAND.COM_SET_OPTION:
            packets = [eof() if draw.boolean() else err()]
        elif code in _ONE_OK:
            packets = [ok() if draw.boolean() else err()]
        else:
            # COM_SLEEP, COM_TIME, COM_CONNECT, unknown codes...: "Unknown command"; replication and
            # privileged commands (binlog dump, shutdown, create/drop db): refused with an ERR.
            packets = [UNKNOWN_COMMAND if draw.boolean() else err(1227, b"Access denied")]
        reply, sequence = [], 1
        for packet in packets:
            data, sequence = frames(packet, sequence)
            reply.append(data)
        reply = b"".join(reply)
        self.pending += reply
        self.reply_sizes.append(len(reply))
        if packets and packets[-1][:1] == b"\xfb":  # a LOCAL INFILE request: the file comes next
            self._file_sequence = sequence

    def _query(self, payload: bytes) -> list[bytes]:
        draw = self._draw
        from dbkeeper.protocol import session_setup  # the model answers setup statements like the server

        if b"LOCAL" in payload.upper() and draw.int_in(0, 3):  # the server asks for the file
            return [b"\xfb/tmp/fuzz.csv"]
        if session_setup.classify(payload) is not None:
            # one statement (no result set, no further results): OK, or ERR if the server refuses it
            return [ok(warnings=draw.int_in(0, 1))] if draw.int_in(0, 7) else [err(1115, b"Unknown character set")]
        packets: list[bytes] = []
        count = draw.int_in(1, 3)
        for index in range(count):
            last = index == count - 1
            kind = draw.int_in(0, 3)
            if kind == 0:
                return packets + [err()]
            if kind == 1:
                packets.append(ok(AUTOCOMMIT | (0 if last else MORE), affected=draw.log_int(1 << 20)))
            else:
                packets += self._result_set(binary=False, last=last)
                if packets[-1][0] == 0xFF:  # an error mid-result ends the whole reply
                    return packets
            if last:
                return packets
        return packets

    def _result_set(self, binary: bool, last: bool) -> list[bytes]:
        draw = self._draw
        columns = draw.int_in(1, 3)
        packets = [lenenc(columns)] + [column(b"c%d" % i) for i in range(columns)] + [eof()]
        return packets + self._rows(binary, AUTOCOMMIT | (0 if last else MORE), columns)

    def _rows(self, binary: bool, status: int, columns: int = 1) -> list[bytes]:
        draw = self._draw
        rows = []
        for _ in range(draw.int_in(0, 3)):
            values = [draw.raw(12) for _ in range(columns)]
            row = b"".join(lenenc(len(v)) + v for v in values)
            rows.append(b"\x00" + b"\x00" * ((columns + 9) // 8) + row if binary else row)
        if draw.int_in(0, 7) == 0:
            return rows + [err(1317, b"Query execution was interrupted")]
        return rows + [eof(status)]

    def _prepare(self) -> list[bytes]:
        draw = self._draw
        if draw.int_in(0, 3) == 0:
            return [err()]
        columns, params = draw.int_in(0, 2), draw.int_in(0, 2)
        head = (b"\x00" + (1).to_bytes(4, "little") + columns.to_bytes(2, "little") + params.to_bytes(2, "little")
                + b"\x00\x00\x00")
        packets = [head]
        if params:
            packets += [column(b"?") for _ in range(params)] + [eof()]
        if columns:
            packets += [column() for _ in range(columns)] + [eof()]
        return packets

    def _execute(self) -> list[bytes]:
        draw = self._draw
        if draw.boolean():
            return [ok()]
        columns = draw.int_in(1, 2)
        packets = [lenenc(columns)] + [column() for _ in range(columns)]
        if draw.int_in(0, 3) == 0:  # a cursor was opened: rows come with COM_STMT_FETCH
            return packets + [eof(AUTOCOMMIT | CURSOR)]
        return packets + [eof()] + self._rows(binary=True, status=AUTOCOMMIT, columns=columns)
