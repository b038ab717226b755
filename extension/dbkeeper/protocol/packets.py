"""MySQL packet framing and length-encoded values. No I/O: bytes in, packets out.

A packet is a 3-byte little-endian payload length, a 1-byte sequence id, then the payload.
Payloads of 0xFFFFFF bytes or more are split; a frame shorter than 0xFFFFFF ends the packet.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import ProtocolError

HEADER_SIZE = 4
MAX_FRAME = 0xFFFFFF


class Packet(NamedTuple):
    sequence_id: int  # of the packet's first frame
    payload: bytes


def frame(payload: bytes, sequence_id: int) -> bytes:
    """Frame `payload` starting at `sequence_id`, splitting at 16 MiB as the protocol requires."""
    if len(payload) < MAX_FRAME:
        return len(payload).to_bytes(3, "little") + bytes((sequence_id & 0xFF,)) + payload
    frames = []
    position = 0
    while True:
        chunk = payload[position:position + MAX_FRAME]
        frames.append(len(chunk).to_bytes(3, "little") + bytes((sequence_id & 0xFF,)) + chunk)
        sequence_id += 1
        position += MAX_FRAME
        if len(chunk) < MAX_FRAME:
            return b"".join(frames)


class PacketBuffer:
    """Reassembles whole packets from a byte stream, for the low-volume control phases
    (handshake, authentication, session preparation, reset). The relay never uses it."""

    def __init__(self, max_packet: int = 1 << 20):
        self._buffer = bytearray()
        self._max_packet = max_packet
        self._partial: list[bytes] = []
        self._partial_sequence = 0

    def feed(self, data: bytes) -> list[Packet]:
        self._buffer += data
        packets = []
        while len(self._buffer) >= HEADER_SIZE:
            length = int.from_bytes(self._buffer[:3], "little")
            if len(self._buffer) < HEADER_SIZE + length:
                if HEADER_SIZE + length > self._max_packet + HEADER_SIZE:
                    raise ProtocolError(f"packet of {length} bytes exceeds the {self._max_packet}-byte limit here")
                break
            sequence_id = self._buffer[3]
            payload = bytes(self._buffer[HEADER_SIZE:HEADER_SIZE + length])
            del self._buffer[:HEADER_SIZE + length]
            if not self._partial:
                self._partial_sequence = sequence_id
            self._partial.append(payload)
            if sum(map(len, self._partial)) > self._max_packet:
                raise ProtocolError(f"packet exceeds the {self._max_packet}-byte limit here")
            if length == MAX_FRAME:
                continue
            packets.append(Packet(self._partial_sequence, b"".join(self._partial)))
            self._partial = []
        return packets

    def take_rest(self) -> bytes:
        """Bytes received beyond the last whole packet (handed over when the relay starts)."""
        if self._partial:
            raise ProtocolError("a split packet was cut off at a phase change")
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def read_lenenc_int(data: bytes, position: int) -> tuple[int | None, int]:
    """Return (value, next position); value None is the NULL marker 0xFB."""
    try:
        first = data[position]
        if first < 0xFB:
            return first, position + 1
        if first == 0xFB:
            return None, position + 1
        width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
        if width is None or position + 1 + width > len(data):
            raise ProtocolError("bad length-encoded integer")
        return int.from_bytes(data[position + 1:position + 1 + width], "little"), position + 1 + width
    except IndexError as exc:
        raise ProtocolError("truncated length-encoded integer") from exc


def read_lenenc_bytes(data: bytes, position: int) -> tuple[bytes, int]:
    length, position = read_lenenc_int(data, position)
    length = length or 0
    if position + length > len(data):
        raise ProtocolError("truncated length-encoded string")
    return data[position:position + length], position + length


def read_nul_bytes(data: bytes, position: int) -> tuple[bytes, int]:
    end = data.find(b"\0", position)
    if end < 0:
        raise ProtocolError("unterminated string")
    return data[position:end], end + 1


def lenenc_int(value: int) -> bytes:
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def lenenc_bytes(value: bytes) -> bytes:
    return lenenc_int(len(value)) + value
