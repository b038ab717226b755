"""Result types returned by Sandbox / RieSandbox."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional


class SandboxError(RuntimeError):
    """Misuse or an internal failure of the sandbox (not a function/extension error)."""


class SandboxClosed(SandboxError):
    """The sandbox was shut down or reclaimed."""


class SandboxBusy(SandboxError):
    """An invoke/shutdown is already running: one event at a time per sandbox, like Lambda."""


@dataclass
class InvokeResult:
    """What the caller of an invoke gets.

    ok          True only for a function response (status 200, no function error, no timeout).
    status      HTTP status the RIE invoke endpoint would answer: 200 (response, function error, timeout),
                502 (INIT failure, Runtime.ExitError, Extension.Crash...).
    body        raw response body (for a timeout: b"Task timed out after N.00 seconds").
    error_type  None when ok; else e.g. "Runtime.ImportModuleError", "ValueError", "Sandbox.Timedout",
                "Extension.Crash", "Extension.LaunchError", "Runtime.ExitError", "Extension.ConfigInvalid".
    """

    ok: bool
    status: int
    body: bytes
    error_type: Optional[str] = None
    duration_ms: float = 0.0
    request_id: str = ""
    init_duration_ms: Optional[float] = None
    content_type: str = "application/json"
    timed_out: bool = False

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class ExtensionShutdown:
    name: str
    pid: Optional[int]
    subscribed: Optional[bool]  # registered for SHUTDOWN (None: unknown, RieSandbox)
    exit_code: Optional[int]  # Popen convention: -9 = SIGKILL; None = unknown (RieSandbox)
    killed: bool  # SIGKILLed by the sandbox (unsubscribed, or still running at the deadline; RieSandbox: inferred)
    delivered_ms: Optional[float]  # SHUTDOWN delivery, ms after the shutdown signal (None: not delivered)
    exit_after_delivery_ms: Optional[float]  # from SHUTDOWN delivery to process exit
    exited_ms: Optional[float]  # process exit, ms after the shutdown signal


@dataclass
class ShutdownReport:
    reason: str
    deadline_ms: int  # epoch ms, as sent in the SHUTDOWN event
    runtime_exit_code: Optional[int] = None
    runtime_killed: bool = False
    runtime_exit_ms: Optional[float] = None  # after the signal
    extensions: dict[str, ExtensionShutdown] = field(default_factory=dict)
    duration_ms: float = 0.0
    reclaimed: bool = False  # network cut before the final SIGKILL (no FIN/RST left the sandbox)

    def __getitem__(self, name: str) -> ExtensionShutdown:
        return self.extensions[name]
