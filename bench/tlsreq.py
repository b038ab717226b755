"""Connect per invocation (connect() + SELECT 1 + close()) against a database that REQUIRES TLS,
across the emulated network, as a Lambda function does with RDS in another availability zone:

    direct     PyMySQL 1.1.1 with ssl_ca (the throwaway CA), ssl_verify_cert and ssl_verify_identity
    dbkeeper   the same driver with its defaults to dbkeeper's TCP port; dbkeeper holds a verified
               TLS connection (DBKEEPER_DB_TLS=required) across the same kind of delay line
    dbkeeper, client TLS settings kept
               the same through a second dbkeeper, the client still passing the direct path's TLS
               settings (what a function whose DB_SSL_CA stays set pays: a TLS context per connect)

Also: the extension's CPU per relayed `SELECT 1` on one open session, back to back and after
30 ms of idle (a thawed sandbox's next query), over its TLS upstream and, for reference, over the
plain loopback upstream of dbk_tcp.

Two settings:

full CPU      one client worker, both paths interleaved per iteration (shuffled), after a warm-up.
              Also: the dbkeeper instance's CPU per connect cycle (it serves nothing else here).
CPU share     three functions of `memory_mb` each, as Lambda sizes them (CFS quota = period x
              memory / 1,769 MB, bench/cpushare.py): "direct" is a cgroup holding its client worker;
              each "dbkeeper" one is a cgroup holding its client worker AND its dbkeeper extension
              process, which share the quota as a function and its extensions do on Lambda. All
              run at the same time for the same wall-clock window, each invoking back to back (a busy
              sandbox: the quota, not the arrival rate, sets the pace), so all see the same machine
              and all stay in the throttled steady state; the first cycles of each, which start
              with a full quota, are left out (warm-up). Per-invocation wall p50 and p99, throughput,
              throttled periods, and CPU per cycle of each cgroup's processes.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time

from . import cpushare, procstat
from .connect import Worker
from .stats import summary

PATHS = ("direct_tlsreq_net", "dbk_tlsreq_net", "dbk_tlsreq_net_tlsargs")
DBKEEPER_PATHS = PATHS[1:]  # each served by its own dbkeeper instance
SHARE_BATCH = 5      # cycles per request to a worker inside a cgroup (no pipe round trip in between)
SHARE_WARMUP = 10    # cycles of each function left out at the start of the window


def _full_cpu(env, iterations: int, warmup: int, progress) -> dict:
    worker = Worker(None)
    try:
        if worker.version != "1.1.1":
            raise RuntimeError(f"worker imported PyMySQL {worker.version}")
        rng = random.Random(12)
        samples: dict = {p: {"wall_us": [], "connect_us": [], "cpu_us": [], "tls": []} for p in PATHS}
        errors: dict = {}
        cpu0 = {p: 0 for p in DBKEEPER_PATHS}
        for i in range(warmup + iterations):
            if i == warmup:
                cpu0 = {p: env.endpoints[p].cpu_ns() for p in DBKEEPER_PATHS}
            order = list(PATHS)
            rng.shuffle(order)
            for path in order:
                reply = worker.connect(env.connect_kwargs(env.endpoints[path]))
                if "error" in reply:
                    errors.setdefault(path, reply["error"])
                    continue
                if i >= warmup:
                    for key in samples[path]:
                        samples[path][key].append(reply[key])
        time.sleep(0.05)  # let the last background reset finish before reading the CPU (bounded, not a sync)
        ext_cpu_us = {p: (env.endpoints[p].cpu_ns() - cpu0[p]) / 1e3 / max(len(samples[p]["wall_us"]), 1)
                      for p in DBKEEPER_PATHS}
    finally:
        worker.close()
    out: dict = {"iterations": iterations, "errors": errors,
                 "extension_cpu_us_per_connect_cycle": ext_cpu_us["dbk_tlsreq_net"],
                 "extension_cpu_us_per_connect_cycle_by_path": ext_cpu_us, "paths": {}}
    for path, s in samples.items():
        if s["wall_us"]:
            out["paths"][path] = {"wall_us": summary(s["wall_us"]), "connect_us": summary(s["connect_us"]),
                                  "cpu_us": summary(s["cpu_us"]), "tls_fraction": sum(s["tls"]) / len(s["tls"]),
                                  "samples_wall_us": s["wall_us"], "samples_connect_us": s["connect_us"]}
    return out


def _cpu_share(env, memory_mb: int, window_s: float, progress) -> dict:
    workers = {path: Worker(None) for path in PATHS}
    results: dict = {}
    try:
        with contextlib.ExitStack() as stack:
            shares = {path: stack.enter_context(cpushare.CpuShare(f"f{i}", memory_mb)) for i, path in enumerate(PATHS)}
            for path, share in shares.items():
                share.add(workers[path].proc.pid)
                if path in DBKEEPER_PATHS:
                    share.add(env.endpoints[path].relay_pid)  # the function's extension shares its quota
            any_share = shares[PATHS[0]]
            progress(f"  {memory_mb} MB share: quota {any_share.quota_us} µs per {any_share.period_us} µs "
                     f"({any_share.version} cgroup), {len(PATHS)} functions for {window_s:.0f} s ...")
            start = threading.Barrier(len(PATHS))

            def drive(path: str) -> None:
                worker, share = workers[path], shares[path]
                kw = env.connect_kwargs(env.endpoints[path])
                pids = list(share.pids())
                wall: list[float] = []
                done = 0
                baseline = None  # (time, cycles, CPU ns, cgroup stats) once the warm-up cycles are done
                error = None
                start.wait()
                t_start = time.monotonic()
                while time.monotonic() - t_start < window_s:
                    reply = worker.connect_many(kw, SHARE_BATCH)
                    if "error" in reply:
                        error = reply["error"]
                        break
                    for sample in reply["samples"]:
                        done += 1
                        if baseline is not None:
                            wall.append(sample["wall_us"])
                    if baseline is None and done >= SHARE_WARMUP:
                        baseline = (time.monotonic(), done, sum(procstat.cpu_ns(p) for p in pids), share.stats())
                out: dict = {"error": error, "samples_wall_us": wall}
                if baseline is not None and wall:
                    t0, done0, cpu0, stats0 = baseline
                    measured = done - done0
                    stats1 = share.stats()
                    out.update({
                        "wall_us": summary(wall),
                        "cycles_per_s": measured / (time.monotonic() - t0),
                        "cpu_us_per_cycle": (sum(procstat.cpu_ns(p) for p in pids) - cpu0) / 1e3 / measured,
                        "throttled_periods": stats1["nr_throttled"] - stats0["nr_throttled"],
                        "periods": stats1["nr_periods"] - stats0["nr_periods"],
                        "throttled_ms": stats1["throttled_ms"] - stats0["throttled_ms"],
                    })
                results[path] = out

            threads = [threading.Thread(target=drive, args=(p,), name=f"share-{p}") for p in PATHS]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            quota = {"quota_us": any_share.quota_us, "period_us": any_share.period_us,
                     "cgroup": any_share.version}
    finally:
        for w in workers.values():
            w.close()
    return {"memory_mb": memory_mb, "window_s": window_s, "warmup_cycles": SHARE_WARMUP, **quota, "paths": results}


RELAY_IDLE_S = 0.03


def _relay_cpu(env, back_to_back: int, after_idle: int) -> dict:
    import pymysql

    out = {}
    for path in ("dbk_tcp", "dbk_tlsreq_net"):
        endpoint = env.endpoints[path]
        conn = pymysql.connect(**env.connect_kwargs(endpoint))
        try:
            cursor = conn.cursor()
            for _ in range(20):
                cursor.execute("SELECT 1")
            c0 = endpoint.cpu_ns()
            for _ in range(back_to_back):
                cursor.execute("SELECT 1")
            c1 = endpoint.cpu_ns()
            idle_ns = 0
            for _ in range(after_idle):
                time.sleep(RELAY_IDLE_S)  # the idle being measured, not a synchronisation
                c2 = endpoint.cpu_ns()
                cursor.execute("SELECT 1")
                idle_ns += endpoint.cpu_ns() - c2
        finally:
            conn.close()
        out[path] = {"back_to_back_us": (c1 - c0) / 1e3 / back_to_back, "after_idle_us": idle_ns / 1e3 / after_idle}
    return out


def run(env, iterations: int, share_window_s: float, memory_mb: int = 128, warmup: int = 5, progress=print) -> dict:
    started = time.monotonic()
    progress(f"tlsreq: TLS-required DB across {env.tlsreq_rtt_ms:g} ms RTT: 2 paths x {iterations}, interleaved ...")
    out = {"net_rtt_ms": env.tlsreq_rtt_ms, "server_requires_tls": True,
           "dbkeeper_upstream": env.tlsreq_dbk_connected, "full_cpu": _full_cpu(env, iterations, warmup, progress)}
    out["relay_cpu"] = _relay_cpu(env, back_to_back=max(100, iterations), after_idle=max(20, iterations // 8))
    reason = cpushare.unavailable_reason()
    if reason is None:
        out["cpu_share"] = _cpu_share(env, memory_mb, share_window_s, progress)
    else:
        out["cpu_share_unavailable"] = reason
        progress(f"  {memory_mb} MB share not measured: {reason}")
    progress(f"  {time.monotonic() - started:.1f} s")
    return out
