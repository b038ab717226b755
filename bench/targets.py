"""The endpoints under test, all in front of the same throwaway MariaDB:

    direct_tcp    127.0.0.1:<db port>                         (the reference)
    direct_unix   the server's own Unix socket
    dbk_tcp       dbkeeper (built layer, real extension process in the Lambda sandbox), TCP
    dbk_unix      dbkeeper's 0600 Unix socket
    socat_tcp     socat TCP-LISTEN -> TCP, nodelay on both sides (the raw-relay reference)
    socat_unix    socat UNIX-LISTEN -> TCP (the bound for "a relay behind a Unix socket")
    uvloop_tcp    bench/minirelay.py: a bare uvloop Protocol relay (the floor for a Python relay)
    dbkv_tcp      only with --variant-env: a second dbkeeper, same layer, extra environment (A/B)
    dbkb_tcp      only with --baseline-layer: a dbkeeper from ANOTHER built layer tree (snapshotted
                  like the main one; e.g. today's release), same settings as dbk_tcp (A/B of code)
    dbkb_unix     its Unix socket (so that it serves the same clients as the dbk_tcp/dbk_unix process)

plus, for the connect-cost comparison, a second MariaDB that offers TLS (self-signed certificate)
and a second dbkeeper whose upstream connection to it negotiates TLS; and, since a DB on loopback
is closer than any real one, the same pair across an emulated network (bench/netdelay.py, a
user-space delay line of a fixed RTT: this kernel has no netem):

    direct_tcp_tlsdb_net   client -> network -> TLS-offering MariaDB
    dbk_tcp_tlsdb_net      client -> dbkeeper -> network (TLS upstream) -> the same MariaDB
    dbkb_tcp_tlsdb_net     the same through the --baseline-layer dbkeeper (only with that flag)

and a third MariaDB that REQUIRES TLS (require_secure_transport, a certificate from a throwaway CA:
bench/tlsca.py), like RDS with TLS enforced, behind its own delay line:

    direct_tlsreq_net      client (ssl_ca + verify cert and host name) -> network -> that MariaDB
    dbk_tlsreq_net         client (driver defaults) -> dbkeeper (DBKEEPER_DB_TLS=required, the CA)
                           -> network -> that MariaDB
    dbk_tlsreq_net_tlsargs the same through a second dbkeeper, but the client keeps the direct path's
                           TLS settings (a function whose DB_SSL_CA stays set when the layer is
                           attached): PyMySQL builds its TLS context on every connect and, offered no
                           TLS on 127.0.0.1, connects in plain text

Reuses tests/mariadb.py (MariaDB, free_port) and tests/dbkeeper_process.py (start_dbkeeper).
The layer is snapshotted (copied) first, so a ./build.sh running meanwhile can't change what is
measured half-way; its fingerprint goes into the results.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.dbkeeper_process import RunningDbkeeper, start_dbkeeper
from tests.mariadb import MariaDB, free_port

from . import procstat, tlsca

REPO = Path(__file__).resolve().parent.parent
LAYER = REPO / "dist" / "layer-x86_64"
_READY_TIMEOUT = 10.0


@dataclass
class Endpoint:
    name: str
    kwargs: dict                 # PyMySQL connect() address: host/port or unix_socket
    relay_pid: int | None = None  # process whose CPU is the relay's (socat: its tree)
    relay: str = "none"          # none / dbkeeper / socat / uvloop
    tls_db: bool = False         # behind it is the TLS-offering server
    tlsreq_db: bool = False      # behind it is the TLS-requiring server

    def cpu_ns(self) -> int:
        if self.relay_pid is None:
            return 0
        return procstat.tree_cpu_ns(self.relay_pid) if self.relay == "socat" else procstat.cpu_ns(self.relay_pid)

    def minor_faults(self) -> int:
        if self.relay_pid is None:
            return 0
        return procstat.tree_minor_faults(self.relay_pid)


@dataclass
class Environment:
    db: MariaDB
    dbk: RunningDbkeeper
    endpoints: dict[str, Endpoint]
    tls_db: MariaDB | None = None
    tls_dbk: RunningDbkeeper | None = None
    net_dbk: RunningDbkeeper | None = None      # upstream across the emulated network
    net_rtt_ms: float = 0.0
    variant_dbk: RunningDbkeeper | None = None  # same layer, extra environment (--variant-env)
    baseline_dbk: RunningDbkeeper | None = None      # another layer tree (--baseline-layer)
    baseline_net_dbk: RunningDbkeeper | None = None  # the same, TLS upstream across the emulated network
    socats: list[subprocess.Popen] = field(default_factory=list)  # and the minirelay
    workdir: str = ""
    dbk_connected: dict = field(default_factory=dict)
    tls_dbk_connected: dict = field(default_factory=dict)
    tlsreq_db: MariaDB | None = None          # requires TLS (require_secure_transport)
    tlsreq_dbk: RunningDbkeeper | None = None  # DBKEEPER_DB_TLS=required to it, across its delay line
    tlsreq_dbk_tlsargs: RunningDbkeeper | None = None  # the same, for clients that keep their TLS settings
    tlsreq_dbk_connected: dict = field(default_factory=dict)
    tlsreq_rtt_ms: float = 0.0

    def credentials(self, tls: bool = False, tlsreq: bool = False) -> dict:
        db = self.tlsreq_db if tlsreq else self.tls_db if tls else self.db
        return dict(user=db.user, password=db.password, database=db.database)

    def connect_kwargs(self, endpoint: Endpoint) -> dict:
        return dict(endpoint.kwargs, **self.credentials(tls=endpoint.tls_db, tlsreq=endpoint.tlsreq_db))

    def close(self) -> dict:
        """Stop everything; returns the dbkeeper instances' shutdown reports (as dicts)."""
        reports = {}
        for proc in self.socats:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for name, dbk in (("dbk", self.dbk), ("tls_dbk", self.tls_dbk), ("net_dbk", self.net_dbk),
                          ("variant_dbk", self.variant_dbk), ("baseline_dbk", self.baseline_dbk),
                          ("baseline_net_dbk", self.baseline_net_dbk), ("tlsreq_dbk", self.tlsreq_dbk),
                          ("tlsreq_dbk_tlsargs", self.tlsreq_dbk_tlsargs)):
            if dbk is not None:
                try:
                    reports[name] = dbk.stop()
                except Exception as exc:  # keep cleaning up
                    reports[name] = repr(exc)
        for db in (self.db, self.tls_db, self.tlsreq_db):
            if db is not None:
                db.stop()
                db.cleanup()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return reports


def layer_problem(layer: Path) -> str | None:
    """Why `layer` is not an unpacked dbkeeper layer tree (like dist/layer-x86_64), or None."""
    launcher = layer / "extensions" / "dbkeeper"
    main = layer / "dbkeeper" / "lib" / "dbkeeper" / "main.py"
    if not layer.is_dir():
        return f"{layer} is not a directory"
    if not os.access(launcher, os.X_OK):
        return f"{layer} has no executable extensions/dbkeeper"
    if not main.exists():
        return f"{layer} has no dbkeeper/lib/dbkeeper/main.py"
    return None


def fingerprint(layer: Path) -> str:
    """sha256 over the layer's launcher, bootstrap and dbkeeper package (paths and contents)."""
    digest = hashlib.sha256()
    files = [layer / "extensions" / "dbkeeper", layer / "dbkeeper" / "bootstrap.py"]
    files += sorted((layer / "dbkeeper" / "lib" / "dbkeeper").rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(layer)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def snapshot_layer(layer: Path = LAYER) -> tuple[Path, str]:
    """A private copy of the built layer tree (removed by the caller) and its fingerprint."""
    target = Path(tempfile.mkdtemp(prefix="dbkb-layer-", dir="/tmp")) / "opt"
    shutil.copytree(layer, target, symlinks=True)
    return target, fingerprint(target)


def _wait_connectable(family: int, address, timeout: float = _READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.connect(address)
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {address} after {timeout}s") from exc
        finally:
            probe.close()
        time.sleep(0.01)  # polling interval, bounded by the deadline


def _socat(listen: str, connect: str) -> subprocess.Popen:
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat not installed: apt-get install socat")
    return subprocess.Popen([socat, listen, connect], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def make_cert(directory: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (CN and IP SAN) and its key."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def _bench_process(module: str, *args) -> tuple[subprocess.Popen, int]:
    """bench.minirelay or bench.netdelay on a free port, once it says it is ready."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", module, str(port), *map(str, args)],
                            cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True, text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{module} did not start")
    return proc, port


def _start_dbkeeper(layer: Path, db: MariaDB, extra: dict | None = None) -> tuple[RunningDbkeeper, dict]:
    env = {"DBKEEPER_LOG_LEVEL": "info"}  # the production default: no per-session debug lines
    env.update(extra or {})
    dbk = start_dbkeeper(layer, db, free_port(), env)
    connected = dbk.wait_for_event("upstream_connected", timeout=_READY_TIMEOUT)
    return dbk, connected


def start(layer: Path, with_tls: bool = True, variant_env: dict | None = None, net_rtt_ms: float = 1.0,
          with_tlsreq: bool = False, baseline_layer: Path | None = None) -> Environment:
    """baseline_layer: a (snapshotted) layer tree to run beside `layer` as dbkb_tcp (and, with TLS and a
    network RTT, dbkb_tcp_tlsdb_net), with the same settings as dbk_tcp (dbk_tcp_tlsdb_net)."""
    workdir = tempfile.mkdtemp(prefix="dbkb-", dir="/tmp")  # short: Unix socket path limit
    db = MariaDB().start()
    env = None
    try:
        dbk, connected = _start_dbkeeper(layer, db)
        env = Environment(db=db, dbk=dbk, endpoints={}, workdir=workdir, dbk_connected=connected)
        socat_port = free_port()
        socat_path = os.path.join(workdir, "socat.sock")
        env.socats.append(_socat(f"TCP-LISTEN:{socat_port},bind=127.0.0.1,fork,reuseaddr,nodelay",
                                 f"TCP:127.0.0.1:{db.port},nodelay"))
        env.socats.append(_socat(f"UNIX-LISTEN:{socat_path},fork,mode=600",
                                 f"TCP:127.0.0.1:{db.port},nodelay"))
        mini, mini_port = _bench_process("bench.minirelay", db.port)
        env.socats.append(mini)
        _wait_connectable(socket.AF_INET, ("127.0.0.1", socat_port))
        _wait_connectable(socket.AF_UNIX, socat_path)
        e = env.endpoints
        e["direct_tcp"] = Endpoint("direct_tcp", dict(host="127.0.0.1", port=db.port))
        e["direct_unix"] = Endpoint("direct_unix", dict(unix_socket=db.socket))
        e["dbk_tcp"] = Endpoint("dbk_tcp", dict(host="127.0.0.1", port=dbk.port), dbk.pid, "dbkeeper")
        e["dbk_unix"] = Endpoint("dbk_unix", dict(unix_socket=dbk.unix_socket), dbk.pid, "dbkeeper")
        e["socat_tcp"] = Endpoint("socat_tcp", dict(host="127.0.0.1", port=socat_port), env.socats[0].pid, "socat")
        e["socat_unix"] = Endpoint("socat_unix", dict(unix_socket=socat_path), env.socats[1].pid, "socat")
        e["uvloop_tcp"] = Endpoint("uvloop_tcp", dict(host="127.0.0.1", port=mini_port), mini.pid, "uvloop")
        if variant_env:
            env.variant_dbk, _ = _start_dbkeeper(layer, db, variant_env)
            e["dbkv_tcp"] = Endpoint("dbkv_tcp", dict(host="127.0.0.1", port=env.variant_dbk.port),
                                     env.variant_dbk.pid, "dbkeeper")
        if baseline_layer is not None:
            env.baseline_dbk, _ = _start_dbkeeper(baseline_layer, db)
            e["dbkb_tcp"] = Endpoint("dbkb_tcp", dict(host="127.0.0.1", port=env.baseline_dbk.port),
                                     env.baseline_dbk.pid, "dbkeeper")
            e["dbkb_unix"] = Endpoint("dbkb_unix", dict(unix_socket=env.baseline_dbk.unix_socket),
                                      env.baseline_dbk.pid, "dbkeeper")
        if with_tls:
            cert, key = make_cert(workdir)
            env.tls_db = MariaDB(extra_args=[f"--ssl-cert={cert}", f"--ssl-key={key}"]).start()
            env.tls_dbk, env.tls_dbk_connected = _start_dbkeeper(layer, env.tls_db, {"DBKEEPER_DB_TLS_CA": cert})
            if not env.tls_dbk_connected.get("tls"):
                raise RuntimeError(f"dbkeeper did not negotiate TLS with the TLS server: {env.tls_dbk_connected}")
            e["direct_tcp_tlsdb"] = Endpoint("direct_tcp_tlsdb", dict(host="127.0.0.1", port=env.tls_db.port),
                                             tls_db=True)
            e["dbk_tcp_tlsdb"] = Endpoint("dbk_tcp_tlsdb", dict(host="127.0.0.1", port=env.tls_dbk.port),
                                          env.tls_dbk.pid, "dbkeeper", tls_db=True)
            if net_rtt_ms > 0:
                net, net_port = _bench_process("bench.netdelay", env.tls_db.port, net_rtt_ms)
                env.socats.append(net)
                env.net_rtt_ms = net_rtt_ms
                env.net_dbk, connected = _start_dbkeeper(layer, env.tls_db, {"DBKEEPER_DB_TLS_CA": cert,
                                                                             "DBKEEPER_DB_PORT": str(net_port)})
                if not connected.get("tls"):
                    raise RuntimeError(f"dbkeeper did not negotiate TLS across the network: {connected}")
                e["direct_tcp_tlsdb_net"] = Endpoint("direct_tcp_tlsdb_net", dict(host="127.0.0.1", port=net_port),
                                                     tls_db=True)
                e["dbk_tcp_tlsdb_net"] = Endpoint("dbk_tcp_tlsdb_net", dict(host="127.0.0.1", port=env.net_dbk.port),
                                                  env.net_dbk.pid, "dbkeeper", tls_db=True)
                if baseline_layer is not None:
                    env.baseline_net_dbk, connected = _start_dbkeeper(
                        baseline_layer, env.tls_db, {"DBKEEPER_DB_TLS_CA": cert, "DBKEEPER_DB_PORT": str(net_port)})
                    if not connected.get("tls"):
                        raise RuntimeError(f"the baseline dbkeeper did not negotiate TLS across the network: "
                                           f"{connected}")
                    e["dbkb_tcp_tlsdb_net"] = Endpoint("dbkb_tcp_tlsdb_net",
                                                       dict(host="127.0.0.1", port=env.baseline_net_dbk.port),
                                                       env.baseline_net_dbk.pid, "dbkeeper", tls_db=True)
        if with_tlsreq:
            _start_tls_required(env, layer, net_rtt_ms if net_rtt_ms > 0 else 1.0)
        return env
    except BaseException:
        if env is not None:
            env.close()
        else:
            db.stop()
            db.cleanup()
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _start_tls_required(env: Environment, layer: Path, rtt_ms: float) -> None:
    """The TLS-requiring MariaDB behind its own delay line, and a dbkeeper requiring verified TLS to it."""
    certs = tlsca.make_ca(os.path.join(env.workdir, "ca"), ips=["127.0.0.1"])
    env.tlsreq_db = MariaDB(extra_args=[*certs.mariadb_args(), "--require-secure-transport=ON"]).start()
    net, net_port = _bench_process("bench.netdelay", env.tlsreq_db.port, rtt_ms)
    env.socats.append(net)
    env.tlsreq_rtt_ms = rtt_ms
    settings = {"DBKEEPER_DB_TLS": "required", "DBKEEPER_DB_TLS_CA": str(certs.ca), "DBKEEPER_DB_PORT": str(net_port)}
    env.tlsreq_dbk, env.tlsreq_dbk_connected = _start_dbkeeper(layer, env.tlsreq_db, settings)
    env.tlsreq_dbk_tlsargs, connected = _start_dbkeeper(layer, env.tlsreq_db, settings)
    for running in (env.tlsreq_dbk_connected, connected):
        if not running.get("tls"):
            raise RuntimeError(f"dbkeeper did not negotiate TLS with the TLS-requiring server: {running}")
    client_tls = dict(ssl_ca=str(certs.ca), ssl_verify_cert=True, ssl_verify_identity=True)
    e = env.endpoints
    e["direct_tlsreq_net"] = Endpoint("direct_tlsreq_net", dict(host="127.0.0.1", port=net_port, **client_tls),
                                      tlsreq_db=True)
    e["dbk_tlsreq_net"] = Endpoint("dbk_tlsreq_net", dict(host="127.0.0.1", port=env.tlsreq_dbk.port),
                                   env.tlsreq_dbk.pid, "dbkeeper", tlsreq_db=True)
    e["dbk_tlsreq_net_tlsargs"] = Endpoint("dbk_tlsreq_net_tlsargs",
                                           dict(host="127.0.0.1", port=env.tlsreq_dbk_tlsargs.port, **client_tls),
                                           env.tlsreq_dbk_tlsargs.pid, "dbkeeper", tlsreq_db=True)


def server_versions(env: Environment) -> dict:
    conn = env.db.admin()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            version = cur.fetchone()[0]
    finally:
        conn.close()
    out = {"mariadb": version}
    if env.tls_db is not None:
        conn = env.tls_db.admin()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL VARIABLES LIKE 'have_ssl'")
                out["tls_db_have_ssl"] = cur.fetchone()[1]
        finally:
            conn.close()
    return out
