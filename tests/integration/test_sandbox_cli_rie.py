"""Spec: `python -m lambda_sandbox` behaves like the RIE for users; RieSandbox drives an RIE in a private
mount namespace. The RieSandbox tests run twice: with the stand-in tests/sandbox_fixtures/fake-aws-lambda-rie
(lambda_sandbox's RIE-compatible command line) and with a real aws-lambda-rie when DBKEEPER_RIE names one:
the same assertions hold for both, which is how the project's sandbox is held to the real RIE's answers."""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root (lambda_sandbox, tests.*)

from lambda_sandbox.rie import RieSandbox  # noqa: E402
from tests.sandbox_fixtures.helpers import (  # noqa: E402,F401
    FAKE_RIE,
    TASK,
    make_opt,
    needs_netns,
    rie_binary,
)

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


def post_ctype(url: str, body: bytes) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type") or ""
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type") or ""


def test_cli_answers_with_the_content_type_the_rie_sniffs(tmp_path):
    opt = make_opt(tmp_path, {})
    p = subprocess.Popen([sys.executable, "-m", "lambda_sandbox", "--opt", opt, "--task", TASK, "--port", "0",
                          "app.handler"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"(http://\S+invocations)", read_until(p.stderr, "invoke endpoint", 10)).group(1)
        # the RIE's Go server drops the runtime's Content-Type and sniffs the body: JSON is text/plain
        status, body, ctype = post_ctype(url, b'{"a": 1}')
        assert (status, ctype) == (200, "text/plain; charset=utf-8") and json.loads(body)["echo"] == {"a": 1}
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)


# ------------------------------------------------------------------------------------------- RieSandbox
def test_rie_sandbox_runs_the_rie_with_opt_and_task_bind_mounted(tmp_path, rie_binary):
    opt = make_opt(tmp_path, {"testext": {}})
    with RieSandbox(rie_binary, opt, TASK, timeout_s=3, freeze=True) as sb:
        r = sb.invoke({"k": 1})
        assert r.ok and r.json()["echo"] == {"k": 1}
        assert r.json()["cwd"] == "/var/task"
        started = sb.wait_for_json(None, lambda e: e.get("event") == "started")
        assert started["argv0"] == "/opt/extensions/testext" and started["cwd"] == "/var/task"
        assert set(sb.pids()) == {"runtime", "testext"}
        assert sb.frozen and sb.freeze_mechanism == "sigstop"  # approximated: everything below the RIE
        err = sb.invoke({"raise": "x"})
        assert (err.ok, err.error_type) == (False, "ValueError")
        rep = sb.shutdown()
    assert rep["testext"].exit_code == 0 and not rep["testext"].killed
    assert any('"exiting"' in line for _, line in sb.logs)
    assert not os.path.ismount("/opt/extensions")  # the bind mounts never leaked out of the namespace
    assert not os.path.exists(sb.private_tmp)  # the RIE's private /tmp is removed with it


def test_rie_sandbox_reads_init_duration_and_request_id_from_the_rie(tmp_path, rie_binary):
    opt = make_opt(tmp_path, {"testext": {"first_next_delay_ms": 300}})
    with RieSandbox(rie_binary, opt, TASK, timeout_s=3) as sb:
        first, second = sb.invoke({}), sb.invoke({})
    assert first.init_duration_ms >= 300 and second.init_duration_ms is None
    assert [first.request_id, second.request_id] == [first.json()["request_id"], second.json()["request_id"]]


def test_shutdown_report_has_exit_codes_subscriptions_and_kills(tmp_path, rie_binary):
    # given one extension exiting with 3 after SHUTDOWN, one ignoring it, one subscribed to INVOKE only
    opt = make_opt(tmp_path, {
        "polite": {"events": ["SHUTDOWN"], "shutdown_delay_ms": 300, "exit_code": 3},
        "stubborn": {"events": ["SHUTDOWN"], "ignore_shutdown": True},
        "invokeonly": {"events": ["INVOKE"]},
    })
    with RieSandbox(rie_binary, opt, TASK, timeout_s=3) as sb:
        assert sb.invoke({}).ok
        rep = sb.shutdown()
    # then the exit codes the RIE never reports are there (the kernel's process events)
    assert rep.runtime_exit_code == -signal.SIGTERM and not rep.runtime_killed
    polite, stubborn, invokeonly = rep["polite"], rep["stubborn"], rep["invokeonly"]
    assert (polite.exit_code, polite.killed, polite.subscribed) == (3, False, True)
    assert 300 <= polite.exited_ms < 1000
    assert (stubborn.exit_code, stubborn.killed, stubborn.subscribed) == (-signal.SIGKILL, True, True)
    assert 1950 <= stubborn.exited_ms <= 2600
    assert (invokeonly.exit_code, invokeonly.killed, invokeonly.subscribed) == (-signal.SIGKILL, True, False)
    assert invokeonly.exited_ms < 500


def test_an_rie_binary_under_tmp_is_still_found_in_its_private_tmp(tmp_path, rie_binary):
    # the RIE's processes get a private /tmp; the directory of the binary is bound back into it
    bin_dir = tempfile.mkdtemp(prefix="lsb-rie-bin-", dir="/tmp")
    try:
        binary = os.path.join(bin_dir, "aws-lambda-rie")
        if rie_binary == FAKE_RIE:
            Path(binary).write_text(f'#!/bin/sh\nexec {FAKE_RIE} "$@"\n')
            os.chmod(binary, 0o755)
        else:
            shutil.copy2(rie_binary, binary)
        with RieSandbox(binary, make_opt(tmp_path, {}), TASK, timeout_s=3) as sb:
            assert sb.invoke({}).ok
    finally:
        shutil.rmtree(bin_dir, ignore_errors=True)


# One row per failure: extensions (testext config by file name), handler, then the invocations and what the
# caller gets for each: (status, body) or a check of the result.
def _crash_json(error_type, message):
    def check(r):
        assert (r.status, r.error_type) == (502, error_type)
        assert r.json() == {"errorType": error_type, "errorMessage": f"RequestId: {r.request_id} Error: {message}"}
        assert r.content_type == "text/plain; charset=utf-8"
    return check


def _empty_502(r):
    assert (r.status, r.body, r.error_type) == (502, b"", None)


def _ok(r):
    assert r.ok and r.status == 200, r.body


def _answer(status, error_type):
    def check(r):
        assert (r.status, r.error_type) == (status, error_type), r
    return check


def _the_function_answer_with_502(r):
    assert (r.status, r.error_type, r.json()["echo"]) == (502, None, {"k": 1})


def _timed_out(r):
    assert (r.status, r.body) == (200, b"Task timed out after 1.00 seconds")


FAILURES = {
    "extension init/error": ({"testext": {"init_error": "Extension.ConfigInvalid"}, "other": {}}, "app.handler",
                             [({}, _empty_502), ({}, _empty_502)]),
    "extension exits before registering": ({"testext": {"crash_before_register": 4}}, "app.handler",
                                           [({}, _empty_502), ({}, _empty_502)]),
    "extension not executable": ({}, "app.handler", [({}, _empty_502)]),
    "runtime init error": ({"testext": {}}, "missing_module.handler",
                           [({}, _answer(502, "Runtime.ImportModuleError"))]),
    "extension crash before the function answered": (
        {"testext": {"crash_on_invoke": 5}}, "app.handler",
        [({"sleep_s": 2}, _crash_json("Extension.Crash", "exit status 5"))]),
    "extension crash after the function answered": ({"testext": {"crash_after_invoke_ms": 300}}, "app.handler",
                                                     [({"k": 1}, _the_function_answer_with_502)]),
    "extension exit/error": ({"testext": {"exit_error": "Extension.Fatal"}}, "app.handler",
                             [({"sleep_s": 0.5}, _crash_json("Extension.ExitError", "exit code 0"))]),
    "runtime exits": ({"testext": {}}, "app.handler",
                      [({"exit": 3}, _crash_json("Runtime.ExitError", "Runtime exited with error: exit status 3")),
                       ({}, _ok)]),
    "function error": ({"testext": {}}, "app.handler", [({"raise": "boom"}, _answer(200, "ValueError"))]),
    "timeout": ({"testext": {}}, "app.handler", [({"sleep_s": 5}, _timed_out), ({}, _ok)]),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failures_are_answered_as_the_rie_answers_them(tmp_path, rie_binary, case):
    exts, handler, calls = FAILURES[case]
    non_executable = ("plain",) if case == "extension not executable" else ()
    opt = make_opt(tmp_path, exts, non_executable=non_executable)
    with RieSandbox(rie_binary, opt, TASK, handler=handler, timeout_s=1) as sb:
        for event, check in calls:
            check(sb.invoke(event))


def test_an_extension_dying_while_idle_fails_the_next_invoke_only(tmp_path, rie_binary):
    opt = make_opt(tmp_path, {"testext": {"idle_crash_ms": 100}})
    with RieSandbox(rie_binary, opt, TASK, timeout_s=3) as sb:
        assert sb.invoke({}).ok
        # both log the exit as "Process extension-<name>-<n> exited: …"
        sb.wait_for_log(lambda _s, line: re.search(r"Process extension-testext-\d+ exited: exit status 7", line))
        failed = sb.invoke({})
        if rie_binary == FAKE_RIE or failed.error_type is not None:
            _crash_json("Extension.Crash", "exit status 7")(failed)
        else:
            # the real RIE logs the exit before it has cancelled its flows: an invoke arriving in between
            # runs, then fails with the runtime's answer (the sandbox is always past that point)
            assert (failed.status, failed.json()["echo"]) == (502, {})
        again = sb.invoke({})
        assert again.ok and again.init_duration_ms is not None


@needs_netns
def test_rie_sandbox_in_a_network_namespace_can_be_reclaimed(tmp_path, rie_binary):
    opt = make_opt(tmp_path, {"testext": {"events": ["INVOKE"]}})
    sb = RieSandbox(rie_binary, opt, TASK, timeout_s=3, netns=True)
    with sb:
        assert sb.invoke({}).ok
        pids = sb.all_pids()
        rep = sb.reclaim(graceful=False)
    assert rep.reclaimed
    assert all(not os.path.exists(f"/proc/{p}") or open(f"/proc/{p}/stat").read().split(") ")[1][0] == "Z"
               for p in pids)
