"""Spec (no processes): lambda_sandbox's building blocks: environments, command lines, routing, logs."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root (lambda_sandbox, tests.*)

from lambda_sandbox import NetnsUnavailable, Sandbox, cgroups, exitwatch, procs  # noqa: E402
from lambda_sandbox import netns as netns_mod  # noqa: E402
from lambda_sandbox.api import route  # noqa: E402
from lambda_sandbox.cli import go_content_type  # noqa: E402
from lambda_sandbox.logs import LogStore  # noqa: E402
from lambda_sandbox.rie import MOUNT_SCRIPT, RieSandbox, parse_rie_response  # noqa: E402
from lambda_sandbox.state import Invocation, exit_message  # noqa: E402


# ------------------------------------------------------------------------------------------- logs
def test_log_store_waits_for_a_matching_line_from_another_thread():
    store = LogStore()
    store.append("a", "stdout", "old")
    mark = len(store)
    threading.Timer(0.05, store.append, args=("ext", "stdout", '{"event":"x"}')).start()
    assert store.wait_for(lambda s, line: s == "ext", timeout=2, since=mark) == ("ext", '{"event":"x"}')
    assert store.pairs() == [("a", "old"), ("ext", '{"event":"x"}')]


def test_log_store_times_out_with_the_last_lines_in_the_message():
    store = LogStore()
    store.append("ext", "stdout", "something else")
    with pytest.raises(TimeoutError, match="something else"):
        store.wait_for(lambda s, line: "never" in line, timeout=0.05)


def test_log_store_since_skips_older_lines():
    store = LogStore()
    store.append("ext", "stdout", "match")
    with pytest.raises(TimeoutError):
        store.wait_for(lambda s, line: line == "match", timeout=0.05, since=1)


# ------------------------------------------------------------------------------------------- procs
def test_read_stat_and_tree_pids_follow_process_groups_and_children():
    # given a shell (own process group) that has started a child and told us its pid
    p = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], process_group=0, stdout=subprocess.PIPE, text=True)
    try:
        child = int(p.stdout.readline())
        info = procs.read_stat(p.pid)
        assert info.pgid == p.pid and info.ppid == os.getpid()
        # then the tree is the shell and its child, never ourselves
        assert procs.tree_pids([p.pid], [p.pid]) == {p.pid, child}
        assert procs.tree_pids([], [p.pid]) == {p.pid, child}  # by process group alone
    finally:
        os.killpg(p.pid, 9)
        p.wait()
    assert procs.read_stat(p.pid) is None


# ------------------------------------------------------------------------------------------- environment
def make_sb(tmp_path, **kw):
    opt = tmp_path / "opt"
    (opt / "extensions").mkdir(parents=True)
    task = tmp_path / "task"
    task.mkdir()
    sb = Sandbox(str(opt), str(task), handler="app.handler", **kw)
    sb.api_address = "127.0.0.1:9001"
    return sb


def test_extension_env_keeps_function_vars_and_drops_runtime_only_and_underscore_names(tmp_path):
    sb = make_sb(tmp_path, env={"A": "1", "PYTHONPATH": "/p", "_X": "x", "LAMBDA_TASK_ROOT": "/t"})
    env = sb.extension_env()
    assert env["A"] == "1" and env["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9001"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "test_function" and env["AWS_REGION"] == "us-east-1"
    for k in ("_HANDLER", "PYTHONPATH", "LAMBDA_TASK_ROOT", "AWS_EXECUTION_ENV", "_X"):
        assert k not in env


def test_runtime_env_has_handler_task_root_execution_env_and_pythonpath(tmp_path):
    sb = make_sb(tmp_path, env={"PYTHONPATH": "/extra"})
    (Path(sb.opt_dir) / "python").mkdir()
    env = sb.runtime_env()
    assert env["_HANDLER"] == "app.handler" and env["LAMBDA_TASK_ROOT"] == sb.task_dir
    assert env["PYTHONPATH"] == f"{sb.task_dir}:{sb.opt_dir}/python:/extra"
    assert env["AWS_EXECUTION_ENV"] == f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}"


def test_runtime_argv_uses_awslambdaric_and_the_exec_wrapper_mapped_into_opt_dir(tmp_path):
    sb = make_sb(tmp_path, python="/usr/bin/python3")
    assert sb.runtime_argv() == ["/usr/bin/python3", "-m", "awslambdaric", "app.handler"]
    sb.env["AWS_LAMBDA_EXEC_WRAPPER"] = "/opt/dbkeeper-wrapper"
    assert sb.runtime_argv()[0] == os.path.join(sb.opt_dir, "dbkeeper-wrapper")
    assert sb.runtime_argv()[1:] == ["/usr/bin/python3", "-m", "awslambdaric", "app.handler"]


def test_netns_refuses_clearly_when_not_root(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in netns_mod.unavailable_reason()
    sb = make_sb(tmp_path, netns=True)
    with pytest.raises(NetnsUnavailable, match="root"):
        sb.start()


# ------------------------------------------------------------------------------------------- api routing
class FakeSandbox:
    def __getattr__(self, name):
        def call(*args):
            from lambda_sandbox.state import Resp

            decoded = [a if not isinstance(a, bytes) else a.decode() for a in args]
            return Resp(299, json.dumps([name, *decoded]).encode())

        return call


def test_routes_map_paths_and_headers_to_sandbox_handlers():
    sb = FakeSandbox()
    h = {"Lambda-Extension-Name": "n", "Lambda-Extension-Identifier": "i",
         "Lambda-Extension-Function-Error-Type": "E.T", "Lambda-Runtime-Function-Error-Type": "R.T",
         "Content-Type": "application/json"}
    r = lambda m, p, b=b"": json.loads(route(sb, m, p, h, b).body)  # noqa: E731
    assert r("GET", "/2018-06-01/runtime/invocation/next") == ["rt_next"]
    assert r("POST", "/2018-06-01/runtime/invocation/abc/response", b"x") == ["rt_response", "abc", "x",
                                                                              "application/json"]
    assert r("POST", "/2018-06-01/runtime/invocation/abc/error", b"x") == ["rt_error", "abc", "x", "R.T",
                                                                           "application/json"]
    assert r("POST", "/2018-06-01/runtime/init/error", b"x") == ["rt_init_error", "x", "R.T"]
    assert r("POST", "/2020-01-01/extension/register", b"{}") == ["ext_register", "n", "{}", None]
    assert r("GET", "/2020-01-01/extension/event/next") == ["ext_next", "i"]
    assert r("POST", "/2020-01-01/extension/init/error", b"{}") == ["ext_init_error", "i", "E.T", "{}"]
    assert r("POST", "/2020-01-01/extension/exit/error", b"{}") == ["ext_exit_error", "i", "E.T", "{}"]
    assert route(sb, "GET", "/nope", h, b"").status == 404
    assert route(sb, "POST", "/2020-01-01/extension/event/next", h, b"").status == 405


# ------------------------------------------------------------------------------------------- RieSandbox
def test_rie_command_runs_the_rie_in_a_private_mount_namespace_with_free_ports(tmp_path):
    sb = RieSandbox("/usr/local/bin/aws-lambda-rie", str(tmp_path / "opt"), str(tmp_path / "task"),
                    handler="app.handler", python="/usr/bin/python3")
    cmd = sb.command()
    assert cmd[:5] == ["unshare", "-m", "--propagation", "private", "--"]
    assert cmd[5:8] == ["/bin/sh", "-c", MOUNT_SCRIPT]
    assert cmd[9:11] == [str(tmp_path / "opt"), str(tmp_path / "task")]
    assert "private /tmp" in cmd[11]  # created by start(); command() has no side effect
    # then host paths under /tmp still needed inside (a checkout in /tmp), up to "--"
    separator = cmd.index("--", 12)
    assert all(path.startswith("/tmp/") for path in cmd[12:separator])
    rie = cmd[separator + 1:]
    assert rie[0] == "/usr/local/bin/aws-lambda-rie"
    rie_port, api_port = sb.ports()
    assert rie_port != api_port
    assert rie[1:5] == ["--runtime-interface-emulator-address", f"127.0.0.1:{rie_port}",
                        "--runtime-api-address", f"127.0.0.1:{api_port}"]
    assert rie[5:] == ["/usr/bin/env", "PYTHONPATH=/var/task", "/usr/bin/python3", "-m", "awslambdaric",
                       "app.handler"]  # the RIE takes the last argument as the handler
    for bind in ('mount --bind "$opt" /opt', 'mount --bind "$task" /var/task', 'mount --bind "$tmp" /tmp'):
        assert bind in MOUNT_SCRIPT


def test_rie_command_honours_the_exec_wrapper_and_opt_python(tmp_path):
    (tmp_path / "opt" / "python").mkdir(parents=True)
    sb = RieSandbox("aws-lambda-rie", str(tmp_path / "opt"), str(tmp_path / "task"), python="/py",
                    env={"AWS_LAMBDA_EXEC_WRAPPER": "/opt/dbkeeper-wrapper"})
    assert sb.runtime_command() == ["/usr/bin/env", "PYTHONPATH=/var/task:/opt/python", "/opt/dbkeeper-wrapper",
                                    "/py", "-m", "awslambdaric", "app.handler"]


def test_rie_environment_sets_the_rie_settings_and_never_managed_instances_mode(tmp_path):
    sb = RieSandbox("aws-lambda-rie", str(tmp_path), str(tmp_path), timeout_s=7, memory_mb=512,
                    function_name="fn", env={"AWS_LAMBDA_MAX_CONCURRENCY": "4", "MINE": "x"})
    env = sb.environment()
    assert env["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "7" and env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "fn" and env["MINE"] == "x"
    assert "AWS_LAMBDA_MAX_CONCURRENCY" not in env


def test_rie_netns_mode_listens_on_all_addresses_inside_the_namespace(tmp_path):
    sb = RieSandbox("aws-lambda-rie", str(tmp_path), str(tmp_path), netns=True)
    assert sb.ports() == (8080, 9001)
    command = sb.command()
    rie = command[command.index("--", 12) + 1:]
    assert rie[1:5] == ["--runtime-interface-emulator-address", "0.0.0.0:8080",
                        "--runtime-api-address", "127.0.0.1:9001"]


@pytest.mark.parametrize("status, body, expected", [
    (200, b'{"ok": 1}', (True, None, False)),
    (200, b'{"errorMessage": "boom", "errorType": "ValueError", "requestId": "r", "stackTrace": []}',
     (False, "ValueError", False)),
    (200, b"Task timed out after 3.00 seconds", (False, "Sandbox.Timedout", True)),
    (502, b'{"errorType":"Extension.Crash","errorMessage":"x"}', (False, "Extension.Crash", False)),
    (502, b"", (False, None, False)),
    (200, b'"plain string"', (True, None, False)),
])
def test_rie_responses_are_classified(status, body, expected):
    assert parse_rie_response(status, body, 3) == expected


# ------------------------------------------------------------------------------------------- CPU, exits, answers
@pytest.mark.parametrize("memory_mb, quota, init_quota", [
    (128, 7236, 100_000),  # 1/14 of a vCPU; an on-demand INIT gets a whole one
    (1769, 100_000, 100_000),  # one vCPU
    (3008, 170_040, 170_040),  # more than one: INIT gets the same
    (10240, 578_858, 578_858),
    (10, 1000, 100_000),  # never under the kernel's 1 ms minimum
])
def test_the_cpu_quota_is_the_memory_share_of_a_vcpu_per_100_ms(memory_mb, quota, init_quota):
    assert cgroups.cpu_quota_us(memory_mb) == quota
    assert cgroups.init_cpu_quota_us(memory_mb) == init_quota


def test_a_process_joins_the_cgroups_before_its_command_runs():
    cg = cgroups.SandboxCgroup({"freezer": "/f/x", "cpu": "/c/x", "cpuacct": "/c/x", "memory": "/m/x"})
    argv = cg.join_argv(["/opt/extensions/e"])
    # one shell writes its own pid into each hierarchy once, then execs (same pid)
    assert argv == ["/bin/sh", "-c", cgroups.JOIN_SCRIPT, "lsb-cgroup", "/f/x/cgroup.procs", "/c/x/cgroup.procs",
                    "/m/x/cgroup.procs", "--", "/opt/extensions/e"]
    out = subprocess.run(["/bin/sh", "-c", cgroups.JOIN_SCRIPT.replace('echo $$ > "$1"', 'true'), "x", "--",
                          "echo", "ran"], capture_output=True, text=True)
    assert out.stdout == "ran\n"


@pytest.mark.parametrize("status, code", [(7 << 8, 7), (0, 0), (9, -9), (15, -15), (0x80 | 11, -11)])
def test_wait_statuses_of_the_process_events_become_popen_return_codes(status, code):
    assert exitwatch.returncode(status) == code


@pytest.mark.parametrize("returncode, runtime, text", [
    (3, True, "Runtime exited with error: exit status 3"),
    (-9, True, "Runtime exited with error: signal: killed"),
    (0, False, "exit code 0"),  # an extension that exited cleanly, in the RIE's words
    (7, False, "exit status 7"),
    (-15, None, "signal: terminated"),  # the RIE's log line
])
def test_exits_are_described_in_the_rie_words(returncode, runtime, text):
    assert exit_message(returncode, runtime) == text


def test_a_process_dying_during_an_invocation_is_answered_as_the_rie_does():
    inv = Invocation(id="r1", payload=b"", deadline_ms=0, deadline_mono=0, arn="", trace_id=None,
                     client_context=None, cognito_identity=None, content_type="application/json")
    inv.fail("Extension.Crash", "exit status 5")
    assert (inv.failure.status, json.loads(inv.failure.body)) == (502, {
        "errorType": "Extension.Crash", "errorMessage": "RequestId: r1 Error: exit status 5"})
    # once the runtime has answered, that answer is passed on (with a 502)
    answered = Invocation(id="r2", payload=b"", deadline_ms=0, deadline_mono=0, arn="", trace_id=None,
                          client_context=None, cognito_identity=None, content_type="application/json")
    answered.response = (200, b'{"ok":1}', "application/json", None)
    answered.fail("Extension.Crash", "exit status 5")
    assert (answered.failure.status, answered.failure.body, answered.failure.error_type) == (502, b'{"ok":1}', None)


@pytest.mark.parametrize("body, ctype", [
    (b"", None), (b'{"a": 1}', "text/plain; charset=utf-8"), (b"Task timed out after 3.00 seconds",
                                                            "text/plain; charset=utf-8"),
    (b"\x00\x01binary", "application/octet-stream"),
])
def test_the_cli_answers_with_the_content_type_go_sniffs(body, ctype):
    assert go_content_type(body) == ctype


def test_without_root_the_sandbox_falls_back_to_sigstop_unless_cgroups_are_required(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in cgroups.unavailable_reason()
    with pytest.raises(cgroups.CgroupUnavailable, match="root"):
        make_sb(tmp_path / "required", cgroups=True).start()
    sb = make_sb(tmp_path / "optional", cgroups=None).start()
    try:
        assert sb.freeze_mechanism == "sigstop"
        assert sb.resources.cpu_quota_us is None and "root" in sb.resources.unavailable_reason
    finally:
        sb.close()
