"""Every setting, read once from the environment into one frozen Config.

Only the entry point reads os.environ; everything else receives a Config. All problems are
collected and raised together, each naming its setting, so one failed INIT tells the whole story.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")
TLS_MODES = ("disabled", "preferred", "required")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
FAIL_MODES = ("open", "closed")
# Client capability flags that shape a session (pymysql.constants.CLIENT names); see upstream.PROFILE_BITS.
# LOCAL_FILES among them: whether the server may ask this session for a client file is the client's call.
SESSION_FLAGS = ("FOUND_ROWS", "NO_SCHEMA", "ODBC", "LOCAL_FILES", "IGNORE_SPACE", "INTERACTIVE", "MULTI_RESULTS",
                 "PS_MULTI_RESULTS")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class Setting(NamedTuple):
    name: str
    default: str | None
    meaning: str
    fallback: str | None = None  # the function's conventional variable, used when `name` is unset


SETTINGS: tuple[Setting, ...] = (
    Setting("DBKEEPER_DB_HOST", None, "Upstream MySQL/MariaDB host (required).", "DB_HOST"),
    Setting("DBKEEPER_DB_PORT", "3306", "Upstream port.", "DB_PORT"),
    Setting("DBKEEPER_DB_USER", None, "Upstream user (required).", "DB_USER"),
    Setting("DBKEEPER_DB_PASSWORD", "", "Upstream password. Never logged.", "DB_PASSWORD"),
    Setting("DBKEEPER_DB_NAME", "", "Default database of every session.", "DB_NAME"),
    Setting("DBKEEPER_DB_TLS", "preferred",
            "Upstream TLS: disabled, preferred (TLS when the server offers it) or required. "
            "Certificates are always verified (CA and host name)."),
    Setting("DBKEEPER_DB_TLS_CA", "", "PEM bundle to verify the upstream certificate "
            "(e.g. the RDS bundle); empty: the system trust store, or with DBKEEPER_DB_IAM_AUTH=true "
            "the layer's RDS CA bundle."),
    Setting("DBKEEPER_LISTEN_PORT", "3306", "Local TCP port on 127.0.0.1 (0 disables TCP)."),
    Setting("DBKEEPER_SOCKET", "/tmp/dbkeeper.sock", "Local Unix socket, mode 0600 (empty disables)."),
    Setting("DBKEEPER_CLIENT_PASSWORD", "",
            "Password the function must present locally instead of the upstream one "
            "(for IAM tokens or secrets the function never sees). Never logged."),
    Setting("DBKEEPER_TRUST_UNIX_SOCKET", "false",
            "true: clients on the 0600 Unix socket are not asked for a password."),
    Setting("DBKEEPER_CLIENT_FLAGS", "MULTI_RESULTS",
            "Session-shaping capability flags the function's driver sends (e.g. FOUND_ROWS,MULTI_RESULTS "
            "for SQLAlchemy; MULTI_RESULTS,PS_MULTI_RESULTS for mysqlclient; add LOCAL_FILES for a driver with "
            "local_infile on). The INIT-time connection uses "
            "them; a client with others costs one reconnect."),
    Setting("DBKEEPER_HOLD_SETUP", "true",
            "true: a session's leading SET NAMES / SET autocommit, once the server has accepted them, are "
            "answered at once and sent with its first real command (no round trip each); false: forwarded as "
            "they come."),
    Setting("DBKEEPER_POOL_SIZE", "4",
            "Most upstream connections held at once (1 is opened at INIT); when all are lent, idle sessions that "
            "can move give theirs up (connection sharing). Unset on Lambda Managed Instances "
            "(AWS_LAMBDA_MAX_CONCURRENCY set): a quarter of that, at least 1, at most 64."),
    Setting("DBKEEPER_SESSION_MOVES", "true",
            "true: upstream connections track session state, so an idle session whose connection died is "
            "served on another with its state replayed, and idle sessions that can move share connections when "
            "all are lent; false: a session keeps its one connection for life (its death ends the session)."),
    Setting("DBKEEPER_BORROW_TIMEOUT_MS", "5000",
            "How long a client waits for a free upstream connection before it gets an error."),
    Setting("DBKEEPER_CONNECT_TIMEOUT_MS", "2000", "Bound on one upstream connect + handshake."),
    Setting("DBKEEPER_MAX_PENDING_CLIENTS", "128",
            "Most local clients in their handshake at once; past it the oldest unfinished handshake is dropped "
            "(1040), so clients that never finish cannot lock real ones out."),
    Setting("DBKEEPER_VERIFY_AFTER_IDLE_MS", "60000",
            "An upstream connection idle longer than this (by the monotonic, wall or boot clock: a freeze, a "
            "SnapStart restore) gets a COM_PING before it is lent, and is replaced if it does not answer."),
    Setting("DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S", "600",
            "Session wait_timeout of upstream connections while they sit idle in the pool, or lent to a session "
            "that could move to another (0: the server's own). Bounds how long a sandbox reclaimed without "
            "SHUTDOWN leaves a connection on the server; a session that could not move (an open transaction, a "
            "user variable, ...), or reads its variables, has the server's own."),
    Setting("DBKEEPER_IDLE_TIMEOUT_S", "300",
            "Idle upstream connections beyond the first are closed once idle this long (decided when a session "
            "ends, never by a timer; 0: never)."),
    Setting("DBKEEPER_CLIENT_HANDSHAKE_TIMEOUT_MS", "10000",
            "A local client that has not finished its handshake (or a command dbkeeper answers) by then is dropped."),
    Setting("DBKEEPER_INIT_CONNECT_BUDGET_MS", "8000",
            "Total time the INIT-time connect keeps retrying (jittered backoff); later borrows retry lazily."),
    Setting("DBKEEPER_LOG_LEVEL", "info", "debug, info, warning or error."),
    Setting("DBKEEPER_EVENT_LOOP", "auto", "auto (uvloop when it imports, else asyncio), uvloop or asyncio."),
    Setting("DBKEEPER_ENABLED", "true", "false: register and stay idle; never touch the database."),
    # --- AWS features (extension/dbkeeper/aws/): botocore is imported only when one of them is on
    Setting("DBKEEPER_DB_SECRET", "",
            "Secrets Manager secret (ARN or name, RDS shape: username, password, host, port, dbname) holding the "
            "upstream credentials; fetched at first need, again on error 1045 (rotation). Fields it lacks come "
            "from the settings above."),
    Setting("DBKEEPER_CLIENT_PASSWORD_SECRET", "",
            "The local password from Secrets Manager: `secret-id` (its `password` key) or `secret-id#key`. "
            "Default with DBKEEPER_DB_SECRET and no DBKEEPER_CLIENT_PASSWORD: the DB secret's own password."),
    Setting("DBKEEPER_DB_IAM_AUTH", "false",
            "true: a new RDS IAM authentication token for every upstream connect, sent with mysql_clear_password "
            "over verified TLS only (needs DBKEEPER_DB_TLS=required and a local password)."),
    Setting("DBKEEPER_AWS_SDK_PATH", "",
            "Directory holding botocore when neither the layer nor the Lambda runtime provides it; only the "
            "SDK's own packages are imported from it."),
    Setting("DBKEEPER_BUDGET_TABLE", "",
            "DynamoDB table (partition key pk, sort key sk, both strings; TTL attribute ttl) of the fleet-wide "
            "connection budget; empty: no budget, no AWS call."),
    Setting("DBKEEPER_BUDGET_MAX", "",
            "Most upstream connections of the whole fleet: a number, or a percentage of the server's "
            "max_connections (e.g. 80%)."),
    Setting("DBKEEPER_BUDGET_NAME", "",
            "Key the fleet shares in the table; default: the database's host:port (every function using "
            "that database shares it), or the secret's name when only the secret names the host."),
    Setting("DBKEEPER_BUDGET_LEASE_S", "300",
            "Lifetime of a lease; renewed when used and older than half of it. Must exceed twice the longest "
            "session (the function timeout); a vanished sandbox's connection is reclaimed after about 1.5 times it."),
    Setting("DBKEEPER_METRICS", "on", "on: CloudWatch Embedded Metric Format lines in the log; off: none."),
    Setting("DBKEEPER_METRICS_NAMESPACE", "dbkeeper", "CloudWatch namespace of the metrics."),
    Setting("DBKEEPER_METRICS_DIMENSIONS", "",
            "name=value pairs, comma separated, of the metrics' dimensions; default: service=<function name>."),
    Setting("DBKEEPER_METRICS_EVERY", "100",
            "A metrics line is written after this many client sessions (and at SHUTDOWN)."),
    Setting("DBKEEPER_METRICS_INTERVAL_S", "60",
            "... or at the first session end this many seconds after the last line (no timer runs across a freeze)."),
    Setting("DBKEEPER_FAIL_MODE", "open",
            "open: a problem at INIT (an invalid setting, a listener that cannot bind) leaves the function as "
            "it is without the layer (the extension registers, logs init_failed and serves nothing; the wrapper "
            "leaves DB_HOST/DB_PORT alone); closed: INIT fails with the message."),
)
# Set by Lambda itself: snap-start in environments restored from a SnapStart snapshot.
INITIALIZATION_TYPE = "AWS_LAMBDA_INITIALIZATION_TYPE"
# Set by Lambda Managed Instances: how many invocations one execution environment runs at once.
MAX_CONCURRENCY = "AWS_LAMBDA_MAX_CONCURRENCY"
# Clients per upstream connection the pool bound assumes there: sessions move between connections
# (connection sharing), and a function's invocations are rarely all inside a statement at once.
CLIENTS_PER_UPSTREAM = 4


class Config(NamedTuple):
    """Typed, immutable; built once by from_environ. Passwords are left out of its repr."""

    db_host: str
    db_port: int
    db_user: str
    db_password: str
    db_name: str | None
    db_tls: str
    db_tls_ca: str | None
    listen_port: int
    socket_path: str | None
    client_password: str | None
    trust_unix_socket: bool
    client_flags: tuple[str, ...]
    hold_setup: bool
    pool_size: int
    session_moves: bool
    borrow_timeout: float
    connect_timeout: float
    max_pending_clients: int
    upstream_wait_timeout: int
    idle_timeout: float
    verify_after_idle: float
    client_handshake_timeout: float
    init_connect_budget: float
    log_level: str
    event_loop: str
    enabled: bool
    aws: AwsConfig
    fail_mode: str
    snap_start: bool  # no upstream connection (nor credential lookup) during INIT

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={'<hidden>' if 'password' in name else repr(value)}"
                          for name, value in zip(self._fields, self, strict=True))
        return f"Config({shown})"

    @property
    def local_password(self) -> str:
        """The password a local client must prove it knows."""
        return self.client_password if self.client_password is not None else self.db_password

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> Config:
        problems: list[str] = []
        raw = {s.name: _lookup(env, s) for s in SETTINGS}

        def parsed(name: str, parse: Callable[[str], object]) -> Any:
            try:
                return parse(raw[name] or "")  # every parsed setting has a default: never None here
            except ValueError as exc:
                problems.append(f"{name}={_shown(name, raw[name])!s}: {exc}")
                return None

        enabled = parsed("DBKEEPER_ENABLED", _boolean)
        for required in ("DBKEEPER_DB_HOST", "DBKEEPER_DB_USER"):
            if enabled is not False and not raw[required] and not raw["DBKEEPER_DB_SECRET"]:
                problems.append(f"{required} (or {required.removeprefix('DBKEEPER_')}) is required")

        values = dict(
            db_host=raw["DBKEEPER_DB_HOST"] or "",
            db_port=parsed("DBKEEPER_DB_PORT", _port(allow_zero=False)),
            db_user=raw["DBKEEPER_DB_USER"] or "",
            db_password=raw["DBKEEPER_DB_PASSWORD"] or "",
            db_name=raw["DBKEEPER_DB_NAME"] or None,
            db_tls=parsed("DBKEEPER_DB_TLS", _choice(TLS_MODES)),
            db_tls_ca=raw["DBKEEPER_DB_TLS_CA"] or None,
            listen_port=parsed("DBKEEPER_LISTEN_PORT", _port(allow_zero=True)),
            socket_path=parsed("DBKEEPER_SOCKET", _socket_path),
            client_password=raw["DBKEEPER_CLIENT_PASSWORD"] or None,
            trust_unix_socket=parsed("DBKEEPER_TRUST_UNIX_SOCKET", _boolean),
            client_flags=parsed("DBKEEPER_CLIENT_FLAGS", _flag_names(SESSION_FLAGS)),
            hold_setup=parsed("DBKEEPER_HOLD_SETUP", _boolean),
            pool_size=parsed("DBKEEPER_POOL_SIZE", _integer(1, 64)) if "DBKEEPER_POOL_SIZE" in env
            else _pool_size_for(env.get(MAX_CONCURRENCY), parsed("DBKEEPER_POOL_SIZE", _integer(1, 64))),
            session_moves=parsed("DBKEEPER_SESSION_MOVES", _boolean),
            borrow_timeout=parsed("DBKEEPER_BORROW_TIMEOUT_MS", _milliseconds(1, 900_000)),
            connect_timeout=parsed("DBKEEPER_CONNECT_TIMEOUT_MS", _milliseconds(10, 60_000)),
            upstream_wait_timeout=parsed("DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S", _integer(0, 31_536_000)),
            idle_timeout=parsed("DBKEEPER_IDLE_TIMEOUT_S", _integer(0, 31_536_000)),
            max_pending_clients=parsed("DBKEEPER_MAX_PENDING_CLIENTS", _integer(1, 100_000)),
            verify_after_idle=parsed("DBKEEPER_VERIFY_AFTER_IDLE_MS", _milliseconds(0, 86_400_000)),
            client_handshake_timeout=parsed("DBKEEPER_CLIENT_HANDSHAKE_TIMEOUT_MS", _milliseconds(10, 600_000)),
            init_connect_budget=parsed("DBKEEPER_INIT_CONNECT_BUDGET_MS", _milliseconds(0, 9_000)),
            log_level=parsed("DBKEEPER_LOG_LEVEL", _choice(LOG_LEVELS)),
            event_loop=parsed("DBKEEPER_EVENT_LOOP", _choice(EVENT_LOOPS)),
            enabled=enabled,
            aws=AwsConfig.parse(env, raw, parsed, problems),
            fail_mode=parsed("DBKEEPER_FAIL_MODE", _choice(FAIL_MODES)),
            snap_start=(env.get(INITIALIZATION_TYPE) or "").strip().lower() == "snap-start",
        )
        if values["listen_port"] == 0 and values["socket_path"] is None:
            problems.append("DBKEEPER_LISTEN_PORT=0 and DBKEEPER_SOCKET='' leave no listener")
        if values["aws"].iam_auth and values["db_tls"] != "required":
            problems.append("DBKEEPER_DB_IAM_AUTH=true needs DBKEEPER_DB_TLS=required "
                            "(the token crosses the network in clear text)")
        if problems:
            raise ConfigError(problems)
        return cls(**values)


class AwsConfig(NamedTuple):
    """The AWS features' settings and the Lambda facts they need (all off by default)."""

    db_secret: str | None
    client_password_secret: str | None
    iam_auth: bool
    sdk_path: str | None
    budget_table: str | None
    budget_max: int | None        # a number of connections, or
    budget_percent: float | None  # a percentage of the server's max_connections
    budget_name: str | None
    budget_lease: float
    metrics: bool
    metrics_namespace: str
    metrics_dimensions: tuple[tuple[str, str], ...]
    metrics_every: int
    metrics_interval: float
    region: str | None
    function_name: str
    function_version: str

    @property
    def needs_sdk(self) -> bool:
        return bool(self.db_secret or self.client_password_secret or self.iam_auth or self.budget_table)

    @classmethod
    def parse(cls, env: Mapping[str, str], raw: Mapping[str, str | None],
              parsed: Callable[[str, Callable[[str], object]], Any], problems: list[str]) -> AwsConfig:
        budget_max, budget_percent = parsed("DBKEEPER_BUDGET_MAX", _count_or_percent) or (None, None)
        table = raw["DBKEEPER_BUDGET_TABLE"] or None
        if table and budget_max is None and budget_percent is None:
            problems.append("DBKEEPER_BUDGET_TABLE is set but DBKEEPER_BUDGET_MAX is not")
        function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        iam_auth = parsed("DBKEEPER_DB_IAM_AUTH", _boolean)
        if iam_auth and not (raw["DBKEEPER_CLIENT_PASSWORD"] or raw["DBKEEPER_CLIENT_PASSWORD_SECRET"]):
            problems.append("DBKEEPER_DB_IAM_AUTH=true needs DBKEEPER_CLIENT_PASSWORD or "
                            "DBKEEPER_CLIENT_PASSWORD_SECRET "
                            "(the password the function presents locally)")
        dimensions = parsed("DBKEEPER_METRICS_DIMENSIONS", _pairs)
        return cls(
            db_secret=raw["DBKEEPER_DB_SECRET"] or None,
            client_password_secret=raw["DBKEEPER_CLIENT_PASSWORD_SECRET"] or None,
            iam_auth=iam_auth,
            sdk_path=raw["DBKEEPER_AWS_SDK_PATH"] or None,
            budget_table=table,
            budget_max=budget_max,
            budget_percent=budget_percent,
            budget_name=raw["DBKEEPER_BUDGET_NAME"] or None,
            budget_lease=parsed("DBKEEPER_BUDGET_LEASE_S", _integer(2, 86_400)),
            metrics=parsed("DBKEEPER_METRICS", _boolean),
            metrics_namespace=raw["DBKEEPER_METRICS_NAMESPACE"] or "dbkeeper",
            metrics_dimensions=dimensions or (
                (("service", function_name or "dbkeeper"),) if dimensions is not None else ()),
            metrics_every=parsed("DBKEEPER_METRICS_EVERY", _integer(1, 1_000_000)),
            metrics_interval=parsed("DBKEEPER_METRICS_INTERVAL_S", _integer(1, 86_400)),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            function_name=function_name,
            function_version=env.get("AWS_LAMBDA_FUNCTION_VERSION", ""),
        )
def fail_mode_of(env: Mapping[str, str]) -> str:
    """DBKEEPER_FAIL_MODE alone, for when the whole Config cannot be built: an unreadable value
    means the default (open), the safe side for a function that worked before."""
    setting = next(s for s in SETTINGS if s.name == "DBKEEPER_FAIL_MODE")
    value = (_lookup(env, setting) or "").lower()
    return value if value in FAIL_MODES else "open"


def _pool_size_for(max_concurrency: str | None, default: int) -> int:
    """Without DBKEEPER_POOL_SIZE: on Managed Instances, a quarter of the environment's concurrency
    (at least 1, at most 64); elsewhere (one invocation at a time) the setting's default."""
    try:
        concurrency = int((max_concurrency or "").strip())
    except ValueError:
        return default
    if concurrency < 1:
        return default
    return max(1, min(64, -(-concurrency // CLIENTS_PER_UPSTREAM)))


def _lookup(env: Mapping[str, str], setting: Setting) -> str | None:
    if setting.name in env:
        return env[setting.name].strip()
    if setting.fallback and setting.fallback in env:
        return env[setting.fallback].strip()
    return setting.default


def _shown(name: str, value: str | None) -> str:
    return "<hidden>" if "PASSWORD" in name else repr(value)


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true or false")


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"expected {low}..{high}")
        return number
    return parse


def _port(allow_zero: bool) -> Callable[[str], int]:
    return _integer(0 if allow_zero else 1, 65535)


def _milliseconds(low: int, high: int) -> Callable[[str], float]:
    whole = _integer(low, high)
    return lambda text: whole(text) / 1000.0


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in options:
            raise ValueError("expected one of " + ", ".join(options))
        return text.lower()
    return parse


def _flag_names(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(sorted({name.strip().upper() for name in text.replace(",", " ").split() if name.strip()}))
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise ValueError(f"unknown flag(s) {', '.join(unknown)}; expected some of {', '.join(allowed)}")
        return names
    return parse


def _count_or_percent(text: str) -> tuple[int | None, float | None] | None:
    if not text:
        return None
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise ValueError("expected a number of connections or a percentage such as 80%") from None
        if not 0 < percent <= 100:
            raise ValueError("expected a percentage above 0 and at most 100")
        return None, percent
    return _integer(1, 100_000)(text), None


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = item.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise ValueError("expected name=value pairs separated by commas")
        pairs.append((name.strip(), value.strip()))
    if len(pairs) > 30:
        raise ValueError("CloudWatch allows at most 30 dimensions")
    return tuple(pairs)


def _socket_path(text: str) -> str | None:
    if not text:
        return None
    if not text.startswith("/"):
        raise ValueError("expected an absolute path")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        # the path goes into the wrapper's line-based state file (state_file.py)
        raise ValueError("expected no control characters (line breaks, tabs)")
    if len(text.encode()) > 107:
        raise ValueError("longer than a Unix socket path may be (107 bytes)")
    return text
