"""The extension process from the built layer, against an Extensions API that fails: it still
closes its upstream connection with COM_QUIT and exits non-zero."""

import json
import os
import subprocess
import threading
import time

from tests.dbkeeper_process import extension_python
from tests.fake_lambda_api import FakeLambda
from tests.mariadb import free_port


def test_a_failing_event_next_still_closes_the_upstream_and_exits(built_layer, fresh_mariadb, tmp_path):
    api = FakeLambda()
    release = threading.Event()
    api.answer("POST", "/register", 200, b'{"functionName":"f","functionVersion":"$LATEST","handler":""}',
               {"Lambda-Extension-Identifier": "id-1"})
    api.answer_later("GET", "/event/next", lambda: (release.wait(30), (500, {}, b'{"errorType":"Broken"}', "application/json"))[1])
    env = {**fresh_mariadb.db_env(), "AWS_LAMBDA_RUNTIME_API": api.address, "PATH": os.environ["PATH"],
           "DBKEEPER_PYTHON": extension_python(), "DBKEEPER_LISTEN_PORT": str(free_port()),
           "DBKEEPER_SOCKET": str(tmp_path / "d.sock")}
    process = subprocess.Popen([str(built_layer.tree_x86_64 / "extensions" / "dbkeeper")], env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        # given a running extension with its upstream connection
        lines = []
        for line in process.stdout:
            lines.append(json.loads(line))
            if lines[-1]["event"] == "upstream_connected":
                break
        assert len(fresh_mariadb.processlist(user=fresh_mariadb.user)) == 1
        # when Lambda's API answers event/next with an error
        release.set()
        assert process.wait(10) == 1
        lines += [json.loads(line) for line in process.stdout]
        # then it said why, and the database was told goodbye
        assert any(line["event"] == "extensions_api_failed" for line in lines)
        deadline = time.monotonic() + 5
        while fresh_mariadb.processlist(user=fresh_mariadb.user) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not fresh_mariadb.processlist(user=fresh_mariadb.user)
        assert not (tmp_path / "d.sock").exists()
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
        api.close()
