"""The extension process from the built layer against a scripted Extensions API: SIGTERM is a
SHUTDOWN, and an API that fails still ends with COM_QUIT upstream and a non-zero exit."""

import json
import os
import subprocess
import threading
import time

from tests.dbkeeper_process import extension_python
from tests.fake_lambda_api import FakeLambda
from tests.mariadb import free_port


def start_extension(layer_tree, upstream, api, socket_path):
    env = {**upstream.db_env(), "AWS_LAMBDA_RUNTIME_API": api.address, "PATH": os.environ["PATH"],
           "DBKEEPER_PYTHON": extension_python(), "DBKEEPER_LISTEN_PORT": str(free_port()),
           "DBKEEPER_SOCKET": str(socket_path)}
    process = subprocess.Popen([str(layer_tree / "extensions" / "dbkeeper")], env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:  # until the upstream connection is up
        lines.append(json.loads(line))
        if lines[-1]["event"] == "upstream_connected":
            return process, lines
    raise AssertionError(f"the extension exited before connecting: {lines}")


def scripted_api(next_answer):
    api = FakeLambda()
    api.answer("POST", "/register", 200, b'{"functionName":"f","functionVersion":"$LATEST","handler":""}',
               {"Lambda-Extension-Identifier": "id-1"})
    api.answer_later("GET", "/event/next", next_answer)
    return api


def wait_until_no_sessions(db, timeout=5.0):
    deadline = time.monotonic() + timeout
    while db.processlist(user=db.user) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not db.processlist(user=db.user)


def test_sigterm_is_a_shutdown(built_layer, fresh_mariadb, tmp_path):
    release = threading.Event()
    api = scripted_api(lambda: (release.wait(30), (200, {}, b"{}", "application/json"))[1])
    process, lines = start_extension(built_layer.tree_x86_64, fresh_mariadb, api, tmp_path / "d.sock")
    try:
        assert len(fresh_mariadb.processlist(user=fresh_mariadb.user)) == 1
        process.terminate()  # SIGTERM
        assert process.wait(5) == 0
        complete = [json.loads(line) for line in process.stdout][-1]
        assert complete["event"] == "shutdown_complete" and complete["reason"] == "SIGTERM"
        assert complete["upstreams_closed"] == 1
        assert wait_until_no_sessions(fresh_mariadb)
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
        api.close()


def test_a_failing_event_next_still_closes_the_upstream_and_exits(built_layer, fresh_mariadb, tmp_path):
    release = threading.Event()
    api = scripted_api(lambda: (release.wait(30), (500, {}, b'{"errorType":"Broken"}', "application/json"))[1])
    process, lines = start_extension(built_layer.tree_x86_64, fresh_mariadb, api, tmp_path / "d.sock")
    try:
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
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
        api.close()
