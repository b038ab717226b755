"""Client of the Lambda Extensions API (register, event/next, init/error, exit/error).

Plain blocking HTTP/1.1 over a socket, one connection per call (`Connection: close`): it is on
the cold-start path, where importing http.client or asyncio before registering would cost more
than the whole call. `next_event` blocks until Lambda has an event and is run off the event loop.
"""

from __future__ import annotations

import json
import socket
from typing import NamedTuple

from .errors import ExtensionsApiError
from .events import LifecycleEvent, parse_event

API_PREFIX = "/2020-01-01/extension"
_MAX_RESPONSE = 1 << 20


class HttpResponse(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class Registration(NamedTuple):
    extension_id: str
    function_name: str
    function_version: str


class ExtensionsApi:
    def __init__(self, runtime_api: str):
        host, _, port = runtime_api.rpartition(":")
        if not host or not port.isdigit():
            raise ExtensionsApiError(f"AWS_LAMBDA_RUNTIME_API={runtime_api!r} is not host:port")
        self._address = (host.strip("[]"), int(port))
        self._host_header = runtime_api
        self.extension_id: str | None = None

    def register(self, name: str, events: list[str]) -> Registration:
        body = json.dumps({"events": events}).encode()
        response = self._call("POST", "/register", {"Lambda-Extension-Name": name}, body)
        self._expect(response, 200, "register")
        extension_id = response.headers.get("lambda-extension-identifier", "")
        if not extension_id:
            raise ExtensionsApiError("register answered without Lambda-Extension-Identifier")
        self.extension_id = extension_id
        try:
            info = json.loads(response.body or b"{}")
        except ValueError:
            info = {}
        return Registration(extension_id, str(info.get("functionName", "")), str(info.get("functionVersion", "")))

    def next_event(self) -> LifecycleEvent:
        """Block until the next event. No client timeout: Lambda may hold this for hours."""
        response = self._call("GET", "/event/next", self._identity(), None, timeout=None)
        self._expect(response, 200, "event/next")
        return parse_event(response.body)

    def init_error(self, error_type: str, message: str) -> None:
        self._report("/init/error", error_type, message)

    def exit_error(self, error_type: str, message: str) -> None:
        self._report("/exit/error", error_type, message)

    def _report(self, path: str, error_type: str, message: str) -> None:
        body = json.dumps({"errorMessage": message, "errorType": error_type, "stackTrace": []}).encode()
        headers = {**self._identity(), "Lambda-Extension-Function-Error-Type": error_type}
        response = self._call("POST", path, headers, body)
        self._expect(response, 202, path.lstrip("/"))

    def _identity(self) -> dict[str, str]:
        if self.extension_id is None:
            raise ExtensionsApiError("not registered")
        return {"Lambda-Extension-Identifier": self.extension_id}

    @staticmethod
    def _expect(response: HttpResponse, status: int, what: str) -> None:
        if response.status == status:
            return
        error_type = None
        try:
            error_type = json.loads(response.body).get("errorType")
        except (ValueError, AttributeError):
            pass
        raise ExtensionsApiError(
            f"{what} failed with HTTP {response.status} ({error_type or 'no error type'})",
            status=response.status,
            error_type=error_type,
        )

    def _call(self, method: str, path: str, headers: dict[str, str], body: bytes | None,
              timeout: float | None = 5.0) -> HttpResponse:
        request = encode_request(method, API_PREFIX + path, self._host_header, headers, body)
        try:
            with socket.create_connection(self._address, timeout=timeout) as sock:
                sock.sendall(request)
                raw = _read_all(sock)
        except OSError as exc:
            raise ExtensionsApiError(f"{method} {path}: {exc}") from exc
        return parse_response(raw)


def encode_request(method: str, path: str, host: str, headers: dict[str, str], body: bytes | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def _read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_RESPONSE:
            raise ExtensionsApiError("response larger than 1 MiB")


def parse_response(raw: bytes) -> HttpResponse:
    """Parse a complete HTTP/1.x response (Content-Length, chunked, or read-to-close body)."""
    head, separator, rest = raw.partition(b"\r\n\r\n")
    if not separator:
        raise ExtensionsApiError("truncated HTTP response")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ExtensionsApiError(f"bad HTTP status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(rest)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(rest) < length:
            raise ExtensionsApiError("truncated HTTP body")
        body = rest[:length]
    else:
        body = rest
    return HttpResponse(int(parts[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    body: list[bytes] = []
    position = 0
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            raise ExtensionsApiError("truncated chunked body")
        size = int(data[position:line_end].split(b";")[0], 16)
        if size == 0:
            return b"".join(body)
        start = line_end + 2
        body.append(data[start:start + size])
        position = start + size + 2
