"""The end of a sandbox's processes: SHUTDOWN (the RIE's SIGTERM flow), the reset after a failure or
timeout, and reclaim (Lambda destroying a frozen environment without a FIN reaching anyone) (mixed into
Sandbox).

SHUTDOWN: the runtime gets SIGTERM (SIGKILL at 30% of the budget, at once when no extension registered),
then every extension subscribed to SHUTDOWN gets the event with deadline = signal + budget; unsubscribed
ones are SIGKILLed at once, the rest at the deadline."""

from __future__ import annotations

import signal
import threading
import time
from typing import TYPE_CHECKING, Optional

from . import procs
from .results import ExtensionShutdown, SandboxClosed, SandboxError, ShutdownReport
from .state import TERMINATED, Ext, Generation, Resp, compact

if TYPE_CHECKING:
    from .control import ProcessControl
    from .netns import Netns

RUNTIME_DEADLINE_SHARE = 0.3  # RIE: the runtime gets 30% of the shutdown budget (600 ms of 2000 ms)


class ShutdownFlow:
    """shutdown / reclaim / reset (mixed into Sandbox)."""

    _cv: threading.Condition
    _op_lock: threading.Lock
    _gen: Optional[Generation]
    _state: str
    _frozen: bool
    _netns: Optional[Netns]
    _control: ProcessControl
    name: str
    shutdown_budget_ms: int
    last_reset_report: Optional[ShutdownReport]

    if TYPE_CHECKING:  # provided by the other parts of Sandbox
        def _rapid(self, message: str, level: str = "INFO") -> None: ...
        def _teardown(self) -> None: ...
        def _thaw_locked(self) -> None: ...
        def _tree_pids_locked(self) -> set[int]: ...

    def shutdown(self, reason: str = TERMINATED) -> ShutdownReport:
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
                return self._end(TERMINATED, reclaim=True, graceful=graceful)
            finally:
                self._teardown()

    def _reset(self, reason: str) -> ShutdownReport:
        """Reset after a failure/timeout: like SHUTDOWN; the next invoke runs INIT again. Its report is kept
        in self.last_reset_report."""
        self._rapid(f"Reset initiated: {reason}", "WARNING")
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
                # SIGSTOP first: a process frozen by the cgroup takes it when thawed, before it runs again
                procs.signal_pids(stopped, signal.SIGSTOP)
                if self._frozen:
                    self._control.thaw(keep_stopped=stopped)
                    self._frozen = False
                procs.stop_and_wait(stopped)
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
        waited: list[Ext] = []
        with self._cv:
            event = Resp(200, compact({"eventType": "SHUTDOWN", "deadlineMs": deadline_ms, "shutdownReason": reason}),
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
            if self._gen is g:
                self._gen = None
            if self._state != "closed":
                self._state = "uninit"
            self._cv.notify_all()
        return report
