"""dbkeeper benchmarks: `./.venv/bin/python -m bench [--quick]` from the repo root, after ./build.sh.

Phases (each interleaves its comparisons within one run, with warm-up):
  latency   SELECT 1 (PyMySQL and raw packets) and a 1 MB / 10k-row result, six paths
  cpu       relay CPU per SELECT 1 and per 1 MB result (dbkeeper vs socat)
  connect   connect() + SELECT 1 + close() through dbkeeper vs direct, PyMySQL 1.1.1 and 1.2.4, on
            loopback and across an emulated network (--rtt-ms, bench/netdelay.py)
  tlsreq    the same against a database that requires verified TLS, across the emulated network,
            at full CPU and at a 128 MB function's CPU share (cgroup CFS quota, bench/cpushare.py)
  coldstart spawn -> registered -> upstream ready, RSS, SHUTDOWN -> upstream closed server-side
  imports   import time of the launcher's chain, as shipped and with .pyc

Prints the tables, writes bench/out/results-<timestamp>.json and bench/out/latest.json, and (full
runs) rewrites the generated part of bench/RESULTS.md.

--baseline-layer PATH (an unpacked layer tree, e.g. another checkout's dist/layer-x86_64) also runs a
dbkeeper from that tree, snapshotted like the main one, as dbkb_tcp (and dbkb_tcp_tlsdb_net) in the
latency, cpu and connect phases, interleaved with the rest, and prints a "Baseline layer comparison"
(this build / the baseline) with verdicts against 1.05x. Such a run never rewrites bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.mariadb, tests.dbkeeper_process, lambda_sandbox

from bench import coldstart, connect, cpu, latency, procstat, report, targets, tlsreq  # noqa: E402

PHASES = ("latency", "cpu", "connect", "tlsreq", "coldstart", "imports")
PLANS = {
    # select1 iterations, SELECT 1 after idle iterations, 1 MB iterations, cpu rounds, cpu SELECT 1 per
    # block, cpu 1 MB per block, cpu global-connection transactions per block (cpu.Transactions),
    # connect iterations, TLS-required iterations at full CPU, seconds at the 128 MB share, cold starts,
    # import repeats
    "quick": dict(select=1500, idle=200, mb=50, cpu_rounds=3, cpu_select=500, cpu_mb=10, txn=10, connect=12,
                  tlsreq=30, share_s=4, cold=3, imports=3),
    "full": dict(select=6000, idle=1200, mb=300, cpu_rounds=10, cpu_select=1000, cpu_mb=20, txn=20, connect=80,
                 tlsreq=300, share_s=20, cold=8, imports=5),
}


def check_layer() -> list[str]:
    """Fail if the layer is not built; return the sources that differ from the built copy."""
    layer = targets.LAYER
    if targets.layer_problem(layer):
        sys.exit(f"bench: no built layer at {layer}: run ./build.sh first")
    launcher = layer / "extensions" / "dbkeeper"
    stale = []
    pairs = [(REPO / "layer" / "extensions" / "dbkeeper", launcher),
             (REPO / "layer" / "dbkeeper" / "bootstrap.py", layer / "dbkeeper" / "bootstrap.py")]
    src = REPO / "extension" / "dbkeeper"
    pairs += [(p, layer / "dbkeeper" / "lib" / "dbkeeper" / p.relative_to(src)) for p in src.rglob("*.py")]
    for source, built in pairs:
        if not built.exists() or not filecmp.cmp(source, built, shallow=False):
            stale.append(str(source.relative_to(REPO)))
    return stale


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: phases known, --variant-env as a dict, --baseline-layer a layer tree."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~20 s smoke run (fewer iterations)")
    parser.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases ({','.join(PHASES)})")
    parser.add_argument("--no-results-md", action="store_true", help="don't rewrite bench/RESULTS.md")
    parser.add_argument("--variant-env", default="", metavar="K=V,K=V",
                        help="also run a second dbkeeper with this extra environment (endpoint dbkv_tcp) "
                             "in the latency and cpu phases, e.g. MALLOC_TRIM_THRESHOLD_=33554432")
    parser.add_argument("--rtt-ms", type=float, default=1.0,
                        help="RTT of the emulated network for the connect phase's *_net paths (0: skip them)")
    parser.add_argument("--baseline-layer", type=Path, default=None, metavar="PATH",
                        help="also run a dbkeeper from this unpacked layer tree (e.g. another build's "
                             "dist/layer-x86_64) as dbkb_tcp in the latency, cpu and connect phases, and print "
                             "this build / baseline ratios; bench/RESULTS.md is then left alone")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    malformed = [kv for kv in args.variant_env.split(",") if kv.strip() and "=" not in kv]
    if malformed:
        parser.error(f"--variant-env wants KEY=VAL pairs, got {', '.join(malformed)}")
    args.variant_env = dict(kv.split("=", 1) for kv in args.variant_env.split(",") if kv.strip())
    if args.baseline_layer is not None:
        problem = targets.layer_problem(args.baseline_layer)
        if problem:
            parser.error(f"--baseline-layer: {problem}")
        if not {"latency", "cpu", "connect"} & set(args.phases):
            parser.error("--baseline-layer is measured in the latency, cpu and connect phases: add one to --only")
        args.baseline_layer = args.baseline_layer.resolve()
    return args


def writes_results_md(args: argparse.Namespace) -> bool:
    """Only a full, unmodified run of every phase rewrites bench/RESULTS.md's generated part."""
    return (not args.quick and not args.no_results_md and set(args.phases) == set(PHASES) and not args.variant_env
            and args.baseline_layer is None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    phases, variant_env = args.phases, args.variant_env
    mode = "quick" if args.quick else "full"
    plan = PLANS[mode]
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    stale = check_layer()
    if stale:
        progress(f"bench: WARNING: dist/layer-x86_64 differs from the sources ({', '.join(stale[:5])}"
                 f"{' ...' if len(stale) > 5 else ''}): run ./build.sh to measure the current code")
    started = time.monotonic()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    layer, fingerprint = targets.snapshot_layer()
    baseline = None
    if args.baseline_layer is not None:
        try:
            baseline, baseline_fingerprint = targets.snapshot_layer(args.baseline_layer)
        except BaseException:
            shutil.rmtree(layer.parent, ignore_errors=True)
            raise
    results: dict = {"mode": mode, "plan": plan, "phases": phases, "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                     "machine": report.machine(), "layer": str(targets.LAYER), "layer_fingerprint": fingerprint,
                     "layer_stale_files": stale, "variant_env": variant_env}
    if baseline is not None:
        results["baseline_layer"] = {"path": str(args.baseline_layer), "fingerprint": baseline_fingerprint}
        progress(f"bench: baseline layer {args.baseline_layer} ({baseline_fingerprint}, snapshot) as dbkb_tcp")
    progress(f"bench: {mode} run, load average {results['machine']['loadavg'][0]:.2f} on "
             f"{results['machine']['nproc']} CPUs; layer {fingerprint} (snapshot); setting up MariaDB, dbkeeper, "
             f"socat ...")
    try:
        env = targets.start(layer, with_tls="connect" in phases, variant_env=variant_env, net_rtt_ms=args.rtt_ms,
                            with_tlsreq="tlsreq" in phases, baseline_layer=baseline)
    except BaseException:
        _remove_snapshots(layer, baseline)
        raise
    try:
        results["versions"] = targets.server_versions(env)
        results["dbkeeper_upstream"] = env.dbk_connected
        if "latency" in phases or "cpu" in phases:
            sessions = latency.open_sessions(env)
            try:
                if "latency" in phases:
                    results["latency"] = latency.run(env, sessions, plan["select"], plan["mb"], progress,
                                                     idle_iterations=plan["idle"])
                if "cpu" in phases:
                    results["cpu"] = cpu.run(env, sessions, plan["cpu_rounds"], plan["cpu_select"], plan["cpu_mb"],
                                             progress)
                    results["cpu"]["transactions"] = cpu.transactions_cpu(env, plan["cpu_rounds"], plan["txn"],
                                                                          progress)
                results["rss_after_load_kb"] = procstat.memory_kb(env.dbk.pid)
            finally:
                for s in sessions.values():
                    s.close()
        if "connect" in phases:
            results["connect"] = connect.run(env, plan["connect"], progress=progress)
        if "tlsreq" in phases:
            results["tlsreq"] = tlsreq.run(env, plan["tlsreq"], plan["share_s"], progress=progress)
        if "coldstart" in phases:
            results["coldstart"] = coldstart.cold_starts(layer, env.db, plan["cold"], progress)
        if "imports" in phases:
            results["imports"] = coldstart.import_times(layer, plan["imports"], progress)
    finally:
        reports = env.close()
        _remove_snapshots(layer, baseline)
    results["bench_instance_shutdown"] = {k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in reports.items()}
    results["loadavg_after"] = os.getloadavg()
    results["duration_s"] = time.monotonic() - started
    results["targets"] = report.targets(results)

    print(report.render(results))
    print()
    print("machine:", report.machine_text(results))
    path = report.write_json(results, stamp)
    print(f"JSON: {path.relative_to(REPO)} (and bench/out/latest.json)")
    if writes_results_md(args):
        report.update_results_md(results, path)
        print("updated bench/RESULTS.md (generated part)")
    return 0


def _remove_snapshots(*layers: Path | None) -> None:
    for snapshot in layers:
        if snapshot is not None:
            shutil.rmtree(snapshot.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
