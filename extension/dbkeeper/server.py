"""The asyncio server: owns the sockets, the client connections and the pool, and shuts them
down in the order that loses nothing (mitmproxy's server.py, in miniature)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .client import ClientConnection
from .config import Config
from .janitor import Janitor
from .listeners import BoundListeners
from .log import Logger
from .pool import CloseReport, Pool
from .protocol.auth import native_password_hash


class ShutdownReport(CloseReport):
    """What Server.shutdown did, for the shutdown_complete log line."""
    clients_closed: int
    ms: float


class Server:
    def __init__(self, config: Config, log: Logger, listeners: BoundListeners):
        self._config = config
        self._log = log
        self._listeners = listeners
        self.pool = Pool(config, log)
        self.pool.janitor = Janitor(config, log, self.pool)
        self._clients: set[ClientConnection] = set()
        self._pending: dict[ClientConnection, None] = {}  # in their handshake, oldest first
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        password_hash = native_password_hash(self._config.local_password)  # once, not per handshake

        def factory(over_unix: bool) -> Callable[[], ClientConnection]:
            return lambda: ClientConnection(self._config, self.pool, self._log, self._clients,
                                            password_hash=password_hash, over_unix=over_unix,
                                            pending=self._pending)
        if self._listeners.tcp is not None:
            self._servers.append(await loop.create_server(factory(False), sock=self._listeners.tcp))
        if self._listeners.unix is not None:
            self._servers.append(await loop.create_unix_server(factory(True), sock=self._listeners.unix))
        if self._config.snap_start:
            # The snapshot would carry this connection into every restored environment, where it
            # is not valid: the first client after a restore opens it instead.
            self._log.info("upstream_deferred", reason="snap-start")
        else:
            self.pool.warm()
        self._log.info("serving", tcp=f"127.0.0.1:{self._config.listen_port}" if self._listeners.tcp else None,
                       socket=self._listeners.unix_path)

    async def shutdown(self, deadline: float) -> ShutdownReport:
        """Stop accepting; KILL the statements of sessions still running one (their clients are
        about to be dropped, and a COM_QUIT is read only after the statement ends), within
        `deadline` (loop time); COM_QUIT every other upstream; drop the clients."""
        started = time.monotonic()
        for server in self._servers:
            server.close()
        self._listeners.remove_socket_file()
        busy = {upstream for upstream in (client.upstream_busy() for client in self._clients) if upstream is not None}
        report = await self.pool.close(busy, deadline)
        clients = len(self._clients)
        for client in list(self._clients):
            client.close()
        return {"clients_closed": clients, **report, "ms": round((time.monotonic() - started) * 1000, 3)}
