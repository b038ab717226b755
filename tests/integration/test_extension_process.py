"""The extension process from the built layer against a scripted Extensions API: SIGTERM is a
SHUTDOWN, and an API that fails still ends with COM_QUIT upstream and a non-zero exit."""

import contextlib
import json
import os
import subprocess
import threading
import time

from tests.dbkeeper_process import extension_python, state_file_of
from tests.fake_lambda_api import FakeLambda
from tests.mariadb import free_port


@contextlib.contextmanager
def extension_against(layer_tree, upstream, socket_path, next_status, next_body=b"{}"):
    """The launcher from the built layer, registered with a scripted API whose event/next answers
    `next_status` once the test sets the yielded event; (process, log lines so far, release, state
    file path)."""
    release = threading.Event()
    api = FakeLambda()
    api.answer("POST", "/register", 200, b'{"functionName":"f","functionVersion":"$LATEST","handler":""}',
               {"Lambda-Extension-Identifier": "id-1"})
    api.answer_later("GET", "/event/next",
                     lambda: (release.wait(30), (next_status, {}, next_body, "application/json"))[1])
    env = {**upstream.db_env(), "AWS_LAMBDA_RUNTIME_API": api.address, "PATH": os.environ["PATH"],
           "DBKEEPER_PYTHON": extension_python(), "DBKEEPER_LISTEN_PORT": str(free_port()),
           "DBKEEPER_SOCKET": str(socket_path)}
    process = subprocess.Popen([str(layer_tree / "extensions" / "dbkeeper")], env=env, stdout=subprocess.PIPE,
                               text=True)
    try:
        lines = []
        for line in process.stdout:  # until the upstream connection is up
            lines.append(json.loads(line))
            if lines[-1]["event"] == "upstream_connected":
                break
        else:
            raise AssertionError(f"the extension exited before connecting: {lines}")
        state = state_file_of(api.address)
        assert state.exists()  # serving: the wrapper would point the function here
        yield process, lines, release, state
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
        api.close()


def wait_until_no_sessions(db, timeout=5.0):
    deadline = time.monotonic() + timeout
    while db.processlist(user=db.user) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not db.processlist(user=db.user)


def test_sigterm_is_a_shutdown(built_layer, fresh_mariadb, tmp_path):
    with extension_against(built_layer.tree_x86_64, fresh_mariadb, tmp_path / "d.sock", 200) as (process, _, _, state):
        assert len(fresh_mariadb.processlist(user=fresh_mariadb.user)) == 1
        process.terminate()  # SIGTERM
        assert process.wait(5) == 0
        complete = [json.loads(line) for line in process.stdout][-1]
        assert complete["event"] == "shutdown_complete" and complete["reason"] == "SIGTERM"
        assert complete["upstreams_closed"] == 1
        assert wait_until_no_sessions(fresh_mariadb)
        assert not state.exists()


def test_a_failing_event_next_still_closes_the_upstream_and_exits(built_layer, fresh_mariadb, tmp_path):
    with extension_against(built_layer.tree_x86_64, fresh_mariadb, tmp_path / "d.sock", 500,
                           b'{"errorType":"Broken"}') as (process, lines, release, state):
        # given a running extension with its upstream connection
        assert len(fresh_mariadb.processlist(user=fresh_mariadb.user)) == 1
        # when Lambda's API answers event/next with an error
        release.set()
        assert process.wait(10) == 1
        lines += [json.loads(line) for line in process.stdout]
        # then it said why, and the database was told goodbye
        assert any(line["event"] == "extensions_api_failed" for line in lines)
        assert wait_until_no_sessions(fresh_mariadb)
        assert not (tmp_path / "d.sock").exists()
        assert not state.exists()  # nor does the wrapper of a next INIT see this extension as serving
