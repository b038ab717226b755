"""`python -m demo`: the sample function without and with the dbkeeper layer, side by side.

For each handler of sample_function/app.py (connect-per-invoke, global connection), each function
memory size (128 MB and 1,769 MB by default: Lambda gives CPU in proportion to memory) and each
setup (plain function; function + dbkeeper layer + AWS_LAMBDA_EXEC_WRAPPER), it starts N local
Lambda sandboxes, invokes each M times (sandboxes run concurrently, invokes within one sandbox one
at a time, like Lambda), then reclaims them the way Lambda does: frozen, then destroyed with the
network cut first, so no FIN reaches the database (lambda_sandbox's reclaim(), in a network
namespace). With the layer the extension is subscribed to SHUTDOWN, so the spin-down delivers it
first (as Lambda does); without extensions nothing is told. Then it prints a table.

The database, like RDS in another availability zone: a throwaway MariaDB (tests/mariadb.py) that
requires TLS with a certificate from a throwaway CA (bench/tlsca.py), behind an emulated network of
1 ms RTT (bench/netdelay.py). The function verifies the certificate (DB_SSL_CA); with the layer,
dbkeeper does (DBKEEPER_DB_TLS=required). `--loopback`: the same MariaDB on this host without the
network and without TLS. DB_HOST set: that database, as it is (see demo/README.md).
"""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python demo/main.py` as well as `python -m demo`
    sys.path.insert(0, str(REPO))

HANDLERS = ("handler_connect_per_invoke", "handler_global_connection")
HANDLER_TITLES = {"handler_connect_per_invoke": "connect per invoke", "handler_global_connection": "global connection"}
WRAPPER = "/opt/dbkeeper-wrapper"
LOG_LINES = 20  # of a failing sandbox, printed with the first error
CA_FILE = "db-ca.pem"  # the database's CA bundle in the function's package (as with the RDS bundle)
MEMORY_SIZES = (128, 1769)  # MB: about 1/14 of a vCPU, and one whole vCPU
STABLE_S = 0.3  # the sessions still held are counted once unchanged for this long


# --------------------------------------------------------------------------- the database


class Probe:
    """Observes the database from outside: the `Connections` status counter and the app user's sessions."""

    def connections_opened(self) -> int:
        raise NotImplementedError

    def session_ids(self, user: str) -> set[int]:
        raise NotImplementedError

    def kill(self, ids: set[int]) -> None:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ThrowawayProbe(Probe):
    def __init__(self, server: Any) -> None:
        self.server = server

    def connections_opened(self) -> int:
        return self.server.connections_opened()

    def session_ids(self, user: str) -> set[int]:
        return {int(r["ID"]) for r in self.server.processlist(user)}

    def kill(self, ids: set[int]) -> None:
        for i in ids:
            try:
                self.server.query(f"KILL CONNECTION {int(i)}")
            except Exception:
                pass  # already gone

    def version(self) -> str:
        return str(self.server.query("SELECT VERSION() AS v")[0]["v"])


class ExternalProbe(Probe):
    """One long-lived connection as the app user (it sees its own user's sessions without PROCESS)."""

    def __init__(self, host: str, port: int, user: str, password: str, database: str,
                 tls: Optional[dict[str, Any]] = None) -> None:
        import pymysql

        self._conn = pymysql.connect(host=host, port=port, user=user, password=password, database=database,
                                     autocommit=True, connect_timeout=10, **(tls or {}))
        self._lock = threading.Lock()

    def _rows(self, sql: str, args: Any = None) -> list[tuple]:
        with self._lock, self._conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def connections_opened(self) -> int:
        return int(self._rows("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1])

    def session_ids(self, user: str) -> set[int]:
        rows = self._rows("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND ID <> CONNECTION_ID()",
                          (user,))
        return {int(r[0]) for r in rows}

    def kill(self, ids: set[int]) -> None:
        for i in ids:
            try:
                self._rows(f"KILL CONNECTION {int(i)}")
            except Exception:
                pass

    def version(self) -> str:
        return str(self._rows("SELECT VERSION()")[0][0])

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:
            pass


class DemoError(Exception):
    """A reason the demo cannot run, printed as one line: `demo: <message>`."""


@dataclass
class Database:
    host: str  # as this machine reaches it
    port: int
    user: str
    password: str
    database: str
    probe: Probe
    description: str
    throwaway: bool
    server: Any = None
    tls_ca: Optional[Path] = None  # clients must verify the server against this CA (TLS required)
    # a fixed address sandboxes reach it at (the emulated network's, which its certificate names)
    sandbox_host: Optional[str] = None
    delay_line: Any = None  # subprocess.Popen of bench.netdelay

    def close(self) -> None:
        self.probe.close()
        if self.delay_line is not None and self.delay_line.poll() is None:
            self.delay_line.kill()
            self.delay_line.wait()
        if self.server is not None:
            self.server.cleanup()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_local_address(host: str) -> bool:
    """An address of this machine (binding to it works)."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, addr in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((addr[0], 0))
                return True
        except OSError:
            continue
    return False


def primary_address() -> Optional[str]:
    """This machine's address on its default route (no packet is sent), or None."""
    for probe in ("198.51.100.1", "203.0.113.1", "8.8.8.8"):  # UDP connect = a route lookup only
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                addr = s.getsockname()[0]
        except OSError:
            continue
        if not ipaddress.ip_address(addr).is_loopback and addr != "0.0.0.0":
            return addr
    return None


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


DB_VARIABLES = ("DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "DB_SSL_CA")


@dataclass(frozen=True)
class ExternalSettings:
    host: str
    port: int
    user: str
    password: str
    database: str
    ca: Optional[Path]


def database_settings(args: argparse.Namespace) -> Optional[ExternalSettings]:
    """The database the DB_* variables select (None: the demo starts its own), checked before anything starts."""
    env = os.environ
    if not env.get("DB_HOST"):
        stray = [k for k in DB_VARIABLES if env.get(k)]
        if stray:
            raise DemoError(f"{', '.join(stray)} set but DB_HOST is not: set DB_HOST to use your database, "
                            "or unset them for the demo's own")
        return None
    if args.loopback:
        raise DemoError("--loopback places the demo's own database; DB_HOST selects yours: use one of them")
    missing = [k for k in ("DB_USER", "DB_NAME") if not env.get(k)]
    if missing:
        raise DemoError(f"DB_HOST is set, so the demo uses that database; also set {', '.join(missing)}")
    try:
        port = int(env.get("DB_PORT") or 3306)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise DemoError(f"DB_PORT must be a TCP port number, not {env['DB_PORT']!r}") from None
    ca = None
    if env.get("DB_SSL_CA"):
        ca = Path(env["DB_SSL_CA"]).resolve()
        if not ca.is_file():
            raise DemoError(f"DB_SSL_CA={env['DB_SSL_CA']}: no such file")
    return ExternalSettings(env["DB_HOST"], port, env["DB_USER"], env.get("DB_PASSWORD", ""), env["DB_NAME"], ca)


def _external_database(s: ExternalSettings) -> Database:
    """The database in DB_HOST and friends, used as it is (its own network, its own TLS)."""
    tls = {"ssl_ca": str(s.ca), "ssl_verify_cert": True, "ssl_verify_identity": True} if s.ca else {}
    try:
        probe = ExternalProbe(s.host, s.port, s.user, s.password, s.database, tls)
    except Exception as exc:  # noqa: BLE001 - the driver's message is the useful part
        raise DemoError(f"cannot connect to the database in DB_HOST ({s.host}:{s.port}): {_one_line(exc)}") from None
    how = "verified TLS (DB_SSL_CA)" if s.ca else "no TLS asked for (DB_SSL_CA not set)"
    return Database(s.host, s.port, s.user, s.password, s.database, probe,
                    f"{probe.version()} at {s.host}:{s.port} (from DB_HOST), reached as it is, {how}", throwaway=False,
                    tls_ca=s.ca)


def _start_delay_line(listen: str, upstream_port: int, rtt_ms: float) -> tuple[Any, int]:
    import subprocess

    from tests.mariadb import free_port

    port = free_port(listen)
    argv = [sys.executable, "-m", "bench.netdelay", str(port), str(upstream_port), str(rtt_ms), listen]
    proc = subprocess.Popen(argv,
                            cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        raise DemoError(f"the emulated network (bench/netdelay.py) did not start on {listen}:{port}")
    return proc, port


def open_database(args: argparse.Namespace, external: Optional[ExternalSettings], netns_ok: bool,
                  workdir: Path) -> Database:
    """The external database (DB_HOST), or a throwaway one: behind the emulated network and requiring
    verified TLS by default, on this host's loopback without TLS with --loopback."""
    if external is not None:
        return _external_database(external)
    from tests.mariadb import MariaDB, MariaDBNotInstalled

    if args.loopback:
        try:
            server = MariaDB(bind_address="0.0.0.0" if netns_ok else "127.0.0.1")
        except MariaDBNotInstalled as exc:
            raise DemoError(f"{exc} (or point the demo at a database with DB_HOST)") from None
        server.start()
        probe = ThrowawayProbe(server)
        return Database(server.host, server.port, server.user, server.password, server.database, probe,
                        f"throwaway MariaDB {probe.version()} on this host (port {server.port}), no TLS (--loopback)",
                        throwaway=True, server=server)

    # Sandboxes in network namespaces reach this host at its primary address (their default route
    # leads here); the certificate must name the address they connect to, so it is the same for all.
    address = primary_address() if netns_ok else "127.0.0.1"
    if address is None:
        raise DemoError("no non-loopback address on this machine for sandboxes to reach the database "
                        "(use --no-netns)")
    from bench.tlsca import make_ca

    certs = make_ca(workdir / "ca", ips=sorted({address, "127.0.0.1"}, key=lambda a: a != address))
    try:
        server = MariaDB(bind_address="127.0.0.1", extra_args=[*certs.mariadb_args(), "--require-secure-transport=ON"])
    except MariaDBNotInstalled as exc:
        raise DemoError(f"{exc} (or point the demo at a database with DB_HOST)") from None
    server.start()
    db = Database(address, 0, server.user, server.password, server.database, ThrowawayProbe(server), "",
                  throwaway=True, server=server, tls_ca=certs.ca, sandbox_host=address)
    try:
        db.delay_line, db.port = _start_delay_line(address, server.port, args.rtt_ms)
    except BaseException:
        db.close()
        raise
    db.description = (f"throwaway MariaDB {db.probe.version()} requiring TLS "
                      "(certificate of a throwaway CA, verified), "
                      f"behind an emulated network of {args.rtt_ms:g} ms RTT at {address}:{db.port} "
                      "(bench/netdelay.py)")
    return db


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# --------------------------------------------------------------------------- sandboxes


@dataclass
class Setup:
    """How sandboxes are made for this run."""
    kind: str  # "lambda_sandbox" or "aws-lambda-rie"
    netns: bool
    db_host_in_sandbox: Optional[str]  # None: the Sandbox's own host_address (known after start)
    note: str = ""
    lambda_paths: bool = False  # Sandbox: own mount namespace with /opt, /var/task and a private /tmp

    @property
    def description(self) -> str:
        parts = []
        if self.netns:
            parts.append("own network namespace")
        if self.lambda_paths or self.kind == "aws-lambda-rie":
            parts.append("own /opt, /var/task, /tmp")
        return self.kind + (f" ({', '.join(parts)})" if parts else "")


def _lambda_paths_supported() -> bool:
    from lambda_sandbox import Sandbox

    return ("lambda_paths" in inspect.signature(Sandbox).parameters and os.geteuid() == 0
            and shutil.which("unshare") is not None)


def choose_setup(args: argparse.Namespace, db: Database) -> Setup:
    setup = _choose_setup(args, db)
    setup.lambda_paths = not args.rie and not args.no_lambda_paths and _lambda_paths_supported()
    return setup


def _choose_setup(args: argparse.Namespace, db: Database) -> Setup:
    from lambda_sandbox import netns_unavailable_reason

    kind = "aws-lambda-rie" if args.rie else "lambda_sandbox"
    reason = "--no-netns given" if args.no_netns else netns_unavailable_reason()
    if reason is None and not db.throwaway and not (_is_loopback(db.host) or _is_local_address(db.host)):
        reason = f"DB_HOST={db.host} is not on this machine and sandbox namespaces have no route out (no NAT)"
    if reason is None:
        if db.sandbox_host is not None:
            return Setup(kind, True, db.sandbox_host)
        if args.rie or not db.throwaway:
            # the address must be known before the sandbox starts (RIE) or be one the DB listens on
            target = db.host if not _is_loopback(db.host) else primary_address()
            if target is None:
                reason = "no non-loopback address on this machine for sandboxes to reach the database"
            elif not _reachable(target, db.port):
                reason = (f"the database does not accept connections on {target}:{db.port} "
                          "(it must listen on an address sandboxes can reach, e.g. 0.0.0.0)")
            else:
                return Setup(kind, True, target)
        else:
            return Setup(kind, True, None)
    return Setup(kind, False, db.host,
                 note=f"network namespaces not used ({reason}): sandboxes are shut down instead of reclaimed, "
                      "so the kernel closes their connections (FIN) and none stay behind in any column")


@dataclass
class Phase:
    handler: str
    layer: bool
    sandboxes: int
    memory_mb: int
    invocations: int = 0
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    connections_opened: int = 0
    connection_ids: set[int] = field(default_factory=set)
    warm_ms: list[float] = field(default_factory=list)
    cold_ms: list[float] = field(default_factory=list)
    held_after: int = 0
    ending: str = ""  # "reclaim" or "shutdown"
    shutdown_ms: list[float] = field(default_factory=list)
    wrapper_pointed: int = 0  # sandboxes whose runtime log says the wrapper pointed DB_HOST at the extension
    error_logs: list[str] = field(default_factory=list)  # the sandbox's last log lines at the first error
    cpu_ms: list[float] = field(default_factory=list)  # per sandbox: CPU of all its processes per warm invocation
    cpu_quota_us: Optional[int] = None  # the sandboxes' CFS quota per 100 ms (None: CPU not limited)
    cpu_unlimited_reason: Optional[str] = None

    @property
    def label(self) -> str:
        return "with dbkeeper" if self.layer else "without"

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["connection_ids"] = len(self.connection_ids)
        d["p50_ms"] = percentile(self.warm_ms, 50)
        d["p99_ms"] = percentile(self.warm_ms, 99)
        d["cold_p50_ms"] = percentile(self.cold_ms, 50)
        d["cpu_ms_per_warm_invocation"] = percentile(self.cpu_ms, 50)
        del d["warm_ms"], d["cold_ms"], d["shutdown_ms"], d["error_logs"], d["cpu_ms"]
        return d


def percentile(values: list[float], p: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))  # nearest rank
    return ordered[k]


class Progress:
    """One status line on stderr (rewritten in place on a terminal, one line per phase otherwise)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._lock = threading.Lock()
        self._last = 0.0
        self._width = 0

    def update(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        with self._lock:
            now = time.monotonic()
            if self.tty:
                if not force and now - self._last < 0.1:
                    return
                self._last = now
                pad = max(0, self._width - len(text))
                sys.stderr.write("\r" + text + " " * pad)
                self._width = len(text)
                sys.stderr.flush()
            elif force:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.tty and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()
            self._width = 0


class Runner:
    def __init__(self, args: argparse.Namespace, db: Database, setup: Setup, task_dir: Path, layer_dir: Path,
                 progress: Progress) -> None:
        self.args = args
        self.db = db
        self.setup = setup
        self.task_dir = task_dir
        self.layer_dir = layer_dir
        self.progress = progress
        self.empty_opt = Path(tempfile.mkdtemp(prefix="dbkeeper-demo-opt-"))  # a function without layers
        self.scratch = Path(tempfile.mkdtemp(prefix="dbkd-", dir="/tmp"))  # short: Unix socket paths

    def cleanup(self) -> None:
        shutil.rmtree(self.empty_opt, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _env(self, layer: bool, index: int, ca_path: Optional[str]) -> dict[str, str]:
        from tests.mariadb import free_port

        sock_dir = self.scratch / f"{'L' if layer else 'P'}{index}-{time.monotonic_ns() % 10**9}"
        sock_dir.mkdir()
        env = {
            "DB_PORT": str(self.db.port),
            "DB_USER": self.db.user,
            "DB_PASSWORD": self.db.password,
            "DB_NAME": self.db.database,
            # /tmp is shared by the local sandboxes (on Lambda each has its own): one socket each
            "DBKEEPER_SOCKET": str(sock_dir / "dbkeeper.sock"),
        }
        if self.setup.db_host_in_sandbox is not None:
            env["DB_HOST"] = self.setup.db_host_in_sandbox
        if ca_path is not None:
            env["DB_SSL_CA"] = ca_path  # the function's own verified TLS (sample_function/app.py)
        if not self.setup.netns:
            # one loopback for all: each extension needs its own port (3306 may be the machine's server)
            env["DBKEEPER_LISTEN_PORT"] = str(free_port())
        if layer:
            env["AWS_LAMBDA_EXEC_WRAPPER"] = WRAPPER
            if ca_path is not None:
                # what a user sets on the function for the layer: dbkeeper requires verified TLS upstream
                env["DBKEEPER_DB_TLS"] = "required"
                env["DBKEEPER_DB_TLS_CA"] = ca_path
        return env

    def _ca_path(self) -> Optional[str]:
        """Where the function finds the database's CA: shipped in its package, like the RDS bundle."""
        if self.db.tls_ca is None:
            return None
        inside = self.args.rie or self.setup.lambda_paths  # the task directory is mounted on /var/task
        return f"/var/task/{CA_FILE}" if inside else str(self.task_dir / CA_FILE)

    def _make_sandbox(self, handler: str, layer: bool, index: int, memory_mb: int):
        opt = str(self.layer_dir if layer else self.empty_opt)
        common = dict(env=self._env(layer, index, self._ca_path()), timeout_s=self.args.timeout, freeze=True,
                      netns=self.setup.netns, memory_mb=memory_mb,
                      name=f"demo-{'layer' if layer else 'plain'}-{memory_mb}-{index}-{os.getpid()}")
        if self.args.rie:
            from lambda_sandbox.rie import RieSandbox

            sb = RieSandbox(self.args.rie, opt, str(self.task_dir), handler=f"app.{handler}", **common)
            private_tmp = hasattr(sb, "private_tmp")
        else:
            from lambda_sandbox import Sandbox

            if self.setup.lambda_paths:
                common["lambda_paths"] = True
            sb = Sandbox(opt, str(self.task_dir), handler=f"app.{handler}", **common)
            private_tmp = self.setup.lambda_paths
        if private_tmp:
            # the sandbox has its own /tmp, as on Lambda: the default socket path, like a real function
            sb.env.pop("DBKEEPER_SOCKET", None)
        sb.start()
        if "DB_HOST" not in sb.env:
            sb.env["DB_HOST"] = sb.host_address  # read at INIT (the first invoke)
        return sb

    def run_phase(self, handler: str, layer: bool, memory_mb: int) -> Phase:
        n, m = self.args.sandboxes, self.args.invocations
        phase = Phase(handler, layer, n, memory_mb)
        title = f"{HANDLER_TITLES[handler]}, {memory_mb} MB, {phase.label}"
        user = self.db.user
        before_ids = self.db.probe.session_ids(user)
        opened_before = self.db.probe.connections_opened()
        lock = threading.Lock()
        done = [0]
        total = n * m
        sandboxes: list[Any] = [None] * n

        def report() -> None:
            self.progress.update(f"  {title}: {done[0]}/{total} invocations in {n} sandboxes")

        def worker(i: int) -> None:
            try:
                sb = self._make_sandbox(handler, layer, i, memory_mb)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                with lock:
                    phase.errors.append(f"sandbox {i} did not start: {exc}")
                return
            sandboxes[i] = sb
            if i == 0:
                resources = sb.resources
                phase.cpu_quota_us = resources.cpu_quota_us
                phase.cpu_unlimited_reason = resources.unavailable_reason
            cpu_after_first: Optional[float] = None
            for k in range(m):
                t0 = time.perf_counter()
                try:
                    r = sb.invoke({"page": f"/demo/{i}"})
                    elapsed = (time.perf_counter() - t0) * 1000
                    ok, err, cid = r.ok, None, None
                    if ok:
                        try:
                            body = r.json()
                            cid = int(body["connection_id"])
                        except (ValueError, KeyError, TypeError):
                            ok, err = False, f"unexpected response: {r.body[:200]!r}"
                    else:
                        err = f"{r.status} {r.error_type}: {r.body[:300].decode('utf-8', 'replace')}"
                except Exception as exc:  # noqa: BLE001
                    elapsed = (time.perf_counter() - t0) * 1000
                    ok, err, cid = False, f"{type(exc).__name__}: {exc}", None
                with lock:
                    phase.invocations += 1
                    done[0] += 1
                    if ok:
                        phase.ok += 1
                        phase.connection_ids.add(cid)
                        (phase.cold_ms if k == 0 else phase.warm_ms).append(elapsed)
                    else:
                        phase.errors.append(f"sandbox {i} invoke {k + 1}: {err}")
                        if not phase.error_logs:
                            phase.error_logs = [f"{src}: {line}" for src, line in sb.logs[-LOG_LINES:]]
                report()
                if k == 0:
                    cpu_after_first = sb.cpu_time_s()  # INIT and the cold invoke are the cold start's
            cpu_end = sb.cpu_time_s()
            if cpu_after_first is not None and cpu_end is not None and m > 1:
                with lock:
                    phase.cpu_ms.append((cpu_end - cpu_after_first) * 1000 / (m - 1))

        threads = [threading.Thread(target=worker, args=(i,), name=f"demo-{i}") for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.progress.update(f"  {title}: {done[0]}/{total} invocations, "
                             f"{'reclaiming' if self.setup.netns else 'shutting down'} {n} sandboxes", force=True)

        # Count the wrapper's doing before the sandboxes (and their logs) go away.
        for sb in sandboxes:
            if sb is not None and any('"wrapper_pointed"' in line for _src, line in sb.logs):
                phase.wrapper_pointed += 1

        # End every sandbox the way Lambda does (concurrently: each takes up to the 2 s shutdown budget).
        phase.ending = "reclaim" if self.setup.netns else "shutdown"

        def end(sb: Any) -> None:
            t0 = time.perf_counter()
            try:
                if self.setup.netns:
                    sb.reclaim(graceful=layer)  # SHUTDOWN first only when an extension subscribed to it
                else:
                    sb.shutdown()
            except Exception as exc:  # noqa: BLE001
                with lock:
                    phase.errors.append(f"{phase.ending} failed: {type(exc).__name__}: {exc}")
                try:
                    sb.close()
                except Exception:  # noqa: BLE001
                    pass
            with lock:
                phase.shutdown_ms.append((time.perf_counter() - t0) * 1000)

        enders = [threading.Thread(target=end, args=(sb,)) for sb in sandboxes if sb is not None]
        for t in enders:
            t.start()
        for t in enders:
            t.join()

        # Sessions of this phase the server still holds. A COM_QUIT or FIN is processed within
        # milliseconds; a session whose peer vanished silently stays until wait_timeout. Poll until
        # none is left or the set has not changed for STABLE_S (at most --settle seconds).
        # Kept short on purpose: once a reclaimed sandbox's address is given to a new sandbox
        # (another process's), a late TCP retransmission from the server would draw an RST there
        # and end the session, which Lambda's reclaim does not do.
        now = time.monotonic()
        deadline = now + self.args.settle
        held = self.db.probe.session_ids(user) - before_ids
        changed_at = now
        while held and now < deadline and now - changed_at < STABLE_S:
            time.sleep(0.02)  # polling the server's process list: it has no change notification
            current = self.db.probe.session_ids(user) - before_ids
            now = time.monotonic()
            if current != held:
                held, changed_at = current, now
        phase.held_after = len(held)
        phase.connections_opened = self.db.probe.connections_opened() - opened_before
        if held:
            self.db.probe.kill(held)  # don't leave them to the next phase (or to a real database)
        return phase


# --------------------------------------------------------------------------- output


def fmt_ms(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


ROWS: list[tuple[str, Callable[[Phase], str]]] = [
    ("invocations", lambda p: str(p.invocations)),
    ("errors", lambda p: str(len(p.errors))),
    ("upstream connections opened", lambda p: str(p.connections_opened)),
    ("distinct CONNECTION_ID() seen", lambda p: str(len(p.connection_ids))),
    ("invoke latency p50 (warm)", lambda p: fmt_ms(percentile(p.warm_ms, 50))),
    ("invoke latency p99 (warm)", lambda p: fmt_ms(percentile(p.warm_ms, 99))),
    ("first invoke incl. INIT, p50", lambda p: fmt_ms(percentile(p.cold_ms, 50))),
    ("CPU per warm invocation (all processes)", lambda p: fmt_ms(percentile(p.cpu_ms, 50))),
    ("connections held after sandboxes gone", lambda p: str(p.held_after)),
]


def render_table(phases: list[Phase]) -> str:
    """One section per handler; columns: per function memory size, without and with the layer."""
    label_w = max(len(r[0]) for r in ROWS) + 2
    col_w = 15
    handlers = [h for h in HANDLERS if any(p.handler == h for p in phases)]
    memories = list(dict.fromkeys(p.memory_mb for p in phases))
    by_key = {(p.handler, p.memory_mb, p.layer): p for p in phases}
    lines = []
    head = " " * label_w
    for mem in memories:
        n = sum(1 for layer in (False, True) if any((h, mem, layer) in by_key for h in handlers))
        head += f"{mem:,} MB function".center(col_w * n)
    lines.append(head.rstrip())
    for h in handlers:
        cols = [(mem, layer) for mem in memories for layer in (False, True) if (h, mem, layer) in by_key]
        title = HANDLER_TITLES[h]
        lines.append((title.ljust(label_w) + "".join(by_key[(h, *c)].label.rjust(col_w) for c in cols)).rstrip())
        lines.append("-" * (label_w + col_w * len(cols)))
        for name, get in ROWS:
            lines.append(name.ljust(label_w) + "".join(get(by_key[(h, *c)]).rjust(col_w) for c in cols))
        lines.append("")
    return "\n".join(lines).rstrip("\n")


# --------------------------------------------------------------------------- main


def default_layer_dir() -> Path:
    arches = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
    arch = arches.get(platform.machine(), "x86_64")
    return REPO / "dist" / f"layer-{arch}"


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every demo error
        self.exit(2, f"demo: {message} (see --help)\n")


def _memory_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of MB: {text!r}") from None
    if not sizes or any(not 128 <= m <= 10240 for m in sizes):
        raise argparse.ArgumentTypeError(f"Lambda memory sizes are 128 to 10,240 MB: {text!r}")
    return sizes


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = _ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sandboxes", type=int, default=4, help="concurrent sandboxes per column (default 4)")
    ap.add_argument("--invocations", type=int, default=50, help="invocations per sandbox (default 50)")
    ap.add_argument("--handler", choices=HANDLERS + ("both",), default="both")
    ap.add_argument("--memory", type=_memory_sizes, default=MEMORY_SIZES, metavar="MB[,MB...]",
                    help="function memory sizes, one pair of columns each (default 128,1769: Lambda gives "
                         "CPU in proportion to memory, one vCPU at 1,769 MB)")
    ap.add_argument("--loopback", action="store_true",
                    help="the demo's database on this host's loopback, without the emulated network and without TLS")
    ap.add_argument("--rtt-ms", type=float, default=1.0,
                    help="round-trip time of the emulated network in front of the demo's database (default 1)")
    ap.add_argument("--layer-dir", type=Path, default=None,
                    help="unpacked layer used as /opt (default: dist/layer-<this machine's arch>, from ./build.sh)")
    ap.add_argument("--rie", default=os.environ.get("DBKEEPER_RIE") or None, metavar="PATH",
                    help="run the sandboxes on a real aws-lambda-rie binary (lambda_sandbox.rie.RieSandbox); "
                         "default: $DBKEEPER_RIE, else lambda_sandbox's own emulator")
    ap.add_argument("--no-netns", action="store_true",
                    help="no network namespaces: shut the sandboxes down instead of reclaiming them")
    ap.add_argument("--no-lambda-paths", action="store_true",
                    help="lambda_sandbox: no private mount namespace (/opt, /var/task, /tmp are the machine's)")
    ap.add_argument("--timeout", type=float, default=10.0, help="function timeout, seconds (default 10)")
    ap.add_argument("--settle", type=float, default=1.5,
                    help="seconds to wait for the server to drop closed sessions before counting (default 1.5)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    args = ap.parse_args(argv)
    if args.sandboxes < 1 or args.invocations < 1:
        ap.error("--sandboxes and --invocations must be at least 1")
    if not 0 < args.rtt_ms <= 1000:
        ap.error("--rtt-ms must be more than 0 and at most 1000")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback (README)
        print(f"demo: failed: {_one_line(exc)}", file=sys.stderr)
        return 1


def cpu_share_note(phases: list[Phase]) -> Optional[str]:
    """None when every column's sandboxes had their memory's CPU quota, as on Lambda; else what ran instead."""
    unlimited = [p for p in phases if p.cpu_quota_us is None]
    if not unlimited:
        return None
    reason = unlimited[0].cpu_unlimited_reason or "this sandbox kind sets no CPU quota"
    return f"CPU not limited by memory ({reason}): every memory size ran with the machine's CPU"


def run(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    layer_dir = (args.layer_dir or default_layer_dir()).resolve()
    if not (layer_dir / "extensions" / "dbkeeper").exists() or not (layer_dir / "dbkeeper-wrapper").exists():
        raise DemoError(f"no built layer at {layer_dir}: run ./build.sh first")
    if args.rie:
        found = args.rie if os.sep in args.rie else shutil.which(args.rie)
        if not found or not os.access(found, os.X_OK):
            raise DemoError(f"aws-lambda-rie not found (or not executable): {args.rie}")
        args.rie = os.path.abspath(found)
    external = database_settings(args)
    progress = Progress(enabled=not args.quiet)
    progress.update("  preparing the function's task directory, the layer and the database", force=True)

    from demo.taskdir import TaskDirError, build_task_dir
    from lambda_sandbox import netns_unavailable_reason

    scratch = Path(tempfile.mkdtemp(prefix="dbkeeper-demo-"))
    db: Optional[Database] = None
    runner: Optional[Runner] = None
    phases: list[Phase] = []
    try:
        try:
            task_dir, how = build_task_dir(scratch / "task")
        except TaskDirError as exc:
            raise DemoError(_one_line(exc).split(": ", 1)[1]) from None
        # A private copy of the unpacked layer: ./build.sh (run by another test session, say) replaces
        # dist/layer-<arch>/ in place, and a sandbox must not see it half-written.
        try:
            shutil.copytree(layer_dir, scratch / "opt", symlinks=True)
        except (OSError, shutil.Error) as exc:
            raise DemoError(f"cannot copy the layer from {layer_dir}: {_one_line(exc)}") from None
        db = open_database(args, external, not args.no_netns and netns_unavailable_reason() is None, scratch)
        if db.tls_ca is not None:
            shutil.copy2(db.tls_ca, task_dir / CA_FILE)
        setup = choose_setup(args, db)
        runner = Runner(args, db, setup, task_dir, scratch / "opt", progress)
        handlers = HANDLERS if args.handler == "both" else (args.handler,)
        for handler in handlers:
            for memory_mb in args.memory:
                for layer in (False, True):
                    phases.append(runner.run_phase(handler, layer, memory_mb))
    finally:
        progress.done()
        if runner is not None:
            runner.cleanup()
        if db is not None:
            db.close()
        shutil.rmtree(scratch, ignore_errors=True)

    elapsed = time.monotonic() - t_start
    cpu_note = cpu_share_note(phases)
    print_report(args, setup, db, phases, how, layer_dir, elapsed, cpu_note)
    failed = [p for p in phases if p.errors]
    not_pointed = [p for p in phases if p.layer and p.wrapper_pointed < p.sandboxes]
    if args.json:
        args.json.write_text(json.dumps({
            "sandboxes": args.sandboxes, "invocations_per_sandbox": args.invocations, "sandbox_kind": setup.kind,
            "netns": setup.netns, "lambda_paths": setup.lambda_paths,
            "ending": "reclaim" if setup.netns else "shutdown", "note": setup.note,
            "network": ("as is" if not db.throwaway else "loopback" if args.loopback
                        else f"emulated {args.rtt_ms:g} ms RTT"),
            "tls_required": db.tls_ca is not None, "memory_mb": list(args.memory), "cpu_share_note": cpu_note,
            "database": db.description, "elapsed_s": round(elapsed, 2),
            "phases": [p.summary() for p in phases],
            "table": render_table(phases),
        }, indent=2))
    return 1 if failed or not_pointed else 0


def print_report(args: argparse.Namespace, setup: Setup, db: Database, phases: list[Phase], how: str,
                 layer_dir: Path, elapsed: float, cpu_note: Optional[str]) -> None:
    ending = ("reclaimed like Lambda: frozen, network cut, killed (no FIN reaches the database); "
              "with the layer the extension got SHUTDOWN first") if setup.netns \
        else "shut down (SIGTERM/SHUTDOWN/SIGKILL)"
    print()
    print(f"dbkeeper demo: sample_function (PyMySQL), {args.sandboxes} sandboxes x {args.invocations} invocations "
          f"per column, {setup.description}")
    print(f"database: {db.description}")
    if db.tls_ca is not None:
        print("TLS: without the layer the function verifies the database's certificate itself (DB_SSL_CA); with it "
              "dbkeeper does (DBKEEPER_DB_TLS=required, same CA) and the function's hop to 127.0.0.1 is plain")
    shares = ", ".join(f"{m:,} MB = {m / 1769:.2f} vCPU" for m in args.memory)
    print(f"function memory: {shares} (Lambda's CPU share: a CFS quota the runtime and the extension share; "
          "a full vCPU during INIT)")
    print(f"sandboxes {ending}")
    for note in (setup.note, cpu_note):
        if note:
            print(f"note: {note}")
    print()
    print(render_table(phases))
    print()
    for p in phases:
        if not p.errors:
            continue
        print(f"errors ({HANDLER_TITLES[p.handler]}, {p.memory_mb} MB, {p.label}): {len(p.errors)}; "
              f"first: {p.errors[0]}")
        if p.error_logs:
            print("  that sandbox's last log lines:")
            for line in p.error_logs:
                print(f"    {line[:300]}")
    for p in phases:
        if p.layer and p.wrapper_pointed < p.sandboxes:
            print(f"warning ({HANDLER_TITLES[p.handler]}, {p.memory_mb} MB): the wrapper pointed DB_HOST at the "
                  f"extension in only {p.wrapper_pointed} of {p.sandboxes} sandboxes "
                  "(see wrapper_passthrough in the logs)")
    print(f"task dir: sample_function + PyMySQL via {how}; layer: {layer_dir}; {elapsed:.1f} s", flush=True)
