"""CPU the relay process spends per query: its CPU time (schedstat, ns; /proc stat ticks as a
cross-check) before and after a block of N queries. Blocks of every relay are interleaved (round
after round, shuffled), and the per-query figure is the median over rounds. Besides back-to-back
blocks, a block of SELECT 1 each after 1 ms of client idleness (select1_idle_us; the sleep is not
the relay's, and an idle relay spends ~0 CPU): a relay may do work only when a command follows a
quiet spell (dbkeeper checks its upstream connection then).

dbkeeper: the extension process (all threads). socat: the listener and its per-connection child.
uvloop: bench/minirelay.py, the bare Python relay.
"""

from __future__ import annotations

import gc
import random
import time

from . import procstat
from .latency import IDLE_S
from .stats import summary

CPU_ENDPOINTS = ("dbk_tcp", "dbk_unix", "socat_tcp", "socat_unix", "uvloop_tcp", "dbkv_tcp", "dbkb_tcp",
                 "dbkb_unix")
IDLE_KEYS = {"dbk_tcp": "dbkeeper", "dbkb_tcp": "dbkeeper_baseline_layer"}  # idle_cpu_ms_per_s keys


def _block(session, endpoint, count: int, fn) -> tuple[float, float, float]:
    """(relay CPU ns, wall ns, relay minor page faults) per query over one block."""
    f0 = endpoint.minor_faults()
    c0 = endpoint.cpu_ns()
    t0 = time.perf_counter_ns()
    for _ in range(count):
        fn(session)
    t1 = time.perf_counter_ns()
    c1 = endpoint.cpu_ns()
    f1 = endpoint.minor_faults()
    return (c1 - c0) / count, (t1 - t0) / count, (f1 - f0) / count


def _idle_then_select1(session) -> None:
    time.sleep(IDLE_S)  # the idleness being measured, not synchronisation
    session.pymysql_select1()


# A function's global connection, one invocation: what the sample function does (PyMySQL autocommit
# off: ping(), an INSERT, a SELECT, COMMIT) after TXN_IDLE_S of quiet (the sandbox between
# invocations). Measured on the dbkeeper relays only: it is where the session model and its
# wait_timeout statements cost most (a transaction opens and ends every invocation).
TXN_ENDPOINTS = ("dbk_tcp", "dbkv_tcp", "dbkb_tcp")
TXN_IDLE_S = 0.03
TXN_TABLE = "CREATE TABLE IF NOT EXISTS bench_visits (id INT AUTO_INCREMENT PRIMARY KEY, page VARCHAR(255), " \
            "request_id VARCHAR(64)) ENGINE=InnoDB"


class Transactions:
    def __init__(self, env, name: str):
        import pymysql

        self.conn = pymysql.connect(**env.connect_kwargs(env.endpoints[name]), autocommit=False, ssl_disabled=True)
        self.cursor = self.conn.cursor()
        self.cursor.execute(TXN_TABLE)
        self.conn.commit()
        self.count = 0

    def invoke(self) -> None:
        self.count += 1
        self.conn.ping(reconnect=False)
        self.cursor.execute("INSERT INTO bench_visits (page, request_id) VALUES (%s, %s)", ("/", f"req-{self.count}"))
        self.cursor.execute("SELECT COUNT(*), SUM(page = %s), CONNECTION_ID() FROM bench_visits", ("/",))
        self.cursor.fetchone()
        self.conn.commit()

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


def _idle_then_invoke(transactions: Transactions) -> None:
    time.sleep(TXN_IDLE_S)  # the idleness being measured (a sandbox between invocations), not synchronisation
    transactions.invoke()


def transactions_cpu(env, rounds: int, count: int, progress=print) -> dict:
    """Extension CPU µs per global-connection invocation (see Transactions), per round, interleaved."""
    names = [n for n in TXN_ENDPOINTS if n in env.endpoints]
    progress(f"cpu: {rounds} rounds x {count} transactions after {TXN_IDLE_S * 1000:g} ms idle per relay "
             f"({', '.join(names)}) ...")
    started = time.monotonic()
    txns = {n: Transactions(env, n) for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(7)
    try:
        for name in names:
            for _ in range(10):
                txns[name].invoke()
        for _ in range(rounds):
            order = names[:]
            rng.shuffle(order)
            for name in order:
                cpu, _, _ = _block(txns[name], env.endpoints[name], count, _idle_then_invoke)
                samples[name].append(cpu / 1e3)
    finally:
        for t in txns.values():
            t.close()
    progress(f"  {time.monotonic() - started:.1f} s")
    return {"idle_s": TXN_IDLE_S, "count": count, "rounds": rounds, "samples": samples,
            "per_invocation_us": {n: summary(v) for n, v in samples.items()}}


def idle_cpu(endpoint, seconds: float) -> float:
    """Relay CPU ms per second while nobody talks to it (timers, polling)."""
    c0 = endpoint.cpu_ns()
    time.sleep(seconds)  # measuring idle consumption over a fixed interval, not synchronising
    return (endpoint.cpu_ns() - c0) / 1e6 / seconds


def run(env, sessions: dict, rounds: int, select_count: int, mb_count: int, progress=print) -> dict:
    names = [n for n in CPU_ENDPOINTS if n in sessions]
    progress(f"cpu: {rounds} rounds x (SELECT 1 x {select_count}, 1 MB x {mb_count}) per relay ...")
    started = time.monotonic()
    rng = random.Random(99)
    idle_count = max(20, select_count // 5)
    per_query = {"select1_us": {n: [] for n in names}, "mb1_ms": {n: [] for n in names},
                 "select1_idle_us": {n: [] for n in names}}
    wall = {"select1_us": {n: [] for n in names}, "mb1_ms": {n: [] for n in names},
            "select1_idle_us": {n: [] for n in names}}
    faults = {"select1": {n: [] for n in names}, "mb1": {n: [] for n in names}}
    tick_check = {n: [0, 0] for n in names}  # schedstat total vs stat ticks total, ns
    gc.disable()
    try:
        for name in names:  # warm-up: one small block each
            _block(sessions[name], env.endpoints[name], 50, lambda s: s.pymysql_select1())
        for _ in range(rounds):
            order = names[:]
            rng.shuffle(order)
            for name in order:
                session, endpoint = sessions[name], env.endpoints[name]
                pid = endpoint.relay_pid
                ticks0 = procstat.cpu_ticks_ns(pid) if endpoint.relay == "dbkeeper" else 0
                sched0 = endpoint.cpu_ns()
                cpu, w, f = _block(session, endpoint, select_count, lambda s: s.pymysql_select1())
                per_query["select1_us"][name].append(cpu / 1e3)
                wall["select1_us"][name].append(w / 1e3)
                faults["select1"][name].append(f)
                cpu, w, f = _block(session, endpoint, mb_count, lambda s: s.mb1.run())
                per_query["mb1_ms"][name].append(cpu / 1e6)
                wall["mb1_ms"][name].append(w / 1e6)
                faults["mb1"][name].append(f)
                cpu, w, f = _block(session, endpoint, idle_count, _idle_then_select1)
                per_query["select1_idle_us"][name].append(cpu / 1e3)
                wall["select1_idle_us"][name].append(w / 1e3)
                if endpoint.relay == "dbkeeper":
                    tick_check[name][0] += endpoint.cpu_ns() - sched0
                    tick_check[name][1] += procstat.cpu_ticks_ns(pid) - ticks0
    finally:
        gc.enable()
    idle = {}
    for name, key in IDLE_KEYS.items():
        if name in names:
            idle[key] = idle_cpu(env.endpoints[name], 1.0)
    progress(f"  {time.monotonic() - started:.1f} s")
    return {
        "rounds": rounds, "select_count": select_count, "mb_count": mb_count, "idle_count": idle_count,
        "per_query": {k: {n: summary(v) for n, v in d.items()} for k, d in per_query.items()},
        "wall_per_query": {k: {n: summary(v) for n, v in d.items()} for k, d in wall.items()},
        "minor_faults_per_query": {k: {n: summary(v) for n, v in d.items()} for k, d in faults.items()},
        "samples": per_query,
        "schedstat_vs_ticks_ns": tick_check,
        "idle_cpu_ms_per_s": idle,
    }
