"""RieSandbox: the Sandbox API on top of a real `aws-lambda-rie` binary (AWS Runtime Interface Emulator).

The RIE insists on /opt/extensions and /var/task, so it runs in a private mount namespace
(`unshare -m --propagation private`, root only) in which opt_dir is bind-mounted on /opt, task_dir on
/var/task and a private directory on /tmp (like a container's own /tmp); host paths under /tmp the
processes need (this checkout, the runtime's virtualenv, the RIE binary's directory) are bound back into
it. Nothing changes for the rest of the machine (except that an empty /var/task mount point is created
if missing). Ports: the invoke endpoint and the Runtime API each get a free port on 127.0.0.1 (with
netns=True the RIE runs in its own network namespace and uses 8080/9001 there; the invoke endpoint is
reached on the sandbox-side veth address).

What the RIE tells only in its log is read from there: INIT duration (`INIT REPORT(durationMs: …)`), the
request id the runtime saw (`INVOKE START(requestId: …)`), which extensions subscribed to SHUTDOWN. Exit
codes of the RIE's children come from the kernel's process events (exitwatch.py); the SHUTDOWN delivery
time is not observable (None). Output of the RIE, the runtime and the extensions is one merged stream:
every line has source "rie" (wait_for_log/wait_for_json therefore ignore the source argument).

CPU and memory: with cgroups the RIE and everything it starts share one cgroup with the quota and limit
of memory_mb (at least one vCPU from the RIE's `INIT START` to its `INIT REPORT`, as Sandbox does).

freeze (off by default, the RIE never freezes) is approximated: after each invoke every process below the
RIE is SIGSTOPped (the RIE has answered, so the extensions already called next; the runtime may be stopped
just before its next call, which it makes after the thaw) and SIGCONTed before the next invoke/shutdown.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Optional

from . import exitwatch, procs
from .base import SandboxBase
from .control import ProcessControl
from .environment import host_paths_under_tmp
from .logs import LogRecord
from .netns import Netns
from .results import (
    ExtensionShutdown,
    InvokeResult,
    Resources,
    SandboxBusy,
    SandboxClosed,
    SandboxError,
    SandboxUnsupported,
    ShutdownReport,
)
from .shutdown import RUNTIME_DEADLINE_SHARE

INVOKE_PATH = "/2015-03-31/functions/function/invocations"
# lines of the RIE's own log RieSandbox reads
INIT_START = re.compile(r"\(rapid\) INIT START\(")
INIT_REPORT = re.compile(r"\(rapid\) INIT REPORT\(durationMs: ([0-9.]+)\)")
INVOKE_START = re.compile(r"\(rapid\) INVOKE START\(requestId: ([0-9a-f-]+)\)")
INVOKE_OVER = re.compile(r"\(rapid\) (INVOKE RTDONE|Invoke DONE failed|Invoke failed|Init failed)")
SUBSCRIBED = re.compile(r"\(rapid\) External agent (\S+) \([0-9a-f-]+\) registered, subscribed to \[([A-Z ]*)\]")
MOUNT_SCRIPT = (
    'opt="$1"; task="$2"; tmp="$3"; shift 3; '
    "mkdir -p /opt /var/task && "
    'mount --bind "$opt" /opt && mount --bind "$task" /var/task && '
    # host paths under /tmp still needed (see host_paths_under_tmp) are bound back into the private /tmp
    'mount --bind /tmp /mnt && mount --bind "$tmp" /tmp && '
    'while [ "$1" != "--" ]; do mkdir -p "$1" && mount --bind "/mnt${1#/tmp}" "$1" || exit 1; shift; done && '
    'shift && umount -l /mnt && cd /var/task && exec "$@"'
)


_live: weakref.WeakSet[RieSandbox] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for sb in list(_live):
        try:
            sb._teardown()
        except Exception:
            pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parse_rie_response(status: int, body: bytes, timeout_s: float) -> tuple[bool, Optional[str], bool]:
    """(ok, error_type, timed_out) from what the RIE's invoke endpoint answered."""
    if body.startswith(b"Task timed out after"):
        return False, "Sandbox.Timedout", True
    if status != 200:
        try:
            obj = json.loads(body)
            if isinstance(obj, dict) and obj.get("errorType"):
                return False, str(obj["errorType"]), False
        except ValueError:
            pass
        return False, None, False
    try:
        obj = json.loads(body)
    except ValueError:
        return True, None, False
    if isinstance(obj, dict) and "errorType" in obj and "errorMessage" in obj and set(obj) <= {
        "errorType", "errorMessage", "requestId", "stackTrace", "cause"}:
        return False, str(obj["errorType"]), False
    return True, None, False


class RieSandbox(SandboxBase):
    """Same Python API as Sandbox, backed by `aws-lambda-rie` (root only). Not there: init() (the RIE runs
    INIT only at an invoke) and, in the RIE itself, freeze and reclaim (both done from outside here)."""

    merged_sources = True  # the RIE writes every process's output to one stream

    def __init__(
        self,
        rie_binary: str,
        opt_dir: str,
        task_dir: str,
        handler: str = "app.handler",
        *,
        env: Optional[dict[str, str]] = None,
        timeout_s: float = 10,
        memory_mb: int = 3008,
        function_name: str = "test_function",
        function_version: str = "$LATEST",
        region: str = "us-east-1",
        python: Optional[str] = None,
        runtime_cmd: Optional[list[str]] = None,
        freeze: bool = False,
        netns: bool = False,
        shutdown_budget_ms: int = 2000,
        name: Optional[str] = None,
        on_log: Optional[Callable[[LogRecord], None]] = None,
        rie_port: Optional[int] = None,
        api_port: Optional[int] = None,
        log_level: Optional[str] = None,
        cgroups: Optional[bool] = None,
    ) -> None:
        self.rie_binary = (os.path.abspath(rie_binary) if os.sep in rie_binary
                           else (shutil.which(rie_binary) or rie_binary))
        self._set_function(opt_dir, task_dir, handler, env, timeout_s, memory_mb, function_name, function_version,
                           region, python, runtime_cmd, freeze, netns, shutdown_budget_ms, self._watch_log(on_log))
        self.name = name or f"rie-{os.getpid()}-{id(self):x}"
        self.log_level = log_level
        self._rie_port = rie_port
        self._api_port = api_port
        self._netns: Optional[Netns] = None
        self.private_tmp: Optional[str] = None
        self._proc: Optional[procs.Managed] = None
        self._op_lock = threading.Lock()
        self._state = "new"
        self._frozen_pids: set[int] = set()
        self.freeze_count = 0
        self._control = ProcessControl(memory_mb, cgroups)
        self._subscriptions: dict[str, set[str]] = {}

    def _watch_log(self, on_log: Optional[Callable[[LogRecord], None]]) -> Callable[[LogRecord], None]:
        """What RieSandbox learns from the RIE's log as it is written: INIT phases (CPU quota) and which
        extension subscribed to what."""

        def watch(rec: LogRecord) -> None:
            line = rec.line
            if "(rapid)" in line:
                m = SUBSCRIBED.search(line)
                if m:
                    self._subscriptions[m.group(1)] = set(m.group(2).split())
                elif INIT_START.search(line):
                    self._control.cpu_for_init(on_demand=True)
                elif INIT_REPORT.search(line):
                    self._control.cpu_after_init()
            if on_log is not None:
                on_log(rec)

        return watch

    # ------------------------------------------------------------------ command line (unit-tested)
    def ports(self) -> tuple[int, int]:
        if self.use_netns:  # own namespace: the RIE's defaults cannot collide with anything
            return self._rie_port or 8080, self._api_port or 9001
        if self._rie_port is None:
            self._rie_port = free_port()
        if self._api_port is None:
            self._api_port = free_port()
            while self._api_port == self._rie_port:
                self._api_port = free_port()
        return self._rie_port, self._api_port

    def runtime_command(self) -> list[str]:
        """The runtime command given to the RIE (its last element must be the handler). PYTHONPATH is set
        for the runtime only (/var/task, /opt/python like Lambda); the exec wrapper is honoured the way the
        base images' bootstrap does it (the RIE alone ignores AWS_LAMBDA_EXEC_WRAPPER)."""
        cmd = list(self.runtime_cmd) if self.runtime_cmd else [self.python, "-m", "awslambdaric", self.handler]
        wrapper = self.env.get("AWS_LAMBDA_EXEC_WRAPPER")
        if wrapper:
            cmd = [wrapper] + cmd
        pythonpath = ["/var/task"]
        if os.path.isdir(os.path.join(self.opt_dir, "python")):
            pythonpath.append("/opt/python")
        return ["/usr/bin/env", "PYTHONPATH=" + ":".join(pythonpath)] + cmd

    def command(self) -> list[str]:
        """The RIE's command line: loopback only (its own default would listen on 0.0.0.0:8080)."""
        rie_port, api_port = self.ports()
        listen = "0.0.0.0" if self.use_netns else "127.0.0.1"
        rie = [self.rie_binary, "--runtime-interface-emulator-address", f"{listen}:{rie_port}",
               "--runtime-api-address", f"127.0.0.1:{api_port}"]
        if self.log_level:
            rie += ["--log-level", self.log_level]
        tmp = self.private_tmp or "<private /tmp dir, created by start()>"
        bind_back = host_paths_under_tmp(self.python, os.path.dirname(self.rie_binary))
        argv = ["unshare", "-m", "--propagation", "private", "--", "/bin/sh", "-c", MOUNT_SCRIPT, "lsb-rie",
                self.opt_dir, self.task_dir, tmp, *bind_back, "--"] + rie + self.runtime_command()
        if self._netns is not None:
            argv = self._netns.exec_prefix() + argv
        return argv

    def environment(self) -> dict[str, str]:
        """The RIE's environment; it forwards all of it to the function (and, minus _* names, to extensions)."""
        env = {
            "PATH": f"{os.path.dirname(self.python)}:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "AWS_ACCESS_KEY_ID": "ASIALAMBDASANDBOXKEY",
            "AWS_SECRET_ACCESS_KEY": "lambda-sandbox-dummy-secret",
            "AWS_SESSION_TOKEN": "lambda-sandbox-dummy-session-token",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": self.function_version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(int(self.timeout_s)),
        }
        env.update(self.env)
        env.pop("AWS_LAMBDA_MAX_CONCURRENCY", None)  # would switch the RIE to Managed Instances mode
        return env

    @property
    def invoke_url(self) -> str:
        host = self._netns.sandbox_address if self._netns else "127.0.0.1"
        return f"http://{host}:{self.ports()[0]}{INVOKE_PATH}"

    @property
    def host_address(self) -> str:
        return self._netns.host_address if self._netns else "127.0.0.1"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> RieSandbox:
        if self._state != "new":
            return self
        if os.geteuid() != 0:
            raise SandboxError("RieSandbox needs root (unshare -m and bind mounts on /opt and /var/task)")
        if not os.path.exists(self.rie_binary):
            raise SandboxError(f"aws-lambda-rie not found: {self.rie_binary}")
        self.private_tmp = tempfile.mkdtemp(prefix="lsb-rie-tmp-")
        os.chmod(self.private_tmp, 0o1777)
        _live.add(self)
        try:
            exitwatch.shared()  # listening before any process of the sandbox can exit
            self._control.setup()
            if self.use_netns:
                self._netns = Netns()
            self._proc = procs.launch("rie", self._control.wrap(self.command()), cwd="/", env=self.environment(),
                                      logs=self.logs_store, on_exit=lambda m: None)
            self._state = "running"
            self._wait_listening(10.0)
        except BaseException:
            self._teardown()
            raise
        return self

    def _wait_listening(self, timeout: float) -> None:
        host = self._netns.sandbox_address if self._netns else "127.0.0.1"
        port = self.ports()[0]
        deadline = time.monotonic() + timeout
        assert self._proc is not None
        while time.monotonic() < deadline:
            if not self._proc.alive:
                raise SandboxError(f"aws-lambda-rie exited with {self._proc.returncode}: "
                                   + " | ".join(r.line for r in self.logs_store.records[-10:]))
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                return
            except OSError:
                self._proc.exited.wait(0.02)  # polling a port: there is no readiness signal to wait on
        raise SandboxError(f"aws-lambda-rie did not listen on {host}:{port} within {timeout}s")

    def init(self, freeze_after: bool = False) -> None:
        raise SandboxUnsupported("the RIE runs INIT only at an invoke (its first INIT is part of the first "
                                 "invoke); it has no INIT of its own")

    def close(self) -> None:
        if self._state == "closed":
            return
        try:
            if self._state == "running":
                self.shutdown()
        finally:
            self._teardown()

    def _teardown(self) -> None:
        self._state = "closed"
        _live.discard(self)
        if self._proc is not None and self._proc.alive:
            procs.signal_pids(self._tree() | {self._proc.pid}, signal.SIGKILL)
            self._proc.exited.wait(5)
        leftovers = self._control.pids()
        if leftovers:
            procs.signal_pids(leftovers, signal.SIGKILL)
        self._control.remove()
        self._remove_netns_and_tmp()

    # ------------------------------------------------------------------ processes
    def _tree(self) -> set[int]:
        """Every process below the RIE (not the RIE itself)."""
        if self._proc is None or not self._proc.alive:
            return set()
        rie = self._proc.pid
        table = procs.scan()
        children: dict[int, list[int]] = {}
        for p, i in table.items():
            children.setdefault(i.ppid, []).append(p)
        out, stack = set(), [rie]
        while stack:
            for c in children.get(stack.pop(), ()):
                if c not in out:
                    out.add(c)
                    stack.append(c)
        if self._netns is not None and self._netns.inode is not None:
            out |= procs.pids_in_netns(self._netns.inode)
        out |= self._control.pids()
        out.discard(rie)
        return {p for p in out if p in table and table[p].state != "Z"}

    def pids(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for pid in self._tree():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                continue
            if "awslambdaric" in argv and "runtime" not in out:
                out["runtime"] = pid
                continue
            for a in argv:
                if a.startswith("/opt/extensions/"):
                    name = a[len("/opt/extensions/"):]
                    if "/" not in name and (name not in out or pid < out[name]):
                        out[name] = pid
        return out

    def all_pids(self) -> set[int]:
        return self._tree()

    @property
    def frozen(self) -> bool:
        return bool(self._frozen_pids)

    @property
    def freeze_mechanism(self) -> Optional[str]:
        """"sigstop" with freeze=True (an approximation from outside: the RIE never freezes), else None."""
        return "sigstop" if self.freeze else None

    @property
    def resources(self) -> Resources:
        return self._control.resources()

    def cpu_time_s(self) -> Optional[float]:
        """CPU seconds used by the RIE and everything it ran (None without cgroups)."""
        return self._control.cpu_time_s()

    def wait_frozen(self, timeout: float = 5.0) -> bool:
        return self.frozen  # the approximated freeze happens before invoke() returns

    def _freeze(self) -> None:
        pids = self._tree()
        procs.stop_and_wait(pids)
        self._frozen_pids = pids
        self.freeze_count += 1

    def _thaw(self) -> None:
        procs.signal_pids(self._frozen_pids, signal.SIGCONT)
        self._frozen_pids = set()

    # ------------------------------------------------------------------ invoke
    def invoke(self, payload: Any = None, *, raw: Optional[bytes] = None, trace_id: Optional[str] = None,
               client_context: Optional[str] = None, cognito_identity: Optional[str] = None,
               content_type: str = "application/json") -> InvokeResult:
        if self._state == "closed":
            raise SandboxClosed(self.name)
        self.start()
        if not self._op_lock.acquire(blocking=False):
            raise SandboxBusy("the RIE cannot take overlapping invokes")
        try:
            self._thaw()
            body = json.dumps(payload).encode() if raw is None else raw
            host = self._netns.sandbox_address if self._netns else "127.0.0.1"
            headers = {"Content-Type": content_type}
            if trace_id:
                headers["X-Amzn-Trace-Id"] = trace_id
            mark = self.log_mark()
            t0 = time.monotonic()
            conn = http.client.HTTPConnection(host, self.ports()[0], timeout=self.timeout_s * 2 + 30)
            try:
                conn.request("POST", INVOKE_PATH, body=body, headers=headers)
                resp = conn.getresponse()
                rbody = resp.read()
                status = resp.status
                ctype = resp.getheader("Content-Type") or ""
            finally:
                conn.close()
            dur = (time.monotonic() - t0) * 1000
            ok, etype, timed_out = parse_rie_response(status, rbody, self.timeout_s)
            request_id, init_ms = self._invoke_facts(mark)
            if self.freeze:
                self._freeze()
            return InvokeResult(ok=ok, status=status, body=rbody, error_type=etype, duration_ms=dur,
                                request_id=request_id, init_duration_ms=init_ms, content_type=ctype,
                                timed_out=timed_out)
        finally:
            self._op_lock.release()

    def _invoke_facts(self, mark: int) -> tuple[str, Optional[float]]:
        """(request id the runtime saw, INIT duration if this invoke ran INIT) from the RIE's log. The RIE
        writes those lines before it answers; they are read from its pipe asynchronously, so the end of the
        invoke (or of INIT, when INIT failed) is waited for briefly."""
        try:
            self.wait_for_log(lambda _s, line: bool(INVOKE_OVER.search(line)), timeout=2.0, since=mark)
        except TimeoutError:
            pass
        request_id, init_ms = "", None
        for _src, line in self.logs[mark:]:
            m = INVOKE_START.search(line)
            if m and not request_id:
                request_id = m.group(1)
            m = INIT_REPORT.search(line)
            if m:
                init_ms = (init_ms or 0.0) + float(m.group(1))
        return request_id, init_ms

    # ------------------------------------------------------------------ shutdown / reclaim
    def shutdown(self, reason: str = "SandboxTerminated") -> ShutdownReport:
        """SIGTERM to the RIE: it runs the SHUTDOWN flow itself (reason SandboxTerminated) and exits."""
        if self._state == "closed":
            raise SandboxClosed(self.name)
        with self._op_lock:
            try:
                return self._sigterm_flow(cut_at=None)
            finally:
                self._teardown()

    def reclaim(self, graceful: Optional[bool] = None) -> ShutdownReport:
        """Needs netns=True. graceful (default True): SIGTERM the RIE (SHUTDOWN to extensions) and wait until
        the extensions exit or ~the deadline; then stop everything, cut the network, SIGKILL. The RIE itself
        SIGKILLs unsubscribed extensions right away, while the network is still up."""
        if self._state == "closed":
            raise SandboxClosed(self.name)
        if self._netns is None:
            raise SandboxError("reclaim() needs netns=True")
        assert self._proc is not None
        with self._op_lock:
            try:
                if graceful is False:
                    t0 = time.monotonic()
                    pids = self._tree() | {self._proc.pid}
                    procs.stop_and_wait(pids)
                    self._netns.cut()
                    procs.signal_pids(pids, signal.SIGKILL)
                    self._proc.exited.wait(5)
                    return ShutdownReport(reason="SandboxTerminated", deadline_ms=int(time.time() * 1000),
                                          duration_ms=(time.monotonic() - t0) * 1000, reclaimed=True)
                return self._sigterm_flow(cut_at=self.shutdown_budget_ms / 1000.0 - 0.1)
            finally:
                self._teardown()

    def _sigterm_flow(self, cut_at: Optional[float]) -> ShutdownReport:
        assert self._proc is not None
        self._thaw()
        names = self.pids()
        watch: dict[str, int] = {}
        for n, pid in names.items():
            try:
                watch[n] = os.pidfd_open(pid)
            except OSError:
                pass
        t_sig = time.monotonic()
        deadline_ms = int(time.time() * 1000) + self.shutdown_budget_ms
        procs.signal_pids([self._proc.pid], signal.SIGTERM)
        exited_at: dict[str, float] = {}
        end = t_sig + (cut_at if cut_at is not None else self.shutdown_budget_ms / 1000.0 + 1.0)
        pending = dict(watch)
        while pending and time.monotonic() < end:
            ready, _, _ = select.select(list(pending.values()), [], [], max(0.0, end - time.monotonic()))
            now = time.monotonic()
            for n, fd in list(pending.items()):
                if fd in ready:
                    exited_at[n] = now
                    del pending[n]
        if cut_at is not None:
            assert self._netns is not None
            pids = self._tree() | {self._proc.pid}
            procs.stop_and_wait(pids)
            self._netns.cut()
            procs.signal_pids(pids, signal.SIGKILL)
        self._proc.exited.wait(self.shutdown_budget_ms / 1000.0 + 5)
        for fd in watch.values():
            os.close(fd)
        watcher = exitwatch.shared()
        codes = {n: (watcher.returncode(pid) if watcher is not None and n in exited_at else None)
                 for n, pid in names.items()}
        budget_ms = self.shutdown_budget_ms
        report = ShutdownReport(reason="SandboxTerminated", deadline_ms=deadline_ms, reclaimed=cut_at is not None,
                                duration_ms=(time.monotonic() - t_sig) * 1000)
        for n, pid in names.items():
            ms = (exited_at[n] - t_sig) * 1000 if n in exited_at else None
            code = codes[n]
            if n == "runtime":
                report.runtime_exit_ms = ms
                report.runtime_exit_code = code
                report.runtime_killed = (code == -signal.SIGKILL if code is not None
                                         else ms is None or ms >= budget_ms * RUNTIME_DEADLINE_SHARE - 5)
                continue
            events = self._subscriptions.get(n)
            report.extensions[n] = ExtensionShutdown(
                name=n, pid=pid, subscribed=None if events is None else "SHUTDOWN" in events, exit_code=code,
                killed=code == -signal.SIGKILL if code is not None else (ms is None or ms >= budget_ms - 20),
                delivered_ms=None, exit_after_delivery_ms=None, exited_ms=ms)
        return report
