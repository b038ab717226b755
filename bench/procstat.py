"""What /proc says about a process: CPU time (ns), RSS, children. Linux only."""

from __future__ import annotations

import os

_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int, task: int | None = None) -> list[str]:
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    with open(path) as fh:
        text = fh.read()
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def cpu_ticks_ns(pid: int) -> int:
    """utime + stime of the whole process (every thread, also ended ones), in ns; tick resolution."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) * _TICK_NS


def cpu_ns(pid: int) -> int:
    """CPU time the process's live threads have run, in ns (schedstat: ns resolution).
    Falls back to utime + stime when schedstat is unavailable."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread ended in between
        return total
    except FileNotFoundError:
        return cpu_ticks_ns(pid)


def minor_faults(pid: int) -> int:
    """Minor page faults of the whole process so far (/proc/<pid>/stat field 10)."""
    return int(_stat_fields(pid)[7])


def children(pid: int) -> list[int]:
    """Direct children (all threads' children)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    found += [int(x) for x in fh.read().split()]
            except FileNotFoundError:
                continue
    except FileNotFoundError:
        pass
    return found


def tree_cpu_ns(pid: int) -> int:
    """CPU ns of a process and its live descendants (socat serves each connection in a child)."""
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            total += cpu_ns(current)
        except (FileNotFoundError, ProcessLookupError):
            continue
        stack += children(current)
    return total


def tree_minor_faults(pid: int) -> int:
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            total += minor_faults(current)
        except (FileNotFoundError, ProcessLookupError):
            continue
        stack += children(current)
    return total


def memory_kb(pid: int) -> dict:
    """VmRSS, VmHWM (peak RSS), RssAnon, RssFile in kB."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = int(value.split()[0])
    return out
