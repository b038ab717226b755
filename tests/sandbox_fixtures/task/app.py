"""Tiny handler for the lambda_sandbox tests. The event says what to do."""

import errno
import json
import os
import signal
import socket
import sys
import time


def burn(cpu_ms):
    """Spin until this process has used cpu_ms of CPU; (cpu seconds, wall seconds) it took."""
    c0, w0 = time.process_time(), time.monotonic()
    while time.process_time() - c0 < cpu_ms / 1000:
        pass
    return time.process_time() - c0, time.monotonic() - w0


COLD = {"pid": os.getpid(), "invocations": 0}
KEEP = []
# BURN_AT_IMPORT_MS: spin on the CPU during INIT (the function's init code) and report what it took
IMPORT_BURN = burn(int(os.environ["BURN_AT_IMPORT_MS"])) if os.environ.get("BURN_AT_IMPORT_MS") else None
print(json.dumps({"event": "import", "ts": time.time(), "pid": os.getpid()}))
sys.stdout.flush()


def handler(event, context):
    COLD["invocations"] += 1
    event = event or {}
    print(json.dumps({"event": "handler", "requestId": context.aws_request_id, "n": COLD["invocations"]}))
    sys.stdout.flush()
    if event.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if event.get("sleep_s"):
        time.sleep(event["sleep_s"])
    if event.get("raise"):
        raise ValueError(event["raise"])
    if event.get("connect"):
        host, port = event["connect"].rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=5)
        KEEP.append(s)
    if event.get("exit"):
        os._exit(event["exit"])
    burned = burn(event["burn_cpu_ms"]) if event.get("burn_cpu_ms") else None
    if event.get("allocate_mb"):
        KEEP.append(b"\x01" * (event["allocate_mb"] << 20))  # written, so the pages are really used
    out = {
        "echo": event,
        "pid": os.getpid(),
        "invocations": COLD["invocations"],
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "arn": context.invoked_function_arn,
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
        "cwd": os.getcwd(),
        "burned": burned,
        "import_burned": IMPORT_BURN,
    }
    if event.get("try_write"):
        try:
            with open(event["try_write"], "w") as f:
                f.write("x")
            out["write_error"] = None
        except OSError as exc:
            out["write_error"] = errno.errorcode.get(exc.errno, str(exc.errno))
    if event.get("read"):
        with open(event["read"]) as f:
            out["read"] = f.read()
    if event.get("env"):
        out["env"] = dict(os.environ)
        out["sys_path"] = sys.path
    return out
