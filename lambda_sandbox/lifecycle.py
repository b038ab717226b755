"""INIT and INVOKE of a sandbox, and what a process exiting on its own means for them (mixed into Sandbox).

INIT starts every extension, the runtime once all of them registered, and ends when the runtime and
every extension wait in next. An invoke hands the event to the runtime and to the INVOKE subscribers and
returns once the runtime answered and every subscriber called next again. Answers to failures follow the
RIE (state.Failure); after a failure or timeout the sandbox is reset and the next invoke runs INIT again.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Optional

from . import procs
from .environment import scan_extensions
from .logs import LogStore
from .results import InvokeResult, SandboxBusy, ShutdownReport
from .state import SPINDOWN, TIMEOUT, Ext, Failure, Generation, Invocation, Resp, Runtime, compact, exit_message

if TYPE_CHECKING:
    from .control import ProcessControl


class Lifecycle:
    """INIT / INVOKE (mixed into Sandbox)."""

    _cv: threading.Condition
    _op_lock: threading.Lock
    _gen: Optional[Generation]
    _gen_counter: int
    _state: str
    _hold_freeze: bool
    _control: ProcessControl
    logs_store: LogStore
    opt_dir: str
    task_dir: str
    timeout_s: float
    init_timeout_s: float
    function_version: str
    memory_mb: int
    arn: str
    initialization_type: str

    if TYPE_CHECKING:  # provided by the other parts of Sandbox
        def _require_open(self) -> None: ...
        def _reset(self, reason: str) -> ShutdownReport: ...
        def _thaw_locked(self) -> None: ...
        def _maybe_freeze_locked(self) -> None: ...
        def extension_env(self) -> dict[str, str]: ...
        def extension_argv(self, name: str) -> list[str]: ...
        def runtime_env(self) -> dict[str, str]: ...
        def runtime_argv(self) -> list[str]: ...

    # ------------------------------------------------------------------ processes
    def _launch(self, gen: Generation, name: str, argv: list[str], env: dict[str, str]) -> procs.Managed:
        return procs.launch(name, self._control.wrap(argv), cwd=self.task_dir, env=env, logs=self.logs_store,
                            on_exit=lambda m: self._on_exit(gen, m))

    def _on_exit(self, gen: Generation, m: procs.Managed) -> None:
        """A process of the sandbox exited. Outside a reset/shutdown that fails what is going on, the way
        the RIE does: INIT (502, empty body unless the runtime reported an init error), the current
        invocation, or, while idle, the next invocation."""
        with self._cv:
            self._cv.notify_all()
            if gen is not self._gen or gen.ending:
                return
            rt = gen.runtime
            if rt is not None and m is rt.proc:
                rt.state = "exited"
                error_type, message = "Runtime.ExitError", exit_message(m.returncode, runtime=True)
                init_failure = rt.init_error or Failure.empty(error_type)
                self._rapid(f"Process runtime-{gen.number} exited: {exit_message(m.returncode, runtime=None)}",
                            "WARNING")
            else:
                ext = next((e for e in gen.exts.values() if e.proc is m), None)
                if ext is None:
                    return
                self._rapid(f"Process extension-{ext.name}-{gen.number} exited: "
                            f"{exit_message(m.returncode, runtime=None)}", "WARNING")
                before, ext.state = ext.state, "exited"
                error_type = {"init_error": "Extension.InitError",
                              "exit_error": "Extension.ExitError"}.get(before, "Extension.Crash")
                message = exit_message(m.returncode, runtime=False)
                init_failure = Failure.empty(error_type)
            if not gen.init_done:
                if gen.failure is None:
                    gen.failure = init_failure
            elif gen.invoke is not None:
                gen.invoke.fail(error_type, message)
            elif gen.idle_failure is None:
                gen.idle_failure = (error_type, message)

    # ------------------------------------------------------------------ INIT
    def init(self, freeze_after: bool = False) -> Optional[InvokeResult]:
        """Run INIT now (normally lazy, at the first invoke). None on success, else the failing result
        (the sandbox is reset and the next invoke tries INIT again). Like an on-demand INIT whose invoke is
        still to come, the sandbox is not frozen before that invoke; freeze_after=True freezes it right
        after INIT instead and runs INIT as provisioned concurrency does (no CPU boost,
        AWS_LAMBDA_INITIALIZATION_TYPE=provisioned-concurrency)."""
        self._require_open()
        if not self._op_lock.acquire(blocking=False):
            raise SandboxBusy("another invoke/shutdown is running")
        try:
            if self._state == "idle":
                return None
            t0 = time.monotonic()
            with self._cv:
                self._hold_freeze = not freeze_after
            fail = self._run_init(then_idle=True, on_demand=not freeze_after)
            if fail is None:
                return None
            self._reset(fail.reason)
            return self._failure_result(fail, "", t0, None)
        finally:
            self._op_lock.release()

    def _run_init(self, then_idle: bool, on_demand: bool = True) -> Optional[Failure]:
        """INIT a new generation. then_idle: end in "idle" (may be frozen); otherwise stay "initializing"
        because an invoke follows at once (Lambda does not freeze between an on-demand INIT and its invoke)."""
        t0 = time.monotonic()
        deadline = t0 + self.init_timeout_s
        exts, launch_error = scan_extensions(self.opt_dir)
        with self._cv:
            self._gen_counter += 1
            g = Generation(self._gen_counter)
            self._gen = g
            self._state = "initializing"
            self._rapid(f"INIT START(type: {'on-demand' if on_demand else 'provisioned-concurrency'}, "
                        f"phase: {'init' if g.number == 1 else 'invoke'})")
            fail = self._init_locked(g, exts, launch_error, deadline, on_demand)
            self._rapid(f"INIT REPORT(durationMs: {(time.monotonic() - t0) * 1000:.6f})")
            if fail is not None:
                if g.number == 1:
                    fail.reason = SPINDOWN  # the RIE's first INIT runs (and fails) outside an invoke
                return fail
            g.init_done = True
            self._control.cpu_after_init()
            if then_idle:
                self._state = "idle"
                self._cv.notify_all()
            return None

    def _init_locked(self, g: Generation, exts: list[tuple[str, str]], launch_error: Optional[str],
                     deadline: float, on_demand: bool) -> Optional[Failure]:
        if launch_error:
            self._rapid(f"Init failed error={launch_error}", "ERROR")
            g.failure = Failure.empty("Extension.LaunchError")
            return g.failure
        self.initialization_type = "on-demand" if on_demand else "provisioned-concurrency"
        self._control.cpu_for_init(on_demand)
        for name, path in exts:
            g.exts[name] = Ext(name=name, path=path)
        ext_env = self.extension_env()
        for name, _path in exts:
            try:
                g.exts[name].proc = self._launch(g, name, self.extension_argv(name), ext_env)
            except OSError:
                g.failure = Failure.empty("Extension.LaunchError")
                return g.failure
        # the runtime starts only once every extension has registered
        while g.failure is None and not all(e.registered for e in g.exts.values()):
            if not self._wait_until(deadline):
                return self._init_timeout(g)
        if g.failure is not None:
            return g.failure
        try:
            g.runtime = Runtime(self._launch(g, "runtime", self.runtime_argv(), self.runtime_env()))
        except OSError:
            g.failure = Failure.empty("Runtime.InvalidEntrypoint")
            return g.failure
        # INIT ends when the runtime and every extension have called next
        while g.failure is None and not (
            g.runtime.state == "ready" and all(e.state == "ready" for e in g.all_exts())
        ):
            if not self._wait_until(deadline):
                return self._init_timeout(g)
        return g.failure

    def _wait_until(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._cv.wait(remaining)
        return True

    def _timeout_failure(self) -> Failure:
        return Failure(200, f"Task timed out after {self.timeout_s:.2f} seconds".encode(), "Sandbox.Timedout",
                       reason=TIMEOUT, timed_out=True, content_type="text/plain")

    def _init_timeout(self, g: Generation) -> Failure:
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
            body = compact({} if payload is None else payload) if raw is None else raw
            return self._invoke(body, trace_id, client_context, cognito_identity, content_type)
        finally:
            self._op_lock.release()

    def _invoke(self, body: bytes, trace_id: Optional[str], client_context: Optional[str],
                cognito_identity: Optional[str], content_type: str) -> InvokeResult:
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
            self._rapid(f"INVOKE START(requestId: {rid})")
            fail = Failure.exited(idle_failure[0], rid, idle_failure[1])
            self._reset(fail.reason)
            return self._failure_result(fail, rid, t0, None)
        if self._state != "idle":
            fail = self._run_init(then_idle=False)
            init_ms = (time.monotonic() - t0) * 1000
            if fail is not None:
                self._rapid(f"INVOKE START(requestId: {rid})")  # as the RIE logs it: the INIT was the invoke's
                self._reset(fail.reason)
                return self._failure_result(fail, rid, t0, init_ms)
        t_inv = time.monotonic()
        now_ms = int(time.time() * 1000)
        inv = Invocation(id=rid, payload=body, deadline_ms=now_ms + int(self.timeout_s * 1000),
                         deadline_mono=t_inv + self.timeout_s, arn=self.arn, trace_id=trace_id,
                         client_context=client_context, cognito_identity=cognito_identity, content_type=content_type)
        self._rapid(f"INVOKE START(requestId: {rid})")
        with self._cv:
            g = self._gen
            assert g is not None and g.runtime is not None
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
        assert inv.response is not None
        status, rbody, ctype, etype = inv.response
        dur = (time.monotonic() - t_inv) * 1000
        self._rapid(f"INVOKE RTDONE(status: success, produced bytes: 0, duration: {dur:.6f}ms)")
        self._report(rid, dur, init_ms)
        return InvokeResult(ok=etype is None and status == 200, status=status, body=rbody, error_type=etype,
                            duration_ms=dur, request_id=rid, init_duration_ms=init_ms, content_type=ctype)

    def _invoke_event(self, inv: Invocation) -> Resp:
        ev: dict[str, Any] = {"eventType": "INVOKE", "deadlineMs": inv.deadline_ms, "requestId": inv.id,
                              "invokedFunctionArn": inv.arn}
        if inv.trace_id:
            ev["tracing"] = {"type": "X-Amzn-Trace-Id", "value": inv.trace_id}
        return Resp(200, compact(ev), {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())})

    def _report(self, rid: str, dur: float, init_ms: Optional[float]) -> None:
        self.logs_store.append("sandbox", "sandbox", f"END RequestId: {rid}")
        init = f"Init Duration: {init_ms:.2f} ms\t" if init_ms is not None else ""
        # Lambda reports the peak memory of the environment (the RIE repeats the memory size)
        used = self._control.max_memory_used_mb() or self.memory_mb
        self.logs_store.append("sandbox", "sandbox",
                               f"REPORT RequestId: {rid}\t{init}Duration: {dur:.2f} ms\tBilled Duration: "
                               f"{int(-(-dur // 1))} ms\tMemory Size: {self.memory_mb} MB\tMax Memory Used: "
                               f"{used} MB\t")

    def _rapid(self, message: str, level: str = "INFO") -> None:
        """A line in the format of the RIE's own log (RieSandbox reads the same lines from a real RIE)."""
        now = time.time()
        stamp = time.strftime("%d %b %Y %H:%M:%S", time.gmtime(now)) + f",{int(now % 1 * 1000):03d}"
        self.logs_store.append("sandbox", "sandbox", f"{stamp} [{level}] (rapid) {message}")

    def _failure_result(self, fail: Failure, rid: str, t0: float, init_ms: Optional[float],
                        t_inv: Optional[float] = None) -> InvokeResult:
        if fail.timed_out:
            self._rapid(f"Invoke failed error=errResetReceived InvokeID={rid}", "ERROR")
        else:
            self._rapid(f"Invoke DONE failed: {fail.fatal}", "ERROR")
        dur = (time.monotonic() - (t_inv or t0)) * 1000
        if fail.timed_out:
            dur = min(dur, self.timeout_s * 1000)
        self._report(rid, dur, init_ms)
        return InvokeResult(ok=False, status=fail.status, body=fail.body, error_type=fail.error_type,
                            duration_ms=dur, request_id=rid, init_duration_ms=init_ms,
                            content_type=fail.content_type or "", timed_out=fail.timed_out)
