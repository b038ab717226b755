"""Specification of layer/dbkeeper-wrapper (the AWS_LAMBDA_EXEC_WRAPPER script).

Every test runs the real script (under each POSIX shell present: dash, and bash as on Amazon
Linux, where /bin/sh is bash) with a fake runtime command that prints its environment and argv,
and a real listening Unix socket standing in for the extension (or none).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "layer" / "dbkeeper-wrapper"

SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]

FAKE_RUNTIME = [
    sys.executable,
    "-c",
    "import json, os, sys; "
    "print('RUNTIME ' + json.dumps({'env': dict(os.environ), 'argv': sys.argv[1:], 'pid': os.getpid()}))",
]

SECRET = "s3cr3t-P@ss:w/rd?#"


# --------------------------------------------------------------------------- helpers


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, pid: int):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.popen_pid = pid
        self.logs: list[dict] = []
        self.runtime: dict | None = None
        for line in proc.stdout.splitlines():
            if line.startswith("RUNTIME "):
                assert self.runtime is None, "runtime ran twice?"
                self.runtime = json.loads(line[len("RUNTIME "):])
            else:
                # every other stdout line is a JSON log line of the wrapper
                self.logs.append(json.loads(line))

    @property
    def env(self) -> dict[str, str]:
        assert self.runtime is not None, f"runtime did not run: {self.stdout!r} {self.stderr!r}"
        return self.runtime["env"]

    @property
    def argv(self) -> list[str]:
        assert self.runtime is not None
        return self.runtime["argv"]

    def events(self, name: str) -> list[dict]:
        return [r for r in self.logs if r["event"] == name]


def run_wrapper(env: dict[str, str], args: list[str] | None = None, shell: str | None = None,
                command: list[str] | None = None) -> Run:
    full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    full_env.update(env)
    cmd = ([shell] if shell else []) + [str(WRAPPER)]
    cmd += (FAKE_RUNTIME + (args or [])) if command is None else command
    p = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=20)
    return Run(subprocess.CompletedProcess(cmd, p.returncode, out, err), p.pid)


@pytest.fixture(params=SHELLS or ["sh"])
def shell(request) -> str:
    return request.param


@pytest.fixture
def ext_socket():
    """A real listening Unix socket, where the extension would have bound it."""
    d = tempfile.mkdtemp(prefix="dbkw-", dir="/tmp")  # short path: sun_path limit
    path = os.path.join(d, "dbkeeper.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    try:
        yield path
    finally:
        s.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def no_socket():
    d = tempfile.mkdtemp(prefix="dbkw-", dir="/tmp")
    try:
        yield os.path.join(d, "dbkeeper.sock")  # nothing there
    finally:
        shutil.rmtree(d, ignore_errors=True)


APP_ENV = {"DB_HOST": "db.internal.example", "DB_PORT": "3307", "DB_USER": "app",
           "DB_PASSWORD": SECRET, "DB_NAME": "appdb"}


def assert_untouched(run: Run, given: dict[str, str]) -> None:
    for k, v in given.items():
        assert run.env.get(k) == v, k
    for k in ("DB_HOST", "DB_PORT", "DATABASE_URL"):
        if k not in given:
            assert k not in run.env
    assert not [k for k in run.env if k.startswith("DBKEEPER_ORIGINAL_")]


def assert_no_secret_printed(run: Run) -> None:
    assert SECRET not in run.stdout.replace(json.dumps(run.runtime) if run.runtime else "", "")
    for rec in run.logs:
        assert SECRET not in json.dumps(rec)
        assert "s3cr3t" not in json.dumps(rec)
    assert "s3cr3t" not in run.stderr


# --------------------------------------------------------------------------- the file itself


def test_wrapper_is_an_executable_posix_sh_script():
    mode = WRAPPER.stat().st_mode
    assert stat.S_IMODE(mode) == 0o755
    assert WRAPPER.read_text().startswith("#!/bin/sh\n")


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_wrapper_passes_shellcheck_as_posix_sh():
    proc = subprocess.run(["shellcheck", "-s", "sh", str(WRAPPER)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_executed_directly_through_its_shebang(ext_socket):
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": ext_socket})
    assert run.returncode == 0
    assert run.env["DB_HOST"] == "127.0.0.1"


# --------------------------------------------------------------------------- serving: pointed


def test_given_extension_serving_when_defaults_then_db_host_and_port_point_at_it(shell, ext_socket):
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": ext_socket}, shell=shell)
    assert run.returncode == 0
    assert run.env["DB_HOST"] == "127.0.0.1"
    assert run.env["DB_PORT"] == "3306"
    # credentials and database are the function's own, untouched
    assert run.env["DB_USER"] == "app"
    assert run.env["DB_PASSWORD"] == SECRET
    assert run.env["DB_NAME"] == "appdb"
    # originals (host/port only) kept for debugging
    assert run.env["DBKEEPER_ORIGINAL_DB_HOST"] == "db.internal.example"
    assert run.env["DBKEEPER_ORIGINAL_DB_PORT"] == "3307"
    assert not [k for k, v in run.env.items() if k.startswith("DBKEEPER_ORIGINAL_") and SECRET in v]
    # one info line says what was pointed, nothing else is printed
    assert [r["event"] for r in run.logs] == ["wrapper_pointed"]
    rec = run.logs[0]
    assert rec["level"] == "info" and rec["ext"] == "dbkeeper"
    assert isinstance(rec["ts"], (int, float)) and rec["ts"] > 1.6e9
    assert rec["variables"] == ["DB_HOST", "DB_PORT"]
    assert rec["target"] == "127.0.0.1:3306"
    assert_no_secret_printed(run)


def test_given_listen_port_setting_then_db_port_is_that_port(shell, ext_socket):
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DBKEEPER_LISTEN_PORT": "13306"}, shell=shell)
    assert run.env["DB_PORT"] == "13306"
    assert run.logs[0]["target"] == "127.0.0.1:13306"


def test_given_function_without_db_host_then_host_and_port_are_set_but_no_original_recorded(ext_socket):
    run = run_wrapper({"DBKEEPER_SOCKET": ext_socket})
    assert run.env["DB_HOST"] == "127.0.0.1"
    assert run.env["DB_PORT"] == "3306"
    assert "DBKEEPER_ORIGINAL_DB_HOST" not in run.env
    assert "DBKEEPER_ORIGINAL_DB_PORT" not in run.env
    assert "DATABASE_URL" not in run.env


def test_given_default_socket_path_then_it_is_the_one_checked():
    # DBKEEPER_SOCKET unset -> /tmp/dbkeeper.sock; only meaningful when no extension runs here
    if os.path.exists("/tmp/dbkeeper.sock"):
        pytest.skip("/tmp/dbkeeper.sock exists on this machine")
    run = run_wrapper(dict(APP_ENV))
    assert run.events("wrapper_passthrough")[0]["checked"] == "/tmp/dbkeeper.sock"


def test_given_custom_variable_lists_then_only_those_are_pointed(shell, ext_socket):
    env = {
        "DBKEEPER_SOCKET": ext_socket,
        "DBKEEPER_LISTEN_PORT": "4000",
        "DBKEEPER_WRAP_HOST_VARS": "MYSQL_HOST, RDS_HOSTNAME",
        "DBKEEPER_WRAP_PORT_VARS": "MYSQL_PORT,RDS_PORT",
        "DBKEEPER_WRAP_URL_VARS": "",
        "MYSQL_HOST": "a.example", "RDS_HOSTNAME": "b.example", "MYSQL_PORT": "3310",
        "DB_HOST": "not-in-the-list", "DB_PORT": "1234",
        "DATABASE_URL": "mysql://u:p@db:3306/x",
    }
    run = run_wrapper(env, shell=shell)
    assert run.env["MYSQL_HOST"] == "127.0.0.1"
    assert run.env["RDS_HOSTNAME"] == "127.0.0.1"
    assert run.env["MYSQL_PORT"] == "4000"
    assert run.env["RDS_PORT"] == "4000"
    assert run.env["DB_HOST"] == "not-in-the-list"
    assert run.env["DB_PORT"] == "1234"
    assert run.env["DATABASE_URL"] == "mysql://u:p@db:3306/x"
    assert run.env["DBKEEPER_ORIGINAL_MYSQL_HOST"] == "a.example"
    assert run.env["DBKEEPER_ORIGINAL_MYSQL_PORT"] == "3310"
    assert "DBKEEPER_ORIGINAL_RDS_PORT" not in run.env
    assert run.logs[0]["variables"] == ["MYSQL_HOST", "RDS_HOSTNAME", "MYSQL_PORT", "RDS_PORT"]


def test_given_empty_lists_then_nothing_is_rewritten(ext_socket):
    env = {**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DBKEEPER_WRAP_HOST_VARS": "",
           "DBKEEPER_WRAP_PORT_VARS": "", "DBKEEPER_WRAP_URL_VARS": "",
           "DATABASE_URL": "mysql://u:p@db/x"}
    run = run_wrapper(env)
    assert_untouched(run, {**APP_ENV, "DATABASE_URL": "mysql://u:p@db/x"})
    assert run.logs[0]["variables"] == []


def test_given_invalid_variable_names_then_they_are_skipped_and_nothing_is_evaluated(shell, ext_socket, tmp_path):
    marker = tmp_path / "pwned"
    env = {"DBKEEPER_SOCKET": ext_socket,
           "DBKEEPER_WRAP_HOST_VARS": f"DB_HOST BAD-NAME 1ABC $(touch {marker}) `touch {marker}`;touch",
           "DB_HOST": "db"}
    run = run_wrapper(env, shell=shell)
    assert not marker.exists()
    assert run.env["DB_HOST"] == "127.0.0.1"
    names = [r["name"] for r in run.events("wrapper_invalid_variable_name")]
    assert "BAD-NAME" in names and "1ABC" in names
    assert all(r["level"] == "warning" for r in run.events("wrapper_invalid_variable_name"))


def test_given_a_password_variable_listed_by_mistake_then_its_value_is_never_copied(ext_socket):
    env = {**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DBKEEPER_WRAP_HOST_VARS": "DB_HOST DB_PASSWORD"}
    run = run_wrapper(env)
    assert "DBKEEPER_ORIGINAL_DB_PASSWORD" not in run.env
    assert not [k for k, v in run.env.items() if k.startswith("DBKEEPER_") and SECRET in v]
    assert_no_secret_printed(run)


def test_given_original_already_recorded_then_it_is_not_overwritten(ext_socket):
    # e.g. the wrapper is chained twice: the first original wins
    env = {"DBKEEPER_SOCKET": ext_socket, "DB_HOST": "127.0.0.1", "DBKEEPER_ORIGINAL_DB_HOST": "real.example"}
    run = run_wrapper(env)
    assert run.env["DBKEEPER_ORIGINAL_DB_HOST"] == "real.example"


# --------------------------------------------------------------------------- not serving: passthrough


def _assert_one_passthrough_warning(run: Run, reason: str) -> dict:
    warnings = run.events("wrapper_passthrough")
    assert len(warnings) == 1, run.logs
    assert len(run.logs) == 1, run.logs
    rec = warnings[0]
    assert rec["level"] == "warning"
    assert rec["reason"] == reason
    assert isinstance(rec["ts"], (int, float))
    return rec


def test_given_no_socket_then_every_variable_is_untouched_and_one_warning_printed(shell, no_socket):
    encoded = SECRET.replace("#", "%23").replace("?", "%3F").replace("/", "%2F").replace("@", "%40")
    env = {**APP_ENV, "DBKEEPER_SOCKET": no_socket, "DATABASE_URL": f"mysql://app:{encoded}@db:3307/appdb"}
    run = run_wrapper(env, shell=shell)
    assert run.returncode == 0
    assert_untouched(run, {k: v for k, v in env.items() if k != "DBKEEPER_SOCKET"})
    rec = _assert_one_passthrough_warning(run, "extension_not_serving")
    assert rec["checked"] == no_socket
    assert_no_secret_printed(run)


def test_given_a_regular_file_at_the_socket_path_then_not_serving(no_socket):
    Path(no_socket).write_text("")
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": no_socket})
    assert_untouched(run, APP_ENV)
    _assert_one_passthrough_warning(run, "extension_not_serving")


@pytest.mark.parametrize("value", ["false", "FALSE", "False", "0", "no", "off"])
def test_given_dbkeeper_disabled_then_passthrough_even_if_socket_exists(value, ext_socket):
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DBKEEPER_ENABLED": value})
    assert_untouched(run, APP_ENV)
    _assert_one_passthrough_warning(run, "disabled")


@pytest.mark.parametrize("value", ["true", "1", "yes", "on", ""])
def test_given_dbkeeper_enabled_values_then_pointed(value, ext_socket):
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DBKEEPER_ENABLED": value})
    assert run.env["DB_HOST"] == "127.0.0.1"


def test_given_tcp_listener_disabled_then_passthrough(ext_socket):
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DBKEEPER_LISTEN_PORT": "0"})
    assert_untouched(run, APP_ENV)
    _assert_one_passthrough_warning(run, "tcp_listener_disabled")


@pytest.mark.parametrize("value", ["abc", "70000", "65536", "-1", "", "12 34", "1234567", "0x10"])
def test_given_invalid_listen_port_then_passthrough(value, ext_socket):
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DBKEEPER_LISTEN_PORT": value})
    assert_untouched(run, APP_ENV)
    _assert_one_passthrough_warning(run, "invalid_listen_port")


@pytest.mark.parametrize("value,port", [("1", "1"), ("65535", "65535"), (" 3307\t", "3307"), ("033", "33"),
                                        ("000065535", "65535")])
def test_given_listen_port_read_as_the_extension_reads_it_then_pointed(value, port, ext_socket):
    # the extension strips white space and reads the number with int()
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DBKEEPER_LISTEN_PORT": value})
    assert run.env["DB_PORT"] == port


def test_given_settings_with_surrounding_white_space_then_read_as_the_extension_reads_them(ext_socket):
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": f"  {ext_socket}\n"})
    assert run.env["DB_HOST"] == "127.0.0.1"
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DBKEEPER_ENABLED": " false "})
    _assert_one_passthrough_warning(run, "disabled")


def test_given_unix_socket_disabled_and_tcp_listener_up_then_pointed(shell):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": "", "DBKEEPER_LISTEN_PORT": str(port)}, shell=shell)
    assert run.env["DB_HOST"] == "127.0.0.1"
    assert run.env["DB_PORT"] == str(port)


@pytest.mark.parametrize("socket_setting", ["", "   "])
def test_given_unix_socket_disabled_and_no_tcp_listener_then_passthrough(socket_setting):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: the port is reserved but not served
        port = s.getsockname()[1]
        run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": socket_setting, "DBKEEPER_LISTEN_PORT": str(port)})
    assert_untouched(run, APP_ENV)
    rec = _assert_one_passthrough_warning(run, "extension_not_serving")
    assert rec["checked"] == f"tcp 127.0.0.1:{port}"


def test_given_socket_path_with_quotes_then_the_warning_is_still_valid_json():
    d = tempfile.mkdtemp(prefix="dbkw-", dir="/tmp")
    try:
        path = os.path.join(d, 'we"ird\\name.sock')
        run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": path})
        rec = _assert_one_passthrough_warning(run, "extension_not_serving")
        assert rec["checked"] == path
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("level,expected", [
    ("debug", ["wrapper_passthrough"]),
    ("info", ["wrapper_passthrough"]),
    ("warning", ["wrapper_passthrough"]),
    ("error", []),
])
def test_log_level_filters_the_passthrough_warning(level, expected, no_socket):
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": no_socket, "DBKEEPER_LOG_LEVEL": level})
    assert [r["event"] for r in run.logs] == expected
    assert_untouched(run, APP_ENV)


def test_without_a_date_command_lines_are_still_valid_json(shell, no_socket, tmp_path):
    # minimal images: nothing on PATH at all (the shell's builtins still work)
    sh = shutil.which(shell)
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": no_socket, "PATH": str(tmp_path)}, command=None,
                      shell=sh)
    rec = _assert_one_passthrough_warning(run, "extension_not_serving")
    assert rec["ts"] == 0
    assert_untouched(run, {**APP_ENV})


def test_log_level_warning_hides_the_info_line(ext_socket):
    run = run_wrapper({**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DBKEEPER_LOG_LEVEL": "warning"})
    assert run.logs == []
    assert run.env["DB_HOST"] == "127.0.0.1"


# --------------------------------------------------------------------------- URL rewriting

# (original, expected after rewriting to 127.0.0.1:3306, original host, original port or None)
URL_CASES = [
    pytest.param("mysql://app:pw@db.example:3307/appdb", "mysql://app:pw@127.0.0.1:3306/appdb",
                 "db.example", "3307", id="plain"),
    pytest.param("mysql://app:pw@db.example/appdb", "mysql://app:pw@127.0.0.1:3306/appdb",
                 "db.example", None, id="no-port"),
    pytest.param("mysql+pymysql://app:pw@db.example:3307/appdb?charset=utf8mb4&ssl_ca=/etc/ca.pem",
                 "mysql+pymysql://app:pw@127.0.0.1:3306/appdb?charset=utf8mb4&ssl_ca=/etc/ca.pem",
                 "db.example", "3307", id="driver-and-query"),
    pytest.param("mysql://app:pw@db.example:3307?charset=utf8mb4", "mysql://app:pw@127.0.0.1:3306?charset=utf8mb4",
                 "db.example", "3307", id="query-without-path"),
    pytest.param("mysql://app:pw@[2001:db8::17]:3307/appdb", "mysql://app:pw@127.0.0.1:3306/appdb",
                 "[2001:db8::17]", "3307", id="ipv6-with-port"),
    pytest.param("mysql://app:pw@[::1]/appdb", "mysql://app:pw@127.0.0.1:3306/appdb",
                 "[::1]", None, id="ipv6-no-port"),
    pytest.param("mysql://app:p%40ss%3Aw%2Frd%3F%23%25@db:3307/appdb",
                 "mysql://app:p%40ss%3Aw%2Frd%3F%23%25@127.0.0.1:3306/appdb", "db", "3307",
                 id="password-percent-encoded"),
    pytest.param("mysql://app:p!$&'()*+,;=~.-_x@db/appdb", "mysql://app:p!$&'()*+,;=~.-_x@127.0.0.1:3306/appdb",
                 "db", None, id="password-raw-sub-delims"),
    pytest.param("mysql://app:pa:ss@db:3307/appdb", "mysql://app:pa:ss@127.0.0.1:3306/appdb",
                 "db", "3307", id="password-raw-colon"),
    pytest.param("mysql://app:pa@ss@db:3307/appdb", "mysql://app:pa@ss@127.0.0.1:3306/appdb",
                 "db", "3307", id="password-raw-at-last-at-wins"),
    pytest.param("mysql://app:pw with space\"quote`tick$(x)@db/appdb",
                 "mysql://app:pw with space\"quote`tick$(x)@127.0.0.1:3306/appdb", "db", None,
                 id="password-shell-metacharacters"),
    pytest.param("mysql://app@db:3307/appdb", "mysql://app@127.0.0.1:3306/appdb", "db", "3307", id="user-only"),
    pytest.param("mysql://db:3307/appdb", "mysql://127.0.0.1:3306/appdb", "db", "3307", id="no-userinfo"),
    pytest.param("mysql://app:pw@db:3307", "mysql://app:pw@127.0.0.1:3306", "db", "3307", id="no-path"),
    pytest.param("mysql://app:pw@db:3307/", "mysql://app:pw@127.0.0.1:3306/", "db", "3307", id="empty-path"),
    pytest.param("mysql://app:pw@db:3307/appdb#frag", "mysql://app:pw@127.0.0.1:3306/appdb#frag",
                 "db", "3307", id="fragment"),
    pytest.param("mysql://app:pw@db:/appdb", "mysql://app:pw@127.0.0.1:3306/appdb", "db", None,
                 id="empty-port"),
    pytest.param("mariadb+mariadbconnector://app:pw@10.0.0.5:3306/appdb",
                 "mariadb+mariadbconnector://app:pw@127.0.0.1:3306/appdb", "10.0.0.5", "3306", id="mariadb-scheme"),
    pytest.param("mysql+mysqldb://app:pw@db/appdb?unix_socket_ignored=1&x=a/b",
                 "mysql+mysqldb://app:pw@127.0.0.1:3306/appdb?unix_socket_ignored=1&x=a/b", "db", None,
                 id="slash-in-query"),
]


@pytest.mark.parametrize("original,expected,orig_host,orig_port", URL_CASES)
def test_url_rewriting(original, expected, orig_host, orig_port, ext_socket, shell):
    run = run_wrapper({"DBKEEPER_SOCKET": ext_socket, "DATABASE_URL": original}, shell=shell)
    assert run.env["DATABASE_URL"] == expected
    assert run.env["DBKEEPER_ORIGINAL_DATABASE_URL_HOST"] == orig_host
    if orig_port is None:
        assert "DBKEEPER_ORIGINAL_DATABASE_URL_PORT" not in run.env
    else:
        assert run.env["DBKEEPER_ORIGINAL_DATABASE_URL_PORT"] == orig_port
    # never the URL itself (it carries the password)
    assert original not in run.env.values() or original == expected
    assert "DATABASE_URL" in run.logs[0]["variables"]
    assert original not in run.stdout.replace(json.dumps(run.runtime), "")


WELL_FORMED = [p for p in URL_CASES if p.id in (
    "plain", "no-port", "driver-and-query", "query-without-path", "ipv6-with-port", "ipv6-no-port",
    "password-percent-encoded", "password-raw-sub-delims", "user-only", "no-path", "fragment",
    "mariadb-scheme", "slash-in-query")]


@pytest.mark.parametrize("original,expected,orig_host,orig_port", WELL_FORMED)
def test_rewritten_url_parses_like_the_original_except_host_and_port(original, expected, orig_host, orig_port,
                                                                      ext_socket):
    # Cross-check with Python's RFC 3986 parser: only host and port differ.
    run = run_wrapper({"DBKEEPER_SOCKET": ext_socket, "DATABASE_URL": original,
                       "DBKEEPER_LISTEN_PORT": "4406"})
    before, after = urlsplit(original), urlsplit(run.env["DATABASE_URL"])
    assert (after.hostname, after.port) == ("127.0.0.1", 4406)
    assert (after.scheme, after.username, after.password, after.path, after.query, after.fragment) == \
           (before.scheme, before.username, before.password, before.path, before.query, before.fragment)


@pytest.mark.parametrize("original", [p.values[0] for p in WELL_FORMED if p.id != "fragment"])
def test_rewritten_url_parses_like_the_original_for_sqlalchemy(original, ext_socket):
    sa_url = pytest.importorskip("sqlalchemy.engine.url")
    run = run_wrapper({"DBKEEPER_SOCKET": ext_socket, "DATABASE_URL": original, "DBKEEPER_LISTEN_PORT": "4406"})
    before, after = sa_url.make_url(original), sa_url.make_url(run.env["DATABASE_URL"])
    assert (after.host, after.port) == ("127.0.0.1", 4406)
    assert (after.drivername, after.username, after.password, after.database, dict(after.query)) == \
           (before.drivername, before.username, before.password, before.database, dict(before.query))


@pytest.mark.parametrize("original,reason", [
    pytest.param("postgresql://app:pw@db:5432/appdb", "unsupported_scheme", id="postgres"),
    pytest.param("MYSQL://app:pw@db/appdb", "unsupported_scheme", id="upper-case-scheme"),
    pytest.param("mysql+py-mysql://app:pw@db/appdb", "unsupported_scheme", id="bad-driver"),
    pytest.param("db.example:3306", "unsupported_scheme", id="not-a-url"),
    pytest.param("mysql+pymysql://app:pw@/appdb?unix_socket=/var/run/mysqld.sock", "no_host", id="unix-socket-form"),
    pytest.param("mysql://app:pa/ss@db/appdb", "ambiguous_userinfo", id="raw-slash-in-password"),
    pytest.param("mysql://app:pa?ss@db/appdb", "ambiguous_userinfo", id="raw-question-mark-in-password"),
    pytest.param("mysql://app:pa#ss@db/appdb", "ambiguous_userinfo", id="raw-hash-in-password"),
    pytest.param("mysql://app:pw@[::1/appdb", "malformed_host", id="unclosed-ipv6"),
    pytest.param("mysql://app:pw@db:33x6/appdb", "malformed_port", id="bad-port"),
])
def test_url_left_untouched_with_a_warning(original, reason, ext_socket, shell):
    env = {**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DATABASE_URL": original}
    run = run_wrapper(env, shell=shell)
    assert run.env["DATABASE_URL"] == original
    assert not [k for k in run.env if k.startswith("DBKEEPER_ORIGINAL_DATABASE_URL")]
    warnings = run.events("wrapper_url_untouched")
    assert [(w["variable"], w["reason"], w["level"]) for w in warnings] == [("DATABASE_URL", reason, "warning")]
    # the other settings are still pointed
    assert run.env["DB_HOST"] == "127.0.0.1"
    assert "DATABASE_URL" not in run.events("wrapper_pointed")[0]["variables"]
    assert original not in run.stdout.replace(json.dumps(run.runtime), "")


def test_url_variable_unset_stays_unset_and_empty_stays_empty(ext_socket):
    run = run_wrapper({"DBKEEPER_SOCKET": ext_socket})
    assert "DATABASE_URL" not in run.env
    run = run_wrapper({"DBKEEPER_SOCKET": ext_socket, "DATABASE_URL": ""})
    assert run.env["DATABASE_URL"] == ""
    assert not run.events("wrapper_url_untouched")
    assert "DATABASE_URL" not in run.logs[0]["variables"]


def test_several_url_variables(ext_socket):
    env = {"DBKEEPER_SOCKET": ext_socket, "DBKEEPER_WRAP_URL_VARS": "DATABASE_URL READER_URL,OTHER_URL",
           "DATABASE_URL": "mysql://a:b@w:1/x", "READER_URL": "mysql+pymysql://a:b@r/x"}
    run = run_wrapper(env)
    assert run.env["DATABASE_URL"] == "mysql://a:b@127.0.0.1:3306/x"
    assert run.env["READER_URL"] == "mysql+pymysql://a:b@127.0.0.1:3306/x"
    assert "OTHER_URL" not in run.env
    assert run.env["DBKEEPER_ORIGINAL_READER_URL_HOST"] == "r"


# --------------------------------------------------------------------------- argv and exec

ARGS = [
    "app.handler",
    "with space",
    "  leading and trailing  ",
    "single'quote",
    'double"quote',
    "back\\slash",
    "$HOME",
    "$(echo injected)",
    "`echo injected`",
    "*",
    "",
    "new\nline",
    "tab\there",
    "--flag=value",
    "-e",
    "ünïcødé",
]


def test_argv_passes_through_unchanged(shell, ext_socket):
    run = run_wrapper({"DBKEEPER_SOCKET": ext_socket}, args=ARGS, shell=shell)
    assert run.argv == ARGS


def test_argv_passes_through_unchanged_when_not_serving(shell, no_socket):
    run = run_wrapper({"DBKEEPER_SOCKET": no_socket}, args=ARGS, shell=shell)
    assert run.argv == ARGS


def test_the_runtime_replaces_the_wrapper_process(ext_socket):
    # exec: same pid, so signals sent by Lambda reach the runtime itself
    run = run_wrapper({"DBKEEPER_SOCKET": ext_socket})
    assert run.runtime["pid"] == run.popen_pid


def test_runtime_exit_status_is_the_wrappers(ext_socket):
    run = run_wrapper({"DBKEEPER_SOCKET": ext_socket}, command=[sys.executable, "-c", "raise SystemExit(7)"])
    assert run.returncode == 7


def test_without_a_command_it_fails_with_a_clear_error():
    run = run_wrapper({}, command=[])
    assert run.returncode == 2
    assert [r["event"] for r in run.logs] == ["wrapper_no_command"]


def test_wrapper_internals_do_not_leak_into_the_runtime_environment(ext_socket):
    env = {**APP_ENV, "DBKEEPER_SOCKET": ext_socket, "DATABASE_URL": "mysql://u:pw@db/x"}
    run = run_wrapper(env)
    assert not [k for k in run.env if k.startswith("_dbk")]
    # LC_CTYPE: Python's own C-locale coercion
    added = set(run.env) - set(env) - {"PATH", "PWD", "SHLVL", "_", "OLDPWD", "LC_CTYPE"}
    assert added == {"DBKEEPER_ORIGINAL_DB_HOST", "DBKEEPER_ORIGINAL_DB_PORT",
                     "DBKEEPER_ORIGINAL_DATABASE_URL_HOST"}
