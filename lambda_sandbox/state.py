"""The state of one sandbox: a generation (one INIT with its processes), its extensions, runtime and
current invocation, the answers the API hands out, and how a failed invocation is answered.

All of it is guarded by the sandbox's condition variable (Sandbox._cv)."""

from __future__ import annotations

import json
import signal
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from . import procs

MAX_PAYLOAD = 6 * 1024 * 1024 + 100  # 6291556 bytes, Lambda's synchronous response limit
# SHUTDOWN reasons as the RIE sends them (docs/LAMBDA_SANDBOX.md: Lambda documents SPINDOWN, TIMEOUT,
# FAILURE): a reset after a failed invocation, the failure of the very first INIT (the RIE's eager INIT
# at its first invoke), a function timeout, the RIE's SIGTERM.
RELEASE_FAIL = "ReleaseFail"
SPINDOWN = "spindown"
TIMEOUT = "Timeout"
TERMINATED = "SandboxTerminated"


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(error_type: str, message: str) -> bytes:
    return compact({"errorMessage": message, "errorType": error_type})


@dataclass
class Resp:
    """One answer of the Runtime/Extensions API."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: Optional[str] = "application/json"
    kind: str = ""  # "SHUTDOWN" for the shutdown event


def forbidden(error_type: str, message: str) -> Resp:
    return Resp(403, error_body(error_type, message))


ACCEPTED = Resp(202, compact({"status": "OK"}))
DROP = Resp(500, error_body("InternalServerError", "Internal Server Error"))  # sandbox reset while waiting


@dataclass
class Failure:
    """How an invocation that did not end with a function response or error is answered, and the reset
    that follows. The RIE's answers: INIT failed because of an extension (init/error, crash, launch
    error) or because the runtime exited: 502, empty body; the runtime reported an init error: 502 with
    its error document; an extension or the runtime died during the invocation: 502 with the runtime's
    response if it had answered, else `{"errorType", "errorMessage": "RequestId: <id> Error: <exit>"}`."""

    status: int
    body: bytes
    error_type: Optional[str]
    reason: str = RELEASE_FAIL  # SHUTDOWN reason of the reset that follows
    timed_out: bool = False
    content_type: Optional[str] = "application/json"
    fatal: str = "Sandbox.Failure"  # the RIE's name for the cause, as its log gives it

    @classmethod
    def empty(cls, fatal: str) -> Failure:
        return cls(502, b"", None, content_type=None, fatal=fatal)

    @classmethod
    def exited(cls, error_type: str, request_id: str, message: str) -> Failure:
        body = compact({"errorType": error_type, "errorMessage": f"RequestId: {request_id} Error: {message}"})
        return cls(502, body, error_type, fatal=error_type)


def exit_message(returncode: Optional[int], runtime: Optional[bool]) -> str:
    """The RIE's words for a process exit: Go's exec.ExitError text ("exit status 3", "signal: killed");
    in an invoke's error message "Runtime exited with error: …" for the runtime and "exit code 0" for an
    extension that exited cleanly; runtime=None: the plain text its log uses."""
    if returncode is not None and returncode < 0:
        status = f"signal: {(signal.strsignal(-returncode) or str(-returncode)).lower()}"
    else:
        status = f"exit status {returncode}"
    if runtime is None:
        return status
    if runtime:
        return f"Runtime exited with error: {status}"
    return "exit code 0" if returncode == 0 else status


@dataclass
class Invocation:
    id: str
    payload: bytes
    deadline_ms: int
    deadline_mono: float
    arn: str
    trace_id: Optional[str]
    client_context: Optional[str]
    cognito_identity: Optional[str]
    content_type: str
    delivered: bool = False
    response: Optional[tuple[int, bytes, str, Optional[str]]] = None  # status, body, ctype, error_type
    failure: Optional[Failure] = None

    def fail(self, error_type: str, message: str) -> None:
        """A process died during this invocation: the caller gets the runtime's answer if there was
        one (with a 502), else the error (the first failure wins)."""
        if self.failure is not None:
            return
        if self.response is not None:
            _status, body, ctype, _etype = self.response
            self.failure = Failure(502, body, None, content_type=ctype, fatal=error_type)
        else:
            self.failure = Failure.exited(error_type, self.id, message)


@dataclass
class Ext:
    name: str
    path: str
    external: bool = True
    proc: Optional[procs.Managed] = None
    id: Optional[str] = None
    events: set[str] = field(default_factory=set)
    # launched -> registered -> ready (waiting in next) <-> running (has an event); init_error, exit_error, exited
    state: str = "launched"
    queue: deque[Resp] = field(default_factory=deque)  # events to hand out on next
    invoke_pending: bool = False  # got INVOKE, has not called next again yet
    shutdown_delivered_at: Optional[float] = None
    error_type: Optional[str] = None

    @property
    def registered(self) -> bool:
        return self.id is not None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive


@dataclass
class Runtime:
    proc: procs.Managed
    # started -> ready (in next) -> running (has an invoke) -> responded -> ready ...; init_error; exited
    state: str = "started"
    pending: Optional[Invocation] = None
    init_error: Optional[Failure] = None  # reported through /runtime/init/error


class Generation:
    """One INIT and the processes it started; a reset drops it and the next invoke starts a new one."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.exts: dict[str, Ext] = {}  # external, by file name
        self.by_id: dict[str, Ext] = {}  # external + internal, by identifier
        self.internal: dict[str, Ext] = {}
        self.runtime: Optional[Runtime] = None
        self.registration_open = True
        self.init_done = False
        self.failure: Optional[Failure] = None  # INIT failure
        self.invoke: Optional[Invocation] = None
        # (error type, exit message) of a process that died while idle: reported by the next invoke
        self.idle_failure: Optional[tuple[str, str]] = None
        self.ending = False  # reset/shutdown in progress: exits are expected

    def all_exts(self) -> list[Ext]:
        return list(self.exts.values()) + list(self.internal.values())

    def managed(self) -> list[procs.Managed]:
        out = [e.proc for e in self.exts.values() if e.proc is not None]
        if self.runtime is not None:
            out.append(self.runtime.proc)
        return out
