"""Runs connects for bench/connect.py in a separate interpreter, so one PyMySQL version per process
(the pinned 1.1.1 from the venv, or another one from BENCH_PYMYSQL_PATH).

Protocol: one JSON request per stdin line {"kw": {...connect kwargs...}}; one JSON reply per line
{"wall_us", "connect_us", "cpu_us", "tls"} measured around connect() + SELECT 1 + close(), the
per-invocation pattern (connect_us: connect() alone, with the driver's session setup). With
"count": N in the request, N such cycles back to back and one reply {"samples": [...]} (or
{"error"}): no pipe round trip between them, as when the worker sits in a CPU-limited cgroup.
The first line written is {"pymysql": "<version>"}.
"""

from __future__ import annotations

import json
import os
import sys

if os.environ.get("BENCH_PYMYSQL_PATH"):
    sys.path.insert(0, os.environ["BENCH_PYMYSQL_PATH"])

import ssl  # noqa: E402  (imported up front: its import is not a per-connect cost)
import time  # noqa: E402

import pymysql  # noqa: E402


def one(kw: dict) -> dict:
    c0 = time.process_time_ns()
    t0 = time.perf_counter_ns()
    conn = pymysql.connect(**kw)
    connected = time.perf_counter_ns()
    tls = isinstance(conn._sock, ssl.SSLSocket)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    conn.close()
    t1 = time.perf_counter_ns()
    c1 = time.process_time_ns()
    return {"wall_us": (t1 - t0) / 1e3, "connect_us": (connected - t0) / 1e3, "cpu_us": (c1 - c0) / 1e3, "tls": tls}


def main() -> None:
    out = sys.stdout
    out.write(json.dumps({"pymysql": pymysql.VERSION_STRING, "file": pymysql.__file__}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if "count" in request:
                reply = {"samples": [one(request["kw"]) for _ in range(request["count"])]}
            else:
                reply = one(request["kw"])
        except Exception as exc:  # reported, not fatal: the driver decides
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
