"""Many sandboxes of one function: N extension processes from the built layer, each with its own
scripted Extensions API that holds `event/next` until the test sends that extension SHUTDOWN. No
runtime process: the test's threads are the functions.

A sandbox can also be *reclaimed* the way Lambda does it to a frozen sandbox: stopped (SIGSTOP)
and never resumed nor shut down, so its sockets stay open and the database keeps its session
until something kills it; the process is SIGKILLed at cleanup.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.dbkeeper_process import extension_python, state_file_of
from tests.mariadb import free_port


class FleetApi:
    def __init__(self):
        self._shutdown = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body: bytes, headers=None):
                try:
                    self._write(status, body, headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a sandbox killed at cleanup

            def _write(self, status, body: bytes, headers):
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.path.endswith("/register"):
                    self._send(200, json.dumps({"functionName": "fleet-fn", "functionVersion": "7",
                                                "handler": ""}).encode(),
                               {"Lambda-Extension-Identifier": os.urandom(8).hex()})
                else:
                    self._send(202, b'{"status":"OK"}')

            def do_GET(self):
                owner._shutdown.wait()
                body = {"eventType": "SHUTDOWN", "deadlineMs": int(time.time() * 1000) + 2000,
                        "shutdownReason": "spindown"}
                self._send(200, json.dumps(body).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def send_shutdown(self) -> None:
        self._shutdown.set()

    def close(self) -> None:
        self._shutdown.set()
        self.server.shutdown()
        self.server.server_close()


class FleetSandbox:
    """One extension process; `lines` are its JSON log lines (read by a thread)."""

    def __init__(self, layer_tree, env: dict[str, str], index: int):
        self.index = index
        self.api = api = FleetApi()
        self.port = free_port()
        self.socket_path = f"/tmp/dbk-fleet-{os.getpid()}-{index}.sock"
        self.lines: list[dict] = []
        full_env = {"PATH": os.environ["PATH"], "DBKEEPER_PYTHON": extension_python(),
                    "AWS_LAMBDA_RUNTIME_API": api.address, "AWS_LAMBDA_FUNCTION_NAME": "fleet-fn",
                    "AWS_LAMBDA_FUNCTION_VERSION": "7", "DBKEEPER_LISTEN_PORT": str(self.port),
                    "DBKEEPER_SOCKET": self.socket_path, **env}
        self.process = subprocess.Popen([str(layer_tree / "extensions" / "dbkeeper")], env=full_env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.reclaimed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            if line.startswith("{"):
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    pass

    def events(self, name: str) -> list[dict]:
        return [line for line in list(self.lines) if line.get("event") == name]

    def shutdown(self, timeout: float = 10) -> int:
        """SHUTDOWN, as Lambda sends it; the extension's exit code."""
        self.api.send_shutdown()
        return self.process.wait(timeout)

    def reclaim(self) -> None:
        """Frozen and gone: no SHUTDOWN, no FIN to the database."""
        self.reclaimed = True
        os.kill(self.process.pid, signal.SIGSTOP)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        state_file_of(self.api.address).unlink(missing_ok=True)  # a killed extension leaves it
        self.api.close()
