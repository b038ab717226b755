"""The operation list every client driver runs against every target (see test_client_matrix.py).

A *target* is a MySQL endpoint (the MariaDB itself, or dbkeeper in front of it); a *transport* is
``tcp`` or ``unix``; a *driver* is one of ``DRIVERS``. ``open_session(driver, target, transport)``
gives a ``Session`` with the same small API for each driver, and every operation in ``OPS`` is a
function ``op(ctx) -> dict`` that

* runs through ``ctx.connect()`` sessions only (never a second, concurrent one),
* checks the facts that hold for any correct server (``check(...)``: those fail on either target),
* returns what it observed, made comparable with ``canon()``: the result on the MariaDB itself is
  the oracle for the result through dbkeeper (same driver, same transport).

Operations that a driver cannot express raise ``Unsupported`` (the test skips with that reason).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import decimal
import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pymysql
import pymysql.err
from pymysql.constants import CLIENT

__all__ = [
    "DRIVERS", "TRANSPORTS", "OPS", "Target", "Session", "Unsupported", "OpContext", "ErrorInfo",
    "open_session", "canon", "check", "pymysql_sqlstate_hook", "driver_versions",
    "BLOB_SIZE", "run_op", "connect_and_select_1", "IsolatedRunner", "upstream_prepared", "direct_target_of",
    "dbkeeper_target_of", "OTHER_DB",
]

DRIVERS = ("pymysql", "mysqlconnector_pure", "mysqlconnector_c", "mysqldb", "sqlalchemy")
TRANSPORTS = ("tcp", "unix")
BLOB_SIZE = 20 * 1024 * 1024
CLIENT_MAX_PACKET = 64 * 1024 * 1024


class Unsupported(Exception):
    """The driver has no way to express this operation (the test skips with this reason)."""


def check(condition: Any, message: str) -> None:
    """A fact that must hold on any correct server; fails the op on either target."""
    if not condition:
        raise AssertionError(message)


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # "direct" | "dbkeeper"
    host: str
    port: int
    unix_socket: str
    user: str
    password: str
    database: str


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    errno: int
    sqlstate: str | None


def canon(value: Any) -> Any:
    """A comparable form that keeps Python types: ``1`` and ``1.0`` and ``'1'`` stay different."""
    if isinstance(value, dict):
        return {k: canon(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canon(v) for v in value]
    if isinstance(value, float) and value != value:
        return ("float", "nan")
    if isinstance(value, (bytearray, memoryview)):
        return ("bytes", bytes(value))
    if isinstance(value, set):
        return ("set", sorted(value))
    return (type(value).__name__, value)


# --------------------------------------------------------------------------- driver sessions


@dataclasses.dataclass
class Res:
    rows: list[tuple[Any, ...]] | None
    description: list[tuple[Any, ...]] | None
    rowcount: int
    lastrowid: Any
    warning_count: int | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Session:
    """One client connection of one driver. Methods raise the driver's own exceptions;
    ``error_of(exc)`` maps them to ``ErrorInfo`` (or None for non-server errors)."""

    driver: str
    supports_prepared = False
    prepared_reason = "the driver has no server-side prepared statements"

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Res: ...
    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int: ...
    def multi(self, sql: str) -> list[Res]: ...
    def prepared(self, sql: str, params: Sequence[Any] | None = None) -> Res:
        raise Unsupported(self.prepared_reason)
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def set_autocommit(self, on: bool) -> None: ...
    def select_db(self, name: str) -> None: ...
    def ping(self) -> None: ...
    def server_version(self) -> str: ...
    def close(self) -> None: ...
    def error_of(self, exc: BaseException) -> ErrorInfo | None: ...

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        res = self.execute(sql, params)
        assert res.rows is not None, sql
        return res.rows[0][0]

    def expect_error(self, fn: Callable[[], Any]) -> ErrorInfo:
        """Run ``fn``; it must fail with a server error. Returns errno and SQLSTATE."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - every driver has its own hierarchy
            info = self.error_of(exc)
            if info is None:
                raise
            return info
        raise AssertionError("expected a server error, the statement succeeded")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _endpoint(target: Target, transport: str) -> dict[str, Any]:
    if transport == "unix":
        return {"unix_socket": target.unix_socket}
    return {"host": target.host, "port": target.port}


# PyMySQL drops the SQLSTATE of an ERR packet; this hook keeps it on the exception (e.sqlstate).
_orig_raise = pymysql.err.raise_mysql_exception


def _raise_with_sqlstate(data: bytes) -> None:
    try:
        _orig_raise(data)
    except pymysql.err.MySQLError as exc:
        exc.sqlstate = data[4:9].decode("ascii", "replace") if data[3:4] == b"#" else None  # type: ignore[attr-defined]
        raise


@contextlib.contextmanager
def pymysql_sqlstate_hook() -> Iterator[None]:
    pymysql.err.raise_mysql_exception = _raise_with_sqlstate
    try:
        yield
    finally:
        pymysql.err.raise_mysql_exception = _orig_raise


def _pymysql_error(exc: BaseException) -> ErrorInfo | None:
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        if exc.args[0] >= 2000:  # client-side (CR_*) errors: lost connection etc.
            return None
        return ErrorInfo(exc.args[0], getattr(exc, "sqlstate", None))
    return None


class PyMySQLSession(Session):
    driver = "pymysql"

    def __init__(self, target: Target, transport: str, *, database: str | None, multi: bool,
                 autocommit: bool, local_infile: bool) -> None:
        self.conn = pymysql.connect(
            user=target.user, password=target.password, database=database, charset="utf8mb4",
            connect_timeout=10, read_timeout=60, write_timeout=60, autocommit=autocommit,
            client_flag=CLIENT.MULTI_STATEMENTS if multi else 0, local_infile=local_infile,
            max_allowed_packet=CLIENT_MAX_PACKET, **_endpoint(target, transport),
        )

    def _res(self, cur: Any) -> Res:
        desc = [tuple(d) for d in cur.description] if cur.description else None
        rows = [tuple(r) for r in cur.fetchall()] if desc else None
        return Res(rows, desc, cur.rowcount, cur.lastrowid, cur.warning_count)

    def execute(self, sql, params=None):
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return self._res(cur)

    def executemany(self, sql, seq):
        with self.conn.cursor() as cur:
            return cur.executemany(sql, seq)

    def multi(self, sql):
        out = []
        with self.conn.cursor() as cur:
            cur.execute(sql)
            while True:
                out.append(self._res(cur))
                if not cur.nextset():
                    return out

    def commit(self): self.conn.commit()
    def rollback(self): self.conn.rollback()
    def set_autocommit(self, on): self.conn.autocommit(on)
    def select_db(self, name): self.conn.select_db(name)
    def ping(self): self.conn.ping(reconnect=False)
    def server_version(self): return self.conn.get_server_info()
    def close(self):
        if self.conn.open:
            self.conn.close()
    def error_of(self, exc): return _pymysql_error(exc)


class ConnectorSession(Session):
    supports_prepared = True

    def __init__(self, target: Target, transport: str, *, pure: bool, database: str | None,
                 multi: bool, autocommit: bool, local_infile: bool) -> None:
        import mysql.connector
        from mysql.connector.constants import ClientFlag

        self.driver = "mysqlconnector_pure" if pure else "mysqlconnector_c"
        if not pure and not mysql.connector.HAVE_CEXT:
            raise Unsupported("mysql-connector-python C extension is not importable")
        kw: dict[str, Any] = dict(
            user=target.user, password=target.password, charset="utf8mb4", use_pure=pure,
            autocommit=autocommit, connection_timeout=10, allow_local_infile=local_infile,
            # 9.x sends MULTI_STATEMENTS by default; say explicitly what we want.
            client_flags=[ClientFlag.MULTI_STATEMENTS if multi else -ClientFlag.MULTI_STATEMENTS],
            **_endpoint(target, transport),
        )
        if database:
            kw["database"] = database
        self.conn = mysql.connector.connect(**kw)
        from mysql.connector.connection_cext import CMySQLConnection

        check(isinstance(self.conn, CMySQLConnection) != pure,
              f"asked for use_pure={pure}, got {type(self.conn).__name__}")
        self._errors = mysql.connector.Error

    def _res(self, cur: Any) -> Res:
        desc = [tuple(d) for d in cur.description] if cur.description else None
        rows = [tuple(r) for r in cur.fetchall()] if desc else None
        return Res(rows, desc, cur.rowcount, cur.lastrowid, cur.warning_count)

    def execute(self, sql, params=None):
        cur = self.conn.cursor()
        try:
            cur.execute(sql, params)
            return self._res(cur)
        finally:
            cur.close()

    def executemany(self, sql, seq):
        cur = self.conn.cursor()
        try:
            cur.executemany(sql, seq)
            return cur.rowcount
        finally:
            cur.close()

    def prepared(self, sql, params=None):
        cur = self.conn.cursor(prepared=True)
        try:
            cur.execute(sql, params or ())
            return self._res(cur)
        finally:
            cur.close()

    def multi(self, sql):
        out = []
        cur = self.conn.cursor()
        try:
            cur.execute(sql)
            while True:
                out.append(self._res(cur))
                if not cur.nextset():
                    return out
        finally:
            cur.close()

    def commit(self): self.conn.commit()
    def rollback(self): self.conn.rollback()
    def set_autocommit(self, on): self.conn.autocommit = on
    def select_db(self, name): self.conn.database = name
    def ping(self): self.conn.ping(reconnect=False)
    def server_version(self): return self.conn.server_info
    def close(self): self.conn.close()

    def error_of(self, exc):
        # the C extension lets _mysql_connector.MySQLInterfaceError escape from nextset()
        errno = getattr(exc, "errno", None)
        if isinstance(errno, int) and 0 < errno < 2000 and hasattr(exc, "sqlstate"):
            return ErrorInfo(errno, exc.sqlstate)
        return None


class MySQLdbSession(Session):
    driver = "mysqldb"
    prepared_reason = "mysqlclient (MySQLdb) has no server-side prepared statements"

    def __init__(self, target: Target, transport: str, *, database: str | None, multi: bool,
                 autocommit: bool, local_infile: bool) -> None:
        import MySQLdb

        kw: dict[str, Any] = dict(
            user=target.user, password=target.password, charset="utf8mb4", connect_timeout=10,
            autocommit=autocommit, multi_statements=multi, local_infile=int(local_infile),
            **_endpoint(target, transport),
        )
        if database:
            kw["db"] = database
        self.conn = MySQLdb.connect(**kw)
        self._mod = MySQLdb

    def _res(self, cur: Any) -> Res:
        desc = [tuple(d) for d in cur.description] if cur.description else None
        rows = [tuple(r) for r in cur.fetchall()] if desc else None
        return Res(rows, desc, cur.rowcount, cur.lastrowid, self.conn.warning_count())

    @contextlib.contextmanager
    def _sqlstate(self) -> Iterator[None]:
        # mysqlclient keeps the SQLSTATE on the connection until the next call: read it at once
        try:
            yield
        except self._mod.MySQLError as exc:
            exc.sqlstate = self.conn.sqlstate()  # type: ignore[attr-defined]
            raise

    def execute(self, sql, params=None):
        with self.conn.cursor() as cur:
            with self._sqlstate():
                cur.execute(sql, params)
            return self._res(cur)

    def executemany(self, sql, seq):
        with self.conn.cursor() as cur, self._sqlstate():
            return cur.executemany(sql, seq)

    def multi(self, sql):
        out = []
        with self.conn.cursor() as cur:
            with self._sqlstate():
                cur.execute(sql)
            while True:
                out.append(self._res(cur))
                with self._sqlstate():
                    more = cur.nextset()
                if not more:
                    return out

    def commit(self): self.conn.commit()
    def rollback(self): self.conn.rollback()
    def set_autocommit(self, on): self.conn.autocommit(on)

    def select_db(self, name):
        with self._sqlstate():
            self.conn.select_db(name)

    def ping(self): self.conn.ping()
    def server_version(self): return self.conn.get_server_info()
    def close(self):
        with contextlib.suppress(Exception):
            self.conn.close()

    def error_of(self, exc):
        if isinstance(exc, self._mod.MySQLError) and exc.args and isinstance(exc.args[0], int):
            if exc.args[0] >= 2000:
                return None
            return ErrorInfo(exc.args[0], getattr(exc, "sqlstate", None))
        return None


class SQLAlchemySession(Session):
    driver = "sqlalchemy"
    prepared_reason = "SQLAlchemy over PyMySQL has no server-side prepared statements"

    def __init__(self, target: Target, transport: str, *, database: str | None, multi: bool,
                 autocommit: bool, local_infile: bool) -> None:
        import sqlalchemy
        from sqlalchemy.engine import URL

        query = {"charset": "utf8mb4"}
        if multi:  # in the URL, not connect_args: the dialect ORs its CLIENT.FOUND_ROWS into it
            query["client_flag"] = str(CLIENT.MULTI_STATEMENTS)
        if transport == "unix":
            query["unix_socket"] = target.unix_socket
        url = URL.create(
            "mysql+pymysql", username=target.user, password=target.password,
            host=target.host if transport == "tcp" else "localhost",
            port=target.port if transport == "tcp" else None, database=database, query=query,
        )
        connect_args: dict[str, Any] = {"connect_timeout": 10, "local_infile": local_infile,
                                        "max_allowed_packet": CLIENT_MAX_PACKET}
        self.engine = sqlalchemy.create_engine(url, connect_args=connect_args)
        self.conn = self.engine.connect()
        self._autocommit = False
        if autocommit:
            self.set_autocommit(True)
        self._dbapi_error = sqlalchemy.exc.DBAPIError

    @property
    def dbapi(self) -> Any:
        return self.conn.connection.dbapi_connection

    def execute(self, sql, params=None):
        result = self.conn.exec_driver_sql(sql, tuple(params) if params else ())
        desc = [tuple(d) for d in result.cursor.description] if result.returns_rows else None
        rows = [tuple(r) for r in result.fetchall()] if result.returns_rows else None
        return Res(rows, desc, result.rowcount, result.lastrowid, None)

    def executemany(self, sql, seq):
        return self.conn.exec_driver_sql(sql, [tuple(p) for p in seq]).rowcount

    def multi(self, sql):
        out = []
        with self.dbapi.cursor() as cur:
            cur.execute(sql)
            while True:
                desc = [tuple(d) for d in cur.description] if cur.description else None
                rows = [tuple(r) for r in cur.fetchall()] if desc else None
                out.append(Res(rows, desc, cur.rowcount, cur.lastrowid, cur.warning_count))
                if not cur.nextset():
                    return out

    def commit(self): self.conn.commit()
    def rollback(self): self.conn.rollback()

    def set_autocommit(self, on):
        self.conn.commit()  # like SET autocommit=1 on the others: ends the current transaction
        self.conn.execution_options(isolation_level="AUTOCOMMIT" if on else "REPEATABLE READ")
        self._autocommit = on

    def select_db(self, name):
        self.dbapi.select_db(name)

    def ping(self): self.dbapi.ping(reconnect=False)
    def server_version(self): return self.dbapi.get_server_info()

    def close(self):
        with contextlib.suppress(Exception):
            self.conn.close()
        self.engine.dispose()

    def error_of(self, exc):
        if isinstance(exc, self._dbapi_error):
            return _pymysql_error(exc.orig)
        return _pymysql_error(exc)


def open_session(driver: str, target: Target, transport: str, *, database: str | None = "default",
                 multi: bool = False, autocommit: bool = False, local_infile: bool = False) -> Session:
    """A new connection of ``driver`` to ``target`` over ``transport``.

    ``database="default"`` means the target's database; ``None`` connects without one.
    """
    db = target.database if database == "default" else database
    kw = dict(database=db, multi=multi, autocommit=autocommit, local_infile=local_infile)
    if driver == "pymysql":
        return PyMySQLSession(target, transport, **kw)
    if driver == "mysqlconnector_pure":
        return ConnectorSession(target, transport, pure=True, **kw)
    if driver == "mysqlconnector_c":
        return ConnectorSession(target, transport, pure=False, **kw)
    if driver == "mysqldb":
        return MySQLdbSession(target, transport, **kw)
    if driver == "sqlalchemy":
        return SQLAlchemySession(target, transport, **kw)
    raise ValueError(driver)


def driver_versions() -> dict[str, str]:
    import importlib.metadata as md

    return {name: md.version(name) for name in
            ("PyMySQL", "mysql-connector-python", "mysqlclient", "SQLAlchemy")}


# --------------------------------------------------------------------------- op context


@dataclasses.dataclass
class OpContext:
    driver: str
    target: Target
    transport: str
    prefix: str  # unique per run, driver, target and transport: table names start with it
    _tables: list[str] = dataclasses.field(default_factory=list)

    def connect(self, **kw: Any) -> Session:
        return open_session(self.driver, self.target, self.transport, **kw)

    def table(self, name: str) -> str:
        full = f"{self.prefix}_{name}"
        assert len(full) <= 64, full
        self._tables.append(full)
        return full

    def cleanup(self) -> None:
        if not self._tables:
            return
        with contextlib.suppress(Exception), self.connect(autocommit=True) as s:
            for t in self._tables:
                s.execute(f"DROP TABLE IF EXISTS `{t}`")


OPS: dict[str, Callable[[OpContext], dict[str, Any]]] = {}


def op(fn: Callable[[OpContext], dict[str, Any]]) -> Callable[[OpContext], dict[str, Any]]:
    OPS[fn.__name__.removeprefix("op_")] = fn
    return fn


def _rows(res: Res) -> list[tuple[Any, ...]]:
    assert res.rows is not None
    return res.rows


# --------------------------------------------------------------------------- operations


@op
def op_handshake_and_ping(ctx: OpContext) -> dict[str, Any]:
    # given a fresh connection, the server's greeting as the driver saw it and a COM_PING
    with ctx.connect() as s:
        version = s.server_version()
        check("MariaDB" in version, f"server version {version!r} does not say MariaDB")
        s.ping()
        return {"server_version": version, "after_ping": s.scalar("SELECT 1"),
                "autocommit": s.scalar("SELECT @@autocommit")}


@op
def op_session_charset(ctx: OpContext) -> dict[str, Any]:
    with ctx.connect() as s:
        res = s.execute(
            "SELECT @@character_set_client, @@character_set_connection, @@character_set_results,"
            " @@collation_connection, @@session.sql_mode, @@session.time_zone,"
            " @@session.tx_isolation, @@session.max_allowed_packet >= 64*1024*1024"
        )
        row = _rows(res)[0]
        check(row[0] == "utf8mb4", f"character_set_client {row[0]!r}")
        return {"vars": row, "description": res.description}


@op
def op_connect_with_database(ctx: OpContext) -> dict[str, Any]:
    # given a connect naming the database, DATABASE() is that database
    out = {}
    for db in (ctx.target.database, OTHER_DB):
        with ctx.connect(database=db) as s:
            out[db] = s.scalar("SELECT DATABASE()")
            check(out[db] == db, f"connected with database={db!r}, DATABASE() is {out[db]!r}")
    return out


@op
def op_use_database(ctx: OpContext) -> dict[str, Any]:
    with ctx.connect() as s:
        out: dict[str, Any] = {"initial": s.scalar("SELECT DATABASE()")}
        s.execute(f"USE {OTHER_DB}")  # COM_QUERY
        out["after_use_sql"] = s.scalar("SELECT DATABASE()")
        s.select_db(ctx.target.database)  # COM_INIT_DB
        out["after_init_db"] = s.scalar("SELECT DATABASE()")
        out["init_db_missing"] = s.expect_error(lambda: s.select_db("no_such_db_x"))
        out["use_missing"] = s.expect_error(lambda: s.execute("USE no_such_db_x"))
        out["still_in"] = s.scalar("SELECT DATABASE()")
        check(out["initial"] == ctx.target.database and out["after_use_sql"] == OTHER_DB
              and out["after_init_db"] == ctx.target.database
              and out["still_in"] == ctx.target.database, f"databases: {out}")
        check(out["init_db_missing"].errno in (1044, 1049), f"{out['init_db_missing']}")
        return out


@op
def op_ddl(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("ddl")
    with ctx.connect() as s:
        s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY, a VARCHAR(10)) ENGINE=InnoDB")
        s.execute(f"ALTER TABLE `{t}` ADD COLUMN b DECIMAL(5,2) NULL, ADD INDEX ix_a (a)")
        created = _rows(s.execute(f"SHOW CREATE TABLE `{t}`"))[0][1]
        cols = _rows(s.execute(
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (t,)))
        s.execute(f"RENAME TABLE `{t}` TO `{t}_r`")
        s.execute(f"DROP TABLE `{t}_r`")
        gone = s.expect_error(lambda: s.execute(f"SELECT * FROM `{t}_r`"))
        check([c[0] for c in cols] == ["id", "a", "b"], f"columns {cols}")
        check(gone.errno == 1146, f"dropped table: {gone}")
        return {"create": created.replace(t, "T"), "columns": cols, "gone": gone}


@op
def op_dml(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("dml")
    with ctx.connect(autocommit=True) as s:
        s.execute(f"CREATE TABLE `{t}` (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20), n INT)")
        ins = s.execute(f"INSERT INTO `{t}` (v, n) VALUES (%s, %s)", ("one", 1))
        ins2 = s.execute(f"INSERT INTO `{t}` (v, n) VALUES ('two', 2), ('three', 3), ('four', 4)")
        lid = s.scalar("SELECT LAST_INSERT_ID()")
        upd = s.execute(f"UPDATE `{t}` SET n = n * 10 WHERE n >= 2")
        # matched but unchanged rows: 0 affected without CLIENT_FOUND_ROWS, 1 with it
        noop = s.execute(f"UPDATE `{t}` SET v = 'one' WHERE id = 1")
        dele = s.execute(f"DELETE FROM `{t}` WHERE v = %s", ("four",))
        sel = s.execute(f"SELECT id, v, n FROM `{t}` ORDER BY id")
        check(ins.rowcount == 1 and ins.lastrowid == 1, f"insert rowcount/lastrowid {ins}")
        check(ins2.rowcount == 3 and lid == 2, f"multi-row insert {ins2}, LAST_INSERT_ID {lid}")
        check(upd.rowcount == 3 and dele.rowcount == 1, f"update {upd.rowcount} delete {dele.rowcount}")
        check(_rows(sel) == [(1, "one", 1), (2, "two", 20), (3, "three", 30)], f"rows {sel.rows}")
        return {"insert": ins.as_dict(), "insert_many": ins2.as_dict(), "last_insert_id": lid,
                "update": upd.rowcount, "noop_update": noop.rowcount, "delete": dele.rowcount,
                "select": sel.as_dict()}


@op
def op_transactions(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("tx")
    out: dict[str, Any] = {}
    with ctx.connect(autocommit=True) as s:
        s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB")
    with ctx.connect(autocommit=False) as s:
        s.execute(f"INSERT INTO `{t}` VALUES (1, 'rolled')")
        out["in_tx"] = s.scalar(f"SELECT COUNT(*) FROM `{t}`")
        s.rollback()
        out["after_rollback"] = s.scalar(f"SELECT COUNT(*) FROM `{t}`")
        s.execute(f"INSERT INTO `{t}` VALUES (2, 'kept')")
        s.commit()
        s.execute("START TRANSACTION")
        s.execute(f"UPDATE `{t}` SET v = 'changed' WHERE id = 2")
        s.execute("ROLLBACK")
        s.execute("BEGIN")
        s.execute(f"INSERT INTO `{t}` VALUES (3, 'sql')")
        s.execute("COMMIT")
        s.execute(f"INSERT INTO `{t}` VALUES (4, 'dropped')")  # uncommitted at close: gone
    with ctx.connect() as s:  # a later session sees exactly what was committed
        out["committed"] = _rows(s.execute(f"SELECT id, v FROM `{t}` ORDER BY id"))
    check(out["in_tx"] == 1 and out["after_rollback"] == 0, f"rollback: {out}")
    check(out["committed"] == [(2, "kept"), (3, "sql")], f"committed rows {out['committed']}")
    return out


@op
def op_autocommit_toggle(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("ac")
    out: dict[str, Any] = {}
    with ctx.connect(autocommit=True) as s:
        s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY) ENGINE=InnoDB")
        out["on"] = s.scalar("SELECT @@autocommit")
        s.execute(f"INSERT INTO `{t}` VALUES (1)")
        s.rollback()  # nothing to roll back: the insert is committed
        s.set_autocommit(False)
        out["off"] = s.scalar("SELECT @@autocommit")
        s.execute(f"INSERT INTO `{t}` VALUES (2)")
        s.rollback()
        s.set_autocommit(True)  # turning it on commits nothing pending, then autocommits
        s.execute(f"INSERT INTO `{t}` VALUES (3)")
        s.execute("SET autocommit = 0")
        s.execute(f"INSERT INTO `{t}` VALUES (4)")
        out["sql_off"] = s.scalar("SELECT @@autocommit")
        s.execute("SET autocommit = 1")  # implicit commit of row 4
        out["sql_on"] = s.scalar("SELECT @@autocommit")
    with ctx.connect() as s:
        out["rows"] = [r[0] for r in _rows(s.execute(f"SELECT id FROM `{t}` ORDER BY id"))]
    check(out["on"] == 1 and out["off"] == 0 and out["sql_off"] == 0 and out["sql_on"] == 1, f"{out}")
    check(out["rows"] == [1, 3, 4], f"rows {out['rows']}")
    return out


@op
def op_executemany(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("many")
    with ctx.connect(autocommit=True) as s:
        s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY, v VARCHAR(20), b BLOB NULL)")
        rows = [(i, f"v{i}", bytes([i % 256]) * i if i % 3 else None) for i in range(1, 201)]
        ins = s.executemany(f"INSERT INTO `{t}` (id, v, b) VALUES (%s, %s, %s)", rows)
        upd = s.executemany(f"UPDATE `{t}` SET v = %s WHERE id = %s", [("x", 1), ("y", 2), ("z", 999)])
        got = _rows(s.execute(f"SELECT COUNT(*), SUM(LENGTH(b)), MD5(GROUP_CONCAT(v ORDER BY id)) FROM `{t}`"))
        check(ins == 200, f"executemany insert rowcount {ins}")
        check(got[0][0] == 200, f"count {got}")
        return {"insert": ins, "update": upd, "summary": got}


@op
def op_prepared(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("ps")
    with ctx.connect(autocommit=True) as s:
        if not s.supports_prepared:
            raise Unsupported(s.prepared_reason)
        s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY, v VARCHAR(20), d DATETIME(6), x DECIMAL(10,3), "
                  "b VARBINARY(10)) DEFAULT CHARSET=utf8mb4")
        ins = [s.prepared(f"INSERT INTO `{t}` VALUES (?, ?, ?, ?, ?)", p).rowcount for p in (
            (1, "a", datetime.datetime(2024, 2, 29, 12, 34, 56, 789012), decimal.Decimal("1.5"), b"\x00\xff"),
            (2, None, None, None, None),
            (3, "ü😀", datetime.datetime(1999, 12, 31), decimal.Decimal("-0.001"), b""),
        )]
        sel = s.prepared(f"SELECT id, v, d, x, b FROM `{t}` WHERE id >= ? ORDER BY id", (1,))
        one = s.prepared(f"SELECT v FROM `{t}` WHERE id = ?", (3,))
        err = s.expect_error(lambda: s.prepared("SELECT * FROM no_such_table_ps WHERE id = ?", (1,)))
        after = s.prepared("SELECT ? + 1", (41,))
        check(ins == [1, 1, 1] and len(_rows(sel)) == 3, f"prepared insert {ins}, select {sel.rows}")
        check(_rows(one)[0][0] == "ü😀", f"prepared select {one.rows}")
        check(err.errno == 1146, f"prepare error {err}")
        check(_rows(after)[0][0] == 42, f"after error {after.rows}")
        return {"ins": ins, "sel": sel.as_dict(), "one": one.rows, "err": err, "after": after.rows}


@op
def op_multi_statements(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("multi")
    with ctx.connect(multi=True, autocommit=True) as s:
        results = s.multi(
            f"CREATE TABLE `{t}` (id INT PRIMARY KEY); INSERT INTO `{t}` VALUES (1),(2);"
            f" SELECT 1 AS a, 'x' AS b; SELECT id FROM `{t}` ORDER BY id; DELETE FROM `{t}` WHERE id = 1"
        )
        shapes = [(r.rows, r.rowcount) for r in results]
        # an error in the middle: results before it, then the error, then the session still works
        partial: list[Any] = []

        def failing() -> None:
            partial.extend(s.multi("SELECT 10; SELECT * FROM no_such_table_multi; SELECT 30"))
        err = s.expect_error(failing)
        after = s.scalar("SELECT 'after'")
        check(len(results) == 5 and results[2].rows == [(1, "x")] and results[3].rows == [(1,), (2,)],
              f"multi results {shapes}")
        check(err.errno == 1146 and after == "after", f"error mid-multi {err}, then {after!r}")
        return {"results": shapes, "err": err, "after": after}


@op
def op_multi_statements_refused_without_flag(ctx: OpContext) -> dict[str, Any]:
    # given a client that did not ask for CLIENT_MULTI_STATEMENTS, "a; b" is a syntax error
    with ctx.connect(multi=False) as s:
        err = s.expect_error(lambda: s.execute("SELECT 1; SELECT 2"))
        after = s.scalar("SELECT 'ok'")
        check(err.errno == 1064 and after == "ok", f"{err}, then {after!r}")
        return {"err": err, "after": after}


@op
def op_stored_procedure_results(ctx: OpContext) -> dict[str, Any]:
    # CALL returns two result sets and a final OK (CLIENT_MULTI_RESULTS)
    p = ctx.table("proc")
    with ctx.connect(autocommit=True) as s:
        s.execute(f"DROP PROCEDURE IF EXISTS `{p}`")
        s.execute(f"CREATE PROCEDURE `{p}`(IN n INT) BEGIN SELECT n AS a; SELECT n + 1 AS b, 'two' AS c; END")
        try:
            with ctx.connect(multi=True) as m:
                results = m.multi(f"CALL `{p}`(5)")
                after = m.scalar("SELECT 'after'")
        finally:
            s.execute(f"DROP PROCEDURE IF EXISTS `{p}`")
        rows = [r.rows for r in results]
        check(rows[:2] == [[(5,)], [(6, "two")]] and after == "after", f"CALL results {rows}, {after!r}")
        return {"rows": rows, "after": after}


def _blob(size: int) -> bytes:
    return random.Random(20240229).randbytes(size)


@op
def op_blob_20mb(ctx: OpContext) -> dict[str, Any]:
    # a ~21 MB value crosses the 16 MB packet boundary in both directions (split packets). It is
    # the base64 text of 16 MB + 1 KB of random bytes: a plain SQL literal the drivers pass as is
    # (escaping 20 MB of binary costs seconds per driver), and FROM_BASE64() brings the random
    # bytes themselves back, again as a value > 16 MB. MyISAM: no 20 MB through the tiny redo log.
    t = ctx.table("blob")
    data = _blob(16 * 1024 * 1024 + 1024)
    text = base64.b64encode(data)
    check(len(text) >= BLOB_SIZE, "the stored value is at least 20 MB")
    with ctx.connect(autocommit=True) as s:
        s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY, b LONGBLOB) ENGINE=MyISAM")
        s.execute(f"INSERT INTO `{t}` VALUES (1, '{text.decode()}')")
        got, length, sha = _rows(s.execute(f"SELECT b, LENGTH(b), SHA2(b, 256) FROM `{t}` WHERE id = 1"))[0]
        raw = _rows(s.execute(f"SELECT FROM_BASE64(b) FROM `{t}` WHERE id = 1"))[0][0]
        after = s.scalar("SELECT 'after'")
        check(length == len(text) and sha == hashlib.sha256(text).hexdigest(), f"server stored {length} bytes")
        check(bytes(got) == text, f"read back {len(got)} bytes, equal={bytes(got) == text}")
        check(bytes(raw) == data, f"binary read back {len(raw)} bytes, equal={bytes(raw) == data}")
        return {"type": type(got).__name__, "len": len(got), "sha": hashlib.sha256(got).hexdigest(),
                "raw": (type(raw).__name__, len(raw)), "server": (length, sha), "after": after}


@op
def op_blob_20mb_prepared(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("pblob")
    data = _blob(BLOB_SIZE)
    with ctx.connect(autocommit=True) as s:
        if not s.supports_prepared:
            raise Unsupported(s.prepared_reason)
        s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY, b LONGBLOB) ENGINE=MyISAM")
        s.prepared(f"INSERT INTO `{t}` VALUES (?, ?)", (1, data))  # COM_STMT_EXECUTE > 16 MB
        if s.driver == "mysqlconnector_pure":
            # its binary-protocol reader truncates values > 16 MB (driver bug): read as text
            got, length = _rows(s.execute(f"SELECT b, LENGTH(b) FROM `{t}` WHERE id = %s", (1,)))[0]
        else:
            got, length = _rows(s.prepared(f"SELECT b, LENGTH(b) FROM `{t}` WHERE id = ?", (1,)))[0]
        check(length == BLOB_SIZE and bytes(got) == data, f"prepared blob: {length}, {len(got)}")
        return {"type": type(got).__name__, "len": len(got), "sha": hashlib.sha256(bytes(got)).hexdigest()}


TEXTS = ["😀", "héllo wörld", "中文字符", "𝄞 music", "mixed 🎉 ü ß 日本 ☃", "", "a" * 300 + "🙂"]


@op
def op_utf8mb4_text(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("utf8")
    with ctx.connect(autocommit=True) as s:
        s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY, v VARCHAR(400), x TEXT) CHARACTER SET utf8mb4")
        for i, text in enumerate(TEXTS):
            s.execute(f"INSERT INTO `{t}` VALUES (%s, %s, %s)", (i, text, text * 2))
        s.execute(f"INSERT INTO `{t}` VALUES (100, '🚀 literal in SQL', 'ß')")
        res = s.execute(f"SELECT id, v, x, CHAR_LENGTH(v), LENGTH(v), HEX(v) FROM `{t}` ORDER BY id")
        lit = s.scalar("SELECT '🐍 inline'")
        for row in _rows(res):
            if row[0] < 100:
                text = TEXTS[row[0]]
                check(row[1] == text and row[2] == text * 2, f"row {row[0]}: {row[1]!r}")
                check(row[5] == text.encode().hex().upper(), f"stored bytes of {text!r}: {row[5]}")
        check(lit == "🐍 inline", f"literal {lit!r}")
        return {"rows": _rows(res), "description": res.description, "literal": lit}


@op
def op_nulls(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("nulls")
    with ctx.connect(autocommit=True) as s:
        cols = ", ".join(f"c{i} {ty} NULL" for i, ty in enumerate(
            ["INT", "VARCHAR(5)", "BLOB", "DATETIME", "DECIMAL(5,2)", "DOUBLE", "BIT(3)", "JSON", "TIME", "ENUM('a')"]))
        s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY, {cols})")
        s.execute(f"INSERT INTO `{t}` (id) VALUES (1)")
        s.execute(f"INSERT INTO `{t}` VALUES (2, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", (None,) * 10)
        res = s.execute(f"SELECT * FROM `{t}` ORDER BY id")
        lit = _rows(s.execute("SELECT NULL, NULL IS NULL, COALESCE(NULL, 'x'), %s", (None,)))
        check(all(v is None for r in _rows(res) for v in r[1:]), f"rows {res.rows}")
        check(lit == [(None, 1, "x", None)], f"literals {lit}")
        return {"rows": _rows(res), "description": res.description, "literals": lit}


TYPE_COLUMNS = [
    ("c_tinyint", "TINYINT", "-128", "127"),
    ("c_utinyint", "TINYINT UNSIGNED", "0", "255"),
    ("c_smallint", "SMALLINT", "-32768", "32767"),
    ("c_usmallint", "SMALLINT UNSIGNED", "0", "65535"),
    ("c_mediumint", "MEDIUMINT", "-8388608", "8388607"),
    ("c_umediumint", "MEDIUMINT UNSIGNED", "0", "16777215"),
    ("c_int", "INT", "-2147483648", "2147483647"),
    ("c_uint", "INT UNSIGNED", "0", "4294967295"),
    ("c_bigint", "BIGINT", "-9223372036854775808", "9223372036854775807"),
    ("c_ubigint", "BIGINT UNSIGNED", "0", "18446744073709551615"),
    ("c_bool", "BOOLEAN", "0", "1"),
    ("c_decimal", "DECIMAL(30,10)", "-99999999999999999999.9999999999", "12345678901234567890.0123456789"),
    ("c_float", "FLOAT", "-1.5", "3.25e10"),
    ("c_double", "DOUBLE", "-1.7976931348623157e308", "2.2250738585072014e-308"),
    ("c_bit1", "BIT(1)", "b'0'", "b'1'"),
    ("c_bit64", "BIT(64)", "b'0'", "x'FFFFFFFFFFFFFFFF'"),
    ("c_date", "DATE", "'1000-01-01'", "'9999-12-31'"),
    ("c_time", "TIME", "'-838:59:59'", "'838:59:59'"),
    ("c_time6", "TIME(6)", "'-01:02:03.456789'", "'00:00:00.000001'"),
    ("c_datetime6", "DATETIME(6)", "'1000-01-01 00:00:00.000000'", "'9999-12-31 23:59:59.999999'"),
    ("c_timestamp", "TIMESTAMP(3) NULL", "'1970-01-01 00:00:01.000'", "'2038-01-19 03:14:07.999'"),
    ("c_year", "YEAR", "1901", "2155"),
    ("c_char", "CHAR(10)", "''", "'abc😀'"),
    ("c_varchar", "VARCHAR(100)", "''", "'héllo wörld 🚀'"),
    ("c_binary", "BINARY(4)", "x'00000000'", "x'DEADBEEF'"),
    ("c_varbinary", "VARBINARY(16)", "''", "x'00FF00FF'"),
    ("c_tinyblob", "TINYBLOB", "''", "x'000102FEFF'"),
    ("c_blob", "BLOB", "''", "REPEAT(x'00FF', 1000)"),
    ("c_mediumblob", "MEDIUMBLOB", "''", "REPEAT(x'AB', 70000)"),
    ("c_longblob", "LONGBLOB", "''", "REPEAT(x'CD', 100)"),
    ("c_tinytext", "TINYTEXT", "''", "'tiny ü'"),
    ("c_text", "TEXT", "''", "REPEAT('text 😀 ', 100)"),
    ("c_mediumtext", "MEDIUMTEXT", "''", "REPEAT('m', 70000)"),
    ("c_longtext", "LONGTEXT", "''", "'long 中文'"),
    ("c_enum", "ENUM('a','b','c')", "'a'", "'c'"),
    ("c_set", "SET('x','y','z')", "''", "'x,z'"),
    ("c_json", "JSON", "'{}'", "'{\"a\": [1, 2.5, \"ü\", null], \"b\": {\"c\": true}}'"),
    ("c_geometry", "GEOMETRY", "ST_GeomFromText('POINT(0 0)')", "ST_GeomFromText('LINESTRING(0 0,1 1,2 0)')"),
    ("c_point", "POINT", "POINT(0, 0)", "POINT(1.5, -2.25)"),
    ("c_inet6", "INET6", "'::'", "'2001:db8::ff00:42:8329'"),
    ("c_inet4", "INET4", "'0.0.0.0'", "'192.0.2.1'"),
    ("c_uuid", "UUID", "'00000000-0000-0000-0000-000000000000'", "'123e4567-e89b-12d3-a456-426614174000'"),
]

# server-side text of row 2 for a few columns: a driver-independent check of what was stored
TYPE_TEXT_CHECKS = {
    "c_ubigint": "18446744073709551615",
    "c_decimal": "12345678901234567890.0123456789",
    "c_bit64": "FFFFFFFFFFFFFFFF",
    "c_time6": "00:00:00.000001",
    "c_datetime6": "9999-12-31 23:59:59.999999",
    "c_timestamp": "2038-01-19 03:14:07.999",
    "c_varchar": "héllo wörld 🚀",
    "c_point": "POINT(1.5 -2.25)",
    "c_inet6": "2001:db8::ff00:42:8329",
    "c_uuid": "123e4567-e89b-12d3-a456-426614174000",
    "c_set": "x,z",
}


def _text_expr(col: str) -> str:
    if col == "c_bit64":
        return f"HEX({col})"
    if col == "c_point":
        return f"ST_AsText({col})"
    return f"CAST({col} AS CHAR)"


def _types_table(s: Session, t: str) -> None:
    s.execute("SET time_zone = '+00:00'")
    s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY, "
              + ", ".join(f"{c} {ty}" for c, ty, _, _ in TYPE_COLUMNS) + ") DEFAULT CHARSET=utf8mb4")
    cols = ", ".join(c for c, _, _, _ in TYPE_COLUMNS)
    for i, idx in ((1, 2), (2, 3)):
        vals = ", ".join(spec[idx] for spec in TYPE_COLUMNS)
        s.execute(f"INSERT INTO `{t}` (id, {cols}) VALUES ({i}, {vals})")
    s.execute(f"INSERT INTO `{t}` (id) VALUES (3)")  # all NULL


def _check_type_texts(s: Session, t: str) -> None:
    exprs = ", ".join(_text_expr(c) for c in TYPE_TEXT_CHECKS)
    got = dict(zip(TYPE_TEXT_CHECKS, _rows(s.execute(f"SELECT {exprs} FROM `{t}` WHERE id = 2"))[0], strict=True))
    check(got == TYPE_TEXT_CHECKS, f"stored values differ: {got}")
    neg = s.scalar(f"SELECT CAST(c_time6 AS CHAR) FROM `{t}` WHERE id = 1")
    check(neg == "-01:02:03.456789", f"negative fractional TIME stored as {neg!r}")


@op
def op_column_types(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("types")
    with ctx.connect(autocommit=True) as s:
        _types_table(s, t)
        _check_type_texts(s, t)
        res = s.execute(f"SELECT * FROM `{t}` ORDER BY id")
        check(len(_rows(res)) == 3 and len(_rows(res)[0]) == len(TYPE_COLUMNS) + 1, "shape")
        check(all(v is None for v in _rows(res)[2][1:]), f"NULL row {_rows(res)[2]}")
        # parameters of every Python type the drivers convert, read back through the server
        params = (None, True, -(2**63), 2**64 - 1, decimal.Decimal("-0.0000000001"), 1.25,
                  datetime.date(2024, 2, 29), datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
                  datetime.timedelta(hours=-1, seconds=1, microseconds=5), b"\x00\x01\xff", "ü😀")
        marks = ["CAST(%s AS BINARY)" if isinstance(p, bytes) else "%s" for p in params]
        echo = _rows(s.execute("SELECT " + ", ".join(marks), params))[0]
        return {"rows": _rows(res), "description": res.description, "echo": echo}


@op
def op_column_types_prepared(ctx: OpContext) -> dict[str, Any]:
    # the same table through the binary protocol (COM_STMT_EXECUTE result rows)
    t = ctx.table("ptypes")
    with ctx.connect(autocommit=True) as s:
        if not s.supports_prepared:
            raise Unsupported(s.prepared_reason)
        _types_table(s, t)
        # YEAR last: mysql-connector (pure) 9.5 decodes a binary-protocol YEAR as 1 byte and
        # misreads every column after it (a driver bug, the same on every target)
        cols = [c for c, *_ in TYPE_COLUMNS if c != "c_year"] + ["c_year"]
        res = s.prepared(f"SELECT id, {', '.join(cols)} FROM `{t}` WHERE id >= ? ORDER BY id", (1,))
        check(len(_rows(res)) == 3, "three rows")
        check(all(v is None for v in _rows(res)[2][1:]), f"NULL row {_rows(res)[2]}")
        # (no 2**64-1: the C extension 9.5 cannot bind it; it also returns 0 for a negative
        # timedelta and '' for bytes here: driver behaviour, the same on every target)
        params = (None, -(2**63), decimal.Decimal("-0.0000000001"), 1.25,
                  datetime.date(2024, 2, 29), datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
                  datetime.timedelta(hours=-1, seconds=1, microseconds=5), b"\x00\x01\xff", "ü😀")
        echo = _rows(s.prepared("SELECT " + ", ".join(["?"] * len(params)), params))[0]
        return {"rows": _rows(res), "description": res.description, "echo": echo}


@op
def op_errors(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("err")
    with ctx.connect(autocommit=True) as s:
        s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY, v VARCHAR(3) NOT NULL)")
        s.execute(f"INSERT INTO `{t}` VALUES (1, 'a')")
        errs = {
            "no_table": s.expect_error(lambda: s.execute("SELECT * FROM no_such_table_err")),
            "syntax": s.expect_error(lambda: s.execute("SELEC 1")),
            "duplicate": s.expect_error(lambda: s.execute(f"INSERT INTO `{t}` VALUES (1, 'b')")),
            "unknown_column": s.expect_error(lambda: s.execute(f"SELECT nope FROM `{t}`")),
            "not_null": s.expect_error(lambda: s.execute(f"INSERT INTO `{t}` VALUES (2, NULL)")),
            "too_long_strict": s.expect_error(lambda: s.execute(f"INSERT INTO `{t}` VALUES (3, 'abcdef')")),
            "signal": s.expect_error(lambda: s.execute(
                "SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = 1644, MESSAGE_TEXT = 'custom ü'")),
        }
        after = s.scalar(f"SELECT COUNT(*) FROM `{t}`")
        expected = {"no_table": (1146, "42S02"), "syntax": (1064, "42000"), "duplicate": (1062, "23000"),
                    "unknown_column": (1054, "42S22"), "not_null": (1048, "23000"),
                    "too_long_strict": (1406, "22001"), "signal": (1644, "45000")}
        got = {k: (e.errno, e.sqlstate) for k, e in errs.items()}
        check(got == expected, f"errno/SQLSTATE: {got}")
        check(after == 1, f"session after errors: count {after}")
        return {"errors": got, "after": after}


@op
def op_warnings(ctx: OpContext) -> dict[str, Any]:
    t = ctx.table("warn")
    with ctx.connect(autocommit=True) as s:
        s.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY, v VARCHAR(3), n TINYINT)")
        res = s.execute(f"INSERT IGNORE INTO `{t}` VALUES (1, 'truncated', 1000), (1, 'dup', 1)")
        warnings = _rows(s.execute("SHOW WARNINGS"))
        count = s.scalar("SELECT @@warning_count")  # SHOW WARNINGS keeps them; this reads the count
        row = _rows(s.execute(f"SELECT v, n FROM `{t}`"))
        codes = sorted(w[1] for w in warnings)
        check(codes == [1062, 1264, 1265], f"SHOW WARNINGS codes {codes}: {warnings}")
        check(res.warning_count in (None, 3), f"warning count in the OK packet: {res.warning_count}")
        check(row == [("tru", 127)], f"stored {row}")
        return {"rowcount": res.rowcount, "warning_count": res.warning_count, "warnings": warnings,
                "count": count, "row": row}


@op
def op_large_result(ctx: OpContext) -> dict[str, Any]:
    # many rows (many packets), then a second query on the same connection
    with ctx.connect() as s:
        rows = _rows(s.execute("SELECT seq, REPEAT(CHAR(65 + MOD(seq, 26)), 200) FROM seq_1_to_10000"))
        after = s.scalar("SELECT 'after'")
        digest = hashlib.md5(repr(rows).encode()).hexdigest()
        check(len(rows) == 10000 and rows[-1][0] == 10000 and after == "after", f"{len(rows)} rows")
        return {"n": len(rows), "digest": digest, "after": after}


# --------------------------------------------------------------------------- running ops


def run_op(driver: str, target: Target, transport: str, op_name: str, prefix: str) -> dict[str, Any]:
    """Run one operation (tables named ``prefix_*``, dropped afterwards) and return its result."""
    ctx = OpContext(driver, target, transport, prefix)
    try:
        return OPS[op_name](ctx)
    finally:
        ctx.cleanup()


def connect_and_select_1(driver: str, target: Target, transport: str, kw: dict[str, Any]) -> Any:
    with open_session(driver, target, transport, **kw) as s:
        return s.scalar("SELECT 1")


def _worker_call(fn_name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:  # in the worker process
    import traceback

    try:
        return ("ok", globals()[fn_name](*args))
    except Unsupported as exc:
        return ("unsupported", str(exc))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as text (picklable)
        return ("error", f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}", traceback.format_exc())


class IsolatedRunner:
    """Runs client_ops functions in one spawned worker process.

    For drivers whose C code can take the interpreter down: mysql-connector's C extension 9.x
    segfaults the process some time after connections that failed in its post-connect SET NAMES.
    A crash (or a hang past ``timeout``) fails that one test; the next call starts a new worker.
    """

    def __init__(self, timeout: float = 120.0) -> None:
        self.timeout = timeout
        self._pool: Any = None

    def call(self, fn_name: str, *args: Any) -> Any:
        __tracebackhide__ = True
        import concurrent.futures
        import multiprocessing
        from concurrent.futures.process import BrokenProcessPool

        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            status, *rest = self._pool.submit(_worker_call, fn_name, args).result(self.timeout)
        except BrokenProcessPool:
            self._pool = None
            raise AssertionError(f"the driver crashed its worker process (segfault?) in {fn_name}{args!r}") from None
        except concurrent.futures.TimeoutError:
            self.close(kill=True)
            raise AssertionError(f"{fn_name}{args!r} did not finish within {self.timeout}s") from None
        if status == "ok":
            return rest[0]
        if status == "unsupported":
            raise Unsupported(rest[0])
        raise AssertionError(f"{rest[0]}\n--- traceback in the worker process:\n{rest[1]}")

    def close(self, kill: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()
        pool.shutdown(wait=not kill, cancel_futures=True)


# --------------------------------------------------------------------------- upstream setup

UPSTREAM_MAX_PACKET = 64 * 1024 * 1024
OTHER_DB = "otherdb"


@contextlib.contextmanager
def upstream_prepared(db: Any) -> Iterator[Any]:
    """Given MariaDB ``db`` (tests.mariadb.MariaDB): max_allowed_packet 64 MB (20 MB BLOBs) and
    a second database ``otherdb`` the app user may use; the global is restored afterwards.

    max_allowed_packet applies to connections opened after it: dbkeeper must connect upstream
    after this (the fixtures ask for dbkeeper after entering this context)."""
    old = db.get_global("max_allowed_packet")
    db.set_global("max_allowed_packet", UPSTREAM_MAX_PACKET)
    db.query(f"CREATE DATABASE IF NOT EXISTS `{OTHER_DB}` CHARACTER SET utf8mb4")
    db.query(f"GRANT ALL PRIVILEGES ON `{OTHER_DB}`.* TO '{db.user}'@'%'")
    try:
        yield db
    finally:
        with contextlib.suppress(Exception):
            db.set_global("max_allowed_packet", old)


def direct_target_of(db: Any) -> Target:
    return Target("direct", db.host, db.port, db.socket, db.user, db.password, db.database)


def dbkeeper_target_of(dbk: Any) -> Target:
    up = dbk.upstream
    return Target("dbkeeper", dbk.host, dbk.port, dbk.unix_socket, up.user, up.password, up.database)
