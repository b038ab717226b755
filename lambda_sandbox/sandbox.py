"""One Lambda execution environment: the Runtime API + Extensions API server, its processes, freeze and
reclaim. Docs: lambda_sandbox/README.md; the behaviour it models: docs/LAMBDA_SANDBOX.md.

The class is assembled by role: environment.py (what processes are started with), handlers.py (the API
requests), lifecycle.py (INIT / INVOKE), shutdown.py (SHUTDOWN, reset, reclaim), control.py (freezer, CPU
quota, memory limit). Threading model: every HTTP request of the runtime/extensions runs in its own server
thread and blocks on one condition variable (self._cv) while it waits for an event; the caller's thread
drives INIT/INVOKE/SHUTDOWN and waits on the same condition with deadlines. All state lives in a
Generation (one INIT with its processes); a reset drops it, and the next invoke runs INIT again with new
processes.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from typing import Optional

from . import procs
from .base import SandboxBase
from .control import ProcessControl
from .environment import ProcessSetup, host_paths_under_tmp  # noqa: F401  (host_paths_under_tmp: public here)
from .handlers import ApiHandlers
from .lifecycle import Lifecycle
from .logs import LogRecord
from .netns import Netns
from .results import Resources, SandboxClosed, SandboxError, ShutdownReport
from .shutdown import RUNTIME_DEADLINE_SHARE, ShutdownFlow  # noqa: F401  (RUNTIME_DEADLINE_SHARE: used by rie.py)
from .state import Generation

_live: weakref.WeakSet[Sandbox] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Interpreter exit with sandboxes still open (a crashed test, Ctrl-C in a demo): leave no process,
    namespace, cgroup or temp dir behind."""
    for sb in list(_live):
        try:
            sb._teardown()
        except Exception:
            pass


class Sandbox(SandboxBase, ProcessSetup, ApiHandlers, Lifecycle, ShutdownFlow):
    """A local Lambda execution environment.

    with Sandbox(opt_dir, task_dir, handler="app.handler", env={...}, timeout_s=10, memory_mb=128) as sb:
        r = sb.invoke({"k": 1})
        sb.wait_for_log(lambda src, line: ..., timeout=5)
        report = sb.shutdown()

    memory_mb sets AWS_LAMBDA_FUNCTION_MEMORY_SIZE and, with cgroups, the CPU quota (memory_mb/1769 of a
    vCPU for all processes together) and the memory limit. cgroups: None = where writable (else SIGSTOP
    freeze, no limits), True = required, False = never; `resources` says what applies.
    """

    _names_lock = threading.Lock()
    _counter = 0

    def __init__(
        self,
        opt_dir: str,
        task_dir: str,
        handler: str = "app.handler",
        *,
        env: Optional[dict[str, str]] = None,
        timeout_s: float = 10,
        init_timeout_s: Optional[float] = None,
        memory_mb: int = 3008,
        function_name: str = "test_function",
        function_version: str = "$LATEST",
        region: str = "us-east-1",
        python: Optional[str] = None,
        runtime_cmd: Optional[list[str]] = None,
        freeze: bool = True,
        netns: bool = False,
        lambda_paths: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        shutdown_budget_ms: int = 2000,
        name: Optional[str] = None,
        on_log: Optional[Callable[[LogRecord], None]] = None,
        cgroups: Optional[bool] = None,
    ) -> None:
        self._set_function(opt_dir, task_dir, handler, env, timeout_s, memory_mb, function_name, function_version,
                           region, python, runtime_cmd, freeze, netns, shutdown_budget_ms, on_log)
        self.init_timeout_s = timeout_s if init_timeout_s is None else init_timeout_s
        self.lambda_paths = lambda_paths
        # paths as the processes see them
        self.proc_opt = "/opt" if lambda_paths else self.opt_dir
        self.proc_task = "/var/task" if lambda_paths else self.task_dir
        self.private_tmp: Optional[str] = None
        with Sandbox._names_lock:
            Sandbox._counter += 1
            self.name = name or f"sandbox-{os.getpid()}-{Sandbox._counter}"

        self._cv = threading.Condition()
        self._op_lock = threading.Lock()
        self._gen: Optional[Generation] = None
        self._gen_counter = 0
        self._state = "new"  # new, uninit, initializing, idle, invoking, resetting, closed
        self._frozen = False
        self._control = ProcessControl(memory_mb, cgroups)
        self.initialization_type = "on-demand"
        self._hold_freeze = False  # init() without freeze_after: no freeze before the first invoke
        self.freeze_count = 0
        self.last_reset_report: Optional[ShutdownReport] = None
        self._netns: Optional[Netns] = None
        self._server = None
        self._server_thread: Optional[threading.Thread] = None
        self._bind = (host, port)
        self.api_address = ""

    # ------------------------------------------------------------------ lifecycle of the emulator itself
    def start(self) -> Sandbox:
        if self._state != "new":
            return self
        if self.lambda_paths:
            self._prepare_lambda_paths()
        if self.use_netns:
            self._netns = Netns()
        try:
            self._control.setup()
        except Exception:
            self._remove_netns_and_tmp()
            raise
        from .api import ApiServer

        host, port = self._bind
        if self._netns is not None:
            host = self._netns.host_address
        try:
            self._server = ApiServer((host, port), self)
        except Exception:
            self._control.remove()
            self._remove_netns_and_tmp()
            raise
        self.api_address = f"{host}:{self._server.server_address[1]}"
        self._server_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                               daemon=True, name=f"lsb-api-{self.name}")
        self._server_thread.start()
        self._state = "uninit"
        _live.add(self)
        if self.freeze:
            threading.Thread(target=self._freezer, daemon=True, name=f"lsb-freezer-{self.name}").start()
        return self

    def _prepare_lambda_paths(self) -> None:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            raise SandboxError("lambda_paths=True needs root and unshare(1) (a private mount namespace per process)")
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            raise SandboxError(f"lambda_paths=True: cannot create a mount namespace: {probe.stderr.strip()}")
        os.makedirs("/var/task", exist_ok=True)  # empty mount point; the bind mounts stay in the namespaces
        self.private_tmp = tempfile.mkdtemp(prefix=f"lsb-tmp-{self.name}-")
        os.chmod(self.private_tmp, 0o1777)

    def close(self) -> None:
        """shutdown() unless already shut down/reclaimed; never leaves a process behind."""
        if self._state == "closed":
            return
        try:
            self.shutdown()
        finally:
            self._teardown()

    @property
    def host_address(self) -> str:
        """Address processes inside the sandbox use to reach services on the host (netns: the host-side veth
        address, e.g. 10.200.0.5; without netns: 127.0.0.1)."""
        return self._netns.host_address if self._netns else "127.0.0.1"

    @property
    def sandbox_address(self) -> Optional[str]:
        return self._netns.sandbox_address if self._netns else None

    @property
    def netns_name(self) -> Optional[str]:
        return self._netns.name if self._netns else None

    def pids(self) -> dict[str, int]:
        """Live main pids: {"runtime": pid, "<extension file name>": pid, ...}."""
        with self._cv:
            g = self._gen
            if g is None:
                return {}
            out = {n: e.proc.pid for n, e in g.exts.items() if e.alive}
            if g.runtime is not None and g.runtime.proc.alive:
                out["runtime"] = g.runtime.proc.pid
            return out

    def all_pids(self) -> set[int]:
        """Every live process of the sandbox (process groups, descendants, netns members)."""
        with self._cv:
            return self._tree_pids_locked()

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def freeze_mechanism(self) -> str:
        """"cgroup-freezer" (the cgroup v1 freezer, like Lambda) or "sigstop" (fallback without cgroups)."""
        return self._control.mechanism

    @property
    def resources(self) -> Resources:
        """Freeze mechanism, CPU quota and memory limit that apply (or why no cgroup is used)."""
        return self._control.resources()

    def cpu_time_s(self) -> Optional[float]:
        """CPU seconds used so far by every process the sandbox ran (None without cgroups)."""
        return self._control.cpu_time_s()

    def wait_frozen(self, timeout: float = 5.0) -> bool:
        """Wait until the sandbox is frozen (after an invoke, once every process waits in next)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self._frozen:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._state in ("closed", "uninit"):
                    return self._frozen
                self._cv.wait(remaining)
            return True

    @property
    def state(self) -> str:
        return self._state

    # ------------------------------------------------------------------ process bookkeeping
    def _tree_pids_locked(self) -> set[int]:
        g = self._gen
        roots, pgids = [], []
        if g is not None:
            for m in g.managed():
                if m.alive:
                    roots.append(m.pid)
                    pgids.append(m.pid)
        ino = self._netns.inode if self._netns else None
        in_cgroup = self._control.pids()
        if not roots and ino is None:
            return in_cgroup
        return procs.tree_pids(roots, pgids, ino) | in_cgroup

    def _freeze_locked(self) -> None:
        self._control.freeze(self._tree_pids_locked())
        self._frozen = True
        self.freeze_count += 1
        self._cv.notify_all()

    def _thaw_locked(self) -> None:
        if not self._frozen:
            return
        # a frozen process cannot have started another one: what was frozen is all there is to thaw
        self._control.thaw()
        self._frozen = False

    def _freeze_due_locked(self) -> bool:
        g = self._gen
        if not self.freeze or self._frozen or self._hold_freeze or self._state != "idle" or g is None or g.ending:
            return False
        if g.runtime is None or g.runtime.state != "ready" or not g.runtime.proc.alive:
            return False
        return all(e.state == "ready" and not e.queue for e in g.all_exts())

    def _maybe_freeze_locked(self) -> None:
        # the freezer thread does it, off the caller's path (Lambda answers the caller, then freezes)
        self._cv.notify_all()

    def _freezer(self) -> None:
        with self._cv:
            while self._state != "closed":
                if self._freeze_due_locked():
                    self._freeze_locked()
                else:
                    self._cv.wait()


    def _teardown(self) -> None:
        with self._cv:
            leftovers = self._tree_pids_locked()
            self._state = "closed"
            g = self._gen
            self._gen = None
            self._cv.notify_all()
        _live.discard(self)
        if leftovers:  # only on an emergency path (atexit, failed shutdown): never leave processes behind
            procs.signal_pids(leftovers, signal.SIGKILL)
            self._control.thaw()  # a frozen process dies of SIGKILL only once thawed
        if g is not None:
            for m in g.managed():
                procs.kill_group_and_wait(m)
        self._control.remove()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._remove_netns_and_tmp()

    def _require_open(self) -> None:
        if self._state == "closed":
            raise SandboxClosed(f"{self.name} is closed")
        if self._state == "new":
            self.start()

