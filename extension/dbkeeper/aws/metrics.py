"""Counters the pool and the server increment, written as CloudWatch Embedded Metric Format lines.

EMF (the CloudWatch "Specification: Embedded metric format"): a JSON log line whose `_aws` member
tells CloudWatch Logs which of its members are metrics and which are dimensions; CloudWatch turns
them into metrics with no API call and no latency here. The line has the shape AWS Lambda
Powertools' metrics utility writes (values as lists of floats, millisecond Timestamp, one
dimension set), so its dashboards and alarms apply.

A line carries what happened since the previous one (deltas: CloudWatch sums them). It is written
at SHUTDOWN and, while there is activity, after every `every` client sessions or at the first
session end `interval` seconds after the last line, whichever comes first: no timer is armed, so
nothing runs across a freeze.
"""

from __future__ import annotations

import json
import os
import time
from typing import Protocol

COUNT, MILLISECONDS = "Count", "Milliseconds"
_MAX_SAMPLES = 1000  # borrow waits kept per line for p50/max (a uniform sample beyond that)


class LeaseGauge(Protocol):
    """The budget's gauges (aws.budget.Budget)."""

    held: int
    max: int | None


class Counters:
    """Plain integers bumped on the hot path (an attribute increment each); no I/O, no locks."""

    __slots__ = ("upstreams_opened", "upstreams_closed", "sessions", "resets", "rejected_too_many",
                 "killed_at_shutdown", "moves", "pins", "borrow_waits", "_seen_waits", "leases")

    def __init__(self) -> None:
        self.upstreams_opened = 0
        self.upstreams_closed: dict[str, int] = {}
        self.sessions = 0
        self.resets = 0
        self.rejected_too_many = 0
        self.killed_at_shutdown = 0
        self.moves: dict[str, int] = {}  # session moves and pins by reason (connection sharing)
        self.pins: dict[str, int] = {}
        self.borrow_waits: list[float] = []
        self._seen_waits = 0
        self.leases: LeaseGauge | None = None  # the budget, when there is one

    def closed(self, reason: str) -> None:
        self.upstreams_closed[reason] = self.upstreams_closed.get(reason, 0) + 1

    def moved(self, reason: str) -> None:
        self.moves[reason] = self.moves.get(reason, 0) + 1

    def pinned(self, reason: str) -> None:
        self.pins[reason] = self.pins.get(reason, 0) + 1

    def waited(self, ms: float) -> None:
        self._seen_waits += 1
        if len(self.borrow_waits) < _MAX_SAMPLES:
            self.borrow_waits.append(ms)
        else:  # reservoir sampling keeps the p50 honest under heavy traffic
            slot = int.from_bytes(os.urandom(4), "little") % self._seen_waits
            if slot < _MAX_SAMPLES:
                self.borrow_waits[slot] = ms


def _name(reason: str) -> str:
    return "".join(part.capitalize() for part in reason.split("_"))


class EmfWriter:
    """Turns the counters into one EMF line per period; `write` is the log's raw line writer."""

    def __init__(self, counters: Counters, namespace: str, dimensions: tuple[tuple[str, str], ...],
                 every: int, interval: float, fd: int = 1):
        self.counters = counters
        self._namespace = namespace
        self._dimensions = dict(dimensions)
        self._every = every
        self._interval = interval
        self._fd = fd
        self._last = _Snapshot(counters)
        self._last_at = time.monotonic()
        self.lines_written = 0

    def session_ended(self) -> None:
        """Called at every client session's end: the only clock this looks at."""
        if (self.counters.sessions - self._last.sessions >= self._every
                or time.monotonic() - self._last_at >= self._interval):
            self.flush()

    def flush(self) -> None:
        line = self.line()
        if line is None:
            return
        try:
            os.write(self._fd, line.encode() + b"\n")
        except OSError:
            pass
        self.lines_written += 1

    def line(self, now_ms: int | None = None) -> str | None:
        """The next EMF line (and the period closed), or None when nothing happened."""
        counters, last = self.counters, self._last
        values: dict[str, tuple[str, float]] = {}

        def count(name: str, value: float) -> None:
            values[name] = (COUNT, float(value))

        count("UpstreamConnectionsOpened", counters.upstreams_opened - last.upstreams_opened)
        closed_total = 0
        for reason, total in counters.upstreams_closed.items():
            delta = total - last.upstreams_closed.get(reason, 0)
            closed_total += delta
            if delta:
                count(f"UpstreamConnectionsClosed{_name(reason)}", delta)
        count("UpstreamConnectionsClosed", closed_total)
        count("SessionsServed", counters.sessions - last.sessions)
        count("SessionResets", counters.resets - last.resets)
        count("TooManyConnectionsReturned", counters.rejected_too_many - last.rejected_too_many)
        count("QueriesKilledAtShutdown", counters.killed_at_shutdown - last.killed_at_shutdown)
        for label, table, previous in (("SessionMoves", counters.moves, last.moves),
                                       ("SessionPins", counters.pins, last.pins)):
            for reason, total in table.items():
                if total - previous.get(reason, 0):
                    count(f"{label}{_name(reason)}", total - previous.get(reason, 0))
        waits = sorted(counters.borrow_waits)
        if waits:
            values["BorrowWaitP50"] = (MILLISECONDS, round(waits[(len(waits) - 1) // 2], 3))
            values["BorrowWaitMax"] = (MILLISECONDS, round(waits[-1], 3))
        activity = any(value for _, value in values.values())
        if not activity and self.lines_written:
            return None  # an idle period costs no log line (gauges alone are not news)
        if counters.leases is not None:  # gauges: the state at the end of the period
            count("BudgetLeasesHeld", counters.leases.held)
            if counters.leases.max is not None:
                count("BudgetLeasesMax", counters.leases.max)
        self._last = _Snapshot(counters)
        self._last_at = time.monotonic()
        counters.borrow_waits = []
        counters._seen_waits = 0
        timestamp = now_ms if now_ms is not None else int(time.time() * 1000)
        document = {
            # also one of dbkeeper's JSON log lines (EMF lets the root carry other members)
            "ts": timestamp / 1000, "level": "info", "event": "metrics", "ext": "dbkeeper",
            "_aws": {
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": self._namespace,
                    "Dimensions": [list(self._dimensions)],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (unit, _) in values.items()],
                }],
            },
            **self._dimensions,
            **{name: [value] for name, (_, value) in values.items()},
        }
        return json.dumps(document, separators=(",", ":"))


class _Snapshot:
    __slots__ = ("upstreams_opened", "upstreams_closed", "sessions", "resets", "rejected_too_many",
                 "killed_at_shutdown", "moves", "pins")

    def __init__(self, counters: Counters) -> None:
        self.upstreams_opened = counters.upstreams_opened
        self.upstreams_closed = dict(counters.upstreams_closed)
        self.sessions = counters.sessions
        self.resets = counters.resets
        self.rejected_too_many = counters.rejected_too_many
        self.killed_at_shutdown = counters.killed_at_shutdown
        self.moves = dict(counters.moves)
        self.pins = dict(counters.pins)
