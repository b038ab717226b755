"""Reference relay: the least a Python uvloop relay can do (asyncio Protocols, bytes forwarded as
received, TCP_NODELAY, no protocol awareness). dbkeeper minus this = the cost of its MySQL logic.

    python -m bench.minirelay <listen port> <upstream port>    (127.0.0.1; prints "ready")
"""

from __future__ import annotations

import asyncio
import socket
import sys

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client):
        self.client = client
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.client.transport.write(data)

    def connection_lost(self, exc):
        self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.transport = None
        self.upstream = None

    def connection_made(self, transport):
        self.transport = transport
        transport.pause_reading()
        asyncio.ensure_future(self._connect())

    async def _connect(self):
        loop = asyncio.get_running_loop()
        try:
            _, self.upstream = await loop.create_connection(lambda: Upstream(self), "127.0.0.1", self.upstream_port)
        except OSError:
            self.transport.close()
            return
        self.transport.resume_reading()

    def data_received(self, data):
        self.upstream.transport.write(data)

    def connection_lost(self, exc):
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(listen_port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", listen_port))
    sock.listen(128)
    await loop.create_server(lambda: Client(upstream_port), sock=sock)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))
