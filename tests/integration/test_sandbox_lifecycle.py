"""Spec: INIT / INVOKE / SHUTDOWN lifecycle of one sandbox, as docs/LAMBDA_SANDBOX.md describes it (the
answers to failures are the real RIE's; test_sandbox_cli_rie.py checks them against an aws-lambda-rie)."""

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root (lambda_sandbox, tests.*)

from lambda_sandbox import SandboxBusy, SandboxClosed  # noqa: E402
from lambda_sandbox.environment import host_paths_under_tmp  # noqa: E402
from tests.polling import wait_until  # noqa: E402
from tests.sandbox_fixtures.helpers import (  # noqa: E402,F401
    TASK,
    ext_events,
    frozen_by,
    make_opt,
    needs_root,
    pid_alive,
    proc_state,
    sandboxes,
    wait_ext_event,
)


# ------------------------------------------------------------------------------------------- environment
def test_extension_process_environment_cwd_and_process_group(tmp_path, sandboxes):
    # given a function environment with a variable of our own and names Lambda keeps from extensions
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}),
                   env={"MY_VAR": "1", "PYTHONPATH": "/x", "_SECRET": "s", "AWS_EXECUTION_ENV": "y"})
    assert sb.invoke({}).ok
    started = sb.wait_for_json("testext", lambda e: e["event"] == "started")
    env = started["env"]
    # then the extension sees the function's variables and the platform ones...
    assert env["MY_VAR"] == "1"
    assert env["AWS_LAMBDA_RUNTIME_API"] == sb.api_address
    assert env["AWS_REGION"] == "us-east-1"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "test_function"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "3008"
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"] and env["AWS_SESSION_TOKEN"]
    # ...but none of the runtime-only ones, nor names starting with "_"
    for name in ("_HANDLER", "PYTHONPATH", "LAMBDA_TASK_ROOT", "AWS_EXECUTION_ENV", "_SECRET"):
        assert name not in env
    assert not [k for k in env if k.startswith("_")]
    # argv[0] is its path, cwd the task dir, own process group
    assert started["argv0"] == os.path.join(sb.opt_dir, "extensions", "testext")
    assert started["cwd"] == TASK
    assert started["pgid"] == started["pid"]


def test_runtime_gets_handler_task_root_and_pythonpath_with_opt_python(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {}, opt_python=True), env={"MY_VAR": "1"})
    out = sb.invoke({"env": True}).json()
    env = out["env"]
    assert env["_HANDLER"] == "app.handler"
    assert env["LAMBDA_TASK_ROOT"] == TASK
    assert env["PYTHONPATH"].split(":")[:2] == [TASK, os.path.join(sb.opt_dir, "python")]
    assert env["MY_VAR"] == "1"
    assert env["AWS_LAMBDA_RUNTIME_API"] == sb.api_address
    assert out["cwd"] == TASK


def test_exec_wrapper_starts_the_runtime_through_the_script(tmp_path, sandboxes):
    # given AWS_LAMBDA_EXEC_WRAPPER=/opt/wrapper (mapped to <opt_dir>/wrapper) that adds a variable
    opt = make_opt(tmp_path, {"testext": {}})
    wrapper = Path(opt) / "wrapper"
    wrapper.write_text('#!/bin/sh\nexport WRAPPED_BY=wrapper\nexec "$@"\n')
    wrapper.chmod(0o755)
    sb = sandboxes(opt, env={"AWS_LAMBDA_EXEC_WRAPPER": "/opt/wrapper"})
    out = sb.invoke({"env": True}).json()
    # then the runtime ran through it, the extension did not
    assert out["env"]["WRAPPED_BY"] == "wrapper"
    assert "WRAPPED_BY" not in sb.wait_for_json("testext", lambda e: e["event"] == "started")["env"]


@needs_root
def test_lambda_paths_give_opt_var_task_and_a_private_tmp_per_sandbox(tmp_path, sandboxes):
    # given two sandboxes in Lambda layout whose extension writes /tmp/marker
    sbs = [sandboxes(make_opt(tmp_path / str(i), {"testext": {"write_file": "/tmp/marker"}}, opt_python=True),
                     lambda_paths=True) for i in range(2)]
    for sb in sbs:
        out = sb.invoke({"env": True, "read": "/tmp/marker"}).json()
        # then the function sees Lambda's paths and its own sandbox's /tmp (shared with its extensions only)
        assert out["read"] == sb.api_address
        assert out["cwd"] == "/var/task" and out["env"]["LAMBDA_TASK_ROOT"] == "/var/task"
        assert out["env"]["PYTHONPATH"] == "/var/task:/opt/python"
        started = sb.wait_for_json("testext", lambda e: e["event"] == "started")
        assert (started["argv0"], started["cwd"]) == ("/opt/extensions/testext", "/var/task")
        # (plus the mount points of a checkout under /tmp that stays visible: see host_paths_under_tmp)
        bound_back = {path.split("/")[2] for path in host_paths_under_tmp(sb.python)}
        assert set(os.listdir(sb.private_tmp)) - bound_back == {"marker"}
        # /opt and /var/task are read-only, /tmp is writable
        for path, err in (("/var/task/x", "EROFS"), ("/opt/x", "EROFS"), ("/tmp/y", None)):
            assert sb.invoke({"try_write": path}).json()["write_error"] == err
    assert not os.path.exists("/tmp/marker")  # nothing leaked to the machine's /tmp


# ------------------------------------------------------------------------------------------- INIT
def test_runtime_starts_only_after_every_extension_registered(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"a": {"register_delay_ms": 300}, "b": {}}))
    assert sb.invoke({}).ok
    regs = [sb.wait_for_json(n, lambda e: e["event"] == "register") for n in ("a", "b")]
    imported = sb.wait_for_json("runtime", lambda e: e["event"] == "import")
    assert imported["ts"] > max(r["ts"] for r in regs)


def test_a_delayed_first_next_delays_the_first_invoke_only(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {"first_next_delay_ms": 700}}))
    t0 = time.monotonic()
    first = sb.invoke({})
    first_s = time.monotonic() - t0
    assert first.ok and first_s >= 0.7
    assert first.init_duration_ms >= 700
    t0 = time.monotonic()
    assert sb.invoke({}).ok
    assert time.monotonic() - t0 < 0.5


def test_extension_init_error_fails_the_invoke_and_processes_exit(tmp_path, sandboxes):
    # given an extension that reports init/error
    sb = sandboxes(make_opt(tmp_path, {"testext": {"init_error": "Extension.ConfigInvalid"}, "other": {}}))
    r = sb.invoke({})
    # then the invoke fails as the RIE answers it: 502 with an empty body (the error type it reported is
    # not passed on; the sandbox's log names the cause as the RIE's does)
    assert (r.status, r.body, r.error_type, r.ok) == (502, b"", None, False)
    assert any("Invoke DONE failed: Extension.InitError" in line for src, line in sb.logs if src == "sandbox")
    # the extension was acknowledged, then refused
    ack = sb.wait_for_json("testext", lambda e: e["event"] == "init_error")
    assert (ack["status"], json.loads(ack["body"])) == (202, {"status": "OK"})
    refused = sb.wait_for_json("testext", lambda e: e["event"] == "next_after_init_error")
    assert refused["status"] == 403 and json.loads(refused["body"])["errorType"] == "Extension.InvalidExtensionState"
    # the runtime never started and nothing is left running (the other extension got SHUTDOWN if it had
    # registered in time, else SIGKILL: the reset's "Failure" reason is checked with a crash during an invoke)
    assert not any(src == "runtime" for src, _ in sb.logs)
    assert sb.pids() == {}


def test_extension_exiting_before_registering_fails_with_empty_body_and_init_is_retried(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {"crash_before_register": 4}}))
    r1 = sb.invoke({})
    r2 = sb.invoke({})
    assert (r1.status, r1.body) == (502, b"") and (r2.status, r2.body) == (502, b"")
    assert len([e for e in sb.json_logs("testext") if e["event"] == "started"]) == 2  # INIT ran twice


def test_non_executable_extension_fails_init_with_launch_error_and_subdirectories_are_ignored(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}, non_executable=("plain",), subdirs=("adir",)))
    r = sb.invoke({})
    assert (r.status, r.body) == (502, b"")
    assert any("Invoke DONE failed: Extension.LaunchError" in line for _, line in sb.logs)
    assert not any(src in ("runtime", "testext") for src, _ in sb.logs)  # nothing was started
    sb2 = sandboxes(make_opt(tmp_path / "2", {"testext": {}}, subdirs=("adir",)))
    assert sb2.invoke({}).ok
    assert set(sb2.pids()) == {"runtime", "testext"}


def test_runtime_init_error_fails_the_invoke_with_the_runtime_error(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}), handler="missing_module.handler")
    r = sb.invoke({})
    assert (r.status, r.error_type) == (502, "Runtime.ImportModuleError")
    assert "missing_module" in r.json()["errorMessage"]


# ------------------------------------------------------------------------------------------- INVOKE
def test_caller_is_answered_only_after_invoke_extension_called_next_again(tmp_path, sandboxes):
    # given an INVOKE-subscribed extension that works 400 ms after each INVOKE
    sb = sandboxes(make_opt(tmp_path, {"testext": {"invoke_delay_ms": 400}}))
    assert sb.invoke({}).ok
    mark = sb.log_mark()
    t0 = time.monotonic()
    r = sb.invoke({"k": 2})
    # then the answer waited for its work and its next call (stdout lines are pumped
    # asynchronously, so they are waited for rather than expected to be there already)
    assert r.ok and time.monotonic() - t0 >= 0.4
    sb.wait_for_log(lambda s, line: s == "testext" and '"invoke_done"' in line, since=mark)
    done = next(i for i, (s, line) in enumerate(sb.logs) if i >= mark and s == "testext" and '"invoke_done"' in line)
    sb.wait_for_log(lambda s, line: s == "testext" and '"next_call"' in line, since=done + 1)


def test_shutdown_only_extension_gets_no_invoke_and_does_not_delay_it(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {"events": ["SHUTDOWN"], "invoke_delay_ms": 2000}}))
    t0 = time.monotonic()
    assert sb.invoke({}).ok and sb.invoke({}).ok
    assert time.monotonic() - t0 < 2
    assert ext_events(sb, "testext", "INVOKE") == []


def test_function_error_is_returned_and_the_environment_is_kept(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}))
    pid = sb.invoke({}).json()["pid"]
    r = sb.invoke({"raise": "boom"})
    assert (r.status, r.ok, r.error_type) == (200, False, "ValueError")
    assert r.json()["errorMessage"] == "boom"
    assert sb.invoke({}).json()["pid"] == pid


def test_overlapping_invokes_are_refused(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {}))
    assert sb.invoke({}).ok
    mark = sb.log_mark()
    t = threading.Thread(target=sb.invoke, args=({"sleep_s": 0.5},))
    t.start()
    sb.wait_for_log(lambda s, line: s == "runtime" and '"handler"' in line, since=mark)
    with pytest.raises(SandboxBusy):
        sb.invoke({})
    t.join()


def test_timeout_sends_shutdown_timeout_kills_everything_and_next_invoke_reinits(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}), timeout_s=1)
    before = sb.invoke({})
    old = sb.pids()
    r = sb.invoke({"sleep_s": 5})
    assert (r.status, r.body, r.error_type) == (200, b"Task timed out after 1.00 seconds", "Sandbox.Timedout")
    assert r.timed_out and not r.ok
    ev = wait_ext_event(sb, "testext", "SHUTDOWN")
    assert len(ext_events(sb, "testext", "SHUTDOWN")) == 1
    assert json.loads(ev["body"])["shutdownReason"] == "Timeout"
    assert sb.last_reset_report.reason == "Timeout" and sb.last_reset_report["testext"].exit_code == 0
    assert not any(pid_alive(p) for p in old.values())
    after = sb.invoke({})
    assert after.ok and after.init_duration_ms is not None
    assert after.json()["pid"] != before.json()["pid"]


def test_extension_crash_during_invoke_fails_it_at_once_and_the_next_invoke_reinits(tmp_path, sandboxes):
    # given an extension that dies as soon as the INVOKE reaches it, while the function still works
    sb = sandboxes(make_opt(tmp_path, {"testext": {"crash_on_invoke": 5}, "other": {}}))
    t0 = time.monotonic()
    r = sb.invoke({"sleep_s": 2})
    # then the invoke fails at once with the RIE's Extension.Crash answer, not after the function
    assert time.monotonic() - t0 < 1.5
    assert (r.status, r.error_type) == (502, "Extension.Crash")
    assert r.json() == {"errorType": "Extension.Crash",
                        "errorMessage": f"RequestId: {r.request_id} Error: exit status 5"}
    # and the other extension got SHUTDOWN with the RIE's reason for a reset after a failure
    shutdown = wait_ext_event(sb, "other", "SHUTDOWN")
    assert json.loads(shutdown["body"])["shutdownReason"] == "ReleaseFail"
    again = sb.invoke({"sleep_s": 0})
    assert again.status == 502 and again.init_duration_ms is not None  # a new INIT, the same crash


def test_extension_crash_after_the_function_answered_passes_the_answer_on_with_502(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {"crash_after_invoke_ms": 300}}))
    r = sb.invoke({"k": 1})
    # the RIE answers with what the runtime had sent, as a 502
    assert (r.status, r.error_type) == (502, None)
    assert r.json()["echo"] == {"k": 1}


def test_extension_crash_while_idle_fails_the_next_invoke_then_reinits(tmp_path, sandboxes):
    # given an extension that dies 100 ms after an invoke, while the sandbox is idle (not frozen)
    sb = sandboxes(make_opt(tmp_path, {"testext": {"idle_crash_ms": 100}}), freeze=False)
    first = sb.invoke({})
    assert first.ok
    sb.wait_for_json("testext", lambda e: e["event"] == "idle_crash")
    assert wait_until(lambda: "testext" not in sb.pids())  # the sandbox has seen it exit
    pid = first.json()["pid"]
    # then the next invoke fails with Extension.Crash, the one after runs INIT again
    r = sb.invoke({})
    assert (r.status, r.error_type) == (502, "Extension.Crash")
    assert r.json() == {"errorType": "Extension.Crash",
                        "errorMessage": f"RequestId: {r.request_id} Error: exit status 7"}
    again = sb.invoke({})
    assert again.ok and again.init_duration_ms is not None and again.json()["pid"] != pid


def test_extension_exit_error_fails_the_invoke_once_it_exits_then_reinits(tmp_path, sandboxes):
    # given an extension that reports exit/error when an INVOKE arrives and exits, while the function works
    sb = sandboxes(make_opt(tmp_path, {"testext": {"exit_error": "Extension.Fatal"}}))
    r = sb.invoke({"sleep_s": 0.5})
    # then the invoke fails when it has exited, as the RIE answers it (its own error type is not passed on)
    assert (r.status, r.error_type) == (502, "Extension.ExitError")
    assert r.json()["errorMessage"] == f"RequestId: {r.request_id} Error: exit code 0"
    ack = sb.wait_for_json("testext", lambda e: e["event"] == "exit_error")
    assert (ack["status"], json.loads(ack["body"])) == (202, {"status": "OK"})
    r2 = sb.invoke({"sleep_s": 0.5})  # new processes, same behaviour
    assert r2.error_type == "Extension.ExitError" and r2.init_duration_ms is not None


def test_init_can_run_ahead_of_the_first_invoke_without_freezing_before_it(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {"tick_ms": 20}}))
    assert sb.init() is None
    assert set(sb.pids()) == {"runtime", "testext"}
    # like an on-demand INIT whose invoke is still to come: extensions keep running until then
    mark = sb.log_mark()
    sb.wait_for_log(lambda s, line: s == "testext" and '"tick"' in line, timeout=2, since=mark)
    assert not sb.frozen
    r = sb.invoke({})
    assert r.ok and r.init_duration_ms is None
    assert sb.wait_frozen()  # after an invoke the usual freeze applies


def test_init_with_freeze_after_freezes_like_provisioned_concurrency(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}))
    assert sb.init(freeze_after=True) is None
    assert sb.wait_frozen()
    print(f"freeze mechanism: {sb.freeze_mechanism}")
    assert {frozen_by(p) for p in sb.pids().values()} == {sb.freeze_mechanism}
    assert sb.invoke({}).ok


def test_runtime_exit_during_invoke_is_runtime_exit_error(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}))
    r = sb.invoke({"exit": 3})
    assert (r.status, r.error_type) == (502, "Runtime.ExitError")
    assert "exit status 3" in r.json()["errorMessage"]
    assert sb.invoke({}).ok


# ------------------------------------------------------------------------------------------- SHUTDOWN
def test_shutdown_flow_deadline_and_sigkill(tmp_path, sandboxes):
    # given: one extension exiting 300 ms after SHUTDOWN, one ignoring it, one subscribed to INVOKE only
    sb = sandboxes(make_opt(tmp_path, {
        "polite": {"events": ["SHUTDOWN"], "shutdown_delay_ms": 300, "exit_code": 3},
        "stubborn": {"events": ["SHUTDOWN"], "ignore_shutdown": True},
        "invokeonly": {"events": ["INVOKE"]},
    }))
    assert sb.invoke({}).ok
    rep = sb.shutdown()
    # the runtime got SIGTERM and died of it before SHUTDOWN reached anyone
    assert rep.runtime_exit_code == -15 and not rep.runtime_killed
    polite, stubborn, invokeonly = rep["polite"], rep["stubborn"], rep["invokeonly"]
    assert polite.delivered_ms >= rep.runtime_exit_ms
    assert (polite.exit_code, polite.killed) == (3, False)
    assert 300 <= polite.exit_after_delivery_ms < 1000
    # an extension still running at the deadline (signal + 2000 ms) is SIGKILLed
    assert (stubborn.exit_code, stubborn.killed) == (-9, True)
    assert 1950 <= stubborn.exited_ms <= 2600
    # an extension not subscribed to SHUTDOWN is SIGKILLed at once, without an event
    assert (invokeonly.exit_code, invokeonly.killed, invokeonly.delivered_ms) == (-9, True, None)
    assert invokeonly.exited_ms < 500
    assert ext_events(sb, "invokeonly", "SHUTDOWN") == []
    # and the sandbox is closed
    with pytest.raises(SandboxClosed):
        sb.invoke({})


def test_runtime_ignoring_sigterm_is_sigkilled_at_600ms_then_extensions_get_shutdown(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {"events": ["SHUTDOWN"]}}))
    assert sb.invoke({"ignore_sigterm": True}).ok
    rep = sb.shutdown()
    assert rep.runtime_killed and rep.runtime_exit_code == -9
    assert 550 <= rep.runtime_exit_ms <= 900
    assert rep["testext"].delivered_ms >= rep.runtime_exit_ms
    assert rep["testext"].exit_code == 0


def test_shutdown_without_extensions_kills_the_runtime(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {}))
    assert sb.invoke({}).ok
    rep = sb.shutdown()
    assert rep.runtime_killed and rep.runtime_exit_code == -9 and rep.extensions == {}


def test_shutdown_before_any_invoke_has_nothing_to_stop(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}))
    rep = sb.shutdown()
    assert rep.extensions == {} and rep.runtime_exit_code is None
    assert not any(src == "testext" for src, _ in sb.logs)  # INIT is lazy


# ------------------------------------------------------------------------------------------- freeze
def test_freeze_stops_every_process_between_invokes_and_thaws_for_the_next(tmp_path, sandboxes):
    # given an extension with a ticking thread and a child process
    sb = sandboxes(make_opt(tmp_path, {"testext": {"tick_ms": 20, "spawn_child": True}}))
    assert sb.invoke({}).ok
    child = sb.wait_for_json("testext", lambda e: e["event"] == "child")["pid"]
    # when the invoke is over and everyone waits in next
    assert sb.wait_frozen(timeout=5)
    pids = sb.pids()
    # then every process of the sandbox is frozen, descendants included (by the cgroup freezer where
    # cgroups are writable, else SIGSTOPped)
    print(f"freeze mechanism: {sb.freeze_mechanism}")
    assert {n: frozen_by(p) for n, p in pids.items()} == {"runtime": sb.freeze_mechanism,
                                                           "testext": sb.freeze_mechanism}
    assert frozen_by(child) == sb.freeze_mechanism
    # and nothing runs: no tick stamped after the freeze for a while (bounded observation)
    frozen_at = time.time()
    mark = sb.log_mark()

    def tick_after(since_ts):
        return lambda s, line: s == "testext" and '"tick"' in line and json.loads(line)["ts"] > since_ts

    with pytest.raises(TimeoutError):
        sb.wait_for_log(tick_after(frozen_at), timeout=0.3)
    # the next invoke (long enough for a tick) thaws them first
    assert sb.invoke({"sleep_s": 0.1}).ok
    sb.wait_for_log(tick_after(frozen_at), timeout=2, since=mark)
    assert sb.freeze_count >= 1


def test_no_freeze_when_disabled(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {"tick_ms": 20}}), freeze=False)
    assert sb.invoke({}).ok
    assert not sb.wait_frozen(timeout=0.2)
    mark = sb.log_mark()
    sb.wait_for_log(lambda s, line: s == "testext" and '"tick"' in line, timeout=2, since=mark)
    assert all(proc_state(p) in ("S", "R") for p in sb.pids().values())


# ------------------------------------------------------------------------------------------- several
def test_several_sandboxes_run_at_once(tmp_path, sandboxes):
    sbs = [sandboxes(make_opt(tmp_path / str(i), {"testext": {"invoke_delay_ms": 200}})) for i in range(3)]
    assert len({sb.api_address for sb in sbs}) == 3 and len({sb.name for sb in sbs}) == 3
    results = {}

    def run(i):
        results[i] = sbs[i].invoke({"i": i})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i].ok and results[i].json()["echo"] == {"i": i} for i in range(3))
    assert len({results[i].json()["pid"] for i in range(3)}) == 3
    for sb in sbs:
        env = sb.wait_for_json("testext", lambda e: e["event"] == "started")["env"]
        assert env["AWS_LAMBDA_RUNTIME_API"] == sb.api_address
    assert time.monotonic() - t0 < 5
