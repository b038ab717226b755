"""`python -m demo`: the sample function without and with the dbkeeper layer, side by side.

For each handler of sample_function/app.py (connect-per-invoke, global connection) and each setup
(plain function; function + dbkeeper layer + AWS_LAMBDA_EXEC_WRAPPER), it starts N local Lambda
sandboxes, invokes each M times (sandboxes run concurrently, invokes within one sandbox one at a
time, like Lambda), then reclaims them the way Lambda does: frozen, then destroyed with the network
cut first, so no FIN reaches the database (lambda_sandbox's reclaim(), in a network namespace).
With the layer the extension is subscribed to SHUTDOWN, so the spin-down delivers it first (as
Lambda does); without extensions nothing is told. Then it prints a table.

The database: a throwaway MariaDB (tests/mariadb.py) unless DB_HOST is set in the environment (then
DB_PORT, DB_USER, DB_PASSWORD, DB_NAME are used too: that database gets a `visits` table).
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python demo/main.py` as well as `python -m demo`
    sys.path.insert(0, str(REPO))

HANDLERS = ("handler_connect_per_invoke", "handler_global_connection")
HANDLER_TITLES = {"handler_connect_per_invoke": "connect per invoke", "handler_global_connection": "global connection"}
WRAPPER = "/opt/dbkeeper-wrapper"
LOG_LINES = 20  # of a failing sandbox, printed with the first error
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

    def __init__(self, host: str, port: int, user: str, password: str, database: str) -> None:
        import pymysql

        self._conn = pymysql.connect(host=host, port=port, user=user, password=password, database=database,
                                     autocommit=True, connect_timeout=10)
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

    def close(self) -> None:
        self.probe.close()
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


def open_database(bind_all: bool) -> Database:
    env = os.environ
    if env.get("DB_HOST"):
        missing = [k for k in ("DB_USER", "DB_NAME") if not env.get(k)]
        if missing:
            raise SystemExit(f"demo: DB_HOST is set, so the demo uses that database; also set {', '.join(missing)}")
        host, port = env["DB_HOST"], int(env.get("DB_PORT") or 3306)
        probe = ExternalProbe(host, port, env["DB_USER"], env.get("DB_PASSWORD", ""), env["DB_NAME"])
        return Database(host, port, env["DB_USER"], env.get("DB_PASSWORD", ""), env["DB_NAME"], probe,
                        f"{probe.version()} at {host}:{port} (from DB_HOST)", throwaway=False)
    from tests.mariadb import MariaDB, MariaDBNotInstalled

    try:
        server = MariaDB(bind_address="0.0.0.0" if bind_all else "127.0.0.1")
    except MariaDBNotInstalled as exc:
        raise SystemExit(f"demo: {exc}\n(or point the demo at a database with DB_HOST, DB_PORT, DB_USER, "
                         "DB_PASSWORD, DB_NAME)") from None
    server.start()
    probe = ThrowawayProbe(server)
    return Database(server.host, server.port, server.user, server.password, server.database, probe,
                    f"throwaway MariaDB {probe.version()} on port {server.port}", throwaway=True, server=server)


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

    @property
    def label(self) -> str:
        return "with dbkeeper" if self.layer else "without"

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["connection_ids"] = len(self.connection_ids)
        d["p50_ms"] = percentile(self.warm_ms, 50)
        d["p99_ms"] = percentile(self.warm_ms, 99)
        d["cold_p50_ms"] = percentile(self.cold_ms, 50)
        del d["warm_ms"], d["cold_ms"], d["shutdown_ms"], d["error_logs"]
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

    def _env(self, layer: bool, index: int) -> dict[str, str]:
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
        if not self.setup.netns:
            # one loopback for all: each extension needs its own port (3306 may be the machine's server)
            env["DBKEEPER_LISTEN_PORT"] = str(free_port())
        if layer:
            env["AWS_LAMBDA_EXEC_WRAPPER"] = WRAPPER
        return env

    def _make_sandbox(self, handler: str, layer: bool, index: int):
        opt = str(self.layer_dir if layer else self.empty_opt)
        common = dict(env=self._env(layer, index), timeout_s=self.args.timeout, freeze=True,
                      netns=self.setup.netns, name=f"demo-{'layer' if layer else 'plain'}-{index}-{os.getpid()}")
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

    def run_phase(self, handler: str, layer: bool) -> Phase:
        n, m = self.args.sandboxes, self.args.invocations
        phase = Phase(handler, layer, n)
        title = f"{HANDLER_TITLES[handler]}, {phase.label}"
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
                sb = self._make_sandbox(handler, layer, i)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                with lock:
                    phase.errors.append(f"sandbox {i} did not start: {exc}")
                return
            sandboxes[i] = sb
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
    ("connections held after sandboxes gone", lambda p: str(p.held_after)),
]


def render_table(phases: list[Phase]) -> str:
    label_w = max(len(r[0]) for r in ROWS) + 2
    col_w = 15
    handlers = [h for h in HANDLERS if any(p.handler == h for p in phases)]
    by_key = {(p.handler, p.layer): p for p in phases}
    cols = [(h, layer) for h in handlers for layer in (False, True) if (h, layer) in by_key]
    lines = []
    head1 = " " * label_w
    for h in handlers:
        n = sum(1 for c in cols if c[0] == h)
        head1 += HANDLER_TITLES[h].center(col_w * n)
    lines.append(head1.rstrip())
    lines.append((" " * label_w + "".join(by_key[c].label.rjust(col_w) for c in cols)).rstrip())
    lines.append("-" * (label_w + col_w * len(cols)))
    for name, get in ROWS:
        lines.append(name.ljust(label_w) + "".join(get(by_key[c]).rjust(col_w) for c in cols))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def default_layer_dir() -> Path:
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "x86_64")
    return REPO / "dist" / f"layer-{arch}"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sandboxes", type=int, default=4, help="concurrent sandboxes per setup (default 4)")
    ap.add_argument("--invocations", type=int, default=50, help="invocations per sandbox (default 50)")
    ap.add_argument("--handler", choices=HANDLERS + ("both",), default="both")
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
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    layer_dir = (args.layer_dir or default_layer_dir()).resolve()
    if not (layer_dir / "extensions" / "dbkeeper").exists() or not (layer_dir / "dbkeeper-wrapper").exists():
        print(f"demo: no built layer at {layer_dir}: run ./build.sh first", file=sys.stderr)
        return 2
    if args.rie:
        found = args.rie if os.sep in args.rie else shutil.which(args.rie)
        if not found or not os.access(found, os.X_OK):
            print(f"demo: aws-lambda-rie not found (or not executable): {args.rie}", file=sys.stderr)
            return 2
        args.rie = os.path.abspath(found)
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
            print(f"demo: {exc}", file=sys.stderr)
            return 2
        # A private copy of the unpacked layer: ./build.sh (run by another test session, say) replaces
        # dist/layer-<arch>/ in place, and a sandbox must not see it half-written.
        try:
            shutil.copytree(layer_dir, scratch / "opt", symlinks=True)
        except (OSError, shutil.Error) as exc:
            print(f"demo: cannot copy the layer from {layer_dir}: {exc}", file=sys.stderr)
            return 2
        db = open_database(bind_all=not args.no_netns and netns_unavailable_reason() is None)
        setup = choose_setup(args, db)
        runner = Runner(args, db, setup, task_dir, scratch / "opt", progress)
        handlers = HANDLERS if args.handler == "both" else (args.handler,)
        for handler in handlers:
            for layer in (False, True):
                phases.append(runner.run_phase(handler, layer))
    finally:
        progress.done()
        if runner is not None:
            runner.cleanup()
        if db is not None:
            db.close()
        shutil.rmtree(scratch, ignore_errors=True)

    elapsed = time.monotonic() - t_start
    print_report(args, setup, db, phases, how, layer_dir, elapsed)
    failed = [p for p in phases if p.errors]
    not_pointed = [p for p in phases if p.layer and p.wrapper_pointed < p.sandboxes]
    if args.json:
        args.json.write_text(json.dumps({
            "sandboxes": args.sandboxes, "invocations_per_sandbox": args.invocations, "sandbox_kind": setup.kind,
            "netns": setup.netns, "lambda_paths": setup.lambda_paths,
            "ending": "reclaim" if setup.netns else "shutdown", "note": setup.note,
            "database": db.description, "elapsed_s": round(elapsed, 2),
            "phases": [p.summary() for p in phases],
            "table": render_table(phases),
        }, indent=2))
    return 1 if failed or not_pointed else 0


def print_report(args: argparse.Namespace, setup: Setup, db: Database, phases: list[Phase], how: str,
                 layer_dir: Path, elapsed: float) -> None:
    ending = ("reclaimed like Lambda: frozen, network cut, killed (no FIN reaches the database); "
              "with the layer the extension got SHUTDOWN first") if setup.netns \
        else "shut down (SIGTERM/SHUTDOWN/SIGKILL)"
    print()
    print(f"dbkeeper demo: sample_function (PyMySQL), {args.sandboxes} sandboxes x {args.invocations} invocations "
          f"per column, {setup.description}")
    print(f"database: {db.description}; sandboxes {ending}")
    if setup.note:
        print(f"note: {setup.note}")
    print()
    print(render_table(phases))
    print()
    for p in phases:
        if not p.errors:
            continue
        print(f"errors ({HANDLER_TITLES[p.handler]}, {p.label}): {len(p.errors)}; first: {p.errors[0]}")
        if p.error_logs:
            print("  that sandbox's last log lines:")
            for line in p.error_logs:
                print(f"    {line[:300]}")
    for p in phases:
        if p.layer and p.wrapper_pointed < p.sandboxes:
            print(f"warning ({HANDLER_TITLES[p.handler]}): the wrapper pointed DB_HOST at the extension in only "
                  f"{p.wrapper_pointed} of {p.sandboxes} sandboxes (see wrapper_passthrough in the logs)")
    print(f"task dir: sample_function + PyMySQL via {how}; layer: {layer_dir}; {elapsed:.1f} s", flush=True)
