"""What the AWS features cost (issue 11): `./.venv/bin/python -m bench.aws [--runs N]`.

1. The default path, before and after: cold starts of the layer built from `main` (BEFORE, built
   here from `git archive`) and of this tree's layer (dist/layer-x86_64), interleaved in one run:
   spawn -> registered -> upstream ready, CPU and RSS at upstream ready; and the import time of the
   extension's modules in fresh `python -I -S` interpreters.
2. Each feature on (this tree's layer), against moto in server mode on loopback: the same cold start
   with DBKEEPER_DB_SECRET, with DBKEEPER_BUDGET_TABLE, and with both; then, in one extension,
   what a lease costs per new upstream connection and what the botocore import costs.
   moto answers on loopback without TLS: real Secrets Manager / DynamoDB calls add a network round
   trip and TLS (tens of ms for the first call of a process, a few ms after).
3. EMF: the CPU of writing one metrics line, in process.

Prints a table; writes bench/out/aws-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.coldstart import one_cold_start  # noqa: E402
from bench.stats import summary  # noqa: E402
from tests.aws_endpoint import MotoServer  # noqa: E402
from tests.dbkeeper_process import extension_python  # noqa: E402
from tests.mariadb import MariaDB  # noqa: E402

KEYS = ("spawn_to_registered_ms", "spawn_to_upstream_ready_ms", "cpu_at_ready_ms", "vm_hwm_kb", "vm_rss_kb")


def build_before(ref: str) -> Path:
    """The layer as `ref` builds it, in a temporary checkout (wheels from this tree's cache)."""
    root = Path(tempfile.mkdtemp(prefix="dbk-before-", dir="/tmp"))
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    if (REPO / ".cache").is_dir():
        shutil.copytree(REPO / ".cache", root / ".cache")
    subprocess.run([str(root / "build.sh")], check=True, capture_output=True,
                   env={**os.environ, "PYTHON": str(REPO / ".venv" / "bin" / "python")})
    return root


IMPORTS = r"""
import sys, time
sys.path.insert(0, sys.argv[1]); sys.dont_write_bytecode = True
from dbkeeper.cold_start import register_pymysql_without_its_client; register_pymysql_without_its_client(sys.argv[1])
t0 = time.perf_counter()
import dbkeeper.main
t1 = time.perf_counter()
import dbkeeper.event_pump, dbkeeper.lifecycle, dbkeeper.server
t2 = time.perf_counter()
print((t1 - t0) * 1000, (t2 - t1) * 1000, sorted(m for m in sys.modules if m.startswith(("botocore", "urllib3"))) == [])
"""


def import_times(lib: Path, repeat: int) -> dict:
    before, after, clean = [], [], True
    for _ in range(repeat):
        out = subprocess.run([extension_python(), "-I", "-S", "-c", IMPORTS, str(lib)], capture_output=True,
                             text=True, check=True, cwd="/").stdout.split()
        before.append(float(out[0]))
        after.append(float(out[1]))
        clean = clean and out[2] == "True"
    return {"before_registering_ms": min(before), "after_registering_ms": min(after), "no_sdk_loaded": clean}


SDK_COST = r"""
import sys, time, resource
sys.path.insert(0, sys.argv[1]); sys.dont_write_bytecode = True
def rss_kb():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])
base = rss_kb()
t0 = time.perf_counter(); c0 = time.process_time()
from dbkeeper.aws import sdk
sdk.load(sys.argv[2])
import botocore.session
session = botocore.session.get_session()
t1 = time.perf_counter(); c1 = time.process_time()
sm = session.create_client('secretsmanager', region_name='us-east-1')
t2 = time.perf_counter()
ddb = session.create_client('dynamodb', region_name='us-east-1')
t3 = time.perf_counter()
rds = session.create_client('rds', region_name='us-east-1')
t4 = time.perf_counter()
rds.generate_db_auth_token('db.example', 3306, 'app')
t5 = time.perf_counter()
n = 200
for _ in range(n):
    rds.generate_db_auth_token('db.example', 3306, 'app')
t6 = time.perf_counter()
print((t1-t0)*1000, (c1-c0)*1000, (t2-t1)*1000, (t3-t2)*1000, (t4-t3)*1000, (t5-t4)*1000,
      (t6-t5)*1000/n, rss_kb() - base)
"""


def sdk_costs(lib: Path, sdk_path: str, env: dict, repeat: int) -> dict:
    rows = []
    for _ in range(repeat):
        out = subprocess.run([extension_python(), "-I", "-S", "-c", SDK_COST, str(lib), sdk_path], capture_output=True,
                             text=True, check=True, cwd="/", env={**os.environ, **env}).stdout.split()
        rows.append([float(x) for x in out])
    names = ("import_botocore_ms", "import_botocore_cpu_ms", "client_secretsmanager_ms", "client_dynamodb_ms",
             "client_rds_ms", "first_iam_token_ms", "iam_token_ms", "rss_added_kb")
    return {name: summary([row[i] for row in rows]) for i, name in enumerate(names)}


def make_certificates() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="dbk-certs-", dir="/tmp"))

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench CA", "-keyout", "ca.key",
            "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.ext", "-out", "server.pem")
    return directory


def lease_costs(layer: Path, db, env: dict, table: str, moto: MotoServer, connects: int) -> dict:
    """Per new upstream connection: budget_lease_taken -> upstream_connected, from the log (one
    extension; each connect forced by killing the previous upstream)."""
    import pymysql

    from tests.dbkeeper_process import start_dbkeeper
    from tests.mariadb import free_port
    from tests.polling import wait_until

    ext = start_dbkeeper(layer, db, free_port(), extra_env={**env, "DBKEEPER_LOG_LEVEL": "info"})
    try:
        for _ in range(connects):
            with pymysql.connect(**ext.connect_kwargs()) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
            with db.admin() as admin, admin.cursor() as cur:
                for row in db.processlist(user=db.user):
                    cur.execute(f"KILL CONNECTION {row['ID']}")
            wait_until(lambda: not db.processlist(user=db.user))
        took = [line for line in ext.logs() if line.get("event") in ("budget_lease_taken", "upstream_connected")]
    finally:
        ext.stop()
    pairs = [line["ms"] for line in took if line["event"] == "budget_lease_taken"]
    connect_ms = [line["ms"] for line in took if line["event"] == "upstream_connected"]
    return {"lease_acquire_ms": summary(pairs), "upstream_connect_ms": summary(connect_ms)}


def emf_cost(repeat: int = 2000) -> dict:
    sys.path.insert(0, str(REPO / "extension"))
    from dbkeeper.aws.metrics import Counters, EmfWriter

    writer = EmfWriter(Counters(), "dbkeeper", (("service", "fn"),), 100, 60.0, fd=os.open(os.devnull, os.O_WRONLY))
    started = time.process_time()
    for _ in range(repeat):
        writer.counters.sessions += 1
        writer.counters.upstreams_opened += 1
        writer.counters.waited(0.3)
        writer.flush()
    return {"emf_line_cpu_us": (time.process_time() - started) / repeat * 1e6}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", default="main", help="git ref of the BEFORE layer")
    args = parser.parse_args(argv)
    after_layer = REPO / "dist" / "layer-x86_64"
    results: dict = {"runs": args.runs}
    print(f"building the layer of {args.before} ...", flush=True)
    before_root = build_before(args.before)
    before_layer = before_root / "dist" / "layer-x86_64"
    db = MariaDB(extra_args=["--performance-schema=ON"]).start()
    moto = MotoServer()
    try:
        secret = "bench-db"
        moto.client("secretsmanager").create_secret(Name=secret, SecretString=json.dumps(
            {"username": db.user, "password": db.password, "host": db.host, "port": db.port, "dbname": db.database}))
        moto.create_budget_table("bench-budget")
        aws_env = moto.extension_env()
        certs = make_certificates()
        from tests.aws_endpoint import REGION
        from tests.rds_iam_front import RdsIamFront

        front = RdsIamFront(db, str(certs / "server.pem"), str(certs / "server.key"), moto.role_credentials(), REGION)
        iam_env = {**aws_env, "DBKEEPER_DB_HOST": "localhost", "DBKEEPER_DB_PORT": str(front.port),
                   "DBKEEPER_DB_IAM_AUTH": "true", "DBKEEPER_DB_TLS": "required",
                   "DBKEEPER_DB_TLS_CA": str(certs / "ca.pem"), "DBKEEPER_CLIENT_PASSWORD": "local"}
        variants = {
            "before (main)": (before_layer, {}),
            "after, default": (after_layer, {}),
            "after, DBKEEPER_METRICS=off": (after_layer, {"DBKEEPER_METRICS": "off"}),
            "after, secret": (after_layer, {**aws_env, "DBKEEPER_DB_SECRET": secret, "DBKEEPER_DB_PASSWORD": ""}),
            "after, budget": (after_layer, {**aws_env, "DBKEEPER_BUDGET_TABLE": "bench-budget",
                                            "DBKEEPER_BUDGET_MAX": "50"}),
            "after, IAM token (via TLS front)": (after_layer, iam_env),
            "after, secret + budget": (after_layer, {**aws_env, "DBKEEPER_DB_SECRET": secret,
                                                     "DBKEEPER_DB_PASSWORD": "",
                                                     "DBKEEPER_BUDGET_TABLE": "bench-budget",
                                                     "DBKEEPER_BUDGET_MAX": "50"}),
        }
        print(f"cold starts: {args.runs} x {len(variants)}, interleaved ...", flush=True)
        for layer, env in variants.values():
            one_cold_start(layer, db, extra_env=env)  # warm-up
        samples = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, (layer, env) in variants.items():
                samples[name].append(one_cold_start(layer, db, extra_env=env))
        results["cold_start"] = {name: {key: summary([s[key] for s in runs if s.get(key) is not None]) for key in KEYS}
                                 for name, runs in samples.items()}
        print("imports ...", flush=True)
        results["imports"] = {"before (main)": import_times(before_layer / "dbkeeper" / "lib", 7),
                              "after": import_times(after_layer / "dbkeeper" / "lib", 7)}
        print("SDK ...", flush=True)
        results["sdk"] = sdk_costs(after_layer / "dbkeeper" / "lib", aws_env["DBKEEPER_AWS_SDK_PATH"], aws_env, 3)
        results["sdk_full_layer"] = sdk_costs(REPO / "dist" / "layer-full-x86_64" / "dbkeeper" / "lib", "", aws_env, 3)
        print("leases ...", flush=True)
        results["lease"] = lease_costs(after_layer, db, {**aws_env, "DBKEEPER_BUDGET_TABLE": "bench-budget",
                                                         "DBKEEPER_BUDGET_MAX": "50"}, "bench-budget", moto, 10)
        results["emf"] = emf_cost()
    finally:
        moto.stop()
        db.stop()
        db.cleanup()
        shutil.rmtree(before_root, ignore_errors=True)

    print()
    title = f"cold start (p50 of {args.runs})"
    print(f"{title:34} {'registered':>11} {'upstream ready':>15} {'CPU at ready':>13} {'VmHWM':>9} {'VmRSS':>9}")
    for name, row in results["cold_start"].items():
        p50 = {key: value["p50"] for key, value in row.items()}
        print(f"{name:34} {p50['spawn_to_registered_ms']:9.1f}ms {p50['spawn_to_upstream_ready_ms']:13.1f}ms "
              f"{p50['cpu_at_ready_ms']:11.1f}ms {p50['vm_hwm_kb'] / 1024:7.1f}MB {p50['vm_rss_kb'] / 1024:7.1f}MB")
    for name, row in results["imports"].items():
        print(f"imports {name:26} before registering {row['before_registering_ms']:.1f} ms, after "
              f"{row['after_registering_ms']:.1f} ms, no botocore/urllib3 loaded: {row['no_sdk_loaded']}")
    for label in ("sdk", "sdk_full_layer"):
        row = results[label]
        print(f"{label}: import botocore {row['import_botocore_ms']['p50']:.0f} ms "
              f"({row['import_botocore_cpu_ms']['p50']:.0f} ms CPU), "
              f"clients: secretsmanager {row['client_secretsmanager_ms']['p50']:.0f} ms, dynamodb "
              f"{row['client_dynamodb_ms']['p50']:.0f} ms, rds {row['client_rds_ms']['p50']:.0f} ms; IAM token first "
              f"{row['first_iam_token_ms']['p50']:.2f} ms, then {row['iam_token_ms']['p50'] * 1000:.0f} us; +RSS "
              f"{row['rss_added_kb']['p50'] / 1024:.1f} MB")
    lease = results["lease"]
    print(f"lease per new upstream connection (moto, loopback): {lease['lease_acquire_ms']['p50']:.1f} ms p50 "
          f"(max {lease['lease_acquire_ms']['max']:.1f}); "
          f"the connect itself {lease['upstream_connect_ms']['p50']:.1f} ms")
    print(f"EMF line: {results['emf']['emf_line_cpu_us']:.1f} us CPU")
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    path = out / f"aws-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
