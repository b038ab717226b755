"""Spec: `python -m lambda_sandbox` behaves like the RIE for users; RieSandbox drives an RIE-compatible
binary in a private mount namespace (here: the stand-in tests/sandbox_fixtures/fake-aws-lambda-rie,
since the real aws-lambda-rie is not installed)."""

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root (lambda_sandbox, tests.*)

from lambda_sandbox.rie import RieSandbox  # noqa: E402
from tests.sandbox_fixtures.helpers import FAKE_RIE, TASK, make_opt, needs_netns, needs_root  # noqa: E402

REPO = str(Path(__file__).resolve().parents[2])


def read_until(stream, pattern: str, timeout: float) -> str:
    """Read lines from a pipe until one matches pattern (deadline-bounded)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise TimeoutError(f"{pattern!r} not seen; got {seen}")


def post(url: str, body: bytes, headers=None):
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_cli_serves_the_invoke_endpoint_and_shuts_down_on_sigterm(tmp_path):
    opt = make_opt(tmp_path, {"testext": {"events": ["SHUTDOWN"]}})
    p = subprocess.Popen([sys.executable, "-m", "lambda_sandbox", "--opt", opt, "--task", TASK, "--port", "0",
                          "--prefix-logs", "app.handler"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "AWS_LAMBDA_FUNCTION_TIMEOUT": "1"})
    try:
        url = re.search(r"(http://\S+invocations)", read_until(p.stderr, "invoke endpoint", 10)).group(1)
        status, body = post(url, b'{"a": 1}', {"X-Amzn-Trace-Id": "Root=1-x"})
        assert status == 200
        assert json.loads(body)["echo"] == {"a": 1} and json.loads(body)["trace"] == "Root=1-x"
        status, body = post(url, b'{"raise": "no"}')
        assert status == 200 and json.loads(body)["errorType"] == "ValueError"
        status, body = post(url, b'{"sleep_s": 10}')
        assert (status, body) == (200, b"Task timed out after 1.00 seconds")
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
        out = p.stdout.read()
        assert '[testext] {' in out and '"exiting"' in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@needs_root
def test_rie_sandbox_runs_the_rie_with_opt_and_task_bind_mounted(tmp_path):
    opt = make_opt(tmp_path, {"testext": {}})
    with RieSandbox(FAKE_RIE, opt, TASK, timeout_s=3, freeze=True) as sb:
        r = sb.invoke({"k": 1})
        assert r.ok and r.json()["echo"] == {"k": 1}
        assert r.json()["cwd"] == "/var/task"
        started = sb.wait_for_json(None, lambda e: e.get("event") == "started")
        assert started["argv0"] == "/opt/extensions/testext" and started["cwd"] == "/var/task"
        assert set(sb.pids()) == {"runtime", "testext"}
        assert sb.frozen  # approximated freeze: everything below the RIE is stopped
        err = sb.invoke({"raise": "x"})
        assert (err.ok, err.error_type) == (False, "ValueError")
        rep = sb.shutdown()
    assert rep["testext"].exited_ms is not None and not rep["testext"].killed
    assert any('"exiting"' in line for _, line in sb.logs)
    assert not os.path.ismount("/opt/extensions")  # the bind mounts never leaked out of the namespace
    assert not os.path.exists(sb.private_tmp)  # the RIE's private /tmp is removed with it


@needs_netns
def test_rie_sandbox_in_a_network_namespace_can_be_reclaimed(tmp_path):
    opt = make_opt(tmp_path, {"testext": {"events": ["INVOKE"]}})
    sb = RieSandbox(FAKE_RIE, opt, TASK, timeout_s=3, netns=True)
    with sb:
        assert sb.invoke({}).ok
        pids = sb.all_pids()
        rep = sb.reclaim(graceful=False)
    assert rep.reclaimed
    assert all(not os.path.exists(f"/proc/{p}") or open(f"/proc/{p}/stat").read().split(") ")[1][0] == "Z"
               for p in pids)
