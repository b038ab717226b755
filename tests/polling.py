"""Waiting for something another process does asynchronously (a server ending a session after
COM_QUIT, a log line being pumped): poll with a deadline, never a bare sleep."""

from __future__ import annotations

import time


def wait_until(condition, timeout: float = 10.0, interval: float = 0.01):
    """Poll `condition` until it returns something true or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
