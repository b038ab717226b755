"""The asyncio server: owns the sockets, the client connections and the pool, and shuts them
down in the order that loses nothing (mitmproxy's server.py, in miniature)."""

from __future__ import annotations

import asyncio
import time

from .client import ClientConnection
from .config import Config
from .listeners import BoundListeners
from .log import Logger
from .pool import Pool
from .protocol.auth import native_password_hash


class Server:
    def __init__(self, config: Config, log: Logger, listeners: BoundListeners):
        self._config = config
        self._log = log
        self._listeners = listeners
        self.pool = Pool(config, log)
        self._clients: set[ClientConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        password_hash = native_password_hash(self._config.local_password)  # once, not per handshake

        def factory(over_unix: bool):
            return lambda: ClientConnection(self._config, self.pool, self._log, self._clients,
                                            password_hash=password_hash, over_unix=over_unix)
        if self._listeners.tcp is not None:
            self._servers.append(await loop.create_server(factory(False), sock=self._listeners.tcp))
        if self._listeners.unix is not None:
            self._servers.append(await loop.create_unix_server(factory(True), sock=self._listeners.unix))
        self.pool.warm()
        self._log.info("serving", tcp=f"127.0.0.1:{self._config.listen_port}" if self._listeners.tcp else None,
                       socket=self._listeners.unix_path)

    async def shutdown(self) -> dict:
        """Stop accepting, drop clients, COM_QUIT every upstream. Nothing here waits on the DB."""
        started = time.monotonic()
        for server in self._servers:
            server.close()
        self._listeners.remove_socket_file()
        clients = len(self._clients)
        for client in list(self._clients):
            client.close()
        upstreams = await self.pool.close()
        return {"clients_closed": clients, "upstreams_closed": upstreams,
                "ms": round((time.monotonic() - started) * 1000, 3)}
