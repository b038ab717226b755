"""The hot path: bytes between one client session and its upstream connection.

Chunks are forwarded as received (no per-row work, no copies). Commands are seen from the
client's side, which is cheap. Replies are only walked packet by packet when needed: a client
that sends its next command has read the previous reply, and if the bytes relayed end with a
closing EOF, OK or ERR that is proof enough; otherwise (pipelining clients, unusual replies, the
end of a session) the saved chunks are fed to the ResponseTracker, which knows exactly where
replies end.
"""

from __future__ import annotations

import socket

from pymysql.constants import COMMAND

from .protocol.commands import INTERCEPTED, NO_REPLY, CommandScanner
from .protocol.packets import MAX_FRAME
from .protocol.responses import ResponseTracker, ends_with_final_reply

_UNFED_LIMIT = 4 << 20  # walk saved reply bytes once this many pile up, to bound memory
# Commands the fast path may pass without the scanner: one reply each, nothing to bookkeep.
_NOT_FAST = INTERCEPTED | NO_REPLY | {COMMAND.COM_SET_OPTION}


def enable_nodelay(transport) -> None:
    """Small request/response packets must not wait for Nagle + delayed ACK (a 40 ms stall per
    large result). asyncio and uvloop already set it on TCP transports; the relay does not rely
    on that."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Relay:
    def __init__(self, client, upstream):
        self.client = client
        self.upstream = upstream
        self.scanner = CommandScanner()
        self.tracker = ResponseTracker()
        self._expected: list[int] = []  # commands relayed since the tracker last saw replies
        self._unfed: list[bytes] = []   # reply chunks relayed since then
        self._unfed_size = 0
        self._tracker_idle = True       # every reply the tracker was given has ended
        self._client_write = client.transport.write
        self._upstream_write = upstream.transport.write
        self.commands = 0

    def client_data(self, data: bytes) -> bytes | None:
        """Forward what the client sent; return the bytes of an intercepted command, if any."""
        # Fast path, the shape of nearly every query: one whole command packet after a reply
        # that provably ended.
        size = len(data)
        if size > 4 and self.scanner.at_boundary:
            length = data[0] | data[1] << 8 | data[2] << 16
            if length == size - 4 and length != MAX_FRAME and data[4] not in _NOT_FAST and self._replies_ended():
                self._expected.append(data[4])
                self.commands += 1
                self._upstream_write(data)
                return None
        forward, commands, rest = self.scanner.feed(data)
        if commands:
            self._on_commands(commands)
        if forward:
            self._upstream_write(forward)
        return rest

    def _replies_ended(self) -> bool:
        """True (and the saved state cleared) when every reply relayed so far has ended, as far
        as can be told without walking the replies."""
        if not self._unfed:
            return not self._expected and self._tracker_idle
        if len(self._expected) == 1 and self._tracker_idle and ends_with_final_reply(self._unfed):
            self._expected.clear()
            self._unfed.clear()
            self._unfed_size = 0
            return True
        return False

    def _on_commands(self, commands: list[int]) -> None:
        if (self._unfed or self._expected) and not self._replies_ended():
            self._feed_tracker()
        for code in commands:
            if code not in NO_REPLY and code >= 0:
                self._expected.append(code)
            if code == COMMAND.COM_SET_OPTION:
                self.upstream.forget_options()
        self.commands += len(commands)

    def upstream_data(self, data: bytes) -> None:
        self._client_write(data)
        self._unfed.append(data)
        self._unfed_size += len(data)
        if self._unfed_size > _UNFED_LIMIT:
            self._feed_tracker()

    def _feed_tracker(self) -> None:
        tracker = self.tracker
        for code in self._expected:
            tracker.expect(code)
        self._expected.clear()
        for chunk in self._unfed:
            tracker.feed(chunk)
        self._unfed.clear()
        self._unfed_size = 0
        self._tracker_idle = tracker.idle

    def settle(self) -> bool:
        """At the end of a session (or before an intercepted command): is the upstream between
        replies, so it can be reset and reused?"""
        self._feed_tracker()
        return self.tracker.idle and self.scanner.at_boundary

    @property
    def why_not_idle(self) -> str:
        if self.tracker.broken:
            return self.tracker.broken
        if not self.scanner.at_boundary:
            return "client stopped mid-packet"
        return f"{self.tracker.outstanding} reply(ies) unfinished"

    # Backpressure: a slow reader pauses the other side instead of buffering without bound.
    def client_congested(self, congested: bool) -> None:
        transport = self.upstream.transport
        if transport is not None and not transport.is_closing():
            (transport.pause_reading if congested else transport.resume_reading)()

    def upstream_congested(self, congested: bool) -> None:
        self.client.set_reading(not congested)

    def upstream_lost(self) -> None:
        self.client.upstream_lost()
