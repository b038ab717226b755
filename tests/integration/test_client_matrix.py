"""Spec: every common Python MySQL driver works through dbkeeper exactly as it works against MariaDB.

For each driver (PyMySQL, mysql-connector-python pure and C extension, mysqlclient, SQLAlchemy 2
over PyMySQL), each transport (TCP, Unix socket) and each operation in ``client_ops.OPS``:

    given the same driver, transport and operation,
    when it runs against the MariaDB itself (``direct``) and through dbkeeper,
    then both satisfy the operation's own checks and dbkeeper's result equals the direct one
    (values and their Python types, column metadata, row counts, errno + SQLSTATE, warnings).

Test ids read ``test_op[<driver>-<target>-<transport>-<op>]``; a per-driver pass count is printed
at the end of the run, with the capability flags each driver sends in its handshake.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from typing import Any

import pytest
from pymysql.constants import CLIENT

from tests.integration import raw_mysql
from tests.integration.client_ops import (
    DRIVERS,
    OPS,
    TRANSPORTS,
    IsolatedRunner,
    Target,
    Unsupported,
    canon,
    dbkeeper_target_of,
    direct_target_of,
    driver_versions,
    pymysql_sqlstate_hook,
    upstream_prepared,
)

RUN_ID = os.urandom(3).hex()  # table prefix: parallel runs and targets never share a table
TARGETS = ("direct", "dbkeeper")
_SHORT = {"pymysql": "pm", "mysqlconnector_pure": "cp", "mysqlconnector_c": "cc", "mysqldb": "md",
          "sqlalchemy": "sa", "direct": "d", "dbkeeper": "k", "tcp": "t", "unix": "u"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def upstream(mariadb):
    # given a MariaDB that takes 64 MB packets and has a second database for the app user
    with upstream_prepared(mariadb) as db, pymysql_sqlstate_hook():
        yield db


@pytest.fixture(scope="module")
def direct(upstream) -> Target:
    return direct_target_of(upstream)


@pytest.fixture(scope="module")
def through_dbkeeper(upstream, request) -> Target:
    # asked for after `upstream`: dbkeeper's upstream connection sees max_allowed_packet = 64 MB
    return dbkeeper_target_of(request.getfixturevalue("dbkeeper"))


@pytest.fixture(scope="module")
def oracle() -> dict[tuple[str, str, str], Any]:
    """Direct results by (driver, transport, op), filled by the direct tests (or on demand)."""
    return {}


# --------------------------------------------------------------------------- summary plugin


class _MatrixSummary:
    """Per-driver/target/transport outcome counts and the drivers' handshake flags, printed in
    pytest's terminal summary (registered once, from the first test of this module)."""

    name = "dbkeeper-client-matrix-summary"

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], Counter] = defaultdict(Counter)
        self.handshakes: dict[str, list[str]] = {}
        self.greetings: dict[str, list[str]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "test_client_matrix.py::test_op[" not in report.nodeid:
            return
        driver, target, transport, _ = report.nodeid.split("[", 1)[1].rstrip("]").split("-", 3)
        key = (driver, target, transport)
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.counts[key][report.outcome] += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        tr.section("client matrix: passed / failed / skipped per driver")
        for key in sorted(self.counts):
            c = self.counts[key]
            tr.write_line(f"{'-'.join(key):40} passed {c['passed']:3}  failed {c['failed']:3}  "
                          f"skipped {c['skipped']:3}")
        tr.write_line("versions: " + ", ".join(f"{k} {v}" for k, v in driver_versions().items()))
        for what, flags in sorted(self.handshakes.items()):
            tr.write_line(f"handshake response {what}: {' | '.join(flags)}")
        for what, flags in sorted(self.greetings.items()):
            tr.write_line(f"server greeting {what}: {' | '.join(flags)}")


@pytest.fixture(scope="module")
def summary(request) -> _MatrixSummary:
    pm = request.config.pluginmanager
    plugin = pm.get_plugin(_MatrixSummary.name)
    if plugin is None:
        plugin = _MatrixSummary()
        pm.register(plugin, _MatrixSummary.name)
    return plugin


# --------------------------------------------------------------------------- the matrix


# drivers whose failures can crash the interpreter run in a worker process (see IsolatedRunner)
ISOLATED_DRIVERS = {"mysqlconnector_c"}


@pytest.fixture(scope="module")
def runner():
    r = IsolatedRunner()
    yield r
    r.close()


def _call(runner: IsolatedRunner, driver: str, fn_name: str, *args: Any) -> Any:
    __tracebackhide__ = True
    import tests.integration.client_ops as ops

    if driver in ISOLATED_DRIVERS:
        return runner.call(fn_name, driver, *args)
    return getattr(ops, fn_name)(driver, *args)


def _run(runner: IsolatedRunner, driver: str, target: Target, transport: str, op_name: str) -> dict[str, Any]:
    __tracebackhide__ = True
    prefix = f"t{RUN_ID}_{_SHORT[driver]}{_SHORT[target.name]}{_SHORT[transport]}"
    return _call(runner, driver, "run_op", target, transport, op_name, prefix)


def _cases() -> list[Any]:
    # direct right before dbkeeper, so the oracle is fresh and computed once
    cases = []
    for driver in DRIVERS:
        for op_name in OPS:
            for transport in TRANSPORTS:
                for target in TARGETS:
                    cases.append(pytest.param(driver, target, transport, op_name,
                                              id=f"{driver}-{target}-{transport}-{op_name}"))
    return cases


def _differences(expected: Any, got: Any, path: str = "") -> list[str]:
    """Readable differences between two canon() forms (values shortened)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(expected) | set(got), key=str):
            out += _differences(expected.get(k, "<missing>"), got.get(k, "<missing>"), f"{path}.{k}")
        return out
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        out = []
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            out += _differences(e, g, f"{path}[{i}]")
        return out
    if expected == got:
        return []
    short = lambda v: (r := repr(v)) if len(r := repr(v)) <= 200 else r[:200] + f"... ({len(r)} chars)"  # noqa: E731
    return [f"{path or '<result>'}: direct {short(expected)} != dbkeeper {short(got)}"]


@pytest.mark.parametrize("driver,target_name,transport,op_name", _cases())
def test_op(driver, target_name, transport, op_name, direct, oracle, summary, runner, request):
    target = direct if target_name == "direct" else request.getfixturevalue("through_dbkeeper")
    key = (driver, transport, op_name)
    # when the driver runs the operation against the target
    try:
        result = _run(runner, driver, target, transport, op_name)
    except Unsupported as exc:
        pytest.skip(f"{driver}: {exc}")
    # then the operation's own checks held (inside _run) and, through dbkeeper, the result is
    # what the same driver gets from MariaDB itself
    if target_name == "direct":
        oracle[key] = canon(result)
        return
    if key not in oracle:
        try:
            oracle[key] = canon(_run(runner, driver, direct, transport, op_name))
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"the oracle (direct) run of {key} failed, nothing to compare: {exc!r}")
    diffs = _differences(oracle[key], canon(result))
    assert not diffs, "dbkeeper differs from MariaDB:\n" + "\n".join(diffs)


# --------------------------------------------------------------------------- what drivers send


@pytest.mark.parametrize("driver", DRIVERS)
def test_driver_handshake_flags_are_recorded(driver, direct, summary, runner):
    # given a recording relay in front of MariaDB
    with raw_mysql.HandshakeRecorder(direct.host, direct.port) as rec:
        relayed = Target("direct", rec.host, rec.port, direct.unix_socket, direct.user,
                         direct.password, direct.database)
        # when the driver connects with its defaults, with multi-statements and with LOCAL INFILE
        variants = {"default": {}, "multi": {"multi": True}, "local_infile": {"local_infile": True}}
        for kw in variants.values():
            assert _call(runner, driver, "connect_and_select_1", relayed, "tcp", kw) == 1
        responses = list(rec.responses)
    # then each handshake response was seen, speaks protocol 4.1 with plugin auth for app/appdb
    assert len(responses) >= len(variants), responses
    for (name, _), resp in zip(variants.items(), responses[-len(variants):], strict=True):
        label = f"{driver}/{name} (charset {resp.charset}, plugin {resp.auth_plugin})"
        summary.handshakes[label] = resp.capability_names
        assert {"PROTOCOL_41", "SECURE_CONNECTION"} <= set(resp.capability_names), resp
        assert resp.user == direct.user and resp.database == direct.database, resp
    multi, infile = responses[-2], responses[-1]
    assert "MULTI_STATEMENTS" in multi.capability_names
    assert "LOCAL_FILES" in infile.capability_names


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("target_name", TARGETS)
def test_server_greeting_promises_nothing_the_upstream_lacks(target_name, transport, direct, summary, request):
    target = direct if target_name == "direct" else request.getfixturevalue("through_dbkeeper")
    endpoint = ({"unix_socket": target.unix_socket} if transport == "unix"
                else {"host": target.host, "port": target.port})
    # given the greetings of MariaDB and of the target
    with raw_mysql.RawClient.connect(host=direct.host, port=direct.port) as c:
        upstream_hello = c.read_handshake()
    with raw_mysql.RawClient.connect(**endpoint) as c:
        hello = c.read_handshake()
        # when a client logs in with native password, then it is in
        c.login(target.user, target.password, target.database)
        assert c.scalar("SELECT 'ok'") == "ok"
        c.quit()
    names = raw_mysql.capability_names(hello.capabilities, mariadb_ext=hello.mariadb_capabilities)
    summary.greetings[f"{target_name}-{transport} ({hello.server_version}, {hello.auth_plugin})"] = names
    # then it is a protocol-10 greeting with a 20-byte scramble, and every capability it offers is
    # one MariaDB offers too (no SSL/compression/extended metadata it could not honour)
    assert hello.protocol_version == 10 and len(hello.salt) == 20
    assert {"PROTOCOL_41", "SECURE_CONNECTION", "PLUGIN_AUTH"} <= set(names)
    # (bit 0 is not compared: in a greeting it only says "MySQL, not MariaDB" - CLIENT_MYSQL)
    extra = hello.capabilities & ~upstream_hello.capabilities & ~CLIENT.LONG_PASSWORD
    assert not extra, f"offers {raw_mysql.capability_names(extra)} that MariaDB does not"
    extra_ext = hello.mariadb_capabilities & ~upstream_hello.mariadb_capabilities
    assert not extra_ext, f"offers {raw_mysql.capability_names(0, mariadb_ext=extra_ext)}"
