"""Specification of layer/dbkeeper-wrapper (the AWS_LAMBDA_EXEC_WRAPPER script).

Every test runs the real script (under each POSIX shell present: dash, and bash as on Amazon
Linux, where /bin/sh is bash) with a fake runtime command that prints its environment and argv.
The extension is represented by what the wrapper reads from it: the state file
(dbkeeper.state_file), written with the extension's own writer for a live pid (this test process),
at the path derived from a unique AWS_LAMBDA_RUNTIME_API, or hand-written when a test needs a
broken one.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dbkeeper.state_file import state_path, write_state

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


class Sandbox:
    """One sandbox's view: its AWS_LAMBDA_RUNTIME_API and the state file path derived from it."""

    def __init__(self, runtime_api: str):
        self.runtime_api = runtime_api
        self.path = Path(state_path(runtime_api))
        self.env = {"AWS_LAMBDA_RUNTIME_API": runtime_api}

    def write(self, port: int = 3306, socket: str | None = "/tmp/dbkeeper.sock", pid: int | None = None) -> None:
        """What the extension writes once it serves (its own writer); pid: this process, alive."""
        write_state(str(self.path), port, socket, os.getpid() if pid is None else pid)

    def write_raw(self, text: str) -> None:
        self.path.write_text(text)

    def remove(self) -> None:
        if self.path.is_dir():
            self.path.rmdir()
        elif self.path.exists() or self.path.is_symlink():
            self.path.unlink()


def unique_runtime_api() -> str:
    # shaped like Lambda's (host:port), unique so that parallel tests never share a file
    return f"127.0.0.1:wrapper-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def absent():
    """A sandbox whose extension is not serving: no state file."""
    sandbox = Sandbox(unique_runtime_api())
    assert not sandbox.path.exists()
    try:
        yield sandbox
    finally:
        sandbox.remove()


@pytest.fixture
def served(absent):
    """A sandbox whose extension serves 127.0.0.1:3306 and /tmp/dbkeeper.sock."""
    absent.write()
    return absent


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


def test_wrapper_never_reads_the_extensions_settings_itself():
    # one reading of DBKEEPER_ENABLED / _LISTEN_PORT / _SOCKET: the extension's Config (see the state file)
    code = "\n".join(line for line in WRAPPER.read_text().splitlines() if not line.lstrip().startswith("#"))
    for name in ("DBKEEPER_ENABLED", "DBKEEPER_LISTEN_PORT", "DBKEEPER_SOCKET", "DBKEEPER_FAIL_MODE", "/proc/net/tcp"):
        assert name not in code


def test_executed_directly_through_its_shebang(served):
    run = run_wrapper({**APP_ENV, **served.env})
    assert run.returncode == 0
    assert run.env["DB_HOST"] == "127.0.0.1"


# --------------------------------------------------------------------------- serving: pointed


def test_given_extension_serving_when_defaults_then_db_host_and_port_point_at_it(shell, served):
    run = run_wrapper({**APP_ENV, **served.env}, shell=shell)
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
    assert run.stderr == ""
    assert_no_secret_printed(run)


@pytest.mark.parametrize("port", [1, 13306, 65535])
def test_given_the_extension_serves_another_port_then_db_port_is_that_port(shell, served, port):
    served.write(port=port)
    run = run_wrapper({**APP_ENV, **served.env}, shell=shell)
    assert run.env["DB_PORT"] == str(port)
    assert run.logs[0]["target"] == f"127.0.0.1:{port}"


def test_given_dbkeeper_settings_in_the_environment_then_the_state_file_alone_decides(shell, served):
    # the runtime sees the same DBKEEPER_* variables as the extension; what the extension made of
    # them (its Config) is in the file: they are not read a second time here
    misleading = {"DBKEEPER_ENABLED": "false", "DBKEEPER_LISTEN_PORT": "5000", "DBKEEPER_SOCKET": ""}
    served.write(port=4000)
    run = run_wrapper({**APP_ENV, **misleading, **served.env}, shell=shell)
    assert (run.env["DB_HOST"], run.env["DB_PORT"]) == ("127.0.0.1", "4000")

    other = Sandbox(unique_runtime_api())  # enabled, default port, socket: but no file, so not serving
    run = run_wrapper({**APP_ENV, "DBKEEPER_ENABLED": "true", "DBKEEPER_LISTEN_PORT": "3306", **other.env},
                      shell=shell)
    assert_untouched(run, {**APP_ENV, "DBKEEPER_ENABLED": "true", "DBKEEPER_LISTEN_PORT": "3306"})
    _assert_one_passthrough_warning(run, "extension_not_serving")


def test_given_function_without_db_host_then_host_and_port_are_set_but_no_original_recorded(served):
    run = run_wrapper(dict(served.env))
    assert run.env["DB_HOST"] == "127.0.0.1"
    assert run.env["DB_PORT"] == "3306"
    assert "DBKEEPER_ORIGINAL_DB_HOST" not in run.env
    assert "DBKEEPER_ORIGINAL_DB_PORT" not in run.env
    assert "DATABASE_URL" not in run.env


def test_given_custom_variable_lists_then_only_those_are_pointed(shell, served):
    served.write(port=4000)
    env = {
        **served.env,
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


def test_given_empty_lists_then_nothing_is_rewritten(served):
    env = {**APP_ENV, **served.env, "DBKEEPER_WRAP_HOST_VARS": "",
           "DBKEEPER_WRAP_PORT_VARS": "", "DBKEEPER_WRAP_URL_VARS": "",
           "DATABASE_URL": "mysql://u:p@db/x"}
    run = run_wrapper(env)
    assert_untouched(run, {**APP_ENV, "DATABASE_URL": "mysql://u:p@db/x"})
    assert run.logs[0]["variables"] == []


def test_given_invalid_variable_names_then_they_are_skipped_and_nothing_is_evaluated(shell, served, tmp_path):
    marker = tmp_path / "pwned"
    env = {**served.env,
           "DBKEEPER_WRAP_HOST_VARS": f"DB_HOST BAD-NAME 1ABC $(touch {marker}) `touch {marker}`;touch",
           "DB_HOST": "db"}
    run = run_wrapper(env, shell=shell)
    assert not marker.exists()
    assert run.env["DB_HOST"] == "127.0.0.1"
    names = [r["name"] for r in run.events("wrapper_invalid_variable_name")]
    assert "BAD-NAME" in names and "1ABC" in names
    assert all(r["level"] == "warning" for r in run.events("wrapper_invalid_variable_name"))


def test_given_a_password_variable_listed_by_mistake_then_its_value_is_never_copied(served):
    env = {**APP_ENV, **served.env, "DBKEEPER_WRAP_HOST_VARS": "DB_HOST DB_PASSWORD"}
    run = run_wrapper(env)
    assert "DBKEEPER_ORIGINAL_DB_PASSWORD" not in run.env
    assert not [k for k, v in run.env.items() if k.startswith("DBKEEPER_") and SECRET in v]
    assert_no_secret_printed(run)


def test_given_original_already_recorded_then_it_is_not_overwritten(served):
    # e.g. the wrapper is chained twice: the first original wins
    env = {**served.env, "DB_HOST": "127.0.0.1", "DBKEEPER_ORIGINAL_DB_HOST": "real.example"}
    run = run_wrapper(env)
    assert run.env["DBKEEPER_ORIGINAL_DB_HOST"] == "real.example"


# --------------------------------------------------------------------------- the state file's path


def test_the_path_of_lambdas_runtime_api_address():
    assert state_path("127.0.0.1:9001") == "/tmp/.dbkeeper-127.0.0.1_9001.state"


@pytest.mark.parametrize("runtime_api", [
    "127.0.0.1:9001", "localhost:36512", "[::1]:9001", "169.254.100.1:9001",
    "a/../../etc/passwd", "with space\ttab", 'quote"back\\slash',
    "$(touch /tmp/dbkeeper-wrapper-pwned)`touch /tmp/dbkeeper-wrapper-pwned`;*?[a]",
    "ünïcødé:1", "x" * 200,
], ids=lambda v: v.encode("unicode_escape").decode()[:24])
def test_the_wrapper_derives_the_same_path_as_the_extension(shell, runtime_api):
    # given any Runtime API address, under a UTF-8 locale (bash would otherwise step over
    # characters where the extension steps over bytes)
    run = run_wrapper({**APP_ENV, "AWS_LAMBDA_RUNTIME_API": runtime_api, "LANG": "C.UTF-8"}, shell=shell)
    rec = _assert_one_passthrough_warning(run, "extension_not_serving")
    # then the file the wrapper looked for is the one the extension writes: /tmp/.dbkeeper-*.state
    assert rec["checked"] == state_path(runtime_api)
    name = rec["checked"][len("/tmp/"):]
    assert "/" not in name and name.startswith(".dbkeeper-") and name.endswith(".state")
    assert not os.path.exists("/tmp/dbkeeper-wrapper-pwned")


@pytest.mark.parametrize("lc_all", [None, "C.UTF-8", "C"])
def test_the_runtime_gets_the_locale_it_was_given(shell, served, lc_all):
    env = {**APP_ENV, **served.env, "LANG": "C.UTF-8", **({"LC_ALL": lc_all} if lc_all else {})}
    run = run_wrapper(env, shell=shell)
    assert run.env["DB_HOST"] == "127.0.0.1"
    assert run.env.get("LC_ALL") == lc_all and run.env["LANG"] == "C.UTF-8"


# --------------------------------------------------------------------------- not serving: passthrough


def _assert_one_passthrough_warning(run: Run, reason: str) -> dict:
    warnings = run.events("wrapper_passthrough")
    assert len(warnings) == 1, run.logs
    assert len(run.logs) == 1, run.logs
    rec = warnings[0]
    assert rec["level"] == "warning"
    assert rec["reason"] == reason
    assert isinstance(rec["ts"], (int, float))
    assert run.stderr == ""
    return rec


def test_given_no_state_file_then_every_variable_is_untouched_and_one_warning_printed(shell, absent):
    encoded = SECRET.replace("#", "%23").replace("?", "%3F").replace("/", "%2F").replace("@", "%40")
    env = {**APP_ENV, **absent.env, "DATABASE_URL": f"mysql://app:{encoded}@db:3307/appdb"}
    run = run_wrapper(env, shell=shell)
    assert run.returncode == 0
    assert_untouched(run, env)
    rec = _assert_one_passthrough_warning(run, "extension_not_serving")
    assert rec["checked"] == str(absent.path)
    assert_no_secret_printed(run)


def test_given_no_runtime_api_then_passthrough(shell):
    # outside Lambda the extension never serves (it needs the Extensions API)
    for env in ({**APP_ENV}, {**APP_ENV, "AWS_LAMBDA_RUNTIME_API": ""}):
        run = run_wrapper(env, shell=shell)
        assert_untouched(run, env)
        _assert_one_passthrough_warning(run, "no_runtime_api")


def test_given_a_directory_or_a_fifo_at_the_state_path_then_not_serving_and_nothing_blocks(shell, absent):
    absent.path.mkdir()
    run = run_wrapper({**APP_ENV, **absent.env}, shell=shell)
    assert_untouched(run, {**APP_ENV, **absent.env})
    _assert_one_passthrough_warning(run, "extension_not_serving")
    absent.path.rmdir()
    os.mkfifo(absent.path)  # a reader would wait for a writer forever: run_wrapper's timeout would fail the test
    run = run_wrapper({**APP_ENV, **absent.env}, shell=shell)
    _assert_one_passthrough_warning(run, "extension_not_serving")


def test_given_the_tcp_listener_disabled_then_passthrough(shell, served):
    # DBKEEPER_LISTEN_PORT=0: only the Unix socket, which host/port variables cannot name
    served.write(port=0, socket="/tmp/dbkeeper.sock")
    run = run_wrapper({**APP_ENV, **served.env}, shell=shell)
    assert_untouched(run, {**APP_ENV, **served.env})
    rec = _assert_one_passthrough_warning(run, "tcp_listener_disabled")
    assert rec["checked"] == str(served.path)


def test_given_a_unix_socket_disabled_and_a_tcp_listener_then_pointed(shell, served):
    served.write(port=3310, socket=None)
    run = run_wrapper({**APP_ENV, **served.env}, shell=shell)
    assert (run.env["DB_HOST"], run.env["DB_PORT"]) == ("127.0.0.1", "3310")


def test_given_a_state_file_whose_extension_is_gone_then_stale_and_passthrough(shell, served):
    # an extension SIGKILLed at a deadline, or crashed, cannot remove its file
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    served.write(pid=gone.pid)
    run = run_wrapper({**APP_ENV, **served.env}, shell=shell)
    assert_untouched(run, {**APP_ENV, **served.env})
    _assert_one_passthrough_warning(run, "stale_state")


def _state(port="3306", pid=None, socket="/tmp/dbkeeper.sock") -> str:
    return f"port={port}\nsocket={socket}\npid={os.getpid() if pid is None else pid}\n"


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("port=3306\nsocket=/tmp/dbkeeper.sock\n", id="no-pid"),
    pytest.param(f"socket=/tmp/dbkeeper.sock\npid={os.getpid()}\n", id="no-port"),
    pytest.param(_state() + "port=3307\n", id="port-twice"),
    pytest.param(_state() + f"pid={os.getpid()}\n", id="pid-twice"),
    pytest.param(_state() + "extra=1\n" * 40, id="too-long"),
    pytest.param(_state().replace("\n", "\r\n"), id="crlf"),
    pytest.param(f"PORT=3306\nPID={os.getpid()}\n", id="upper-case-keys"),
    pytest.param(f"port =3306\npid={os.getpid()}\n", id="space-in-key"),
    pytest.param(b"\x00\xff\xfe garbage \x01".decode("latin-1"), id="binary"),
    *[pytest.param(_state(port=v), id=f"port={v!r}") for v in
      ["abc", "70000", "65536", "99999", "-1", "+1", "", "12 34", " 3306", "3306 ", "1234567", "0x10", "033",
       "00", "3306=3306", "3306;rm -rf /", "$(echo 1)", "`echo 1`", "${HOME}"]],
    *[pytest.param(_state(pid=v), id=f"pid={v!r}") for v in
      ["", "abc", "0", "-1", f"0{os.getpid()}", f"{os.getpid()} ", "1 2", "12345678901", "$$", "self", "../1",
       "1/..", "*"]],
])
def test_given_a_state_file_the_extension_would_not_write_then_invalid_and_passthrough(shell, served, text):
    served.write_raw(text)
    run = run_wrapper({**APP_ENV, **served.env}, shell=shell)
    assert run.returncode == 0
    assert_untouched(run, {**APP_ENV, **served.env})
    rec = _assert_one_passthrough_warning(run, "invalid_state")
    assert rec["checked"] == str(served.path)


def test_given_shell_code_in_the_state_file_then_none_of_it_runs(shell, served, tmp_path):
    marker = tmp_path / "pwned"
    served.write_raw(f"port=3306;touch {marker}\n"
                     f"touch {marker}\n"
                     f"socket=$(touch {marker})\n"
                     f"x=`touch {marker}`\n"
                     f"pid={os.getpid()}\n"
                     f"; touch {marker}\n")
    run = run_wrapper({**APP_ENV, **served.env}, shell=shell)
    assert not marker.exists()
    assert_untouched(run, {**APP_ENV, **served.env})
    _assert_one_passthrough_warning(run, "invalid_state")
    # the same lines around a valid port: still nothing runs, unknown lines are ignored
    served.write_raw(f"touch {marker}\nport=3306\nsocket=$(touch {marker})\nx=`touch {marker}`\n"
                     f"pid={os.getpid()}\n")
    run = run_wrapper({**APP_ENV, **served.env}, shell=shell)
    assert not marker.exists()
    assert run.env["DB_PORT"] == "3306"


def test_given_unknown_keys_or_no_final_newline_then_still_read(shell, served):
    # keys a later extension may add are ignored; a last line without "\n" is still a line
    served.write_raw(f"version=2\nport=3311\nsocket=/tmp/a=b.sock\nmode=x=y\npid={os.getpid()}")
    run = run_wrapper({**APP_ENV, **served.env}, shell=shell)
    assert run.env["DB_PORT"] == "3311"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a 0000 file anyway")
def test_given_an_unreadable_state_file_then_invalid_and_passthrough(shell, served):
    served.path.chmod(0)
    run = run_wrapper({**APP_ENV, **served.env}, shell=shell)
    assert_untouched(run, {**APP_ENV, **served.env})
    _assert_one_passthrough_warning(run, "invalid_state")


@pytest.mark.parametrize("level,expected", [
    ("debug", ["wrapper_passthrough"]),
    ("info", ["wrapper_passthrough"]),
    ("warning", ["wrapper_passthrough"]),
    ("error", []),
])
def test_log_level_filters_the_passthrough_warning(level, expected, absent):
    run = run_wrapper({**APP_ENV, **absent.env, "DBKEEPER_LOG_LEVEL": level})
    assert [r["event"] for r in run.logs] == expected
    assert_untouched(run, {**APP_ENV, **absent.env})


def test_without_a_date_command_lines_are_still_valid_json(shell, absent, tmp_path):
    # minimal images: nothing on PATH at all (the shell's builtins still work)
    sh = shutil.which(shell)
    run = run_wrapper({**APP_ENV, **absent.env, "PATH": str(tmp_path)}, command=None, shell=sh)
    rec = _assert_one_passthrough_warning(run, "extension_not_serving")
    assert rec["ts"] == 0
    assert_untouched(run, {**APP_ENV, **absent.env})


def test_without_a_date_command_pointing_still_works(shell, served, tmp_path):
    # no external command at all on the serving path either (reading the file is builtins only)
    run = run_wrapper({**APP_ENV, **served.env, "PATH": str(tmp_path)}, shell=shutil.which(shell))
    assert (run.env["DB_HOST"], run.env["DB_PORT"]) == ("127.0.0.1", "3306")
    assert run.logs[0]["ts"] == 0


def test_log_level_warning_hides_the_info_line(served):
    run = run_wrapper({**APP_ENV, **served.env, "DBKEEPER_LOG_LEVEL": "warning"})
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
def test_url_rewriting(original, expected, orig_host, orig_port, served, shell):
    run = run_wrapper({**served.env, "DATABASE_URL": original}, shell=shell)
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
                                                                      served):
    # Cross-check with Python's RFC 3986 parser: only host and port differ.
    served.write(port=4406)
    run = run_wrapper({**served.env, "DATABASE_URL": original})
    before, after = urlsplit(original), urlsplit(run.env["DATABASE_URL"])
    assert (after.hostname, after.port) == ("127.0.0.1", 4406)
    assert (after.scheme, after.username, after.password, after.path, after.query, after.fragment) == \
           (before.scheme, before.username, before.password, before.path, before.query, before.fragment)


@pytest.mark.parametrize("original", [p.values[0] for p in WELL_FORMED if p.id != "fragment"])
def test_rewritten_url_parses_like_the_original_for_sqlalchemy(original, served):
    sa_url = pytest.importorskip("sqlalchemy.engine.url")
    served.write(port=4406)
    run = run_wrapper({**served.env, "DATABASE_URL": original})
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
def test_url_left_untouched_with_a_warning(original, reason, served, shell):
    env = {**APP_ENV, **served.env, "DATABASE_URL": original}
    run = run_wrapper(env, shell=shell)
    assert run.env["DATABASE_URL"] == original
    assert not [k for k in run.env if k.startswith("DBKEEPER_ORIGINAL_DATABASE_URL")]
    warnings = run.events("wrapper_url_untouched")
    assert [(w["variable"], w["reason"], w["level"]) for w in warnings] == [("DATABASE_URL", reason, "warning")]
    # the other settings are still pointed
    assert run.env["DB_HOST"] == "127.0.0.1"
    assert "DATABASE_URL" not in run.events("wrapper_pointed")[0]["variables"]
    assert original not in run.stdout.replace(json.dumps(run.runtime), "")


def test_url_variable_unset_stays_unset_and_empty_stays_empty(served):
    run = run_wrapper(dict(served.env))
    assert "DATABASE_URL" not in run.env
    run = run_wrapper({**served.env, "DATABASE_URL": ""})
    assert run.env["DATABASE_URL"] == ""
    assert not run.events("wrapper_url_untouched")
    assert "DATABASE_URL" not in run.logs[0]["variables"]


def test_several_url_variables(served):
    env = {**served.env, "DBKEEPER_WRAP_URL_VARS": "DATABASE_URL READER_URL,OTHER_URL",
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


def test_argv_passes_through_unchanged(shell, served):
    run = run_wrapper(dict(served.env), args=ARGS, shell=shell)
    assert run.argv == ARGS


def test_argv_passes_through_unchanged_when_not_serving(shell, absent):
    run = run_wrapper(dict(absent.env), args=ARGS, shell=shell)
    assert run.argv == ARGS


def test_the_runtime_replaces_the_wrapper_process(served):
    # exec: same pid, so signals sent by Lambda reach the runtime itself
    run = run_wrapper(dict(served.env))
    assert run.runtime["pid"] == run.popen_pid


def test_runtime_exit_status_is_the_wrappers(served):
    run = run_wrapper(dict(served.env), command=[sys.executable, "-c", "raise SystemExit(7)"])
    assert run.returncode == 7


def test_without_a_command_it_fails_with_a_clear_error():
    run = run_wrapper({}, command=[])
    assert run.returncode == 2
    assert [r["event"] for r in run.logs] == ["wrapper_no_command"]


def test_wrapper_internals_do_not_leak_into_the_runtime_environment(served):
    env = {**APP_ENV, **served.env, "DATABASE_URL": "mysql://u:pw@db/x"}
    run = run_wrapper(env)
    assert not [k for k in run.env if k.startswith("_dbk")]
    # LC_CTYPE: Python's own C-locale coercion
    added = set(run.env) - set(env) - {"PATH", "PWD", "SHLVL", "_", "OLDPWD", "LC_CTYPE"}
    assert added == {"DBKEEPER_ORIGINAL_DB_HOST", "DBKEEPER_ORIGINAL_DB_PORT",
                     "DBKEEPER_ORIGINAL_DATABASE_URL_HOST"}
