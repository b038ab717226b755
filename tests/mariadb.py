"""Throwaway MariaDB servers for tests and benchmarks.

Each ``MariaDB`` runs its own ``mariadbd`` in a private temp directory (datadir, Unix socket,
pid file, logs) on a free TCP port. It never touches the machine's own server on :3306 and reads
no option files (``--no-defaults``).

    from tests.mariadb import MariaDB
    with MariaDB() as db:                      # start() ... cleanup()
        conn = db.connect()                    # PyMySQL connection as the app user
        db.admin()                             # PyMySQL connection as root (caller closes it)
        db.kill(); db.restart()                # SIGKILL, then same datadir and port

The first server of a process initialises a template datadir with ``mariadb-install-db`` (about
2 s); every server after that copies it, so a start takes a fraction of a second.

Accounts: ``root``@``localhost`` with no password (Unix socket; used by ``admin()``) and the app
user ``app``@``%`` with a password, owning the database ``appdb``.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import pymysql
import pymysql.cursors

__all__ = ["MariaDB", "MariaDBError", "MariaDBNotInstalled", "free_port", "find_binary"]

INSTALL_HINT = (
    "MariaDB server binaries not found (mariadbd, mariadb-install-db). "
    "Install them with: apt-get install mariadb-server"
)

APP_USER = "app"
APP_PASSWORD = "app-secret"
APP_DATABASE = "appdb"

# Options shared by mariadb-install-db and every server start (the redo log size must match the
# template's, or InnoDB resizes it at each start). Chosen for a small footprint and a fast start.
_COMMON_ARGS = (
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--innodb-log-buffer-size=1M",
    "--innodb-use-native-aio=0",  # no io_uring/libaio: portable across sandboxes, many servers
)

_SERVER_ARGS = (
    "--skip-name-resolve",
    "--innodb-flush-log-at-trx-commit=2",  # survives SIGKILL of the process (OS cache), not of the OS
    "--innodb-doublewrite=0",
    "--skip-log-bin",
    "--key-buffer-size=1M",
    "--aria-pagecache-buffer-size=8M",
    "--table-open-cache=200",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    "--loose-performance-schema=OFF",
)

_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/usr/libexec")


class MariaDBError(RuntimeError):
    """The server failed to start, stop or answer."""


class MariaDBNotInstalled(MariaDBError):
    """mariadbd / mariadb-install-db are not installed."""


def find_binary(name: str) -> str:
    """Absolute path of a MariaDB program; raises MariaDBNotInstalled with the apt hint."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SEARCH_DIRS:
        cand = os.path.join(d, name)
        if os.access(cand, os.X_OK):
            return cand
    raise MariaDBNotInstalled(f"{INSTALL_HINT} (missing: {name})")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- template datadir

_template_lock = threading.Lock()
_template_dir: str | None = None


def _rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def template_datadir() -> str:
    """An initialised (never started) datadir, created once per process and removed at exit."""
    global _template_dir
    with _template_lock:
        if _template_dir is not None:
            return _template_dir
        install_db = find_binary("mariadb-install-db")
        find_binary("mariadbd")
        root = tempfile.mkdtemp(prefix="dbkeeper-mdb-template-")
        atexit.register(_rmtree, root)
        datadir = os.path.join(root, "data")
        cmd = [
            install_db,
            "--no-defaults",
            "--auth-root-authentication-method=normal",
            f"--datadir={datadir}",
            # its own tmpdir: installs running side by side in /tmp clash on temp table names
            f"--tmpdir={root}",
            "--skip-test-db",
            "--skip-name-resolve",
            *_COMMON_ARGS,
        ]
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=120,
        )
        if proc.returncode != 0:
            raise MariaDBError(
                f"mariadb-install-db failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-4000:]}"
            )
        _template_dir = datadir
        return datadir


# --------------------------------------------------------------------------- helpers

def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --``: the server gets SIGKILL when the thread that started it
    exits. Only from the main thread (whose end is the process's end), so a server started in a
    worker thread isn't killed when that thread finishes."""
    if threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv") or ("/usr/bin/setpriv" if os.access("/usr/bin/setpriv", os.X_OK) else None)
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_live: set[MariaDB] = set()


@atexit.register
def _kill_leftovers() -> None:
    for db in list(_live):
        try:
            db.cleanup()
        except Exception:
            pass


class MariaDB:
    """A private mariadbd. See the module docstring.

    Parameters:
        bind_address: where TCP listens (``0.0.0.0`` for clients in other network namespaces).
        port: fixed TCP port; default: a free one, chosen at the first start and kept for restarts.
        base_dir: directory for datadir, socket, logs (default: a new temp dir, removed by cleanup()).
        extra_args: more ``mariadbd`` options, e.g. ``["--wait-timeout=5", "--max-connections=20"]``.
        start_timeout: seconds to wait for the server to accept connections.
        die_with_parent: when started from the main thread, the server gets SIGKILL if this
            process dies (PDEATHSIG), so a killed test run leaves no server behind.
    """

    def __init__(
        self,
        *,
        bind_address: str = "127.0.0.1",
        port: int | None = None,
        base_dir: str | None = None,
        extra_args: Sequence[str] = (),
        password: str = APP_PASSWORD,
        start_timeout: float = 30.0,
        die_with_parent: bool = True,
    ) -> None:
        self._mariadbd = find_binary("mariadbd")
        self._own_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="mdb-")  # short: socket path limit
        self.datadir = os.path.join(self.base_dir, "data")
        self.bind_address = bind_address
        self._port = port
        self._fixed_port = port is not None
        self._password = password
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self._helper_conn: pymysql.connections.Connection | None = None
        self._helper_lock = threading.Lock()
        self._log_fh: Any = None

    # ------------------------------------------------------------------ properties
    @property
    def host(self) -> str:
        """Address for clients on this host (127.0.0.1 also when bound to 0.0.0.0)."""
        return "127.0.0.1" if self.bind_address in ("0.0.0.0", "::", "") else self.bind_address

    @property
    def port(self) -> int:
        if self._port is None:
            raise MariaDBError("port not chosen yet: call start() first")
        return self._port

    @property
    def socket(self) -> str:
        return os.path.join(self.base_dir, "mysqld.sock")

    @property
    def user(self) -> str:
        return APP_USER

    @property
    def password(self) -> str:
        return self._password

    @property
    def database(self) -> str:
        return APP_DATABASE

    @property
    def pid_file(self) -> str:
        return os.path.join(self.base_dir, "mysqld.pid")

    @property
    def error_log(self) -> str:
        return os.path.join(self.base_dir, "error.log")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def db_env(self) -> dict[str, str]:
        """The extension's upstream settings pointing at this server (app user, TCP)."""
        return {
            "DBKEEPER_DB_HOST": self.host,
            "DBKEEPER_DB_PORT": str(self.port),
            "DBKEEPER_DB_USER": self.user,
            "DBKEEPER_DB_PASSWORD": self.password,
            "DBKEEPER_DB_NAME": self.database,
        }

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MariaDB {self.host}:{self._port} {self.base_dir} {state}>"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> MariaDB:
        """Start the server (copying the template datadir the first time) and wait until ready."""
        if self.running:
            raise MariaDBError(f"{self!r} already running")
        if not os.path.isdir(self.datadir):
            shutil.copytree(template_datadir(), self.datadir, symlinks=True)
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            if self._port is None:
                self._port = free_port(self.bind_address or "0.0.0.0")
            try:
                self._spawn_and_wait()
                break
            except MariaDBError as exc:
                # A port chosen by us may have been taken in between: pick another one once more.
                if attempt + 1 < attempts and "already in use" in str(exc) and not self._ever_started:
                    self._port = None
                    continue
                raise
        self._ever_started = True
        _live.add(self)
        try:
            self._ensure_app_account()
        except BaseException:
            self.kill()
            raise
        return self

    _ever_started = False

    def _command(self) -> list[str]:
        return [
            self._mariadbd,
            "--no-defaults",
            "--user=root",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            f"--bind-address={self.bind_address}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.error_log}",
            f"--general-log-file={os.path.join(self.base_dir, 'general.log')}",
            f"--slow-query-log-file={os.path.join(self.base_dir, 'slow.log')}",
            f"--tmpdir={self.base_dir}",
            *_COMMON_ARGS,
            *_SERVER_ARGS,
            *self.extra_args,
        ]

    def _spawn_and_wait(self) -> None:
        log_offset = os.path.getsize(self.error_log) if os.path.exists(self.error_log) else 0
        self._log_fh = open(os.path.join(self.base_dir, "stdout.log"), "ab")
        prefix = _pdeathsig_prefix() if self.die_with_parent else []
        self.proc = subprocess.Popen(
            prefix + self._command(),  # setpriv execs mariadbd: proc.pid is the server's pid
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # terminal signals (Ctrl-C) don't hit it; we stop it ourselves
            close_fds=True,
        )
        deadline = time.monotonic() + self.start_timeout
        last_err: Exception | None = None
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._reap()
                raise MariaDBError(
                    f"mariadbd exited with {code} during start\n{self._log_tail(log_offset)}"
                )
            try:
                conn = self._root_connect(connect_timeout=2)
                conn.close()
                return
            except pymysql.err.OperationalError as exc:
                last_err = exc
            if time.monotonic() > deadline:
                self.kill()
                raise MariaDBError(
                    f"mariadbd did not accept connections within {self.start_timeout}s "
                    f"(last error: {last_err})\n{self._log_tail(log_offset)}"
                )
            time.sleep(0.02)  # polling interval, bounded by the deadline above

    def _log_tail(self, offset: int = 0, limit: int = 4000) -> str:
        try:
            with open(self.error_log, "rb") as fh:
                fh.seek(offset)
                data = fh.read().decode(errors="replace")
        except OSError:
            return "(no error log)"
        return data[-limit:]

    def _ensure_app_account(self) -> None:
        with self._root_connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{APP_DATABASE}`")
            cur.execute(f"CREATE USER IF NOT EXISTS '{APP_USER}'@'%%' IDENTIFIED BY %s", (self._password,))
            cur.execute(f"GRANT ALL PRIVILEGES ON `{APP_DATABASE}`.* TO '{APP_USER}'@'%'")

    def _drop_helper(self) -> None:
        with self._helper_lock:
            if self._helper_conn is not None:
                try:
                    self._helper_conn.close()
                except Exception:
                    pass
                self._helper_conn = None

    def _reap(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def stop(self, timeout: float = 30.0) -> None:
        """Clean shutdown (SIGTERM, wait); SIGKILL if it takes longer than ``timeout``."""
        self._drop_helper()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reap()
        self.proc = None
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL the server (a crash: no clean shutdown, clients see their sockets close)."""
        self._drop_helper()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reap()
        self.proc = None
        _live.discard(self)

    def restart(self) -> MariaDB:
        """Stop cleanly if running, then start again with the same datadir and port."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Kill the server and remove its directory (if we created it)."""
        self.kill()
        if self._own_dir:
            _rmtree(self.base_dir)

    def __enter__(self) -> MariaDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ connections
    def _root_connect(self, **kw: Any) -> pymysql.connections.Connection:
        kw.setdefault("connect_timeout", 10)
        return pymysql.connect(unix_socket=self.socket, user="root", password="", autocommit=True, **kw)

    def admin(self, **kw: Any) -> pymysql.connections.Connection:
        """A new PyMySQL connection as root over the Unix socket (autocommit). Caller closes it."""
        return self._root_connect(**kw)

    def connect(self, **kw: Any) -> pymysql.connections.Connection:
        """A new PyMySQL connection as the app user over TCP to ``appdb``. Caller closes it."""
        params: dict[str, Any] = dict(
            host=self.host, port=self.port, user=self.user, password=self.password,
            database=self.database, connect_timeout=10,
        )
        params.update(kw)
        return pymysql.connect(**params)

    def _query(self, sql: str, args: Any = None, *, dict_rows: bool = False) -> list[Any]:
        """Run SQL on a long-lived root connection, so helper calls don't count as new connections."""
        with self._helper_lock:
            for attempt in (0, 1):
                if self._helper_conn is None:
                    self._helper_conn = self._root_connect()
                cls = pymysql.cursors.DictCursor if dict_rows else pymysql.cursors.Cursor
                try:
                    with self._helper_conn.cursor(cls) as cur:
                        cur.execute(sql, args)
                        return list(cur.fetchall())
                except (pymysql.err.OperationalError, pymysql.err.InterfaceError):
                    # server restarted behind our back: one fresh connection, then give up
                    try:
                        self._helper_conn.close()
                    except Exception:
                        pass
                    self._helper_conn = None
                    if attempt:
                        raise
        raise AssertionError("unreachable")

    def query(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        """Rows (dicts) of a statement run as root on the helper connection."""
        return self._query(sql, args, dict_rows=True)

    def connections_opened(self) -> int:
        """Global status ``Connections``: connection attempts since the server started.

        Helper calls share one root connection, so only its first use adds 1: compare two calls.
        """
        rows = self._query("SHOW GLOBAL STATUS LIKE 'Connections'")
        return int(rows[0][1])

    def processlist(self, user: str | None = None) -> list[dict[str, Any]]:
        """Rows of information_schema.PROCESSLIST (keys as the server names them: ID, USER,
        HOST, DB, COMMAND, TIME, STATE, INFO, ...) without the helper's own connection and
        without server-internal threads (COMMAND 'Daemon'); only ``user``'s if given."""
        sql = (
            "SELECT * FROM information_schema.PROCESSLIST "
            "WHERE ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'"
        )
        args: tuple[Any, ...] = ()
        if user is not None:
            sql += " AND USER = %s"
            args = (user,)
        return self._query(sql + " ORDER BY ID", args, dict_rows=True)

    def set_global(self, name: str, value: Any) -> None:
        """``SET GLOBAL name = value`` (e.g. wait_timeout; applies to connections made after it)."""
        if not _IDENT.match(name):
            raise ValueError(f"not a variable name: {name!r}")
        self._query(f"SET GLOBAL {name} = %s", (value,))

    def get_global(self, name: str) -> Any:
        if not _IDENT.match(name):
            raise ValueError(f"not a variable name: {name!r}")
        return self._query(f"SELECT @@GLOBAL.{name}")[0][0]
