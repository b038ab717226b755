"""A Lambda function's CPU share as a CFS quota: a cpu cgroup whose processes together get
`quota` µs of CPU per `period` µs, the way Lambda sizes CPU by memory (1,769 MB = one vCPU, so
128 MB gets 128/1769 of a CPU: 7,236 µs per 100 ms period).

    with CpuShare("direct", memory_mb=128) as share:
        share.add(worker_pid)            # every thread of the process, and what it starts later
        ...
        share.stats()                    # {"nr_periods", "nr_throttled", "throttled_ms"}

cgroup v1 (`/sys/fs/cgroup/cpu`, cpu.cfs_period_us / cpu.cfs_quota_us) or v2 (`cpu.max`), whichever
is mounted and writable; `unavailable_reason()` says why neither is. The group is made below the
bench's own cgroup (never beside groups someone else manages). On exit the processes go back to
the cgroup they came from and the group is removed. Groups left by a killed run (named after a dead
pid) are removed by the next one.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

ONE_VCPU_MB = 1769
PERIOD_US = 100_000
_PREFIX = "dbkeeper-bench-"
_V1 = Path("/sys/fs/cgroup/cpu")
_V2 = Path("/sys/fs/cgroup")


def quota_us(memory_mb: int, period_us: int = PERIOD_US) -> int:
    return max(1000, round(period_us * memory_mb / ONE_VCPU_MB))  # the kernel's minimum quota is 1 ms


def _root() -> tuple[str, Path] | None:
    if (_V1 / "cpu.cfs_quota_us").exists() and os.access(_V1, os.W_OK):
        return "v1", _V1
    controllers = _V2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split() and os.access(_V2, os.W_OK):
        return "v2", _V2
    return None


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "a CPU quota needs root (cgroup cpu controller)"
    if _root() is None:
        return "no writable cgroup cpu controller (v1 /sys/fs/cgroup/cpu or v2 cpu.max)"
    return None


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _remove_stale(root: Path) -> None:
    for group in root.glob(_PREFIX + "*"):
        m = re.match(re.escape(_PREFIX) + r"(\d+)-", group.name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                group.rmdir()  # only an empty group can go; a non-empty one still has live processes
            except OSError:
                pass


def _own_group(pid: int, version: str) -> str:
    """The pid's current group in this hierarchy, relative to its root."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (version == "v1" and "cpu" in controllers.split(",")) or (version == "v2" and controllers == ""):
            return path.lstrip("/")
    return ""


class CpuShare:
    def __init__(self, name: str, memory_mb: int, period_us: int = PERIOD_US) -> None:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        found = _root()
        assert found is not None
        self.version, self.root = found
        self.memory_mb = memory_mb
        self.period_us = period_us
        self.quota_us = quota_us(memory_mb, period_us)
        parent = self.root / _own_group(os.getpid(), self.version)
        _remove_stale(parent)
        self.path = parent / f"{_PREFIX}{os.getpid()}-{name}"
        self._origin: dict[int, str] = {}

    def __enter__(self) -> CpuShare:
        self.path.mkdir()
        if self.version == "v1":
            (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        else:
            (self.path / "cpu.max").write_text(f"{self.quota_us} {self.period_us}")
        return self

    def add(self, pid: int) -> None:
        self._origin.setdefault(pid, _own_group(pid, self.version))
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        return {int(p) for p in (self.path / "cgroup.procs").read_text().split()}

    def stats(self) -> dict:
        raw = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        if self.version == "v1":
            throttled_ms = int(raw.get("throttled_time", 0)) / 1e6  # ns
        else:
            throttled_ms = int(raw.get("throttled_usec", 0)) / 1e3
        return {"nr_periods": int(raw.get("nr_periods", 0)), "nr_throttled": int(raw.get("nr_throttled", 0)),
                "throttled_ms": throttled_ms}

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids():
            target = self.root / self._origin.get(pid, "")
            try:
                try:
                    (target / "cgroup.procs").write_text(str(pid))
                except FileNotFoundError:
                    (self.root / "cgroup.procs").write_text(str(pid))  # its old group is gone
            except ProcessLookupError:
                continue  # it exited meanwhile
        # The kernel empties the group asynchronously after the last move; rmdir says EBUSY until then.
        deadline = time.monotonic() + 2.0
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # bounded retry of the kernel's asynchronous release
