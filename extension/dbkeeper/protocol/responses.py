"""Follows the server's replies to relayed commands, to know when the upstream is idle again
(so a session can end with the connection reusable) or left mid-reply (so it must be closed).

LOAD DATA LOCAL INFILE is part of a COM_QUERY reply: the server asks for a file (0xFB + name), the
client sends it as packets and an empty one (`file_packet`), then the server ends that result with
OK or ERR (which may announce more results). Client packets that continue no such request leave
the stream unfollowable: what the server makes of them is not known here.

No I/O. The relay forwards reply bytes as they come and feeds them here lazily: walking every row
of a large result in Python would cost more CPU than relaying it, so `Relay` (session.py) only feeds
what it cannot vouch for otherwise (see `closes_reply`).
"""

from __future__ import annotations

import struct
from collections import deque

from pymysql.constants import COMMAND, SERVER_STATUS

from ..errors import ProtocolError
from .commands import COM_RESET_CONNECTION
from .messages import EOF_HEADER, ERR_HEADER, LOCAL_INFILE_HEADER, OK_HEADER, SERVER_SESSION_STATE_CHANGED
from .packets import HEADER_SIZE, MAX_FRAME, read_lenenc_int

_HEAD = 24  # enough payload bytes to classify any packet (OK status, prepare counts, EOF)

# What each command's reply looks like.
_RESULT_SET = frozenset((COMMAND.COM_QUERY, COMMAND.COM_PROCESS_INFO))
_SINGLE_PACKET = frozenset((
    COMMAND.COM_INIT_DB, COMMAND.COM_PING, COMMAND.COM_STATISTICS, COMMAND.COM_SET_OPTION,
    COMMAND.COM_STMT_RESET, COM_RESET_CONNECTION, COMMAND.COM_REFRESH, COMMAND.COM_CREATE_DB,
    COMMAND.COM_DROP_DB, COMMAND.COM_PROCESS_KILL, COMMAND.COM_DEBUG, COMMAND.COM_SHUTDOWN,
    COMMAND.COM_SLEEP, COMMAND.COM_TIME, COMMAND.COM_CONNECT, COMMAND.COM_DELAYED_INSERT,
))

# Parser states.
_FIRST = "first"            # first packet of a reply (or of the next result of a multi-result)
_COLUMNS = "columns"        # column definitions, then EOF
_ROWS = "rows"              # rows, then EOF or ERR
_PARAMS = "params"          # prepare: parameter definitions, then EOF
_PREPARE_COLUMNS = "prepare_columns"
_FIELD_LIST = "field_list"  # column definitions until EOF
_SINGLE = "single"          # any one packet ends the reply
_FILE = "file"              # LOCAL INFILE: the server asked for a file; the client sends it
_FILE_SENT = "file_sent"    # the client's empty packet ended it: OK or ERR follows


class ResponseTracker:
    def __init__(self) -> None:
        self._pending: deque[int] = deque()  # commands whose reply has not ended
        self._state: str | int | None = None  # a phase name, or the code of a command of unknown shape
        self._after_params = 0               # prepare: columns that follow the parameters
        self._binary = False                 # rows of COM_STMT_EXECUTE / FETCH
        self._header = b""
        self._head = b""
        self._length = 0
        self._skip = 0
        self._collecting_head = False
        self._continuation = False
        self.broken: str | None = None       # why the stream can no longer be followed
        self._packet = b""                   # the head of the packet being classified
        self.final = b""                     # the head of the packet that ended the last reply
        self.marks = 0                       # WARNED | STATE_CHANGED of replies walked since it was read

    @property
    def idle(self) -> bool:
        """Every reply relayed so far is complete and the stream is at a packet boundary."""
        return not self._pending and self._between_packets and self.broken is None

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def expect(self, command: int) -> None:
        if not self._pending:
            self._begin(command)
        self._pending.append(command)

    def file_packet(self, empty: bool) -> None:
        """The client sent a packet of a LOCAL INFILE (sequence id not 0); `empty` ends the file.
        Called after every reply byte relayed before it has been fed: the client answers a
        request it has read whole."""
        if self.broken is not None:
            return
        if self._state != _FILE or len(self._pending) != 1 or not self._between_packets:
            self.broken = "client packet out of sequence with no LOCAL INFILE request to answer"
        elif empty:
            self._state = _FILE_SENT

    @property
    def _between_packets(self) -> bool:
        return not (self._skip or self._header or self._collecting_head or self._continuation)

    def feed(self, data: bytes) -> None:
        if self.broken is not None:
            return
        position = 0
        size = len(data)
        while position < size:
            if self._skip:
                taken = min(self._skip, size - position)
                self._skip -= taken
                position += taken
                continue
            if self._collecting_head:
                wanted = min(self._length, _HEAD) - len(self._head)
                piece = data[position:position + wanted]
                self._head += piece
                position += len(piece)
                if len(piece) < wanted:
                    return
                self._collecting_head = False
                self._finish_packet()
                continue
            if not self._header and position + HEADER_SIZE <= size:
                length = data[position] | data[position + 1] << 8 | data[position + 2] << 16
                start = position + HEADER_SIZE
                wanted = min(length, _HEAD)
                if start + wanted <= size:  # the common case: header and head in this chunk
                    self._length = length
                    self._head = data[start:start + wanted]
                    position = start + wanted
                    self._finish_packet()
                    continue
            piece = data[position:position + HEADER_SIZE - len(self._header)]
            self._header += piece
            position += len(piece)
            if len(self._header) == HEADER_SIZE:
                self._length = int.from_bytes(self._header[:3], "little")
                self._header = b""
                self._head = b""
                self._collecting_head = self._length > 0
                if not self._collecting_head:
                    self._finish_packet()

    def _finish_packet(self) -> None:
        length, head = self._length, self._head
        self._head = b""
        self._skip = length - len(head)
        continuation = self._continuation
        self._continuation = length == MAX_FRAME
        if continuation or self.broken is not None:
            return  # the tail of a large packet carries no structure of its own
        if not self._pending:
            self.broken = "reply bytes with no command outstanding"
            return
        self._on_packet(length, head)

    def _on_packet(self, length: int, head: bytes) -> None:
        self._packet = head
        first = head[0] if head else -1
        state = self._state
        if state == _ROWS:
            if first == EOF_HEADER and length < 9:
                self._end_result(_eof_status(head))
            elif first == ERR_HEADER:
                self._reply_done()
            return
        if state == _FILE:
            # The server answers only once the whole file is in (MariaDB's and MySQL's LOAD DATA
            # read it to its end even after an error): anything sooner cannot be followed.
            self.broken = "server spoke before the LOCAL INFILE file ended"
            return
        if first == ERR_HEADER:
            self._reply_done()
            return
        if state == _FILE_SENT:
            if first == OK_HEADER:
                self._end_result(_ok_status(head))
            else:
                self.broken = "unexpected reply to a LOCAL INFILE file"
            return
        if state == _FIRST:
            if first == OK_HEADER:
                self._end_result(_ok_status(head))
            elif first == LOCAL_INFILE_HEADER:
                self._state = _FILE
            elif first == EOF_HEADER and length < 9:
                self._reply_done()
            else:
                self._state = _COLUMNS  # a column count: definitions follow, up to an EOF
        elif state in (_COLUMNS, _PARAMS, _PREPARE_COLUMNS, _FIELD_LIST):
            if first == EOF_HEADER and length < 9:
                self._end_definitions(_eof_status(head))
        elif state == _SINGLE:
            self._reply_done()
        elif state == COMMAND.COM_STMT_PREPARE:
            if first != OK_HEADER or len(head) < 9:
                self.broken = "unexpected prepare reply"
                return
            columns = int.from_bytes(head[5:7], "little")
            params = int.from_bytes(head[7:9], "little")
            self._after_params = columns
            if params:
                self._state = _PARAMS
            elif columns:
                self._state = _PREPARE_COLUMNS
            else:
                self._reply_done()
        else:
            self.broken = f"cannot follow replies to command 0x{self._pending[0]:02x}"

    def _end_definitions(self, status: int) -> None:
        state = self._state
        if state == _PARAMS and self._after_params:
            self._state = _PREPARE_COLUMNS
        elif state in (_PARAMS, _PREPARE_COLUMNS, _FIELD_LIST):
            self._reply_done()
        elif self._binary and status & SERVER_STATUS.SERVER_STATUS_CURSOR_EXISTS:
            self._reply_done()  # rows come later, one COM_STMT_FETCH at a time
        else:
            self._state = _ROWS

    def _end_result(self, status: int) -> None:
        if status & SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS:
            self._state = _FIRST
        else:
            self._reply_done()

    def _reply_done(self) -> None:
        final = self.final = self._packet
        if final[:1] == b"\xff" or _warnings_of(final):
            self.marks |= WARNED
        if final[:1] == b"\xfe" and len(final) >= 5 and final[4] & 0x40:
            self.marks |= STATE_CHANGED
        self._pending.popleft()
        self._state = None
        if self._pending:
            self._begin(self._pending[0])

    def _begin(self, command: int) -> None:
        self._binary = command in (COMMAND.COM_STMT_EXECUTE, COMMAND.COM_STMT_FETCH)
        if command in _RESULT_SET or command == COMMAND.COM_STMT_EXECUTE:
            self._state = _FIRST
        elif command == COMMAND.COM_STMT_FETCH:
            self._state = _ROWS
        elif command == COMMAND.COM_STMT_PREPARE:
            self._state = COMMAND.COM_STMT_PREPARE
        elif command == COMMAND.COM_FIELD_LIST:
            self._state = _FIELD_LIST
        elif command in _SINGLE_PACKET:
            self._state = _SINGLE
        else:
            self._state = command  # unknown shape: _on_packet marks the stream unfollowable


_MORE_RESULTS = SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS


# reply_end(): what the last chunk of a reply says, in one small int (the relay asks once per reply
# and keeps it; small: CPython compares ints below 2**30 fastest): the final EOF's or OK's status in
# the low 16 bits, plus these; ordered so that one comparison separates a result set's end (below
# WHOLE_OK) from the rest, and another a closed reply from one that goes on (UNCLOSED)
REPLY_WARNED = 1 << 16  # the final EOF or OK reports warnings
WHOLE_OK = 1 << 17      # the chunk is one whole OK packet
ERRED = 1 << 18         # the chunk is one whole ERR packet (no status)
UNCLOSED = 1 << 19      # the chunk does not (provably) close the reply
# what the session model must hear of (reply_marks()): warnings, an error, a state change
MARKS = REPLY_WARNED | ERRED | SERVER_SESSION_STATE_CHANGED
# an EOF packet's frame: its length (two bytes, then one), sequence id skipped, 0xFE, warnings, status
_EOF_FRAME = struct.Struct("<HBxBHH").unpack_from
# ResponseTracker.marks / reply_marks(): the reply left warnings or an error (what SHOW WARNINGS /
# SHOW ERRORS would show) / its final EOF has SERVER_SESSION_STATE_CHANGED (an OK's change is read
# from its tracker data instead)
WARNED = 1
STATE_CHANGED = 2


def reply_end(chunk: bytes) -> int:
    """UNCLOSED unless this last chunk of a reply ends with a packet that closes the reply: an EOF with
    no more results to follow, or a chunk that is one whole ERR, or one whole OK (with one-byte
    counters) likewise. The relay runs this on every reply: one unpack of the last 9 bytes (an
    EOF's frame) instead of a byte subscript each. Anything it cannot tell falls back to the exact
    path (ResponseTracker)."""
    size = len(chunk)
    warnings: int  # (annotations only: no run-time cost)
    status: int
    if size >= 9:
        low, high, kind, warnings, status = _EOF_FRAME(chunk, size - 9)
        if low == 5 and high == 0 and kind == EOF_HEADER:
            if status & _MORE_RESULTS:
                return UNCLOSED
            return status + REPLY_WARNED if warnings else status
    if size > 4 and (chunk[0] | chunk[1] << 8 | chunk[2] << 16) == size - 4:
        if chunk[4] == ERR_HEADER:
            return ERRED
        if size >= 11 and chunk[4] == OK_HEADER and chunk[5] < 0xFB and chunk[6] < 0xFB \
                and not chunk[7] & _MORE_RESULTS:
            return chunk[7] | chunk[8] << 8 | WHOLE_OK | (REPLY_WARNED if chunk[9] or chunk[10] else 0)
    return UNCLOSED


def reply_marks(ended: int) -> int:
    """WARNED / STATE_CHANGED of a reply whose reply_end() is `ended` (< UNCLOSED). (An OK reporting a
    change reaches reply_end() rewritten, without the flag: its change was read from its data.)"""
    return (WARNED if ended & (REPLY_WARNED | ERRED) else 0) \
        | (STATE_CHANGED if ended & SERVER_SESSION_STATE_CHANGED else 0)


def closes_reply(chunk: bytes) -> bool:
    return reply_end(chunk) < UNCLOSED


def ends_with_eof(chunk: bytes) -> bool:
    """The chunk's last 9 bytes are an EOF packet (its payload is chunk[-5:])."""
    if len(chunk) < 9:
        return False
    low, high, kind, _, _ = _EOF_FRAME(chunk, len(chunk) - 9)
    return bool(low == 5 and high == 0 and kind == EOF_HEADER)


def _warnings_of(head: bytes) -> int:
    """Warnings in the head of an OK or EOF packet (0 when it cannot tell)."""
    if head[:1] == b"\xfe" and len(head) >= 5:
        return head[1] | head[2] << 8
    if head[:1] == b"\x00":
        try:
            _, position = read_lenenc_int(head, 1)
            _, position = read_lenenc_int(head, position)
        except ProtocolError:
            return 0
        return int.from_bytes(head[position + 2:position + 4], "little")
    return 0


def _eof_status(head: bytes) -> int:
    return int.from_bytes(head[3:5], "little") if len(head) >= 5 else 0


def _ok_status(head: bytes) -> int:
    _, position = read_lenenc_int(head, 1)
    _, position = read_lenenc_int(head, position)
    return int.from_bytes(head[position:position + 2], "little")
