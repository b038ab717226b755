"""The HTTP server of one sandbox: Runtime API (2018-06-01) and Extensions API (2020-01-01) on one port,
plus the Logs/Telemetry API stubs of the RIE. Handlers block (each request has its own thread) until the
sandbox has an event for them."""

from __future__ import annotations

import json
import re
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .sandbox import Sandbox
    from .state import Resp

RUNTIME = "/2018-06-01/runtime"
EXTENSION = "/2020-01-01/extension"
_INVOCATION = re.compile(r"^/2018-06-01/runtime/invocation/([^/]+)/(response|error)$")


def _json(status: int, obj: dict):
    from .state import Resp

    return Resp(status, json.dumps(obj, separators=(",", ":")).encode())


def route(sb: Sandbox, method: str, path: str, headers, body: bytes) -> Resp:
    from .state import Resp

    h = headers.get
    if path == f"{RUNTIME}/invocation/next":
        if method != "GET":
            return Resp(405, b"", content_type=None)
        return sb.rt_next()
    m = _INVOCATION.match(path)
    if m:
        if method != "POST":
            return Resp(405, b"", content_type=None)
        if m.group(2) == "response":
            return sb.rt_response(m.group(1), body, h("Content-Type"))
        return sb.rt_error(m.group(1), body, h("Lambda-Runtime-Function-Error-Type"), h("Content-Type"))
    if path == f"{RUNTIME}/restore/next":
        # SnapStart (AWS_LAMBDA_INITIALIZATION_TYPE=snap-start): the runtime asks for this after its
        # before-snapshot hooks; on Lambda it returns once the environment has been restored from the
        # snapshot. The sandbox takes no snapshot: the "restore" happens at once.
        if method != "GET":
            return Resp(405, b"", content_type=None)
        return Resp(200, b"", content_type=None)
    if path == f"{RUNTIME}/init/error":
        if method != "POST":
            return Resp(405, b"", content_type=None)
        return sb.rt_init_error(body, h("Lambda-Runtime-Function-Error-Type"))
    if path == f"{EXTENSION}/register":
        if method != "POST":
            return Resp(405, b"", content_type=None)
        return sb.ext_register(h("Lambda-Extension-Name"), body, h("Lambda-Extension-Accept-Feature"))
    if path == f"{EXTENSION}/event/next":
        if method != "GET":
            return Resp(405, b"", content_type=None)
        return sb.ext_next(h("Lambda-Extension-Identifier"))
    if path in (f"{EXTENSION}/init/error", f"{EXTENSION}/exit/error"):
        if method != "POST":
            return Resp(405, b"", content_type=None)
        fn = sb.ext_init_error if path.endswith("init/error") else sb.ext_exit_error
        return fn(h("Lambda-Extension-Identifier"), h("Lambda-Extension-Function-Error-Type"), body)
    if path == "/2020-08-15/logs" and method == "PUT":
        return _json(202, {"errorMessage": "Logs API is not supported", "errorType": "Logs.NotSupported"})
    if path == "/2022-07-01/telemetry" and method == "PUT":
        return _json(202, {"errorMessage": "Telemetry API is not supported", "errorType": "Telemetry.NotSupported"})
    return Resp(404, b"404 page not found\n", content_type="text/plain; charset=utf-8")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence the default stderr access log
        pass

    def _read_body(self) -> Optional[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size_line = self.rfile.readline()
                if not size_line:
                    return None
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        if body is None:
            self.close_connection = True
            return
        path = urlsplit(self.path).path
        try:
            resp = route(self.server.sandbox, method, path, self.headers, body)
        except Exception as exc:  # never kill the server thread silently
            from .state import Resp

            resp = Resp(500, json.dumps({"errorMessage": repr(exc), "errorType": "InternalServerError"}).encode())
        reason = self.responses.get(resp.status, ("",))[0]
        head = [f"HTTP/1.1 {resp.status} {reason}", f"Date: {self.date_time_string()}"]
        head += [f"{k}: {v}" for k, v in resp.headers.items()]
        if resp.content_type:
            head.append(f"Content-Type: {resp.content_type}")
        head.append(f"Content-Length: {len(resp.body)}")
        try:
            # one write (headers + body) and TCP_NODELAY: no Nagle/delayed-ACK stalls (40 ms each)
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ValueError)):
            return  # a killed/frozen-then-killed process dropped its connection: normal in a sandbox
        super().handle_error(request, client_address)
