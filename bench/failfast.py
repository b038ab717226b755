"""Fail fast: how long a function waits for error 2003 when the database refuses connections,
directly and through dbkeeper, measured side by side; then whether the first client after the
database is back gets through.

    ./.venv/bin/python -m bench.failfast --samples 200

The built layer's extension runs in the project's sandbox (as in the integration tests) in
front of a throwaway MariaDB that is stopped for the measurement (its port refuses connects).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _time_to_error(connect) -> tuple[float, int | None]:
    import pymysql

    started = time.perf_counter()
    try:
        connect().close()
    except pymysql.err.OperationalError as exc:
        return time.perf_counter() - started, exc.args[0]
    return time.perf_counter() - started, None


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failfast", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "failfast.json")
    args = parser.parse_args(argv)

    import pymysql

    from tests.dbkeeper_process import start_dbkeeper
    from tests.mariadb import MariaDB, free_port

    layer = REPO / "dist" / "layer-x86_64"
    if not (layer / "extensions" / "dbkeeper").exists():
        print("failfast: build the layer first (./build.sh)", file=sys.stderr)
        return 2
    db = MariaDB().start()
    running = start_dbkeeper(layer, db, free_port(), {"DBKEEPER_LOG_LEVEL": "info"})
    try:
        running.wait_for_event("upstream_connected")
        db.stop()
        common = dict(user=db.user, password=db.password, connect_timeout=10)
        paths = {"direct": lambda: pymysql.connect(host="127.0.0.1", port=db.port, **common),
                 "dbkeeper": lambda: pymysql.connect(host=running.host, port=running.port, **common)}
        times: dict[str, list[float]] = {name: [] for name in paths}
        errnos: dict[str, set] = {name: set() for name in paths}
        for _ in range(args.samples):  # interleaved: both paths see the same machine load
            for name, connect in paths.items():
                elapsed, errno = _time_to_error(connect)
                times[name].append(elapsed)
                errnos[name].add(errno)
        db.start()
        recovered, errno = _time_to_error(paths["dbkeeper"])
        first_after_recovery_ok = errno is None
    finally:
        running.stop()
        db.stop()
        db.cleanup()
    result = {name: {"p50_ms": round(_percentile(v, 50) * 1000, 2), "p99_ms": round(_percentile(v, 99) * 1000, 2),
                     "max_ms": round(max(v) * 1000, 2), "errnos": sorted(e for e in errnos[name] if e is not None)}
              for name, v in times.items()}
    result["first_client_after_recovery_ok"] = first_after_recovery_ok
    result["samples"] = args.samples
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"{'path':10} {'p50':>8} {'p99':>8} {'max':>8}  errors")
    for name in paths:
        r = result[name]
        print(f"{name:10} {r['p50_ms']:>6} ms {r['p99_ms']:>6} ms {r['max_ms']:>6} ms  {r['errnos']}")
    print(f"first client after the database came back: {'connected' if first_after_recovery_ok else 'FAILED'}")
    return 0 if first_after_recovery_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
