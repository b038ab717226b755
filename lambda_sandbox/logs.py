"""Captured output of the sandbox's processes (one record per line) with condition-based waiting."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class LogRecord:
    source: str  # extension file name, "runtime" or "sandbox" (the emulator's own START/END/REPORT lines)
    stream: str  # "stdout", "stderr" or "sandbox"
    line: str  # without the trailing newline
    ts: float  # time.monotonic() when the line was read


Predicate = Callable[[str, str], bool]


class LogStore:
    def __init__(self, on_line: Optional[Callable[[LogRecord], None]] = None) -> None:
        self._records: list[LogRecord] = []
        self._cv = threading.Condition()
        self._on_line = on_line

    def append(self, source: str, stream: str, line: str) -> None:
        rec = LogRecord(source, stream, line, time.monotonic())
        with self._cv:
            self._records.append(rec)
            self._cv.notify_all()
        if self._on_line is not None:
            try:
                self._on_line(rec)
            except Exception:  # a broken printer must not kill a reader thread
                pass

    @property
    def records(self) -> list[LogRecord]:
        with self._cv:
            return list(self._records)

    def __len__(self) -> int:
        with self._cv:
            return len(self._records)

    def pairs(self) -> list[tuple[str, str]]:
        with self._cv:
            return [(r.source, r.line) for r in self._records]

    def wait_for(self, predicate: Predicate, timeout: float, since: int = 0) -> tuple[str, str]:
        """Return the first (source, line) at index >= since matching predicate; TimeoutError after timeout s."""
        deadline = time.monotonic() + timeout
        idx = since
        with self._cv:
            while True:
                while idx < len(self._records):
                    r = self._records[idx]
                    idx += 1
                    if predicate(r.source, r.line):
                        return (r.source, r.line)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = "\n".join(f"  [{r.source}] {r.line}" for r in self._records[-15:])
                    raise TimeoutError(f"no matching log line within {timeout:.2f}s; last lines:\n{tail}")
                self._cv.wait(remaining)


def pump(stream, store: LogStore, source: str, name: str, done: Optional[threading.Event] = None) -> None:
    """Read a binary pipe line by line into store until EOF (run in a daemon thread)."""
    try:
        for raw in iter(stream.readline, b""):
            store.append(source, name, raw.decode("utf-8", "replace").rstrip("\r\n"))
    except (OSError, ValueError):
        pass
    finally:
        try:
            stream.close()
        except OSError:
            pass
        if done is not None:
            done.set()


def matching(records: Iterable[LogRecord], predicate: Predicate) -> list[tuple[str, str]]:
    return [(r.source, r.line) for r in records if predicate(r.source, r.line)]


class LogObservation:
    """Log access shared by Sandbox and RieSandbox; needs `self.logs_store`. With
    `merged_sources` (the RIE: one stream for every process) a source name matches any line."""

    logs_store: LogStore
    merged_sources = False

    @property
    def logs(self) -> list[tuple[str, str]]:
        return self.logs_store.pairs()

    @property
    def log_records(self) -> list[LogRecord]:
        return self.logs_store.records

    def log_mark(self) -> int:
        """Index to pass as since= to wait_for_log to only look at lines logged from now on."""
        return len(self.logs_store)

    def wait_for_log(self, predicate: Predicate, timeout: float = 5.0, since: int = 0):
        """First (source, line) matching predicate(source, line); TimeoutError (with the last lines) if none
        arrives in time. Sources: extension file names, "runtime", "sandbox"."""
        return self.logs_store.wait_for(predicate, timeout, since)

    def _from(self, wanted: Optional[str], source: str) -> bool:
        return self.merged_sources or wanted is None or source == wanted

    def wait_for_json(self, source: Optional[str], predicate: Callable[[dict], bool], timeout: float = 5.0,
                      since: int = 0) -> dict:
        """First JSON log line of source (an extension's file name or "runtime") matching predicate."""

        def matches(src: str, line: str) -> bool:
            if not self._from(source, src) or not line.startswith("{"):
                return False
            try:
                obj = json.loads(line)
            except ValueError:
                return False
            return isinstance(obj, dict) and predicate(obj)

        return json.loads(self.logs_store.wait_for(matches, timeout, since)[1])

    def json_logs(self, source: Optional[str] = None) -> list[dict]:
        out = []
        for record in self.logs_store.records:
            if self._from(source, record.source) and record.line.startswith("{"):
                try:
                    out.append(json.loads(record.line))
                except ValueError:
                    pass
        return out
