"""Socket options of the extension's own sockets, read from the running process itself (its
descriptors duplicated with pidfd_getfd, Linux 5.6+): what no timing could show reliably."""

from __future__ import annotations

import ctypes
import os
import socket

import pymysql
import pytest

SYS_PIDFD_GETFD = 438  # the same number on x86_64 and arm64


def sockets_of(pid: int) -> list[socket.socket]:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except FileNotFoundError:
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                pytest.skip(f"pidfd_getfd not permitted here (errno {ctypes.get_errno()})")
            found.append(socket.socket(fileno=fd))
    finally:
        os.close(pidfd)
    return found


def connected_tcp(sockets, local_port=None, peer_port=None):
    out = []
    for sock in sockets:
        if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
            continue
        try:
            peer = sock.getpeername()
        except OSError:
            continue  # a listener
        if (local_port is None or sock.getsockname()[1] == local_port) and (peer_port is None or peer[1] == peer_port):
            out.append(sock)
    return out


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_client_and_upstream_sockets_have_tcp_nodelay(dbkeeper_factory, mariadb, event_loop):
    # given a function connected over TCP to dbkeeper running on either event loop
    dbkeeper = dbkeeper_factory(mariadb, DBKEEPER_EVENT_LOOP=event_loop)
    with pymysql.connect(**dbkeeper.connect_kwargs()) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        # when we look at the extension's own sockets
        held = sockets_of(dbkeeper.pid)
        try:
            clients = connected_tcp(held, local_port=dbkeeper.port)
            upstreams = connected_tcp(held, peer_port=mariadb.port)
            # then the one to this client and the one to the database both have Nagle off
            assert [s.getpeername()[1] for s in clients] == [conn._sock.getsockname()[1]]
            assert upstreams
            assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in clients + upstreams)
        finally:
            for sock in held:
                sock.close()  # our duplicates only
