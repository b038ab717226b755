"""Command line: run a sandbox and serve the RIE's invoke endpoint.

    python -m lambda_sandbox --opt DIR --task DIR [--port 8080] [--host 127.0.0.1] [--timeout 300]
                             [--memory 3008] [--freeze] [--netns] [--lambda-paths] [--env K=V ...]
                             [--python PATH] [--prefix-logs] HANDLER

    POST http://HOST:PORT/2015-03-31/functions/function/invocations   (body = event; X-Amzn-Trace-Id honoured)
    SIGTERM / SIGINT -> SHUTDOWN flow (runtime SIGTERM, SHUTDOWN to extensions, SIGKILL at the deadline), exit 0.

RIE-compatible form (a drop-in for `aws-lambda-rie`, paths fixed to /opt and the current directory):

    python -m lambda_sandbox rie [--runtime-interface-emulator-address 0.0.0.0:8080]
                                 [--runtime-api-address 127.0.0.1:9001] [--log-level L] RUNTIME_CMD... HANDLER

Like the RIE, the function environment is this process's environment (+ --env), AWS_LAMBDA_FUNCTION_TIMEOUT
(300), AWS_LAMBDA_FUNCTION_NAME (test_function), AWS_LAMBDA_FUNCTION_MEMORY_SIZE (3008) are read from it,
and the sandbox is not frozen between invokes unless --freeze is given. The `rie` form behaves as the RIE
does: no freeze, no CPU or memory limit, its answers and log lines; the invoke endpoint's Content-Type is
sniffed from the body as the RIE's Go server does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from .logs import LogRecord
from .results import SandboxBusy, SandboxClosed
from .sandbox import Sandbox

INVOKE_PATH = "/2015-03-31/functions/function/invocations"


def go_content_type(body: bytes) -> Optional[str]:
    """The Content-Type the RIE answers with: its Go HTTP server drops the runtime's and sniffs the body
    (net/http.DetectContentType, reduced to what a function returns): none for an empty body,
    application/octet-stream for binary data, else "text/plain; charset=utf-8" (JSON included)."""
    if not body:
        return None
    if any(b <= 0x08 or b == 0x0B or 0x0E <= b <= 0x1A or 0x1C <= b <= 0x1F for b in body[:512]):
        return "application/octet-stream"
    return "text/plain; charset=utf-8"


def _split_addr(value: str, default_host: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return (host or default_host), int(port)


class _InvokeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _InvokeServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass

    def _send(self, status: int, body: bytes, ctype: Optional[str] = "application/json") -> None:
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.split("?")[0] != INVOKE_PATH:
            self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        try:
            r = self.server.sandbox.invoke(raw=body or b"{}", trace_id=self.headers.get("X-Amzn-Trace-Id"))
        except SandboxBusy:
            self._send(400, b"")  # the RIE cannot take overlapping invokes either
            return
        except SandboxClosed:
            self._send(503, b"")
            return
        self._send(r.status, r.body, go_content_type(r.body))


class _InvokeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        super().__init__(addr, _InvokeHandler)


def _printer(prefix: bool):
    lock = threading.Lock()

    def on_log(rec: LogRecord) -> None:
        line = f"[{rec.source}] {rec.line}" if prefix else rec.line
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    return on_log


def _env_from(pairs: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"--env needs K=V, got {kv!r}")
        env[k] = v
    return env


def _serve(sb: Sandbox, addr: tuple[str, int]) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sb.start()
    server = _InvokeServer(addr, sb)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    host, port = server.server_address[:2]
    sys.stderr.write(f"lambda_sandbox: invoke endpoint http://{host}:{port}{INVOKE_PATH} "
                     f"(Runtime/Extensions API {sb.api_address})\n")
    sys.stderr.flush()
    stop.wait()
    report = sb.shutdown()
    server.shutdown()
    server.server_close()
    summary = {n: {"exit_code": e.exit_code, "killed": e.killed, "exit_after_shutdown_ms": e.exit_after_delivery_ms}
               for n, e in report.extensions.items()}
    sys.stderr.write(f"lambda_sandbox: shutdown {json.dumps(summary)}\n")
    return 0


def _main_rie(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lambda_sandbox rie", add_help=False, allow_abbrev=False)
    p.add_argument("--runtime-interface-emulator-address", default="0.0.0.0:8080")
    p.add_argument("--runtime-api-address", default="127.0.0.1:9001")
    p.add_argument("--log-level", default=None)
    p.add_argument("--enable-init-caching", action="store_true")
    opts, cmd = p.parse_known_args(argv)
    if len(cmd) < 2:
        sys.stderr.write("lambda_sandbox rie: expected a runtime command ending with the handler\n")
        return 2
    env = dict(os.environ)
    api_host, api_port = _split_addr(opts.runtime_api_address, "127.0.0.1")
    sb = Sandbox(
        "/opt",
        os.getcwd(),
        handler=cmd[-1],
        env=env,
        timeout_s=float(env.get("AWS_LAMBDA_FUNCTION_TIMEOUT") or 300),
        function_name=env.get("AWS_LAMBDA_FUNCTION_NAME") or "test_function",
        function_version=env.get("AWS_LAMBDA_FUNCTION_VERSION") or "$LATEST",
        memory_mb=int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 3008),
        region=env.get("AWS_REGION") or "us-east-1",
        runtime_cmd=cmd,
        freeze=False,  # the RIE neither freezes nor limits CPU or memory
        cgroups=False,
        host=api_host,
        port=api_port,
        on_log=_printer(False),
    )
    return _serve(sb, _split_addr(opts.runtime_interface_emulator_address, "0.0.0.0"))


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "rie":
        return _main_rie(argv[1:])
    p = argparse.ArgumentParser(prog="python -m lambda_sandbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--opt", required=True, help="directory playing /opt (layer contents, extensions/)")
    p.add_argument("--task", required=True, help="directory playing /var/task (function code)")
    p.add_argument("--host", default="127.0.0.1", help="invoke endpoint address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="invoke endpoint port (default 8080, 0 = free)")
    p.add_argument("--timeout", type=float, default=None, help="function timeout s (AWS_LAMBDA_FUNCTION_TIMEOUT, 300)")
    p.add_argument("--memory", type=int, default=None,
                   help="memory size MB (AWS_LAMBDA_FUNCTION_MEMORY_SIZE, 3008): CPU share and memory limit")
    p.add_argument("--freeze", action="store_true", help="freeze the sandbox between invokes like Lambda")
    p.add_argument("--netns", action="store_true", help="run the processes in their own network namespace (root)")
    p.add_argument("--lambda-paths", action="store_true",
                   help="processes see --opt on /opt, --task on /var/task and a private /tmp (root)")
    p.add_argument("--python", default=None, help="interpreter for the runtime (default: this one)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="function environment variable")
    p.add_argument("--prefix-logs", action="store_true", help="prefix each output line with [source]")
    p.add_argument("handler")
    a = p.parse_args(argv)
    env = _env_from(a.env)
    sb = Sandbox(
        a.opt,
        a.task,
        handler=a.handler,
        env=env,
        timeout_s=a.timeout if a.timeout is not None else float(env.get("AWS_LAMBDA_FUNCTION_TIMEOUT") or 300),
        function_name=env.get("AWS_LAMBDA_FUNCTION_NAME") or "test_function",
        function_version=env.get("AWS_LAMBDA_FUNCTION_VERSION") or "$LATEST",
        memory_mb=a.memory or int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 3008),
        region=env.get("AWS_REGION") or "us-east-1",
        python=a.python,
        freeze=a.freeze,
        netns=a.netns,
        lambda_paths=a.lambda_paths,
        on_log=_printer(a.prefix_logs),
    )
    return _serve(sb, (a.host, a.port))
