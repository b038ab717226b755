"""The local sockets the function connects to, bound before dbkeeper registers with Lambda.

Binding first means that once the runtime starts (only after every extension registered), the
socket already accepts: connections queue in the backlog until the event loop serves them.
Loopback TCP and a 0600 Unix socket only: nothing outside the sandbox can reach dbkeeper.
"""

from __future__ import annotations

import os
import socket
import stat

from .config import Config
from .errors import ListenError

LOOPBACK = "127.0.0.1"
_BACKLOG = 128


class BoundListeners:
    def __init__(self, tcp: socket.socket | None, unix: socket.socket | None, unix_path: str | None):
        self.tcp = tcp
        self.unix = unix
        self.unix_path = unix_path

    def close(self) -> None:
        for sock in (self.tcp, self.unix):
            if sock is not None:
                sock.close()
        self.remove_socket_file()

    def remove_socket_file(self) -> None:
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except FileNotFoundError:
                pass


def bind_listeners(config: Config) -> BoundListeners:
    tcp = unix = None
    try:
        if config.listen_port:
            tcp = _bind_tcp(config.listen_port)
        if config.socket_path:
            unix = _bind_unix(config.socket_path)
    except ListenError:
        if tcp is not None:
            tcp.close()
        raise
    return BoundListeners(tcp, unix, config.socket_path)


def _bind_tcp(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it (Linux): every client gets Nagle off without a syscall per
        # connect, whichever event loop runs (asyncio sets it only for sockets made with
        # IPPROTO_TCP, which accepted ones are not; uvloop always does).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((LOOPBACK, port))
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"DBKEEPER_LISTEN_PORT={port}: cannot listen on {LOOPBACK}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def _bind_unix(path: str) -> socket.socket:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask closes the window between bind() creating the file and chmod() narrowing it.
    previous = os.umask(0o177)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"DBKEEPER_SOCKET={path}: cannot listen: {exc.strerror}") from exc
    finally:
        os.umask(previous)
    sock.setblocking(False)
    return sock


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a killed predecessor is removed; a live one means another instance."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"DBKEEPER_SOCKET={path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ListenError(f"DBKEEPER_SOCKET={path}: another process is already serving it")
