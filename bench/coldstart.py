"""Cold start and shutdown of the real extension, run by us in the project's Lambda sandbox
(lambda_sandbox.Sandbox, no-op function, freeze off):

  spawn -> registered -> serving -> upstream ready   wall ms, from the extension's log `ts`
                                                     against our clock just before Sandbox.init()
                                                     (which forks the launcher at once)
  CPU ms at upstream ready                           schedstat of all threads (+ /proc stat ticks)
  VmHWM / VmRSS at upstream ready
  SHUTDOWN delivered -> upstream gone SERVER-side    polling SHOW PROCESSLIST from another process
                                                     for the upstream's connection id (and the
                                                     connection count), timestamps on CLOCK_MONOTONIC
  SHUTDOWN delivered -> process exit                 the sandbox's ShutdownReport

and the import time of the launcher's chain, measured in fresh interpreters as the launcher runs
them (`python -I -S`, -B so nothing is written), best of N:
  before registering: the bootstrap's PyMySQL arrangement + `import dbkeeper.main`;
  after: dbkeeper.event_pump, dbkeeper.lifecycle, uvloop
both as shipped and for the alternative layer (see alternative_layer: the same tree with .pyc
removed if it ships them, compiled if it does not), so the worth of shipping bytecode stays visible.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lambda_sandbox import Sandbox
from tests.dbkeeper_process import EXTENSION, NOOP_TASK, extension_python
from tests.mariadb import free_port

from . import procstat
from .stats import summary

REPO = Path(__file__).resolve().parent.parent

_POLL_DEADLINE = 3.0


class ServerSideWatch:
    """Runs bench/watch_conn.py (its own process) to see when the server drops a connection."""

    def __init__(self, db, connection_id: int):
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.watch_conn", db.socket, str(connection_id),
                                      str(_POLL_DEADLINE)], cwd=str(REPO), stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"watcher did not start: {line!r}")
        self.polls: list = []
        self.gone: tuple[float, float] | None = None  # (last poll that saw it: before, first without: after)
        self.error: str | None = None

    def join(self, timeout: float) -> None:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            self.error = "watcher timed out"
            return
        self.polls = json.loads(out.strip().splitlines()[-1])["polls"]
        if not self.polls[0][2]:
            self.error = "connection not in PROCESSLIST before SHUTDOWN"
        elif self.polls[-1][2]:
            self.error = f"still connected {_POLL_DEADLINE}s later"
        else:
            self.gone = (self.polls[-2][0], self.polls[-1][1])

    def threads_drop_at(self) -> float | None:
        """When the server's connection count (SHOW PROCESSLIST rows) first fell below its value at
        the start (after-time of that poll)."""
        if not self.polls:
            return None
        start = self.polls[0][3]
        for _before, after, _present, threads in self.polls:
            if threads < start:
                return after
        return None


def _json_lines(sandbox: Sandbox) -> list[tuple[float, dict]]:
    out = []
    for record in sandbox.log_records:
        if record.source == EXTENSION and record.line.startswith("{"):
            try:
                out.append((record.ts, json.loads(record.line)))
            except ValueError:
                pass
    return out


def one_cold_start(layer: Path, db, log_level: str = "info", extra_env: dict | None = None) -> dict:
    """`extra_env`: settings on top of the database's (bench/aws.py: the AWS features)."""
    workdir = tempfile.mkdtemp(prefix="dbkc-", dir="/tmp")
    env = {**db.db_env(), "DBKEEPER_LISTEN_PORT": str(free_port()),
           "DBKEEPER_SOCKET": os.path.join(workdir, "dbkeeper.sock"),
           "DBKEEPER_PYTHON": extension_python(), "DBKEEPER_LOG_LEVEL": log_level, **(extra_env or {})}
    sandbox = Sandbox(str(layer), str(NOOP_TASK), "app.handler", env=env, freeze=False, timeout_s=15)
    result: dict = {}
    try:
        sandbox.start()
        offset = time.time() - time.monotonic()  # extension `ts` (wall) -> our monotonic clock
        t0 = time.monotonic()
        failure = sandbox.init()
        init_done = time.monotonic()
        if failure is not None:
            raise RuntimeError(f"INIT failed: {failure}")
        connected = sandbox.wait_for_json(EXTENSION, lambda line: line.get("event") == "upstream_connected",
                                          timeout=10)
        pid = sandbox.pids()[EXTENSION]
        cpu_sched = procstat.cpu_ns(pid)
        cpu_ticks = procstat.cpu_ticks_ns(pid)
        memory = procstat.memory_kb(pid)
        events = {line["event"]: line for _, line in _json_lines(sandbox)}
        since = lambda ev: (events[ev]["ts"] - offset - t0) * 1000 if ev in events else None  # noqa: E731
        result.update(
            spawn_to_registered_ms=since("registered"),
            main_to_registered_ms=events["registered"].get("ms"),
            spawn_to_serving_ms=since("serving"),
            spawn_to_upstream_ready_ms=since("upstream_connected"),
            upstream_connect_ms=connected.get("ms"),
            init_wall_ms=(init_done - t0) * 1000,
            cpu_at_ready_ms=cpu_sched / 1e6,
            cpu_ticks_at_ready_ms=cpu_ticks / 1e6,
            vm_hwm_kb=memory.get("VmHWM"), vm_rss_kb=memory.get("VmRSS"),
            rss_anon_kb=memory.get("RssAnon"), rss_file_kb=memory.get("RssFile"),
        )
        result["pre_main_ms"] = result["spawn_to_registered_ms"] - (result["main_to_registered_ms"] or 0)

        watch = ServerSideWatch(db, connected["connection_id"])
        t_call = time.monotonic()
        report = sandbox.shutdown()
        watch.join(_POLL_DEADLINE + 1)
        ext = report.extensions.get(EXTENSION)
        complete = next((line for _, line in _json_lines(sandbox) if line.get("event") == "shutdown_complete"), {})
        if ext is not None and ext.delivered_ms is not None and complete.get("ts"):
            # the emulator's API hop: our delivery stamp -> the extension's own receipt of SHUTDOWN
            received = complete["ts"] - offset - (complete.get("ms_since_event") or 0) / 1000
            result["shutdown_delivery_to_extension_ms"] = (received - (t_call + ext.delivered_ms / 1000)) * 1000
        result.update(shutdown_killed=ext.killed if ext else None, exit_code=ext.exit_code if ext else None,
                      shutdown_exit_after_delivery_ms=ext.exit_after_delivery_ms if ext else None,
                      shutdown_complete_ms_since_event=complete.get("ms_since_event"),
                      upstreams_closed=complete.get("upstreams_closed"), watch_error=watch.error,
                      watch_polls=len(watch.polls))
        if ext is not None and ext.delivered_ms is not None and watch.gone is not None:
            delivered = t_call + ext.delivered_ms / 1000
            result["shutdown_to_server_closed_ms"] = (watch.gone[1] - delivered) * 1000  # upper bound
            result["shutdown_to_server_closed_lo_ms"] = (watch.gone[0] - delivered) * 1000
            drop = watch.threads_drop_at()
            result["shutdown_to_threads_drop_ms"] = (drop - delivered) * 1000 if drop else None
            intervals = [after - before for before, after, _, _ in watch.polls]
            result["poll_interval_us"] = sum(intervals) / len(intervals) * 1e6
    finally:
        try:
            sandbox.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _has_own_pyc(lib: Path) -> bool:
    """Does the layer ship bytecode for the interpreter the extension runs on?"""
    tag = sys.implementation.cache_tag  # e.g. cpython-311 (the bench runs on the same interpreter)
    return any(lib.rglob(f"*.{tag}.pyc"))


def alternative_layer(layer: Path) -> tuple[Path, str]:
    """The A/B counterpart of the layer for cold start and imports: if it ships .pyc, a copy without
    them ("without_pyc"); otherwise a compileall'd copy ("with_pyc"). The caller removes it."""
    target = Path(tempfile.mkdtemp(prefix="dbkb-alt-", dir="/tmp")) / "opt"
    shutil.copytree(layer, target, symlinks=True)
    lib = target / "dbkeeper" / "lib"
    if _has_own_pyc(lib):
        for cache in list(lib.rglob("__pycache__")):
            shutil.rmtree(cache)
        return target, "without_pyc"
    subprocess.run([extension_python(), "-m", "compileall", "-q", "-j0", str(lib)], check=True,
                   stdout=subprocess.DEVNULL)
    return target, "with_pyc"


def _summaries(samples: list[dict]) -> dict:
    keys = [k for k, v in samples[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: summary([s[k] for s in samples if s.get(k) is not None]) for k in keys}


def cold_starts(layer: Path, db, runs: int, progress=print) -> dict:
    """`runs` cold starts of the layer as shipped, interleaved with as many of its alternative
    (see alternative_layer: with .pyc if it ships none, without if it does)."""
    started = time.monotonic()
    other, label = alternative_layer(layer)
    progress(f"cold start: {runs} x 2 (as shipped / {label}), spawn -> registered -> upstream ready -> SHUTDOWN ...")
    try:
        variants = {"as_shipped": layer, label: other}
        for tree in variants.values():
            one_cold_start(tree, db)  # warm-up: page cache
        samples: dict[str, list[dict]] = {name: [] for name in variants}
        for _ in range(runs):
            for name, tree in variants.items():
                samples[name].append(one_cold_start(tree, db))
    finally:
        shutil.rmtree(other.parent, ignore_errors=True)
    progress(f"  {time.monotonic() - started:.1f} s")
    return {"runs": samples["as_shipped"], "summary": _summaries(samples["as_shipped"]),
            "alternative": {"label": label, "runs": samples[label], "summary": _summaries(samples[label])}}


# --------------------------------------------------------------------------- import time

# What layer/dbkeeper/bootstrap.py does before importing dbkeeper.main.
_BOOTSTRAP = ("from dbkeeper.cold_start import register_pymysql_without_its_client; "
              "register_pymysql_without_its_client({lib!r})")

_TIMED = r"""
import sys, time
sys.path.insert(0, {lib!r})
t0 = time.perf_counter()
""" + _BOOTSTRAP + r"""
import dbkeeper.main
t1 = time.perf_counter()
import dbkeeper.event_pump, dbkeeper.lifecycle
t2 = time.perf_counter()
import uvloop
t3 = time.perf_counter()
print((t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000)
"""


def _best_wall(argv: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def _best_inprocess(python: str, lib: str, repeat: int) -> dict:
    rows = []
    for _ in range(repeat):
        out = subprocess.run([python, "-I", "-S", "-B", "-c", _TIMED.format(lib=lib)], check=True,
                             capture_output=True, text=True).stdout.split()
        rows.append([float(x) for x in out])
    return {"dbkeeper_main_ms": min(r[0] for r in rows), "post_registration_ms": min(r[1] for r in rows),
            "uvloop_ms": min(r[2] for r in rows)}


def _importtime_top(python: str, lib: str, modules: str, repeat: int = 3, top: int = 12) -> list[dict]:
    """-X importtime of `modules`; per module the best of `repeat` runs (one run is noisy)."""
    code = f"import sys; sys.path.insert(0, {lib!r}); {_BOOTSTRAP.format(lib=lib)}; import {modules}"
    best: dict[str, dict] = {}
    for _ in range(repeat):
        err = subprocess.run([python, "-I", "-S", "-B", "-X", "importtime", "-c", code], check=True,
                             capture_output=True, text=True).stderr
        for line in err.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            parts = line[len("import time:"):].split("|")
            row = {"self_us": int(parts[0]), "cumulative_us": int(parts[1]), "module": parts[2].strip()}
            if row["module"] not in best or row["self_us"] < best[row["module"]]["self_us"]:
                best[row["module"]] = row
    return sorted(best.values(), key=lambda r: -r["self_us"])[:top]


def launcher_overhead(layer: Path, repeat: int) -> dict:
    """The sh launcher's own cost: it run with DBKEEPER_PYTHON=/bin/true vs /bin/true alone."""
    true = shutil.which("true") or "/bin/true"
    launcher = str(layer / "extensions" / "dbkeeper")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DBKEEPER_PYTHON": true}

    def best(argv):
        times = []
        for _ in range(repeat * 2):
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        return min(times) * 1000
    plain, through = best([true]), best([launcher])
    return {"true_ms": plain, "launcher_to_true_ms": through, "launcher_overhead_ms": through - plain,
            "sh": os.path.realpath("/bin/sh")}


def import_times(layer: Path, repeat: int = 5, progress=print) -> dict:
    progress(f"imports: best of {repeat}, as shipped and with/without .pyc ...")
    python = extension_python()
    lib = str(layer / "dbkeeper" / "lib")
    shipped_pyc = sum(len([f for f in files if f.endswith(".pyc")]) for _, _, files in os.walk(lib))
    out = {
        "launcher": launcher_overhead(layer, repeat),
        "python_pass_ms": _best_wall([python, "-I", "-S", "-B", "-c", "pass"], repeat),
        "python_import_main_ms": _best_wall(
            [python, "-I", "-S", "-B", "-c",
             f"import sys; sys.path.insert(0, {lib!r}); {_BOOTSTRAP.format(lib=lib)}; import dbkeeper.main"], repeat),
        "shipped_pyc_files": shipped_pyc,
        "as_shipped": _best_inprocess(python, lib, repeat),
        "importtime_top_pre_registration": _importtime_top(python, lib, "dbkeeper.main"),
        "importtime_top_as_shipped": _importtime_top(
            python, lib, "dbkeeper.main, dbkeeper.event_pump, dbkeeper.lifecycle, uvloop"),
    }
    other, label = alternative_layer(layer)
    try:
        copy = str(other / "dbkeeper" / "lib")
        out["alternative"] = {
            "label": label,
            **_best_inprocess(python, copy, repeat),
            "python_import_main_ms": _best_wall(
                [python, "-I", "-S", "-B", "-c",
                 f"import sys; sys.path.insert(0, {copy!r}); {_BOOTSTRAP.format(lib=copy)}; import dbkeeper.main"],
                repeat),
        }
    finally:
        shutil.rmtree(other.parent, ignore_errors=True)
    return out
