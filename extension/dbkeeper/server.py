"""The asyncio server: owns the sockets, the client connections and the pool, and shuts them
down in the order that loses nothing (mitmproxy's server.py, in miniature)."""

from __future__ import annotations

import asyncio
import time

from . import credentials
from .aws.metrics import Counters, EmfWriter
from .client import ClientConnection
from .config import Config
from .listeners import BoundListeners
from .log import Logger
from .pool import Pool


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
        self.metrics = None
        if aws.metrics:
            self.metrics = EmfWriter(self.counters, aws.metrics_namespace, aws.metrics_dimensions,
                                     aws.metrics_every, aws.metrics_interval)
            self.pool.counters_session_ended = self.metrics.session_ended
        self._clients: set[ClientConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        def factory(over_unix: bool):
            return lambda: ClientConnection(self._config, self.pool, self._log, self._clients,
                                            local_auth=self.local_auth, over_unix=over_unix)
        if self._listeners.tcp is not None:
            self._servers.append(await loop.create_server(factory(False), sock=self._listeners.tcp))
        if self._listeners.unix is not None:
            self._servers.append(await loop.create_unix_server(factory(True), sock=self._listeners.unix))
        if not (self._config.aws.snap_start and self._config.aws.needs_sdk):
            # SnapStart: no AWS credentials while the snapshot is taken; the first client connects
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
        report = {"clients_closed": clients, "upstreams_closed": upstreams,
                  "ms": round((time.monotonic() - started) * 1000, 3)}
        if self.pool._budget is not None:
            report["leases_released"] = self.pool.leases_released
        if self.metrics is not None:
            self.metrics.flush()
        return report
