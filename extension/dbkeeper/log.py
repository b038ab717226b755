"""Structured log lines: one JSON object per line on stdout, with stable snake_case event names.

Lambda sends the extension's stdout to the function's log stream. Callers pass only fields that
are safe to log: never passwords, tokens or query text.
"""

from __future__ import annotations

import json
import os
import time

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Logger:
    def __init__(self, level: str = "info", fd: int = 1):
        self._threshold = _LEVELS[level]
        self._fd = fd

    def set_level(self, level: str) -> None:
        self._threshold = _LEVELS[level]

    def enabled(self, level: str) -> bool:
        return _LEVELS[level] >= self._threshold

    def debug(self, event: str, **fields: object) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._emit("error", event, fields)

    def _emit(self, level: str, event: str, fields: dict[str, object]) -> None:
        if _LEVELS[level] < self._threshold:
            return
        record = {"ts": round(time.time(), 6), "level": level, "event": event, "ext": "dbkeeper"}
        record.update(fields)
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        # One write per line keeps lines whole when the runtime writes to the same stream.
        try:
            os.write(self._fd, line.encode())
        except OSError:
            pass
