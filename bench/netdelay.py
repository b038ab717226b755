"""A network between the function and its database, in user space: this kernel has no netem.

A TCP forwarder on 127.0.0.1 that delivers every chunk one-way-delay (RTT / 2) after it arrives,
in both directions, and opens its upstream connection only after a TCP handshake's worth of time,
so the server's first bytes reach the client 2 RTT after connect(), as over a real network
(SYN, SYN-ACK, ACK, then the server's greeting). Order within a direction is kept; a FIN is
delivered after the data before it.

    python -m bench.netdelay <listen port> <upstream port> <rtt ms> [<listen address>]   (prints "ready")

The listen address defaults to 127.0.0.1; the upstream is always 127.0.0.1:<upstream port>.

Threads: one reads every socket (a selector; blocking, no timeouts), one delivers what is due
(a heap, waited on with a condition's timed wait: microsecond timers, not the millisecond ones
of an event loop). Timer slack is set to 1 µs so the kernel does not round the waits up.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import selectors
import socket
import sys
import threading
import time

_PR_SET_TIMERSLACK = 29
_CHUNK = 256 * 1024


def _tight_timers() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # default slack (50 µs): the delays come out a little longer


class DelayLine:
    def __init__(self, upstream_port: int, rtt_s: float):
        self.upstream_port = upstream_port
        self.rtt = rtt_s
        self.one_way = rtt_s / 2
        self._due: list = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        # epoll: registering from the delivering thread while the reader waits is safe
        self._selector = selectors.EpollSelector()

    # --- scheduling -------------------------------------------------------------------------
    def _at(self, when: float, action, *args) -> None:
        with self._cv:
            heapq.heappush(self._due, (when, next(self._order), action, args))
            self._cv.notify()

    def deliver_forever(self) -> None:
        _tight_timers()
        while True:
            with self._cv:
                while True:
                    now = time.perf_counter()
                    if self._due and self._due[0][0] <= now:
                        _, _, action, args = heapq.heappop(self._due)
                        break
                    self._cv.wait(None if not self._due else self._due[0][0] - now)
            action(*args)

    # --- connections --------------------------------------------------------------------------
    def accepted(self, client: socket.socket) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # the server accepts 1.5 RTT after the client's SYN; its greeting travels another 0.5 RTT
        self._at(time.perf_counter() + 1.5 * self.rtt, self._connect_upstream, client)

    def _connect_upstream(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, upstream)
        for source in (client, upstream):
            self._selector.register(source, selectors.EVENT_READ, pair)

    def read_forever(self) -> None:
        while True:
            for key, _ in self._selector.select():
                source, pair = key.fileobj, key.data
                try:
                    data = source.recv(_CHUNK)
                except OSError:
                    data = b""
                due = time.perf_counter() + self.one_way
                if data:
                    self._at(due, pair.send, pair.peer(source), data)
                else:
                    self._selector.unregister(source)
                    self._at(due, pair.finish, pair.peer(source))


class _Pair:
    """Both ends of one forwarded connection; closed once each direction has seen its EOF."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client = client
        self.upstream = upstream
        self._open_directions = 2

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client

    @staticmethod
    def send(target: socket.socket, data: bytes) -> None:
        try:
            target.sendall(data)
        except OSError:
            pass  # the peer is gone: its own EOF or error reaches the reader

    def finish(self, target: socket.socket) -> None:
        try:
            target.shutdown(socket.SHUT_WR)  # the FIN, after the data before it
        except OSError:
            pass
        self._open_directions -= 1
        if self._open_directions == 0:
            self.client.close()
            self.upstream.close()


def main(listen_port: int, upstream_port: int, rtt_ms: float, listen_address: str = "127.0.0.1") -> None:
    line = DelayLine(upstream_port, rtt_ms / 1000)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((listen_address, listen_port))
    listener.listen(128)
    threading.Thread(target=line.deliver_forever, daemon=True).start()
    threading.Thread(target=line.read_forever, daemon=True).start()
    print("ready", flush=True)
    while True:
        client, _ = listener.accept()
        line.accepted(client)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:5])
