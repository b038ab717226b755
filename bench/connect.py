"""Connect cost of the per-invocation pattern: pymysql.connect() + SELECT 1 + close(), through
dbkeeper vs directly, for two client versions and two TLS settings, all variants interleaved.

Clients (one worker process each, see connect_worker.py):
  1.1.1   the pinned client: builds no TLS context unless asked
  1.2.4   PyMySQL >= 1.2: "PREFERRED" TLS by default: builds an SSLContext (loads the CA bundle)
          in __init__ on every connect, whatever the server offers; negotiates TLS if offered
Modes: PyMySQL defaults, and ssl_disabled=True.
Paths: direct_tcp (server without TLS), direct_tcp_tlsdb (server offering TLS: the direct path
really negotiates it when the client prefers TLS), dbk_tcp, dbk_unix (dbkeeper, pooled upstream),
dbk_tcp_tlsdb (dbkeeper whose pooled upstream is TLS; the local hop never is); and the last two
across an emulated network of a fixed RTT (direct_tcp_tlsdb_net, dbk_tcp_tlsdb_net; see targets.py);
with --baseline-layer also dbkb_tcp, dbkb_unix and dbkb_tcp_tlsdb_net (the same through the baseline layer's
dbkeeper).

wall = client's elapsed time; cpu = the client process's CPU time in it (what no proxy can remove).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from .stats import summary

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PYMYSQL_124 = BENCH / "out" / "pymysql-1.2.4"
PATHS = ("direct_tcp", "direct_tcp_tlsdb", "dbk_tcp", "dbk_unix", "dbk_tcp_tlsdb", "direct_tcp_tlsdb_net",
         "dbk_tcp_tlsdb_net", "dbkb_tcp", "dbkb_unix", "dbkb_tcp_tlsdb_net")
MODES = ("defaults", "ssl_disabled")


def ensure_pymysql_124(progress=print) -> Path | None:
    """PyMySQL 1.2.4 in bench/out/ (gitignored), installed once with pip --target."""
    if (PYMYSQL_124 / "pymysql" / "__init__.py").exists():
        return PYMYSQL_124
    progress("connect: installing PyMySQL 1.2.4 into bench/out/pymysql-1.2.4 (once) ...")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--target", str(PYMYSQL_124), "PyMySQL==1.2.4"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        progress(f"  could not install PyMySQL 1.2.4 ({proc.stderr.strip()[-300:]}); measuring 1.1.1 only")
        return None
    return PYMYSQL_124


class Worker:
    def __init__(self, pymysql_path: Path | None):
        env = dict(os.environ)
        env.pop("BENCH_PYMYSQL_PATH", None)
        if pymysql_path is not None:
            env["BENCH_PYMYSQL_PATH"] = str(pymysql_path)
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.connect_worker"], cwd=str(REPO), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = json.loads(self.proc.stdout.readline())
        self.version = hello["pymysql"]

    def connect(self, kw: dict) -> dict:
        self.proc.stdin.write(json.dumps({"kw": kw}) + "\n")
        return json.loads(self.proc.stdout.readline())

    def connect_many(self, kw: dict, count: int) -> dict:
        """count cycles back to back: {"samples": [...]} or {"error": ...}."""
        self.proc.stdin.write(json.dumps({"kw": kw, "count": count}) + "\n")
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def run(env, iterations: int, warmup: int = 3, progress=print) -> dict:
    workers = {"1.1.1": Worker(None)}
    path_124 = ensure_pymysql_124(progress)
    try:
        if path_124 is not None:
            workers["1.2.4"] = Worker(path_124)
        for label, worker in workers.items():
            if worker.version != label:
                raise RuntimeError(f"worker for PyMySQL {label} imported {worker.version}")
        paths = [p for p in PATHS if p in env.endpoints]
        variants = [(c, m, p) for c in workers for m in MODES for p in paths]
        progress(f"connect: {len(variants)} variants x {iterations}, interleaved ...")
        started = time.monotonic()
        rng = random.Random(7)
        samples = {v: {"wall_us": [], "connect_us": [], "cpu_us": [], "tls": []} for v in variants}
        errors: dict = {}
        # The plain dbkeeper instance serves only the dbk_tcp/dbk_unix variants here: its CPU over the
        # phase / their count = extension CPU per connect cycle (handshake, relay, COM_QUIT, reset).
        dbk = env.endpoints["dbk_tcp"]
        dbk_cycles = 0
        # The same for the baseline layer's plain instance (dbkb_tcp/dbkb_unix), when there is one.
        dbkb = env.endpoints.get("dbkb_tcp")
        dbkb_cycles = 0
        for i in range(warmup + iterations):
            order = variants[:]
            rng.shuffle(order)
            if i == warmup:
                dbk_cpu0 = dbk.cpu_ns()
                dbkb_cpu0 = dbkb.cpu_ns() if dbkb else 0
            for variant in order:
                client, mode, path = variant
                endpoint = env.endpoints[path]
                kw = dict(endpoint.kwargs, **env.credentials(tls=endpoint.tls_db))
                if mode == "ssl_disabled":
                    kw["ssl_disabled"] = True
                reply = workers[client].connect(kw)
                if "error" in reply:
                    errors.setdefault("/".join(variant), reply["error"])
                    continue
                if i >= warmup:
                    for key in ("wall_us", "connect_us", "cpu_us", "tls"):
                        samples[variant][key].append(reply[key])
                    dbk_cycles += path in ("dbk_tcp", "dbk_unix")
                    dbkb_cycles += path in ("dbkb_tcp", "dbkb_unix")
        time.sleep(0.05)  # let the last background reset finish before reading the CPU (bounded, not a sync)
        dbk_cpu_per_cycle_us = (dbk.cpu_ns() - dbk_cpu0) / 1e3 / max(dbk_cycles, 1)
        dbkb_cpu_per_cycle_us = (dbkb.cpu_ns() - dbkb_cpu0) / 1e3 / max(dbkb_cycles, 1) if dbkb else None
        progress(f"  {time.monotonic() - started:.1f} s")
    finally:
        for worker in workers.values():
            worker.close()
    out = {"clients": {label: w.version for label, w in workers.items()}, "iterations": iterations,
           "net_rtt_ms": env.net_rtt_ms,
           "errors": errors, "extension_cpu_us_per_connect_cycle": dbk_cpu_per_cycle_us, "variants": {}}
    if dbkb is not None:
        out["baseline_extension_cpu_us_per_connect_cycle"] = dbkb_cpu_per_cycle_us
    for (client, mode, path), s in samples.items():
        if not s["wall_us"]:
            continue
        out["variants"][f"{client}/{mode}/{path}"] = {
            "client": client, "mode": mode, "path": path,
            "wall_us": summary(s["wall_us"]), "connect_us": summary(s["connect_us"]), "cpu_us": summary(s["cpu_us"]),
            "tls_fraction": sum(s["tls"]) / len(s["tls"]),
            "samples_wall_us": s["wall_us"], "samples_connect_us": s["connect_us"],
        }
    return out
