"""One cgroup (v1) per sandbox: the freezer Lambda freezes an environment with, the CFS CPU quota that
gives a function CPU in proportion to its memory, and the memory limit.

Every process of a sandbox (runtime, extensions and whatever they start) joins the sandbox's cgroup
before it execs (see join_argv), so the runtime and all extensions share one CPU quota and one memory
limit, and one write to freezer.state freezes all of them, children included, without a signal any
of them could observe. The cgroups are created below the cgroups the creating process is in (never at
the root of a hierarchy someone else manages) and removed with the sandbox.

CPU (docs/LAMBDA_SANDBOX.md, "CPU"): quota = period x memory_mb / 1769 (1,769 MB is one vCPU), at least
MIN_QUOTA_US; during an on-demand INIT at least one full vCPU.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from typing import Optional

from .results import SandboxError

ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("freezer", "cpu", "cpuacct", "memory")
PERIOD_US = 100_000
MB_PER_VCPU = 1769
MIN_QUOTA_US = 1_000  # the kernel refuses a quota under 1 ms
PREFIX = "lambda_sandbox."
# Runs in front of a sandbox process: puts the shell (and so, after exec, the process itself) into each
# cgroup.procs file given before "--", then execs the command. The pid stays the same.
JOIN_SCRIPT = 'while [ "$1" != "--" ]; do echo $$ > "$1" || exit 126; shift; done; shift; exec "$@"'

_counter = itertools.count(1)
_counter_lock = threading.Lock()


class CgroupUnavailable(SandboxError):
    """cgroup v1 freezer/cpu/cpuacct/memory controllers are not mounted or not writable here."""


def cpu_quota_us(memory_mb: int, period_us: int = PERIOD_US) -> int:
    """The CFS quota per period for a function of memory_mb: its share of one vCPU per 1,769 MB."""
    return max(MIN_QUOTA_US, round(period_us * memory_mb / MB_PER_VCPU))


def init_cpu_quota_us(memory_mb: int, period_us: int = PERIOD_US) -> int:
    """The quota during an on-demand INIT: the memory share, but at least one full vCPU."""
    return max(period_us, cpu_quota_us(memory_mb, period_us))


def _mounts() -> dict[str, str]:
    """controller -> mount point of its cgroup v1 hierarchy."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/mounts") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 4 or parts[2] != "cgroup":
            continue
        for opt in parts[3].split(","):
            if opt in CONTROLLERS:
                out.setdefault(opt, parts[1])
    return out


def _own_paths() -> dict[str, str]:
    """controller -> this process's cgroup path in that hierarchy (/proc/self/cgroup)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        _id, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            if c in CONTROLLERS:
                out[c] = path
    return out


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _remove_stale(parent: str) -> None:
    """cgroups an earlier, killed test process left behind (its pid is gone, nothing runs in them)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            pid = int(name[len(PREFIX):].split(".")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


class SandboxCgroup:
    """The cgroups of one sandbox (one directory per mounted controller hierarchy)."""

    def __init__(self, dirs: dict[str, str]) -> None:
        self.dirs = dirs  # controller -> directory

    @classmethod
    def create(cls) -> SandboxCgroup:
        """New, empty cgroups below this process's own ones; CgroupUnavailable says why not."""
        if os.geteuid() != 0:
            raise CgroupUnavailable("cgroups need root")
        mounts, own = _mounts(), _own_paths()
        missing = [c for c in CONTROLLERS if c not in mounts]
        if missing:
            raise CgroupUnavailable(f"cgroup v1 controller(s) not mounted: {', '.join(missing)}")
        with _counter_lock:
            name = f"{PREFIX}{os.getpid()}.{next(_counter)}"
        dirs: dict[str, str] = {}
        made: list[str] = []
        try:
            for c in CONTROLLERS:
                parent = os.path.join(mounts[c], own.get(c, "/").lstrip("/"))
                path = os.path.join(parent, name)
                if path not in made:
                    _remove_stale(parent)
                    os.mkdir(path)
                    made.append(path)
                dirs[c] = path
            if not os.path.exists(os.path.join(dirs["freezer"], "freezer.state")):
                raise CgroupUnavailable("the freezer cgroup has no freezer.state")
        except (OSError, CgroupUnavailable) as exc:
            for path in reversed(made):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
            if isinstance(exc, CgroupUnavailable):
                raise
            raise CgroupUnavailable(f"cannot create a cgroup: {exc}") from exc
        return cls(dirs)

    # ------------------------------------------------------------------ membership
    def procs_files(self) -> list[str]:
        seen: list[str] = []
        for d in self.dirs.values():
            path = os.path.join(d, "cgroup.procs")
            if path not in seen:
                seen.append(path)
        return seen

    def join_argv(self, argv: list[str]) -> list[str]:
        """argv started so that the process is in this sandbox's cgroups before its first instruction."""
        return ["/bin/sh", "-c", JOIN_SCRIPT, "lsb-cgroup", *self.procs_files(), "--", *argv]

    def pids(self) -> set[int]:
        """Every process in the sandbox's cgroup (zombies leave a v1 cgroup when they exit)."""
        try:
            return {int(p) for p in _read(os.path.join(self.dirs["freezer"], "cgroup.procs")).split()}
        except OSError:
            return set()

    # ------------------------------------------------------------------ freezer
    @property
    def freezer_state(self) -> str:
        return _read(os.path.join(self.dirs["freezer"], "freezer.state"))

    def freeze(self, timeout: float = 5.0) -> bool:
        """FROZEN, then wait until the kernel reports every task frozen (the state reads FREEZING until
        then). False if that did not happen within timeout."""
        state = os.path.join(self.dirs["freezer"], "freezer.state")
        _write(state, "FROZEN")
        deadline = time.monotonic() + timeout
        while _read(state) != "FROZEN":
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0005)  # the freezer has no completion notification: poll the state briefly
        return True

    def thaw(self) -> None:
        _write(os.path.join(self.dirs["freezer"], "freezer.state"), "THAWED")

    # ------------------------------------------------------------------ CPU and memory
    def set_cpu_quota(self, quota_us: int, period_us: int = PERIOD_US) -> None:
        _write(os.path.join(self.dirs["cpu"], "cpu.cfs_period_us"), str(period_us))
        _write(os.path.join(self.dirs["cpu"], "cpu.cfs_quota_us"), str(quota_us))

    def cpu_quota(self) -> tuple[int, int]:
        """(quota_us, period_us) as the kernel has them (quota -1: unlimited)."""
        return (int(_read(os.path.join(self.dirs["cpu"], "cpu.cfs_quota_us"))),
                int(_read(os.path.join(self.dirs["cpu"], "cpu.cfs_period_us"))))

    def cpu_throttled(self) -> tuple[int, int]:
        """(periods throttled, total ns throttled) from cpu.stat."""
        stats = dict(line.split() for line in _read(os.path.join(self.dirs["cpu"], "cpu.stat")).splitlines())
        return int(stats.get("nr_throttled", 0)), int(stats.get("throttled_time", 0))

    def cpu_usage_s(self) -> float:
        """CPU time used by every process that ever ran in the sandbox (cpuacct.usage)."""
        return int(_read(os.path.join(self.dirs["cpuacct"], "cpuacct.usage"))) / 1e9

    def set_memory_limit(self, limit_bytes: int) -> None:
        _write(os.path.join(self.dirs["memory"], "memory.limit_in_bytes"), str(limit_bytes))

    def memory_limit(self) -> int:
        return int(_read(os.path.join(self.dirs["memory"], "memory.limit_in_bytes")))

    def memory_max_usage(self) -> int:
        return int(_read(os.path.join(self.dirs["memory"], "memory.max_usage_in_bytes")))

    # ------------------------------------------------------------------ removal
    def remove(self, timeout: float = 5.0) -> None:
        """Thaw and remove the cgroups; the caller has killed every process in them (rmdir is refused
        while a task is still exiting, so it is retried until timeout)."""
        try:
            self.thaw()
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        for path in dict.fromkeys(self.dirs.values()):
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        break
                    time.sleep(0.005)  # a killed task leaves its cgroup asynchronously


def unavailable_reason() -> Optional[str]:
    """Why cgroups cannot be used here (None: they can): creates and removes a probe cgroup."""
    try:
        SandboxCgroup.create().remove()
    except CgroupUnavailable as exc:
        return str(exc)
    return None
