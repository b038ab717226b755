"""Process helpers: launching with captured output, /proc scans, signalling whole process trees."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional

from .logs import LogStore, pump


@dataclass
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    state: str


def read_stat(pid: int) -> Optional[ProcInfo]:
    """Parse /proc/<pid>/stat (None if the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = data[data.rindex(")") + 2:].split()
    return ProcInfo(pid=pid, state=rest[0], ppid=int(rest[1]), pgid=int(rest[2]))


def proc_state(pid: int) -> Optional[str]:
    """Single-letter state from /proc/<pid>/stat ('S', 'R', 'T' stopped, 'Z' zombie...), None if gone."""
    info = read_stat(pid)
    return info.state if info else None


def scan() -> dict[int, ProcInfo]:
    out: dict[int, ProcInfo] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = read_stat(int(name))
            if info is not None:
                out[info.pid] = info
    return out


def netns_inode(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_netns(ino: int) -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}/ns/net").st_ino == ino:
                    out.add(int(name))
            except OSError:
                pass
    return out


def tree_pids(roots: Iterable[int], pgids: Iterable[int], netns_ino: Optional[int] = None) -> set[int]:
    """Every live process belonging to the sandbox: members of its process groups, descendants of its
    root processes and (with a network namespace) every process inside that namespace."""
    roots = set(roots)
    pgids = set(pgids)
    table = scan()
    selected = {p for p, i in table.items() if p in roots or i.pgid in pgids}
    children: dict[int, list[int]] = {}
    for p, i in table.items():
        children.setdefault(i.ppid, []).append(p)
    stack = list(selected)
    while stack:
        for c in children.get(stack.pop(), ()):
            if c not in selected:
                selected.add(c)
                stack.append(c)
    if netns_ino is not None:
        selected |= pids_in_netns(netns_ino)
    selected.discard(os.getpid())
    return {p for p in selected if p in table and table[p].state != "Z"}


def signal_pids(pids: Iterable[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _all_tasks_stopped(pid: int) -> bool:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True  # gone
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        state = data[data.rindex(b")") + 2:data.rindex(b")") + 3]
        if state not in (b"T", b"t", b"Z", b"X"):
            return False
    return True


def stop_and_wait(pids: Iterable[int], timeout: float = 2.0) -> bool:
    """SIGSTOP pids and return once every thread of each is really stopped (signal delivery is asynchronous:
    kill() returns before the target has stopped). False if some did not stop within timeout."""
    pids = set(pids)
    signal_pids(pids, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending:
        pending = {p for p in pending if not _all_tasks_stopped(p)}
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.0005)  # no notification exists for "another process stopped": poll /proc briefly
    return True


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Managed:
    """A launched process (runtime or extension) with output capture and an exit watcher."""

    name: str  # log source
    argv: list[str]
    popen: subprocess.Popen
    started_at: float
    exited_at: Optional[float] = None
    returncode: Optional[int] = None
    exited: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()


def launch(
    name: str,
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    logs: LogStore,
    on_exit: Callable[[Managed], None],
) -> Managed:
    """Start argv in its own process group, stdout/stderr captured line by line into logs, stdin /dev/null.
    on_exit(managed) runs in a watcher thread once the process has been reaped."""
    popen = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        process_group=0,
        close_fds=True,
    )
    m = Managed(name=name, argv=argv, popen=popen, started_at=time.monotonic())
    for stream, sname in ((popen.stdout, "stdout"), (popen.stderr, "stderr")):
        threading.Thread(target=pump, args=(stream, logs, name, sname), daemon=True,
                         name=f"lsb-log-{name}-{sname}").start()

    def watch() -> None:
        rc = popen.wait()
        m.exited_at = time.monotonic()
        m.returncode = rc
        m.exited.set()
        on_exit(m)

    threading.Thread(target=watch, daemon=True, name=f"lsb-wait-{name}").start()
    return m


def kill_group_and_wait(m: Managed, timeout: float = 5.0) -> None:
    signal_group(m.pid, signal.SIGKILL)
    signal_pids([m.pid], signal.SIGCONT)
    m.exited.wait(timeout)
