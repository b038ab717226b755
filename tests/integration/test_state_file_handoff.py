"""The built layer's extension tells the wrapper what it serves through its state file, and the
built layer's wrapper believes nothing else: written after the listeners are bound and before
registering, removed at SHUTDOWN (SIGTERM and fatal errors: test_extension_process.py), never
written when the extension serves nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dbkeeper_process import EXTENSION, extension_python, start_dbkeeper
from tests.dbkeeper_process import state_file_of as state_file_of_api
from tests.fake_lambda_api import FakeLambda
from tests.polling import wait_until

# A file a crashed predecessor could have left (pid 1 is alive: only removal at start gets rid of it).
LEFT_BEHIND = "port=1\nsocket=/tmp/left-behind.sock\npid=1\n"


def state_file_of(sandbox) -> Path:
    assert re.fullmatch(r"127\.0\.0\.1:\d+", sandbox.api_address)
    path = state_file_of_api(sandbox.api_address)
    assert path == Path(f"/tmp/.dbkeeper-{sandbox.api_address.replace(':', '_')}.state")
    return path


def plant_left_behind(sandbox) -> None:
    state_file_of(sandbox).write_text(LEFT_BEHIND)


def run_layer_wrapper(layer_tree: Path, sandbox) -> tuple[dict, list[dict]]:
    """The built layer's wrapper, started as Lambda starts the runtime: (runtime env, log lines)."""
    env = {"PATH": os.environ["PATH"], "AWS_LAMBDA_RUNTIME_API": sandbox.api_address, "DB_HOST": "db.example",
           "DB_PORT": "3307"}
    proc = subprocess.run([str(layer_tree / "dbkeeper-wrapper"), sys.executable, "-c",
                           "import json, os; print('RUNTIME ' + json.dumps(dict(os.environ)))"],
                          env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    runtime = [json.loads(line[8:]) for line in proc.stdout.splitlines() if line.startswith("RUNTIME ")]
    logs = [json.loads(line) for line in proc.stdout.splitlines() if not line.startswith("RUNTIME ")]
    return runtime[0], logs


@pytest.fixture
def started(built_layer):
    running = []

    def start(upstream, port, **env):
        dbk = start_dbkeeper(built_layer.tree_x86_64, upstream, port, env, before_init=plant_left_behind)
        running.append(dbk)
        return dbk

    yield start
    for dbk in running:
        state_file_of(dbk.sandbox).unlink(missing_ok=True)
        dbk.stop()


def test_a_serving_extension_writes_what_it_serves_and_removes_it_at_shutdown(built_layer, started, mariadb,
                                                                              free_port):
    port = free_port()
    dbk = started(mariadb, port)
    path = state_file_of(dbk.sandbox)
    # after INIT (the runtime would start now): the file describes this extension, replacing the old one
    assert path.read_text() == f"port={port}\nsocket={dbk.unix_socket}\npid={dbk.pid}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dbk.wait_for_event("registered")["state_file"] == str(path)
    assert not [n for n in os.listdir("/tmp") if n.startswith(path.name + ".")]  # no temporary file left

    # the wrapper points the function at it
    env, logs = run_layer_wrapper(built_layer.tree_x86_64, dbk.sandbox)
    assert (env["DB_HOST"], env["DB_PORT"]) == ("127.0.0.1", str(port))
    assert [line["event"] for line in logs] == ["wrapper_pointed"]

    # SHUTDOWN: the file goes with the extension
    report = dbk.sandbox.shutdown()
    assert report.extensions[EXTENSION].exit_code == 0
    assert not path.exists()
    env, logs = run_layer_wrapper(built_layer.tree_x86_64, dbk.sandbox)
    assert (env["DB_HOST"], env["DB_PORT"]) == ("db.example", "3307")
    assert [(line["event"], line["reason"]) for line in logs] == [("wrapper_passthrough", "extension_not_serving")]


def test_an_extension_killed_without_warning_leaves_a_stale_file_the_wrapper_sees_through(built_layer, started,
                                                                                           mariadb, free_port):
    # SIGKILL (Lambda's, at the SHUTDOWN deadline): nothing can remove the file; its pid is what gives it away
    port = free_port()
    dbk = started(mariadb, port)
    path = state_file_of(dbk.sandbox)
    pid = dbk.pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not os.path.isdir(f"/proc/{pid}"))
    assert f"pid={pid}\n" in path.read_text()
    env, logs = run_layer_wrapper(built_layer.tree_x86_64, dbk.sandbox)
    assert (env["DB_HOST"], env["DB_PORT"]) == ("db.example", "3307")
    assert [(line["event"], line["reason"]) for line in logs] == [("wrapper_passthrough", "stale_state")]


@pytest.mark.parametrize("setting", ["DBKEEPER_POOL_SIZE=lots", "DBKEEPER_ENABLED=false", "taken port"])
def test_an_extension_that_serves_nothing_leaves_no_file(built_layer, started, mariadb, free_port, setting):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        if setting == "taken port":
            dbk = started(mariadb, blocker.getsockname()[1])
        else:
            name, value = setting.split("=")
            dbk = started(mariadb, free_port(), **{name: value})
        # INIT succeeded (fail open) and the extension is registered, idle: the old file is gone
        # and no new one was written
        dbk.wait_for_event("registered", serving=False)
        if setting != "DBKEEPER_ENABLED=false":
            assert dbk.wait_for_event("init_failed")["fail_mode"] == "open"
        assert dbk.alive()
        assert not state_file_of(dbk.sandbox).exists()
        env, logs = run_layer_wrapper(built_layer.tree_x86_64, dbk.sandbox)
        assert (env["DB_HOST"], env["DB_PORT"]) == ("db.example", "3307")
        assert [line["reason"] for line in logs] == ["extension_not_serving"]
        assert dbk.sandbox.shutdown().extensions[EXTENSION].exit_code == 0
    finally:
        blocker.close()


def test_the_file_is_complete_and_the_listener_accepting_when_the_extension_registers(built_layer, mariadb,
                                                                                      free_port, tmp_path):
    # Lambda starts the runtime (the wrapper) only after every extension registered: what the
    # wrapper will read must be in place at the moment of the register call, not after
    api = FakeLambda()
    path = state_file_of_api(api.address)
    port = free_port()
    seen = {}

    def register():
        seen["state"] = path.read_text() if path.exists() else None
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            seen["accepting"] = True
        return 200, {"Lambda-Extension-Identifier": "id-1"}, b'{"functionName":"f"}', "application/json"

    shutdown = json.dumps({"eventType": "SHUTDOWN", "shutdownReason": "spindown",
                           "deadlineMs": int(time.time() * 1000) + 2000}).encode()
    api.answer_later("POST", "/register", register)
    api.answer("GET", "/event/next", 200, shutdown)
    env = {**mariadb.db_env(), "AWS_LAMBDA_RUNTIME_API": api.address, "PATH": os.environ["PATH"],
           "DBKEEPER_PYTHON": extension_python(), "DBKEEPER_LISTEN_PORT": str(port),
           "DBKEEPER_SOCKET": str(tmp_path / "d.sock")}
    try:
        process = subprocess.run([str(built_layer.tree_x86_64 / "extensions" / "dbkeeper")], env=env,
                                 capture_output=True, text=True, timeout=20)
        left_after_exit = path.exists()
    finally:
        api.close()
        path.unlink(missing_ok=True)
    assert process.returncode == 0, process.stdout + process.stderr
    assert seen["accepting"] is True
    assert seen["state"] is not None
    assert seen["state"].startswith(f"port={port}\nsocket={tmp_path / 'd.sock'}\npid=")
    assert [json.loads(line)["event"] for line in process.stdout.splitlines()][-1] == "shutdown_complete"
    assert not left_after_exit
