"""How a sandbox confines its processes: freeze/thaw, the CPU quota and the memory limit.

With writable cgroup v1 controllers (root; see cgroups.py) every process of the sandbox runs in one
cgroup: Lambda's freezer, a CFS quota in proportion to AWS_LAMBDA_FUNCTION_MEMORY_SIZE shared by the
runtime and all extensions (at least one vCPU during an on-demand INIT), a memory limit of that size.
Elsewhere the fallback is SIGSTOP/SIGCONT of every process of the sandbox and no limits;
`resources.freeze` says which one runs."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import Optional

from . import procs
from .cgroups import PERIOD_US, CgroupUnavailable, SandboxCgroup, cpu_quota_us, init_cpu_quota_us
from .results import Resources

CGROUP_FREEZER = "cgroup-freezer"
SIGSTOP = "sigstop"


class ProcessControl:
    def __init__(self, memory_mb: int, cgroups: Optional[bool]) -> None:
        """cgroups: None = use them where they are writable, True = required, False = never."""
        self.memory_mb = memory_mb
        self.wanted = cgroups
        self.cgroup: Optional[SandboxCgroup] = None
        self.unavailable_reason: Optional[str] = None
        self._stopped: set[int] = set()  # SIGSTOP fallback: the pids frozen
        self._removed = False

    def setup(self) -> None:
        if self.wanted is False:
            self.unavailable_reason = "cgroups=False"
            return
        try:
            cg = SandboxCgroup.create()
        except CgroupUnavailable as exc:
            if self.wanted:
                raise
            self.unavailable_reason = str(exc)
            return
        try:
            cg.set_memory_limit(self.memory_mb << 20)
            cg.set_cpu_quota(cpu_quota_us(self.memory_mb))
        except OSError as exc:
            cg.remove()
            if self.wanted:
                raise CgroupUnavailable(f"cannot set the sandbox's limits: {exc}") from exc
            self.unavailable_reason = f"cannot set the sandbox's limits: {exc}"
            return
        self.cgroup = cg

    @property
    def mechanism(self) -> str:
        return CGROUP_FREEZER if self.cgroup is not None else SIGSTOP

    def wrap(self, argv: list[str]) -> list[str]:
        """argv as launched: inside the sandbox's cgroup from its first instruction (outermost, because
        `ip netns exec` remounts /sys)."""
        return self.cgroup.join_argv(argv) if self.cgroup is not None else argv

    def pids(self) -> set[int]:
        return self.cgroup.pids() if self.cgroup is not None and not self._removed else set()

    # ------------------------------------------------------------------ CPU
    def cpu_for_init(self, on_demand: bool) -> None:
        """An on-demand INIT runs with at least one full vCPU; a provisioned-concurrency INIT gets the
        memory share only (docs/LAMBDA_SANDBOX.md, "CPU")."""
        self._set_quota(init_cpu_quota_us(self.memory_mb) if on_demand else cpu_quota_us(self.memory_mb))

    def cpu_after_init(self) -> None:
        self._set_quota(cpu_quota_us(self.memory_mb))

    def _set_quota(self, quota_us: int) -> None:
        if self.cgroup is None or self._removed:
            return
        try:
            self.cgroup.set_cpu_quota(quota_us)
        except OSError:
            pass  # a parent cgroup with a smaller quota refuses a larger one (v1): its quota applies anyway

    def cpu_time_s(self) -> Optional[float]:
        return self.cgroup.cpu_usage_s() if self.cgroup is not None else None

    def max_memory_used_mb(self) -> Optional[int]:
        if self.cgroup is None:
            return None
        try:
            return -(-self.cgroup.memory_max_usage() // (1 << 20))
        except OSError:
            return None

    # ------------------------------------------------------------------ freezer
    def freeze(self, pids: Iterable[int]) -> None:
        """Freeze the whole sandbox. pids: every process of it (used by the SIGSTOP fallback only)."""
        if self.cgroup is not None:
            self.cgroup.freeze()
            return
        self._stopped = set(pids)
        procs.stop_and_wait(self._stopped)

    def thaw(self, keep_stopped: Iterable[int] = ()) -> None:
        """Thaw the sandbox. Processes in keep_stopped stay stopped: the caller has sent them SIGSTOP
        (while frozen by the cgroup, the signal waits and takes effect on the thaw)."""
        if self.cgroup is not None:
            self.cgroup.thaw()
            return
        procs.signal_pids(self._stopped - set(keep_stopped), signal.SIGCONT)
        self._stopped = set()

    def frozen_pids(self) -> set[int]:
        return set(self._stopped)

    # ------------------------------------------------------------------ report / removal
    def resources(self) -> Resources:
        cg = self.cgroup
        return Resources(
            freeze=self.mechanism,
            cgroup=sorted(set(cg.dirs.values())) if cg is not None else None,
            cpu_period_us=PERIOD_US if cg is not None else None,
            cpu_quota_us=cpu_quota_us(self.memory_mb) if cg is not None else None,
            init_cpu_quota_us=init_cpu_quota_us(self.memory_mb) if cg is not None else None,
            memory_limit_bytes=(self.memory_mb << 20) if cg is not None else None,
            unavailable_reason=self.unavailable_reason,
        )

    def remove(self) -> None:
        """Remove the cgroup (every process in it is gone); `resources` still describes what ran."""
        if self.cgroup is not None and not self._removed:
            self.cgroup.remove()
            self._removed = True
