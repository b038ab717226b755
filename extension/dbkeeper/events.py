"""Typed Lambda lifecycle events and their parsing from the Extensions API's `event/next` body."""

from __future__ import annotations

import json
from typing import NamedTuple

from .errors import ExtensionsApiError


class InvokeEvent(NamedTuple):
    request_id: str
    deadline_ms: int
    invoked_function_arn: str
    trace_id: str | None = None


class ShutdownEvent(NamedTuple):
    reason: str  # kept as sent: SPINDOWN / TIMEOUT / FAILURE (docs), SandboxTerminated / Timeout (RIE), ...
    deadline_ms: int

    @property
    def is_timeout(self) -> bool:
        return self.reason.lower() == "timeout"


LifecycleEvent = InvokeEvent | ShutdownEvent


def parse_event(body: bytes) -> LifecycleEvent:
    """Parse an `event/next` body. The RIE sends SHUTDOWN as text/plain, so the content type is ignored."""
    try:
        document = json.loads(body)
        event_type = str(document["eventType"]).upper()
        deadline_ms = int(document["deadlineMs"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExtensionsApiError(f"malformed lifecycle event: {exc!r}") from exc
    if event_type == "INVOKE":
        tracing = document.get("tracing") or {}
        return InvokeEvent(
            request_id=str(document.get("requestId", "")),
            deadline_ms=deadline_ms,
            invoked_function_arn=str(document.get("invokedFunctionArn", "")),
            trace_id=tracing.get("value") if isinstance(tracing, dict) else None,
        )
    if event_type == "SHUTDOWN":
        return ShutdownEvent(reason=str(document.get("shutdownReason", "unknown")), deadline_ms=deadline_ms)
    raise ExtensionsApiError(f"unknown lifecycle event type {event_type!r}")
