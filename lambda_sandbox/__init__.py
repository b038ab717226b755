"""dbkeeper's local AWS Lambda execution environment (Runtime API + Extensions API, freeze, CPU share,
memory limit, reclaim).

See lambda_sandbox/README.md; the behaviour it models: docs/LAMBDA_SANDBOX.md.
"""

from .logs import LogRecord
from .netns import NetnsUnavailable
from .netns import unavailable_reason as netns_unavailable_reason
from .results import (
    ExtensionShutdown,
    InvokeResult,
    Resources,
    SandboxBusy,
    SandboxClosed,
    SandboxError,
    SandboxUnsupported,
    ShutdownReport,
)
from .sandbox import Sandbox

__all__ = [
    "Sandbox",
    "RieSandbox",
    "InvokeResult",
    "ShutdownReport",
    "ExtensionShutdown",
    "LogRecord",
    "Resources",
    "SandboxError",
    "SandboxUnsupported",
    "SandboxClosed",
    "SandboxBusy",
    "NetnsUnavailable",
    "netns_unavailable_reason",
]


def __getattr__(name: str):
    if name == "RieSandbox":
        from .rie import RieSandbox

        return RieSandbox
    raise AttributeError(name)
