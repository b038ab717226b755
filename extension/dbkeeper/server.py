"""The asyncio server: owns the sockets, the client connections and the pool, and shuts them
down in the order that loses nothing (mitmproxy's server.py, in miniature)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from . import credentials
from .aws.metrics import Counters, EmfWriter
from .client import ClientConnection
from .config import Config
from .janitor import Janitor
from .listeners import BoundListeners
from .log import Logger
from .pool import CloseReport, Pool


class ShutdownReport(CloseReport):
    """What Server.shutdown did, for the shutdown_complete log line."""
    clients_closed: int
    ms: float


class Server:
    def __init__(self, config: Config, log: Logger, listeners: BoundListeners):
        self._config = config
        self._log = log
        self._listeners = listeners
        aws = config.aws
        self.credentials, self.local_auth = credentials.make(config, log)
        self.identity = credentials.SandboxIdentity(aws.function_name, aws.function_version)
        self.counters = Counters()
        budget = None
        if aws.budget_table:
            from .aws.budget import Budget
            from .aws.sdk import shared

            budget = self.counters.leases = Budget(config, log, shared(config, log), self.identity)
        self.pool = Pool(config, log, self.credentials, budget, self.counters, self.identity)
        self.pool.janitor = Janitor(config, log, self.pool)
        self.metrics: EmfWriter | None = None
        if aws.metrics:
            self.metrics = EmfWriter(self.counters, aws.metrics_namespace, aws.metrics_dimensions,
                                     aws.metrics_every, aws.metrics_interval)
            self.pool.counters_session_ended = self.metrics.session_ended
        self._clients: set[ClientConnection] = set()
        self._pending: dict[ClientConnection, None] = {}  # in their handshake, oldest first
        self.pool.sessions = lambda: self._clients
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        def factory(over_unix: bool) -> Callable[[], ClientConnection]:
            return lambda: ClientConnection(self._config, self.pool, self._log, self._clients,
                                            local_auth=self.local_auth, over_unix=over_unix,
                                            pending=self._pending)
        if self._listeners.tcp is not None:
            self._servers.append(await loop.create_server(factory(False), sock=self._listeners.tcp))
        if self._listeners.unix is not None:
            self._servers.append(await loop.create_unix_server(factory(True), sock=self._listeners.unix))
        if self._config.snap_start:
            # The snapshot would carry this connection into every restored environment, where it
            # is not valid (and no AWS credentials exist while it is taken): the first client
            # after a restore opens it instead.
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
        closed = await self.pool.close(busy, deadline)
        clients = len(self._clients)
        for client in list(self._clients):
            client.close()
        report: ShutdownReport = {"clients_closed": clients, **closed,
                                  "ms": round((time.monotonic() - started) * 1000, 3)}
        if self.metrics is not None:
            self.metrics.flush()
        return report
