"""Per-query latency on every endpoint, interleaved: each iteration visits every endpoint once (in
a shuffled order), so drift and neighbours hit all of them alike.

  select1_pymysql   cursor.execute("SELECT 1") + fetchall() on a kept PyMySQL connection
  select1_raw       the same query as raw packets on that connection's socket
  select1_idle      raw SELECT 1 after 1 ms of client idleness (sleep, not timed): a function does
                    work between queries, so the relay's caches and CPU are cold when a query
                    comes; back-to-back loops flatter relays with a large per-query code path
  mb1_raw           SELECT REPEAT('x',90) FROM seq_1_to_10000 (10,000 rows, ~1 MB) as raw bytes
"""

from __future__ import annotations

import gc
import random
import time

import pymysql

from .rawclient import RawQuery, raw_socket
from .stats import summary

SELECT1 = "SELECT 1"
MB1 = "SELECT REPEAT('x',90) FROM seq_1_to_10000"
LATENCY_ENDPOINTS = ("direct_tcp", "direct_unix", "dbk_tcp", "dbk_unix", "socat_tcp", "socat_unix", "uvloop_tcp")


class Session:
    """One kept connection to an endpoint, usable through PyMySQL and raw."""

    def __init__(self, endpoint, credentials: dict):
        self.endpoint = endpoint
        self.conn = pymysql.connect(**endpoint.kwargs, **credentials, autocommit=True, ssl_disabled=True)
        self.cursor = self.conn.cursor()
        sock = raw_socket(self.conn)
        self.select1 = RawQuery(sock, SELECT1, buffer_size=1 << 16)
        self.mb1 = RawQuery(sock, MB1)
        self.select1.calibrate()
        info = self.mb1.calibrate()
        if info["rows"] != 10_000:
            raise RuntimeError(f"{endpoint.name}: expected 10000 rows, got {info['rows']}")

    def pymysql_select1(self) -> int:
        cursor = self.cursor
        t0 = time.perf_counter_ns()
        cursor.execute(SELECT1)
        cursor.fetchall()
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


def open_sessions(env, names=LATENCY_ENDPOINTS + ("dbkv_tcp", "dbkb_tcp", "dbkb_unix")) -> dict[str, Session]:
    sessions = {}
    try:
        for name in [n for n in names if n in env.endpoints]:
            sessions[name] = Session(env.endpoints[name], env.credentials())
    except BaseException:
        for s in sessions.values():
            s.close()
        raise
    return sessions


def _interleave(sessions: dict[str, Session], iterations: int, warmup: int, steps: dict) -> dict:
    """steps: name -> function(session) -> ns. Returns {step: {endpoint: [µs, ...]}}."""
    names = list(sessions)
    samples = {step: {n: [] for n in names} for step in steps}
    rng = random.Random(1234)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(warmup + iterations):
            order = names[:]
            rng.shuffle(order)
            for name in order:
                session = sessions[name]
                for step, fn in steps.items():
                    ns = fn(session)
                    if i >= warmup:
                        samples[step][name].append(ns / 1000.0)
    finally:
        if gc_was:
            gc.enable()
    return samples


IDLE_S = 0.001


def _idle_then_select1(session: Session) -> int:
    time.sleep(IDLE_S)  # the idleness being measured, not synchronisation
    return session.select1.run()


def run(env, sessions: dict[str, Session], select_iterations: int, mb_iterations: int, progress=print,
        idle_iterations: int = 0) -> dict:
    progress(f"latency: SELECT 1 x {select_iterations} per endpoint and mode, interleaved ...")
    t = time.monotonic()
    small = _interleave(sessions, select_iterations, max(200, select_iterations // 20), {
        "select1_pymysql": Session.pymysql_select1,
        "select1_raw": lambda s: s.select1.run(),
    })
    progress(f"  {time.monotonic() - t:.1f} s")
    idle = {}
    if idle_iterations:
        progress(f"latency: SELECT 1 after {IDLE_S * 1000:.0f} ms idle x {idle_iterations} per endpoint, "
                 "interleaved ...")
        t = time.monotonic()
        idle = _interleave(sessions, idle_iterations, max(20, idle_iterations // 20),
                           {"select1_idle": _idle_then_select1})
        progress(f"  {time.monotonic() - t:.1f} s")
    progress(f"latency: 1 MB result x {mb_iterations} per endpoint, interleaved ...")
    t = time.monotonic()
    big = _interleave(sessions, mb_iterations, max(10, mb_iterations // 10), {"mb1_raw": lambda s: s.mb1.run()})
    progress(f"  {time.monotonic() - t:.1f} s")
    samples = {**small, **idle, **big}
    result = {"samples_us": samples, "summary": {}, "mb1_bytes": next(iter(sessions.values())).mb1.expected}
    for step, per_endpoint in samples.items():
        result["summary"][step] = {name: summary(values) for name, values in per_endpoint.items()}
    return result
