"""One Lambda execution environment: Runtime API + Extensions API server, process lifecycle, freeze, reclaim.

Behaviour follows ../shared/LAMBDA_FACTS.md (AWS docs + what the RIE v1.30 does). Threading model:
every HTTP request of the runtime/extensions runs in its own server thread and blocks on one condition
variable (self._cv) while it waits for an event; the caller's thread drives INIT/INVOKE/SHUTDOWN and waits
on the same condition with deadlines. All state lives in a _Gen ("generation": one INIT with its processes);
a reset drops the generation, and the next invoke runs INIT again with new processes.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import procs
from .base import ACCOUNT_ID, SandboxBase
from .logs import LogRecord
from .netns import Netns
from .results import (
    ExtensionShutdown,
    InvokeResult,
    SandboxBusy,
    SandboxClosed,
    SandboxError,
    ShutdownReport,
)

LAMBDA_PATHS_SCRIPT = (  # /opt and /var/task read-only as on Lambda; only /tmp is writable
    'mount --bind "$1" /opt && mount -o remount,bind,ro /opt && '
    'mount --bind "$2" /var/task && mount -o remount,bind,ro /var/task && '
    # the private /tmp hides the host's; paths under it the processes still need (an interpreter's
    # virtualenv in a checkout under /tmp) are bound back from the host's /tmp, seen at /mnt meanwhile
    'mount --bind /tmp /mnt && mount --bind "$3" /tmp && shift 3 && '
    'while [ "$1" != "--" ]; do mkdir -p "$1" && mount --bind "/mnt${1#/tmp}" "$1" || exit 1; shift; done && '
    'shift && umount -l /mnt && cd /var/task && exec "$@"'
)
MAX_PAYLOAD = 6 * 1024 * 1024 + 100  # 6291556 bytes, Lambda's synchronous response limit
RUNTIME_DEADLINE_SHARE = 0.3  # RIE: the runtime gets 30% of the shutdown budget (600 ms of 2000 ms)
EXT_EXCLUDED_ENV = {"_HANDLER", "PYTHONPATH", "AWS_EXECUTION_ENV", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
                    "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_XRAY_CONTEXT_MISSING"}
_py_version_cache: dict[str, str] = {}
_live: "weakref.WeakSet[Sandbox]" = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Interpreter exit with sandboxes still open (a crashed test, Ctrl-C in a demo): leave no process,
    namespace or temp dir behind."""
    for sb in list(_live):
        try:
            sb._teardown()
        except Exception:
            pass


def host_paths_under_tmp(python: str) -> list[str]:
    """Host paths under /tmp that a sandbox's processes need although their /tmp is private: this
    checkout and the virtualenv of the interpreter that runs the runtime (e.g. a clone in /tmp)."""
    venv = os.path.dirname(os.path.dirname(os.path.abspath(python)))
    candidates = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    if os.path.exists(os.path.join(venv, "pyvenv.cfg")):
        candidates.append(venv)
    keep: list[str] = []
    for path in sorted(candidates, key=len):
        if path.startswith("/tmp/") and not any(path == k or path.startswith(k + "/") for k in keep):
            keep.append(path)
    return keep


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _err(error_type: str, message: str) -> bytes:
    return _compact({"errorMessage": message, "errorType": error_type})


@dataclass
class Resp:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: Optional[str] = "application/json"
    kind: str = ""  # "SHUTDOWN" for the shutdown event


def _forbidden(error_type: str, message: str) -> Resp:
    return Resp(403, _err(error_type, message))


ACCEPTED = Resp(202, _compact({"status": "OK"}))
DROP = Resp(500, _err("InternalServerError", "Internal Server Error"))  # sandbox reset while waiting


@dataclass
class _Failure:
    status: int
    body: bytes
    error_type: Optional[str]
    reason: str = "Failure"  # SHUTDOWN reason of the reset that follows
    timed_out: bool = False
    content_type: str = "application/json"


@dataclass
class _Invoke:
    id: str
    payload: bytes
    deadline_ms: int
    deadline_mono: float
    arn: str
    trace_id: Optional[str]
    client_context: Optional[str]
    cognito_identity: Optional[str]
    content_type: str
    delivered: bool = False
    response: Optional[tuple[int, bytes, str, Optional[str]]] = None  # status, body, ctype, error_type
    failure: Optional[_Failure] = None


@dataclass
class _Ext:
    name: str
    path: str
    external: bool = True
    proc: Optional[procs.Managed] = None
    id: Optional[str] = None
    events: set = field(default_factory=set)
    # launched -> registered -> ready (waiting in next) <-> running (has an event); init_error, exit_error, exited
    state: str = "launched"
    queue: deque = field(default_factory=deque)  # Resp objects to hand out on next
    invoke_pending: bool = False  # got INVOKE, has not called next again yet
    shutdown_delivered_at: Optional[float] = None
    error_type: Optional[str] = None

    @property
    def registered(self) -> bool:
        return self.id is not None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive


@dataclass
class _Runtime:
    proc: procs.Managed
    # started -> ready (in next) -> running (has an invoke) -> responded -> ready ...; init_error; exited
    state: str = "started"
    pending: Optional[_Invoke] = None


class _Gen:
    def __init__(self, number: int) -> None:
        self.number = number
        self.exts: dict[str, _Ext] = {}  # external, by file name
        self.by_id: dict[str, _Ext] = {}  # external + internal, by identifier
        self.internal: dict[str, _Ext] = {}
        self.runtime: Optional[_Runtime] = None
        self.registration_open = True
        self.init_done = False
        self.failure: Optional[_Failure] = None  # INIT failure
        self.invoke: Optional[_Invoke] = None
        self.idle_failure: Optional[_Failure] = None  # crash while idle: reported by the next invoke
        self.ending = False  # reset/shutdown in progress: exits are expected

    def all_exts(self) -> list[_Ext]:
        return list(self.exts.values()) + list(self.internal.values())

    def managed(self) -> list[procs.Managed]:
        out = [e.proc for e in self.exts.values() if e.proc is not None]
        if self.runtime is not None:
            out.append(self.runtime.proc)
        return out


class Sandbox(SandboxBase):
    """A local Lambda execution environment.

    with Sandbox(opt_dir, task_dir, handler="app.handler", env={...}, timeout_s=10) as sb:
        r = sb.invoke({"k": 1})
        sb.wait_for_log(lambda src, line: ..., timeout=5)
        report = sb.shutdown()
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
        self._gen: Optional[_Gen] = None
        self._gen_counter = 0
        self._state = "new"  # new, uninit, initializing, idle, invoking, resetting, closed
        self._frozen = False
        self._frozen_pids: set[int] = set()
        self._hold_freeze = False  # init() without freeze_after: no freeze before the first invoke
        self.freeze_count = 0
        self.last_reset_report: Optional[ShutdownReport] = None
        self._netns: Optional[Netns] = None
        self._server = None
        self._server_thread: Optional[threading.Thread] = None
        self._bind = (host, port)
        self.api_address = ""

    # ------------------------------------------------------------------ lifecycle of the emulator itself
    def start(self) -> "Sandbox":
        if self._state != "new":
            return self
        if self.lambda_paths:
            self._prepare_lambda_paths()
        if self.use_netns:
            self._netns = Netns()
        from .api import ApiServer

        host, port = self._bind
        if self._netns is not None:
            host = self._netns.host_address
        try:
            self._server = ApiServer((host, port), self)
        except Exception:
            if self._netns is not None:
                self._netns.delete()
            if self.private_tmp is not None:
                shutil.rmtree(self.private_tmp, ignore_errors=True)
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

    # ------------------------------------------------------------------ environment
    def _py_version(self) -> str:
        if self.python == sys.executable:
            return f"{sys.version_info.major}.{sys.version_info.minor}"
        if self.python not in _py_version_cache:
            try:
                out = subprocess.run([self.python, "-c", "import sys;print('%d.%d' % sys.version_info[:2])"],
                                     capture_output=True, text=True, timeout=10).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                out = ""
            _py_version_cache[self.python] = out
        return _py_version_cache[self.python]

    def _env_layers(self) -> tuple[dict, dict, dict, dict]:
        customer = {
            "PATH": f"{os.path.dirname(self.python)}:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
            "LANG": "en_US.UTF-8",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        }
        customer.update(self.env)
        customer.pop("AWS_LAMBDA_MAX_CONCURRENCY", None)  # would put awslambdaric in Managed Instances mode
        credentials = {
            "AWS_ACCESS_KEY_ID": self.env.get("AWS_ACCESS_KEY_ID", "ASIALAMBDASANDBOXKEY"),
            "AWS_SECRET_ACCESS_KEY": self.env.get("AWS_SECRET_ACCESS_KEY", "lambda-sandbox-dummy-secret"),
            "AWS_SESSION_TOKEN": self.env.get("AWS_SESSION_TOKEN", "lambda-sandbox-dummy-session-token"),
        }
        ver = self._py_version()
        runtime = {
            "_HANDLER": self.handler,
            "LAMBDA_TASK_ROOT": self.proc_task,
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "$LATEST",
        }
        if ver:
            runtime["AWS_EXECUTION_ENV"] = f"AWS_Lambda_python{ver}"
        platform = {
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": self.function_version,
            "AWS_LAMBDA_RUNTIME_API": self.api_address,
            "TZ": ":UTC",
        }
        return customer, credentials, runtime, platform

    def extension_env(self) -> dict[str, str]:
        customer, credentials, _runtime, platform = self._env_layers()
        env = {**customer, **credentials, **platform}
        return {k: v for k, v in env.items() if k not in EXT_EXCLUDED_ENV and not k.startswith("_")}

    def runtime_env(self) -> dict[str, str]:
        customer, credentials, runtime, platform = self._env_layers()
        env = {**customer, **credentials, **runtime, **platform}
        path = [self.proc_task]
        ver = self._py_version()
        opt_python = os.path.join(self.opt_dir, "python")
        if ver and os.path.isdir(os.path.join(opt_python, "lib", f"python{ver}", "site-packages")):
            path.append(os.path.join(self.proc_opt, "python", "lib", f"python{ver}", "site-packages"))
        if os.path.isdir(opt_python):
            path.append(os.path.join(self.proc_opt, "python"))
        if self.env.get("PYTHONPATH"):
            path.append(self.env["PYTHONPATH"])
        env["PYTHONPATH"] = ":".join(path)
        return env

    def runtime_argv(self) -> list[str]:
        cmd = list(self.runtime_cmd) if self.runtime_cmd else [self.python, "-m", "awslambdaric", self.handler]
        wrapper = self.env.get("AWS_LAMBDA_EXEC_WRAPPER")
        if wrapper:
            cmd = [self._map_opt(wrapper)] + cmd
        return self._in_ns(cmd)

    def _map_opt(self, path: str) -> str:
        """/opt/x -> <opt_dir>/x when the sandbox's opt_dir is not /opt (the function sees /opt paths)."""
        if path.startswith("/opt/") and self.proc_opt != "/opt" and not os.path.exists(path):
            return os.path.join(self.opt_dir, path[len("/opt/"):])
        return path

    def _in_ns(self, argv: list[str]) -> list[str]:
        if self.lambda_paths:
            # own mount namespace: opt_dir on /opt, task_dir on /var/task, the sandbox's private dir on /tmp
            # (bound last: opt_dir/task_dir may themselves live under /tmp); exec keeps the pid
            argv = ["unshare", "-m", "--propagation", "private", "--", "/bin/sh", "-c", LAMBDA_PATHS_SCRIPT,
                    "lsb", self.opt_dir, self.task_dir, self.private_tmp, *host_paths_under_tmp(self.python), "--"] + argv
        return (self._netns.exec_prefix() + argv) if self._netns else argv

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
        if not roots and ino is None:
            return set()
        return procs.tree_pids(roots, pgids, ino)

    def _freeze_locked(self) -> None:
        pids = self._tree_pids_locked()
        procs.stop_and_wait(pids)
        self._frozen_pids = pids
        self._frozen = True
        self.freeze_count += 1
        self._cv.notify_all()

    def _thaw_locked(self) -> None:
        if not self._frozen:
            return
        # a stopped process cannot have started another one: the pids frozen are all there is to thaw
        procs.signal_pids(self._frozen_pids, signal.SIGCONT)
        self._frozen = False
        self._frozen_pids = set()

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

    def _on_exit(self, gen: _Gen, m: procs.Managed) -> None:
        with self._cv:
            self._cv.notify_all()
            if gen is not self._gen or gen.ending:
                return
            rc = m.returncode
            status = f"signal: {(signal.strsignal(-rc) or str(-rc)).lower()}" if rc is not None and rc < 0 \
                else f"exit status {rc}"
            if gen.runtime is not None and m is gen.runtime.proc:
                gen.runtime.state = "exited"
                inv = gen.invoke
                rid = inv.id if inv else ""
                fail = _Failure(502, _compact({"errorType": "Runtime.ExitError",
                                               "errorMessage": f"RequestId: {rid} Error: Runtime exited with error: {status}"}),
                                "Runtime.ExitError")
                if not gen.init_done:
                    if gen.failure is None:
                        gen.failure = fail
                elif inv is not None and inv.failure is None and inv.response is None:
                    inv.failure = fail
                elif gen.idle_failure is None:
                    gen.idle_failure = fail
                return
            for e in gen.exts.values():
                if e.proc is m:
                    before = e.state
                    e.state = "exited"
                    if before in ("init_error", "exit_error"):
                        return  # expected: it reported its error and exits
                    if not e.registered:
                        # crash before registering: 502 with an empty body, INIT retried at every invoke
                        fail = _Failure(502, b"", "Extension.Crash", content_type="text/plain")
                    else:
                        fail = _Failure(502, _compact({"errorType": "Extension.Crash",
                                                       "errorMessage": f"Extension {e.name} exited: {status}"}),
                                        "Extension.Crash")
                    inv = gen.invoke
                    if not gen.init_done:
                        if gen.failure is None:
                            gen.failure = fail
                    elif inv is not None and inv.failure is None:
                        inv.failure = fail
                    elif gen.idle_failure is None:
                        gen.idle_failure = fail
                    return

    def _launch(self, gen: _Gen, name: str, argv: list[str], env: dict[str, str]) -> procs.Managed:
        return procs.launch(name, argv, cwd=self.task_dir, env=env, logs=self.logs_store,
                            on_exit=lambda m: self._on_exit(gen, m))

    # ------------------------------------------------------------------ INIT
    def _scan_extensions(self) -> tuple[list[tuple[str, str]], Optional[str]]:
        ext_dir = os.path.join(self.opt_dir, "extensions")
        found = []
        if not os.path.isdir(ext_dir):
            return found, None
        for name in sorted(os.listdir(ext_dir)):
            path = os.path.join(ext_dir, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # subdirectories are ignored
            if not os.access(path, os.X_OK):
                return found, f"Extension {name} is not executable: {path}"
            found.append((name, path))
        return found, None

    def init(self, freeze_after: bool = False) -> Optional[InvokeResult]:
        """Run INIT now (normally lazy, at the first invoke). None on success, else the failing result
        (the sandbox is reset and the next invoke tries INIT again). Like an on-demand INIT whose invoke is
        still to come, the sandbox is not frozen before that invoke; freeze_after=True freezes it right
        after INIT instead (provisioned concurrency)."""
        self._require_open()
        if not self._op_lock.acquire(blocking=False):
            raise SandboxBusy("another invoke/shutdown is running")
        try:
            if self._state == "idle":
                return None
            t0 = time.monotonic()
            with self._cv:
                self._hold_freeze = not freeze_after
            fail = self._run_init(then_idle=True)
            if fail is None:
                return None
            self._reset(fail.reason)
            return self._failure_result(fail, "", t0, None)
        finally:
            self._op_lock.release()

    def _run_init(self, then_idle: bool) -> Optional[_Failure]:
        """INIT a new generation. then_idle: end in "idle" (may be frozen); otherwise stay "initializing"
        because an invoke follows at once (Lambda does not freeze between an on-demand INIT and its invoke)."""
        deadline = time.monotonic() + self.init_timeout_s
        exts, launch_error = self._scan_extensions()
        with self._cv:
            self._gen_counter += 1
            g = _Gen(self._gen_counter)
            self._gen = g
            self._state = "initializing"
            if launch_error:
                g.failure = _Failure(502, _compact({"errorType": "Extension.LaunchError", "errorMessage": launch_error}),
                                     "Extension.LaunchError")
                return g.failure
            for name, path in exts:
                g.exts[name] = _Ext(name=name, path=path)
            ext_env = self.extension_env()
            for name, path in exts:
                try:
                    argv0 = os.path.join(self.proc_opt, "extensions", name)
                    g.exts[name].proc = self._launch(g, name, self._in_ns([argv0]), ext_env)
                except OSError as exc:
                    g.failure = _Failure(502, _compact({"errorType": "Extension.LaunchError",
                                                        "errorMessage": f"{path}: {exc}"}), "Extension.LaunchError")
                    return g.failure
            # the runtime starts only once every extension has registered
            while g.failure is None and not all(e.registered for e in g.exts.values()):
                if not self._wait_until(deadline):
                    return self._init_timeout(g)
            if g.failure is not None:
                return g.failure
            try:
                g.runtime = _Runtime(self._launch(g, "runtime", self.runtime_argv(), self.runtime_env()))
            except OSError as exc:
                g.failure = _Failure(502, _compact({"errorType": "Runtime.InvalidEntrypoint", "errorMessage": str(exc)}),
                                     "Runtime.InvalidEntrypoint")
                return g.failure
            # INIT ends when the runtime and every extension have called next
            while g.failure is None and not (
                g.runtime.state == "ready" and all(e.state == "ready" for e in g.all_exts())
            ):
                if not self._wait_until(deadline):
                    return self._init_timeout(g)
            if g.failure is not None:
                return g.failure
            g.init_done = True
            if then_idle:
                self._state = "idle"
                self._cv.notify_all()
            return None

    def _wait_until(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._cv.wait(remaining)
        return True

    def _timeout_failure(self) -> _Failure:
        return _Failure(200, f"Task timed out after {self.timeout_s:.2f} seconds".encode(), "Sandbox.Timedout",
                        reason="Timeout", timed_out=True, content_type="text/plain")

    def _init_timeout(self, g: _Gen) -> _Failure:
        g.failure = self._timeout_failure()
        return g.failure

    # ------------------------------------------------------------------ INVOKE
    def invoke(
        self,
        payload: Any = None,
        *,
        raw: Optional[bytes] = None,
        trace_id: Optional[str] = None,
        client_context: Optional[str] = None,
        cognito_identity: Optional[str] = None,
        content_type: str = "application/json",
    ) -> InvokeResult:
        """Invoke the function once (INIT first if needed). Returns after the runtime answered and every
        INVOKE-subscribed extension called next again (or on timeout/failure, after the sandbox reset)."""
        self._require_open()
        if not self._op_lock.acquire(blocking=False):
            raise SandboxBusy("one invocation at a time per sandbox")
        try:
            return self._invoke(_compact({} if payload is None else payload) if raw is None else raw, trace_id, client_context,
                                cognito_identity, content_type)
        finally:
            self._op_lock.release()

    def _invoke(self, body: bytes, trace_id, client_context, cognito_identity, content_type) -> InvokeResult:
        self._require_open()
        t0 = time.monotonic()
        rid = str(uuid.uuid4())
        self.logs_store.append("sandbox", "sandbox", f"START RequestId: {rid} Version: {self.function_version}")
        init_ms = None
        with self._cv:
            g = self._gen
            idle_failure = g.idle_failure if (g is not None and self._state == "idle") else None
        if idle_failure is not None:
            # a process died while the sandbox was idle: this invoke fails, the next one re-runs INIT
            self._reset(idle_failure.reason)
            return self._failure_result(idle_failure, rid, t0, None)
        if self._state != "idle":
            fail = self._run_init(then_idle=False)
            init_ms = (time.monotonic() - t0) * 1000
            if fail is not None:
                self._reset(fail.reason)
                return self._failure_result(fail, rid, t0, init_ms)
        t_inv = time.monotonic()
        now_ms = int(time.time() * 1000)
        inv = _Invoke(id=rid, payload=body, deadline_ms=now_ms + int(self.timeout_s * 1000),
                      deadline_mono=t_inv + self.timeout_s, arn=self.arn, trace_id=trace_id,
                      client_context=client_context, cognito_identity=cognito_identity, content_type=content_type)
        with self._cv:
            g = self._gen
            self._hold_freeze = False
            self._thaw_locked()
            self._state = "invoking"
            g.invoke = inv
            g.runtime.pending = inv
            event = self._invoke_event(inv)
            for e in g.all_exts():
                if "INVOKE" in e.events and e.state not in ("exited", "init_error", "exit_error"):
                    e.queue.append(event)
                    e.invoke_pending = True
            self._cv.notify_all()
            timed_out = False
            while inv.failure is None and not (
                inv.response is not None and not any(e.invoke_pending for e in g.all_exts())
            ):
                if not self._wait_until(inv.deadline_mono):
                    timed_out = True
                    break
            if timed_out:
                inv.failure = self._timeout_failure()
            fail = inv.failure
            if fail is None:
                g.invoke = None
                self._state = "idle"
                self._maybe_freeze_locked()
        if fail is not None:
            self._reset(fail.reason)
            return self._failure_result(fail, rid, t0, init_ms, t_inv)
        status, rbody, ctype, etype = inv.response
        dur = (time.monotonic() - t_inv) * 1000
        self._report(rid, dur, init_ms)
        return InvokeResult(ok=etype is None and status == 200, status=status, body=rbody, error_type=etype,
                            duration_ms=dur, request_id=rid, init_duration_ms=init_ms, content_type=ctype)

    def _invoke_event(self, inv: _Invoke) -> Resp:
        ev: dict[str, Any] = {"eventType": "INVOKE", "deadlineMs": inv.deadline_ms, "requestId": inv.id,
                              "invokedFunctionArn": inv.arn}
        if inv.trace_id:
            ev["tracing"] = {"type": "X-Amzn-Trace-Id", "value": inv.trace_id}
        return Resp(200, _compact(ev), {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())})

    def _report(self, rid: str, dur: float, init_ms: Optional[float]) -> None:
        self.logs_store.append("sandbox", "sandbox", f"END RequestId: {rid}")
        init = f"Init Duration: {init_ms:.2f} ms\t" if init_ms is not None else ""
        self.logs_store.append("sandbox", "sandbox",
                               f"REPORT RequestId: {rid}\t{init}Duration: {dur:.2f} ms\tBilled Duration: "
                               f"{int(-(-dur // 1))} ms\tMemory Size: {self.memory_mb} MB\tMax Memory Used: "
                               f"{self.memory_mb} MB\t")

    def _failure_result(self, fail: _Failure, rid: str, t0: float, init_ms: Optional[float],
                        t_inv: Optional[float] = None) -> InvokeResult:
        dur = (time.monotonic() - (t_inv or t0)) * 1000
        if fail.timed_out:
            dur = min(dur, self.timeout_s * 1000)
        self._report(rid, dur, init_ms)
        return InvokeResult(ok=False, status=fail.status, body=fail.body, error_type=fail.error_type,
                            duration_ms=dur, request_id=rid, init_duration_ms=init_ms,
                            content_type=fail.content_type, timed_out=fail.timed_out)

    # ------------------------------------------------------------------ SHUTDOWN / reset / reclaim
    def shutdown(self, reason: str = "SandboxTerminated") -> ShutdownReport:
        """SIGTERM the runtime (SIGKILL at 600 ms), then SHUTDOWN (deadline = signal + 2000 ms) to extensions
        subscribed to it, SIGKILL unsubscribed ones at once and the rest at the deadline. Closes the sandbox."""
        if self._state == "closed":
            raise SandboxClosed(f"{self.name} is closed")
        with self._op_lock:
            try:
                return self._end(reason, reclaim=False)
            finally:
                self._teardown()

    def reclaim(self, graceful: Optional[bool] = None) -> ShutdownReport:
        """Destroy the sandbox like Lambda reclaiming a frozen environment: no FIN/RST reaches any peer for
        a connection still open. graceful (default: if an extension subscribed to SHUTDOWN) first runs the
        spin-down (runtime SIGTERM, SHUTDOWN, wait up to the deadline); whatever is still alive then is
        stopped, the network is cut (veth deleted), then everything is SIGKILLed. Needs netns=True."""
        if self._state == "closed":
            raise SandboxClosed(f"{self.name} is closed")
        if self._netns is None:
            raise SandboxError("reclaim() needs netns=True: killing a process that still has a network path "
                               "makes the kernel send FIN, which Lambda's reclaim never does")
        with self._op_lock:
            try:
                return self._end("SandboxTerminated", reclaim=True, graceful=graceful)
            finally:
                self._teardown()

    def _reset(self, reason: str) -> ShutdownReport:
        """Reset after a failure/timeout: like SHUTDOWN; the next invoke runs INIT again. Its report is kept
        in self.last_reset_report."""
        self.last_reset_report = self._end(reason, reclaim=False)
        return self.last_reset_report

    def _end(self, reason: str, reclaim: bool, graceful: Optional[bool] = None) -> ShutdownReport:
        t_sig = time.monotonic()
        budget = self.shutdown_budget_ms / 1000.0
        deadline_mono = t_sig + budget
        deadline_ms = int(time.time() * 1000) + self.shutdown_budget_ms
        report = ShutdownReport(reason=reason, deadline_ms=deadline_ms, reclaimed=reclaim)
        with self._cv:
            g = self._gen
            if g is None:
                if reclaim:
                    self._netns.cut()
                    report.reclaimed = True
                return report
            g.ending = True
            self._state = "resetting"
            subscribed = [e for e in g.exts.values()
                          if e.alive and "SHUTDOWN" in e.events and e.state not in ("init_error", "exit_error")]
            if graceful is None:
                graceful = bool(subscribed) or not reclaim
            if reclaim and not graceful:
                subscribed = []
            rt = g.runtime
            stopped: set[int] = set()
            if not reclaim:
                self._thaw_locked()
            else:
                # reclaim: whatever takes no part in the spin-down stays stopped (frozen) until the network
                # is cut; only the runtime and the SHUTDOWN subscribers (graceful phase) are thawed
                keep = {e.proc.pid for e in g.exts.values() if e.alive and e not in subscribed
                        and not (graceful and e.state in ("init_error", "exit_error"))}
                if rt is not None and rt.proc.alive and not graceful:
                    keep.add(rt.proc.pid)
                if not graceful:
                    stopped |= self._tree_pids_locked()
                else:
                    for pid in keep:
                        stopped |= procs.tree_pids([pid], [pid])
                procs.stop_and_wait(stopped)
                if self._frozen:
                    procs.signal_pids((self._tree_pids_locked() | self._frozen_pids) - stopped, signal.SIGCONT)
                self._frozen = False
                self._frozen_pids = set()
        ms = lambda t: (t - t_sig) * 1000 if t is not None else None  # noqa: E731

        def stop_tree(pid: int) -> None:  # reclaim: keep it from closing sockets while the network is up
            pids = procs.tree_pids([pid], [pid])
            procs.stop_and_wait(pids)
            stopped.update(pids)

        # 1. runtime: SIGTERM, SIGKILL at 30% of the budget (600 ms); SIGKILL at once when no extension
        #    registered (RIE). Reclaim without a graceful phase: leave it frozen for the final kill.
        if rt is not None and rt.proc.alive and (not reclaim or graceful):
            if not any(e.registered for e in g.all_exts()) and not reclaim:
                procs.signal_group(rt.proc.pid, signal.SIGKILL)
                report.runtime_killed = True
                rt.proc.exited.wait(5)
            else:
                procs.signal_group(rt.proc.pid, signal.SIGTERM)
                if not rt.proc.exited.wait(budget * RUNTIME_DEADLINE_SHARE):
                    report.runtime_killed = True
                    if reclaim:
                        stop_tree(rt.proc.pid)
                    else:
                        procs.signal_group(rt.proc.pid, signal.SIGKILL)
                        rt.proc.exited.wait(5)
        # 2. extensions: SHUTDOWN to subscribers, SIGKILL (reclaim: stop) the others
        waited: list[_Ext] = []
        with self._cv:
            event = Resp(200, _compact({"eventType": "SHUTDOWN", "deadlineMs": deadline_ms, "shutdownReason": reason}),
                         content_type="text/plain; charset=utf-8", kind="SHUTDOWN")
            for e in g.exts.values():
                rep = ExtensionShutdown(name=e.name, pid=e.proc.pid if e.proc else None,
                                        subscribed="SHUTDOWN" in e.events, exit_code=None, killed=False,
                                        delivered_ms=None, exit_after_delivery_ms=None, exited_ms=None)
                report.extensions[e.name] = rep
                if not e.alive:
                    continue
                if e in subscribed:
                    e.queue.append(event)
                    waited.append(e)
                elif e.state in ("init_error", "exit_error") and (not reclaim or graceful):
                    waited.append(e)  # it reported an error and is expected to exit by itself
                elif reclaim:
                    stop_tree(e.proc.pid)
                    rep.killed = True
                else:
                    procs.signal_group(e.proc.pid, signal.SIGKILL)
                    rep.killed = True
            self._cv.notify_all()
        for e in waited:
            remaining = deadline_mono - time.monotonic()
            if remaining > 0:
                e.proc.exited.wait(remaining)
        for e in waited:
            if e.alive:
                report.extensions[e.name].killed = True
                if reclaim:
                    stop_tree(e.proc.pid)
                else:
                    procs.signal_group(e.proc.pid, signal.SIGKILL)
        # 3. reclaim: cut the network, then kill everything
        if reclaim:
            self._netns.cut()
        with self._cv:
            leftovers = self._tree_pids_locked()
        procs.signal_pids(leftovers | stopped, signal.SIGKILL)
        for m in g.managed():
            m.exited.wait(5)
        # 4. report
        if rt is not None:
            report.runtime_exit_code = rt.proc.returncode
            report.runtime_exit_ms = ms(rt.proc.exited_at)
            if reclaim and rt.proc.returncode is not None and rt.proc.returncode == -signal.SIGKILL:
                report.runtime_killed = True
        for e in g.exts.values():
            rep = report.extensions[e.name]
            if e.proc is not None:
                rep.exit_code = e.proc.returncode
                rep.exited_ms = ms(e.proc.exited_at)
            if e.shutdown_delivered_at is not None:
                rep.delivered_ms = ms(e.shutdown_delivered_at)
                if e.proc is not None and e.proc.exited_at is not None:
                    rep.exit_after_delivery_ms = (e.proc.exited_at - e.shutdown_delivered_at) * 1000
        report.duration_ms = (time.monotonic() - t_sig) * 1000
        with self._cv:
            self._frozen = False
            self._frozen_pids = set()
            if self._gen is g:
                self._gen = None
            if self._state != "closed":
                self._state = "uninit"
            self._cv.notify_all()
        return report

    def _teardown(self) -> None:
        with self._cv:
            leftovers = self._tree_pids_locked() if self._gen is not None else set()
            self._state = "closed"
            g = self._gen
            self._gen = None
            self._cv.notify_all()
        _live.discard(self)
        if g is not None:  # only on an emergency path (atexit, failed shutdown): never leave processes behind
            procs.signal_pids(leftovers, signal.SIGKILL)
            for m in g.managed():
                procs.kill_group_and_wait(m)
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

    # ================================================================== API handlers (server threads)
    # --- Runtime API
    def rt_next(self) -> Resp:
        with self._cv:
            g = self._gen
            rt = g.runtime if g else None
            if rt is None:
                return DROP
            if rt.state == "running":
                return _forbidden("InvalidStateTransition", "State transition from Running to Ready failed for "
                                  "runtime. Error: State transition is not allowed")
            rt.state = "ready"
            g.registration_open = False
            self._cv.notify_all()
            self._maybe_freeze_locked()
            while rt.pending is None:
                # during a shutdown the runtime's next just hangs (it is being SIGTERMed), as with the RIE
                if self._gen is not g or self._state == "closed":
                    return DROP
                self._cv.wait()
            inv, rt.pending = rt.pending, None
            rt.state = "running"
            inv.delivered = True
            headers = {
                "Lambda-Runtime-Aws-Request-Id": inv.id,
                "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": inv.arn,
            }
            if inv.trace_id:
                headers["Lambda-Runtime-Trace-Id"] = inv.trace_id
            if inv.client_context:
                headers["Lambda-Runtime-Client-Context"] = inv.client_context
            if inv.cognito_identity:
                headers["Lambda-Runtime-Cognito-Identity"] = inv.cognito_identity
            return Resp(200, inv.payload, headers, content_type=inv.content_type or "application/json")

    def _rt_invocation(self, req_id: str) -> tuple[Optional[_Gen], Optional[_Invoke], Optional[Resp]]:
        g = self._gen
        inv = g.invoke if g else None
        if inv is None or req_id != inv.id:
            return g, None, Resp(400, _err("InvalidRequestID", "Invalid request ID"))
        if g.runtime is None or g.runtime.state != "running":
            name = {"responded": "RuntimeResponseSentState", "ready": "Ready"}.get(
                g.runtime.state if g.runtime else "", "Started")
            return g, inv, _forbidden("InvalidStateTransition",
                                      f"State transition from {name} to InvocationResponse failed for runtime. "
                                      "Error: State transition is not allowed")
        return g, inv, None

    def rt_response(self, req_id: str, body: bytes, content_type: Optional[str]) -> Resp:
        with self._cv:
            g, inv, err = self._rt_invocation(req_id)
            if err:
                return err
            g.runtime.state = "responded"
            if len(body) > MAX_PAYLOAD:
                msg = (f"Response payload size ({len(body)} bytes) exceeded maximum allowed payload size "
                       f"({MAX_PAYLOAD} bytes).")
                inv.response = (200, _compact({"errorMessage": msg, "errorType": "Function.ResponseSizeTooLarge"}),
                                "application/json", "Function.ResponseSizeTooLarge")
                self._cv.notify_all()
                return Resp(413, _err("RequestEntityTooLarge",
                                      f"Exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."))
            inv.response = (200, body, content_type or "application/json", None)
            self._cv.notify_all()
            return ACCEPTED

    def rt_error(self, req_id: str, body: bytes, error_type: Optional[str], content_type: Optional[str]) -> Resp:
        with self._cv:
            g, inv, err = self._rt_invocation(req_id)
            if err:
                return err
            g.runtime.state = "responded"
            etype = error_type or "Unhandled"
            try:
                parsed = json.loads(body)
                if isinstance(parsed, dict) and parsed.get("errorType"):
                    etype = str(parsed["errorType"])
            except ValueError:
                pass
            inv.response = (200, body, content_type or "application/json", etype)
            self._cv.notify_all()
            return ACCEPTED

    def rt_init_error(self, body: bytes, error_type: Optional[str]) -> Resp:
        with self._cv:
            g = self._gen
            rt = g.runtime if g else None
            if rt is None or g.init_done or rt.state != "started":
                return _forbidden("InvalidStateTransition", "State transition from Ready to InitError failed for "
                                  "runtime. Error: State transition is not allowed")
            rt.state = "init_error"
            etype = error_type or "Runtime.Unknown"
            if g.failure is None:
                g.failure = _Failure(502, body, etype)
            self._cv.notify_all()
            return ACCEPTED

    # --- Extensions API
    def _ext_by_header(self, ident: Optional[str]) -> tuple[Optional[_Gen], Optional[_Ext], Optional[Resp]]:
        if not ident:
            return None, None, _forbidden("Extension.MissingExtensionIdentifier",
                                          "Missing Lambda-Extension-Identifier header")
        try:
            key = str(uuid.UUID(ident))
        except ValueError:
            return None, None, _forbidden("Extension.InvalidExtensionIdentifier", "Invalid Lambda-Extension-Identifier")
        g = self._gen
        e = g.by_id.get(key) if g else None
        if e is None:
            return g, None, _forbidden("Extension.UnknownExtensionIdentifier", f"Unknown extension {key}")
        return g, e, None

    def ext_register(self, name: Optional[str], body: bytes, accept_feature: Optional[str]) -> Resp:
        if not name:
            return _forbidden("Extension.InvalidExtensionName", "Empty extension name")
        try:
            req = json.loads(body or b"null")
            if not isinstance(req, dict):
                raise ValueError("request body must be a JSON object")
            if req.get("configurationKeys"):
                raise ValueError("configurationKeys are deprecated; use environment variables instead")
            events = req.get("events") or []
            if not isinstance(events, list) or not all(isinstance(x, str) for x in events):
                raise ValueError("events must be a list of strings")
        except ValueError as exc:
            return _forbidden("InvalidRequestFormat", str(exc))
        with self._cv:
            g = self._gen
            if g is None or g.ending:
                return _forbidden("Extension.RegistrationClosed", "Extension registration closed already")
            ext = g.exts.get(name)
            if ext is not None:
                for ev in events:
                    if ev not in ("INVOKE", "SHUTDOWN"):
                        return _forbidden("Extension.InvalidEventType", f"{ev}: ErrorInvalidEventType")
                if ext.state != "launched":
                    state = {"init_error": "InitError", "exit_error": "ExitError"}.get(ext.state, "Registered")
                    return _forbidden("Extension.InvalidExtensionState",
                                      f"State transition from {state} to Registered failed for extension {name}. "
                                      "Error: State transition is not allowed")
            else:
                # not a file name in /opt/extensions: an *internal* extension (INVOKE only)
                for ev in events:
                    if ev == "SHUTDOWN":
                        return _forbidden("Extension.InvalidEventType",
                                          f"{ev}: ErrorEventNotSupportedForInternalAgent")
                    if ev != "INVOKE":
                        return _forbidden("Extension.InvalidEventType", f"{ev}: ErrorInvalidEventType")
                if not g.registration_open:
                    return _forbidden("Extension.RegistrationClosed", "Extension registration closed already")
                if name in g.internal:
                    return _forbidden("Extension.InvalidExtensionState", "Extension with this name already registered")
                ext = _Ext(name=name, path="", external=False)
                g.internal[name] = ext
            ext.id = str(uuid.uuid4())
            ext.events = set(events)
            ext.state = "registered"
            g.by_id[ext.id] = ext
            self._cv.notify_all()
            out: dict[str, Any] = {}
            if accept_feature and "accountId" in [f.strip() for f in accept_feature.split(",")]:
                out["accountId"] = ACCOUNT_ID
            out.update(functionName=self.function_name, functionVersion=self.function_version, handler="")
            return Resp(200, _compact(out), {"Lambda-Extension-Identifier": ext.id})

    def ext_next(self, ident: Optional[str]) -> Resp:
        with self._cv:
            g, e, err = self._ext_by_header(ident)
            if err:
                return err
            if e.state in ("init_error", "exit_error", "exited"):
                state = {"init_error": "InitError", "exit_error": "ExitError", "exited": "Exited"}[e.state]
                return _forbidden("Extension.InvalidExtensionState",
                                  f"State transition from {state} to Ready failed for extension {e.id}. "
                                  "Error: State transition is not allowed")
            e.state = "ready"
            e.invoke_pending = False
            self._cv.notify_all()
            self._maybe_freeze_locked()
            while not e.queue:
                if self._gen is not g or self._state == "closed":
                    return DROP
                self._cv.wait()
            ev = e.queue.popleft()
            e.state = "running"
            if ev.kind == "SHUTDOWN":
                e.shutdown_delivered_at = time.monotonic()
            return ev

    def _ext_error(self, ident: Optional[str], error_type: Optional[str], body: bytes, kind: str) -> Resp:
        with self._cv:
            g, e, err = self._ext_by_header(ident)
            if err:
                return err
            if not error_type:
                return _forbidden("Extension.MissingHeader", "Lambda-Extension-Function-Error-Type not found")
            target = "InitError" if kind == "init" else "Exited"
            allowed = ("registered",) if kind == "init" else ("registered", "ready", "running")
            if e.state not in allowed or (kind == "init" and g.init_done):
                state = {"init_error": "InitError", "exit_error": "ExitError", "ready": "Ready",
                         "running": "Running", "registered": "Registered"}.get(e.state, e.state)
                return _forbidden("Extension.InvalidExtensionState",
                                  f"State transition from {state} to {target} failed for extension {e.id}. "
                                  "Error: State transition is not allowed")
            e.state = "init_error" if kind == "init" else "exit_error"
            e.error_type = error_type
            e.invoke_pending = False
            message = f"Extension {e.name} reported {kind} error: {error_type}"
            try:
                parsed = json.loads(body)
                if isinstance(parsed, dict) and parsed.get("errorMessage"):
                    message = str(parsed["errorMessage"])
            except ValueError:
                pass
            fail = _Failure(502, _compact({"errorType": error_type, "errorMessage": message}), error_type)
            if not g.init_done:
                if g.failure is None:
                    g.failure = fail
            elif g.invoke is not None and g.invoke.failure is None:
                g.invoke.failure = fail
            elif g.idle_failure is None:
                g.idle_failure = fail
            self._cv.notify_all()
            return ACCEPTED

    def ext_init_error(self, ident, error_type, body) -> Resp:
        return self._ext_error(ident, error_type, body, "init")

    def ext_exit_error(self, ident, error_type, body) -> Resp:
        return self._ext_error(ident, error_type, body, "exit")
