"""Generic server replies: OK, ERR, EOF. Builders and parsers, no I/O."""

from __future__ import annotations

from typing import NamedTuple

from pymysql.constants import SERVER_STATUS

from ..errors import ProtocolError
from .packets import lenenc_int, read_lenenc_int

OK_HEADER = 0x00
LOCAL_INFILE_HEADER = 0xFB
EOF_HEADER = 0xFE
ERR_HEADER = 0xFF
# A status bit pymysql.constants.SERVER_STATUS lacks (MySQL's name): the OK's session-tracking
# data reports a change (CLIENT_SESSION_TRACK), or an EOF's reply made one
SERVER_SESSION_STATE_CHANGED = 0x4000

# Error numbers, by MySQL's names, in one place: those dbkeeper answers with as a server would,
# those it reads in the server's replies, and the client-side one it answers for a database it
# cannot reach (what a driver itself reports then).
ER_ACCESS_DENIED_ERROR = 1045
ER_CON_COUNT_ERROR = 1040
ER_HANDSHAKE_ERROR = 1043
ER_NET_PACKETS_OUT_OF_ORDER = 1156
ER_NO_SUCH_THREAD = 1094
ER_UNKNOWN_COLLATION = 1273
CR_CONN_HOST_ERROR = 2003


class ServerError(NamedTuple):
    errno: int
    sqlstate: str
    message: str


def ok_payload(status: int = SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT, affected_rows: int = 0,
               last_insert_id: int = 0, warnings: int = 0) -> bytes:
    return (bytes((OK_HEADER,)) + lenenc_int(affected_rows) + lenenc_int(last_insert_id)
            + status.to_bytes(2, "little") + warnings.to_bytes(2, "little"))


def err_payload(errno: int, sqlstate: str, message: str) -> bytes:
    return (bytes((ERR_HEADER,)) + errno.to_bytes(2, "little") + b"#" + sqlstate.encode()[:5].ljust(5, b"0")
            + message.encode("utf-8", "replace"))


def is_err(payload: bytes) -> bool:
    return bool(payload) and payload[0] == ERR_HEADER


def is_ok(payload: bytes) -> bool:
    return bool(payload) and payload[0] == OK_HEADER


def parse_err(payload: bytes) -> ServerError:
    if not is_err(payload) or len(payload) < 3:
        raise ProtocolError("not an ERR packet")
    errno = int.from_bytes(payload[1:3], "little")
    if payload[3:4] == b"#":
        return ServerError(errno, payload[4:9].decode("ascii", "replace"), payload[9:].decode("utf-8", "replace"))
    return ServerError(errno, "HY000", payload[3:].decode("utf-8", "replace"))


def ok_status(payload: bytes) -> int:
    """Server status flags of an OK packet (protocol 4.1)."""
    _, position = read_lenenc_int(payload, 1)
    _, position = read_lenenc_int(payload, position)
    if position + 2 > len(payload):
        raise ProtocolError("truncated OK packet")
    return int.from_bytes(payload[position:position + 2], "little")

