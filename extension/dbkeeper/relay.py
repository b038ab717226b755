"""The hot path: bytes between one client session and its upstream connection.

Chunks are forwarded as received (no per-row work, no copies). Commands are seen from the
client's side, which is cheap. Replies are only walked packet by packet when needed: a client
that sends its next command has read the previous reply, and if the bytes relayed end with a
closing EOF that is proof enough; otherwise (OK/ERR replies, pipelining clients, the end of a
session) the saved chunks are fed to the ResponseTracker, which knows exactly where replies end.
"""

from __future__ import annotations

import socket

from pymysql.constants import COMMAND

from .protocol.commands import NO_REPLY, CommandScanner
from .protocol.responses import ResponseTracker, ends_with_final_eof

_UNFED_LIMIT = 4 << 20  # walk saved reply bytes once this many pile up, to bound memory


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
        self._unfed: list[bytes] = []
        self._unfed_size = 0
        self._client_write = client.transport.write
        self._upstream_write = upstream.transport.write
        self.commands = 0

    def client_data(self, data: bytes) -> bytes | None:
        """Forward what the client sent; return the bytes of an intercepted command, if any."""
        forward, commands, rest = self.scanner.feed(data)
        if commands:
            self._on_commands(commands)
        if forward:
            self._upstream_write(forward)
        return rest

    def _on_commands(self, commands: list[int]) -> None:
        tracker = self.tracker
        if self._unfed:
            if tracker.outstanding == 1 and ends_with_final_eof(self._unfed):
                tracker.assume_complete()
                self._unfed.clear()
                self._unfed_size = 0
            else:
                self._feed_tracker()
        for code in commands:
            if code not in NO_REPLY and code >= 0:
                tracker.expect(code)
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
        feed = self.tracker.feed
        for chunk in self._unfed:
            feed(chunk)
        self._unfed.clear()
        self._unfed_size = 0

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
