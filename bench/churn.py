"""Churn: many sandbox lifecycles against one database, the way Lambda runs them, and what they
leave behind on the server.

Each lifecycle is a sandbox of the sample function in its own network namespace: INIT, a few
invocations (frozen in between), then the end Lambda gives it: most get SHUTDOWN first (the
runtime's SIGTERM; the extension's SHUTDOWN), the rest are destroyed frozen with no word at all
(network cut, then SIGKILL: no FIN, no COM_QUIT reaches the database). Without the layer and with
it, for a function that connects per invocation and one that keeps a global connection.

    ./.venv/bin/python -m bench.churn --lifecycles 1000 --parallel 8

Reports per variant: invocations and errors, connections on the server right after the last
sandbox is gone, and after DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S (+5 s), when dbkeeper's idle
connections of hard-reclaimed sandboxes must be gone. Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WRAPPER = "/opt/dbkeeper-wrapper"
HANDLERS = {"per_invoke": "app.handler_connect_per_invoke", "global": "app.handler_global_connection"}


def lifecycle(layer_dir: Path | None, empty_opt: Path, handler: str, db, invocations: int, graceful: bool,
              wait_timeout_s: int, scratch: Path, index: int) -> tuple[int, list[str]]:
    from lambda_sandbox import Sandbox
    from tests.dbkeeper_process import state_file_of

    sock_dir = scratch / f"s{index}"
    sock_dir.mkdir()
    env = {"DB_PORT": str(db.port), "DB_USER": db.user, "DB_PASSWORD": db.password, "DB_NAME": db.database,
           "DBKEEPER_SOCKET": str(sock_dir / "dbkeeper.sock"),
           "DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S": str(wait_timeout_s), "DBKEEPER_PYTHON": os.path.realpath(sys.executable)}
    if layer_dir is not None:
        env["AWS_LAMBDA_EXEC_WRAPPER"] = WRAPPER
    sandbox = Sandbox(str(layer_dir or empty_opt), str(REPO / "sample_function"), handler, env=env, freeze=True,
                      netns=True, timeout_s=15, name=f"churn-{index}-{os.getpid()}")
    errors: list[str] = []
    sandbox.start()
    sandbox.env["DB_HOST"] = sandbox.host_address
    try:
        for _ in range(invocations):
            result = sandbox.invoke({"page": f"/churn/{index}"})
            if not result.ok:
                errors.append(result.text[:200])
    finally:
        api = sandbox.api_address
        sandbox.reclaim(graceful=graceful)
        # a sandbox destroyed without SHUTDOWN leaves the extension's state file in the host's /tmp
        # (on Lambda the sandbox's /tmp goes with it)
        state_file_of(api).unlink(missing_ok=True)
    return invocations, errors


def run_variant(name: str, layer_dir: Path | None, handler: str, db, args, rng: random.Random) -> dict:
    empty_opt = Path(tempfile.mkdtemp(prefix="churn-opt-"))
    scratch = Path(tempfile.mkdtemp(prefix="chn-", dir="/tmp"))
    plan = [rng.random() >= args.no_shutdown_share for _ in range(args.lifecycles)]
    invocations, errors, lock = [0], [], threading.Lock()
    started = time.monotonic()

    def one(index: int) -> None:
        try:
            count, failed = lifecycle(layer_dir, empty_opt, handler, db, args.invocations, plan[index],
                                      args.wait_timeout, scratch, index)
        except Exception as exc:  # noqa: BLE001 - counted in the table
            count, failed = 0, [f"lifecycle failed: {type(exc).__name__}: {exc}"]
        with lock:
            invocations[0] += count
            errors.extend(failed)

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(one, range(args.lifecycles)))
    ran_s = time.monotonic() - started
    left_at_end = len(db.processlist(user=db.user))
    deadline = time.monotonic() + args.wait_timeout + 5
    while db.processlist(user=db.user) and time.monotonic() < deadline:
        time.sleep(0.2)  # polling the server for sessions that must end by themselves
    left_after_bound = len(db.processlist(user=db.user))
    # what is still there belongs to hard-reclaimed sandboxes and would stay for the server's wait_timeout
    with db.admin() as admin, admin.cursor() as cursor:
        for row in db.processlist(user=db.user):
            cursor.execute(f"KILL CONNECTION {int(row['ID'])}")
    shutil.rmtree(empty_opt, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return {"variant": name, "lifecycles": args.lifecycles, "without_shutdown": plan.count(False),
            "invocations": invocations[0], "errors": len(errors), "error_samples": errors[:3],
            "left_at_end": left_at_end, "left_after_bound": left_after_bound, "seconds": round(ran_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifecycles", type=int, default=1000, help="per variant")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--invocations", type=int, default=3, help="per lifecycle, frozen in between")
    parser.add_argument("--no-shutdown-share", type=float, default=0.1,
                        help="share of sandboxes destroyed without SHUTDOWN (network cut, SIGKILL)")
    parser.add_argument("--wait-timeout", type=int, default=10, help="DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S for the run")
    parser.add_argument("--handlers", default="per_invoke,global")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "churn.json")
    args = parser.parse_args(argv)

    from lambda_sandbox import netns_unavailable_reason
    from tests.mariadb import MariaDB

    reason = netns_unavailable_reason()
    if reason:
        print(f"churn: needs network namespaces: {reason}", file=sys.stderr)
        return 2
    layer = REPO / "dist" / "layer-x86_64"
    if not (layer / "extensions" / "dbkeeper").exists():
        print("churn: build the layer first (./build.sh)", file=sys.stderr)
        return 2
    db = MariaDB(bind_address="0.0.0.0").start()
    try:
        db.set_global("max_connections", 2000)
        rng = random.Random(args.seed)
        results = []
        for handler in args.handlers.split(","):
            for with_layer in (False, True):
                name = f"{handler}, {'with dbkeeper' if with_layer else 'without'}"
                print(f"churn: {name}: {args.lifecycles} lifecycles, {args.parallel} at a time ...", file=sys.stderr)
                results.append(run_variant(name, layer if with_layer else None, HANDLERS[handler], db, args, rng))
    finally:
        db.stop()
        db.cleanup()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"{'variant':32} {'lifecycles':>10} {'no SHUTDOWN':>11} {'invocations':>11} {'errors':>6} "
          f"{'left at end':>11} {'left after bound':>16} {'seconds':>7}")
    for r in results:
        print(f"{r['variant']:32} {r['lifecycles']:>10} {r['without_shutdown']:>11} {r['invocations']:>11} "
              f"{r['errors']:>6} {r['left_at_end']:>11} {r['left_after_bound']:>16} {r['seconds']:>7}")
    print(f"(bound = DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S={args.wait_timeout} + 5 s; the server keeps its own "
          f"wait_timeout, 28,800 s by default, for every other session)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
