"""dbkeeper's local AWS Lambda execution environment (Runtime API + Extensions API, freeze, reclaim).

See lambda_sandbox/README.md. Behaviour follows ../shared/LAMBDA_FACTS.md.
"""

from .logs import LogRecord
from .netns import NetnsUnavailable
from .netns import unavailable_reason as netns_unavailable_reason
from .results import (
    ExtensionShutdown,
    InvokeResult,
    SandboxBusy,
    SandboxClosed,
    SandboxError,
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
    "SandboxError",
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
