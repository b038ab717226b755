"""Result types returned by Sandbox / RieSandbox."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional


class SandboxError(RuntimeError):
    """Misuse or an internal failure of the sandbox (not a function/extension error)."""


class SandboxClosed(SandboxError):
    """The sandbox was shut down or reclaimed."""


class SandboxUnsupported(SandboxError):
    """The emulator has no such operation (the RIE runs INIT only at an invoke and cannot reclaim)."""


class SandboxBusy(SandboxError):
    """An invoke/shutdown is already running: one event at a time per sandbox, like Lambda."""


@dataclass(frozen=True)
class Resources:
    """How a sandbox confines its processes (Sandbox.resources; docs/LAMBDA_SANDBOX.md)."""

    freeze: str  # "cgroup-freezer" (the cgroup v1 freezer, as Lambda) or "sigstop" (fallback)
    cgroup: Optional[list[str]]  # the sandbox's cgroup directories; None: no cgroup (see unavailable_reason)
    cpu_period_us: Optional[int]
    cpu_quota_us: Optional[int]  # CFS quota per period for the runtime and all extensions together
    init_cpu_quota_us: Optional[int]  # during an on-demand INIT (at least one vCPU)
    memory_limit_bytes: Optional[int]
    unavailable_reason: Optional[str]  # why no cgroup is used


@dataclass
class InvokeResult:
    """What the caller of an invoke gets.

    ok          True only for a function response (status 200, no function error, no timeout).
    status      HTTP status the RIE's invoke endpoint answers: 200 (response, function error, timeout),
                502 (INIT failed, the runtime or an extension died: see state.Failure).
    body        raw response body (for a timeout: b"Task timed out after N.00 seconds"; empty when INIT
                failed because of an extension or a runtime that exited without reporting an error).
    error_type  the body's errorType: None when ok or the body has none; e.g. "ValueError",
                "Runtime.ImportModuleError", "Runtime.ExitError", "Extension.Crash"; "Sandbox.Timedout"
                for a timeout.
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
    subscribed: Optional[bool]  # registered for SHUTDOWN (RieSandbox: from the RIE's log; None: not seen)
    exit_code: Optional[int]  # Popen convention: -9 = SIGKILL; None = unknown (RieSandbox without root)
    killed: bool  # SIGKILLed by the sandbox (unsubscribed, or still running at the deadline)
    # SHUTDOWN delivery, ms after the shutdown signal (None: not delivered; RieSandbox: not observable)
    delivered_ms: Optional[float]
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
