"""A minimal raw MySQL client over an already-authenticated PyMySQL connection's socket.

`RawQuery` sends one prebuilt COM_QUERY packet and reads until the reply is complete. The reply's
exact length is learned once (`calibrate`, which walks every packet and checks the framing: column
count, definitions, EOF, rows, final EOF without SERVER_MORE_RESULTS_EXISTS); afterwards a timed
call only counts bytes, so the client spends no Python time per row and the relay is what shows.
Relays forward bytes unchanged, so the length is the same on every path to the same server.
"""

from __future__ import annotations

import socket
import struct
import time

from pymysql.constants import COMMAND, SERVER_STATUS

EOF_HEADER = 0xFE
ERR_HEADER = 0xFF
OK_HEADER = 0x00
_RECV_TIMEOUT = struct.pack("ll", 10, 0)  # a hung read fails after 10 s instead of hanging the bench


def com_query(sql: str) -> bytes:
    payload = bytes((COMMAND.COM_QUERY,)) + sql.encode()
    return len(payload).to_bytes(3, "little") + b"\x00" + payload


def raw_socket(conn) -> socket.socket:
    """The connection's socket (PyMySQL 1.1: conn._sock), blocking, with a kernel receive timeout."""
    sock = conn._sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _RECV_TIMEOUT)
    return sock


class Incomplete(ValueError):
    """More bytes are needed."""


def walk_reply(data: bytes | bytearray) -> dict:
    """Parse one text-protocol result set reply completely; Incomplete if it has not all arrived,
    ValueError if it is not exactly one result set."""
    position = 0
    packets = []
    while position < len(data):
        if position + 4 > len(data):
            raise Incomplete("truncated packet header")
        length = int.from_bytes(data[position:position + 3], "little")
        start = position + 4
        if start + length > len(data):
            raise Incomplete("truncated packet")
        packets.append(bytes(data[start:start + length]))
        position = start + length
    if not packets:
        raise Incomplete("empty reply")
    first = packets[0]
    if first[0] == ERR_HEADER:
        raise ValueError(f"server error: {first[3:]!r}")
    if first[0] == OK_HEADER:
        raise ValueError("not a result set")
    columns = first[0]  # < 251 in our queries
    eofs = [i for i, p in enumerate(packets) if p[0] == EOF_HEADER and len(p) < 9]
    if len(eofs) < 2:
        raise Incomplete("final EOF not here yet")
    if len(eofs) != 2 or eofs[0] != 1 + columns or eofs[1] != len(packets) - 1:
        raise ValueError(f"unexpected framing: {len(packets)} packets, EOFs at {eofs}")
    status = int.from_bytes(packets[-1][3:5], "little")
    if status & SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS:
        raise ValueError("more results follow")
    return {"columns": columns, "rows": eofs[1] - eofs[0] - 1, "bytes": len(data)}


class RawQuery:
    def __init__(self, sock: socket.socket, sql: str, buffer_size: int = 4 << 20):
        self.sock = sock
        self.packet = com_query(sql)
        self.buffer = bytearray(buffer_size)
        self.view = memoryview(self.buffer)
        self.expected = 0
        self.rows = 0

    def calibrate(self) -> dict:
        """Run once reading until the reply parses completely; remember its length."""
        self.sock.sendall(self.packet)
        received = 0
        while True:
            n = self.sock.recv_into(self.view[received:])
            if n == 0:
                raise ConnectionError("connection closed")
            received += n
            try:
                info = walk_reply(self.buffer[:received])
            except Incomplete:
                if received == len(self.buffer):
                    raise
                continue
            self.expected = received
            self.rows = info["rows"]
            return info

    def run(self) -> int:
        """One query; returns nanoseconds from sending to the reply's last byte."""
        sock, view, expected = self.sock, self.view, self.expected
        t0 = time.perf_counter_ns()
        sock.sendall(self.packet)
        received = 0
        while received < expected:
            n = sock.recv_into(view[received:expected + 1])
            if n == 0:
                raise ConnectionError("connection closed")
            received += n
        t1 = time.perf_counter_ns()
        if received != expected:
            raise RuntimeError(f"reply length changed: {received} != {expected}")
        return t1 - t0
