"""Spec: a sandbox confines its processes as Lambda does (docs/LAMBDA_SANDBOX.md): frozen between invokes by
the cgroup freezer, one CFS CPU quota in proportion to AWS_LAMBDA_FUNCTION_MEMORY_SIZE for the runtime and
every extension together (at least one vCPU during an on-demand INIT), a memory limit of that size; SIGSTOP
and no limits where cgroups cannot be used. Each test prints which mechanism ran.

CPU figures are correctness checks with generous bounds (cpu time / wall time of a busy loop), not
benchmarks: at 128 MB the quota is 7.2 ms per 100 ms period, a ratio of 0.072."""

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root (lambda_sandbox, tests.*)

from lambda_sandbox.cgroups import cpu_quota_us  # noqa: E402
from tests.sandbox_fixtures.helpers import (  # noqa: E402,F401
    frozen_by,
    make_opt,
    needs_cgroups,
    proc_state,
    sandboxes,
)


def own_cgroup_file(pid: int, controller: str, name: str) -> Path:
    """A control file of the cgroup the kernel has pid in (read independently of the sandbox's records)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup", controller, path.lstrip("/"), name)
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def ticks_after(sb, since_ts: float):
    return lambda s, line: s == "testext" and '"tick"' in line and json.loads(line)["ts"] > since_ts


# ------------------------------------------------------------------------------------------- freezer
@needs_cgroups
def test_the_cgroup_freezer_freezes_every_process_and_no_timer_fires_while_frozen(tmp_path, sandboxes):
    # given an extension whose timer thread logs a tick every 20 ms
    sb = sandboxes(make_opt(tmp_path, {"testext": {"tick_ms": 20}}))
    assert sb.invoke({}).ok
    sb.wait_for_log(lambda s, line: s == "testext" and '"tick"' in line)
    # when the invoke is over and everyone waits in next, the sandbox is frozen by the cgroup freezer
    assert sb.wait_frozen()
    print(f"freeze mechanism: {sb.freeze_mechanism}")
    assert sb.freeze_mechanism == "cgroup-freezer"
    pids = sb.pids()
    for pid in pids.values():
        assert own_cgroup_file(pid, "freezer", "freezer.state").read_text().strip() == "FROZEN"
        assert proc_state(pid) != "T"  # not stopped by a signal: nothing a process could observe
    # then the timer does not fire while frozen (a bounded look for ticks that must not come)
    frozen_at = time.time()
    mark = sb.log_mark()
    with pytest.raises(TimeoutError):
        sb.wait_for_log(ticks_after(sb, frozen_at), timeout=0.5, since=mark)
    # and the next invoke (long enough for a tick) thaws the sandbox: the timer fires again
    assert sb.invoke({"sleep_s": 0.1}).ok
    tick = json.loads(sb.wait_for_log(ticks_after(sb, frozen_at), timeout=2, since=mark)[1])
    assert tick["ts"] > frozen_at + 0.5


def test_without_cgroups_the_sandbox_freezes_with_sigstop_and_says_so(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}), cgroups=False)
    assert sb.invoke({}).ok
    assert sb.wait_frozen()
    print(f"freeze mechanism: {sb.freeze_mechanism} ({sb.resources.unavailable_reason})")
    assert sb.freeze_mechanism == "sigstop" and sb.resources.cpu_quota_us is None
    assert {frozen_by(p) for p in sb.pids().values()} == {"sigstop"}
    assert sb.invoke({}).ok


# ------------------------------------------------------------------------------------------- CPU
@needs_cgroups
def test_the_cpu_quota_follows_the_memory_size(tmp_path, sandboxes):
    small = sandboxes(make_opt(tmp_path / "small", {}), memory_mb=128)
    large = sandboxes(make_opt(tmp_path / "large", {}), memory_mb=1769)
    ratios = {}
    for sb in (small, large):
        r = sb.invoke({"burn_cpu_ms": 50})
        assert r.ok, r.text
        cpu_s, wall_s = r.json()["burned"]
        ratios[sb.memory_mb] = cpu_s / wall_s
        runtime = sb.pids()["runtime"]
        quota = int(own_cgroup_file(runtime, "cpu", "cpu.cfs_quota_us").read_text())
        period = int(own_cgroup_file(runtime, "cpu", "cpu.cfs_period_us").read_text())
        print(f"{sb.memory_mb} MB: quota {quota}/{period} us, busy loop cpu/wall = {ratios[sb.memory_mb]:.3f} "
              f"({sb.freeze_mechanism})")
        assert (quota, period) == (cpu_quota_us(sb.memory_mb), 100_000) == (sb.resources.cpu_quota_us, 100_000)
    assert cpu_quota_us(128) == 7236 and cpu_quota_us(1769) == 100_000
    # 128 MB: 0.072 of a vCPU (bounds leave room for period edges and a loaded machine)
    assert 0.02 < ratios[128] < 0.2
    # 1,769 MB: a whole vCPU, so one busy thread is not throttled (only other load slows it)
    assert ratios[1769] > 2 * ratios[128]


@needs_cgroups
def test_one_quota_is_shared_by_the_runtime_and_every_extension(tmp_path, sandboxes):
    # given at 128 MB an extension that burns 40 ms of CPU on every INVOKE while the function burns 40 ms
    sb = sandboxes(make_opt(tmp_path, {"testext": {"burn_on_invoke_ms": 40}}), memory_mb=128)
    assert sb.invoke({}).ok  # INIT (with its full vCPU) out of the way
    cpu_before, t0 = sb.cpu_time_s(), time.monotonic()
    r = sb.invoke({"burn_cpu_ms": 40})
    wall = time.monotonic() - t0
    used = sb.cpu_time_s() - cpu_before
    assert r.ok, r.text
    burned = sb.wait_for_json("testext", lambda e: e["event"] == "burned")
    print(f"sandbox cpu {used * 1000:.0f} ms in {wall * 1000:.0f} ms wall = {used / wall:.3f} of a vCPU; "
          f"function {r.json()['burned']}, extension {burned['cpu_s']:.3f}/{burned['wall_s']:.3f}")
    # then both together got one share: 0.072 of a vCPU (two separate shares would be 0.144)
    assert used >= 0.08
    assert used / wall < 0.11


@needs_cgroups
def test_an_on_demand_init_runs_with_a_full_vcpu_and_provisioned_concurrency_without(tmp_path, sandboxes):
    # given a function whose init code burns 40 ms of CPU, at 128 MB
    ratios = {}
    for kind in ("on-demand", "provisioned-concurrency"):
        sb = sandboxes(make_opt(tmp_path / kind, {}), memory_mb=128, env={"BURN_AT_IMPORT_MS": "40"})
        if kind == "provisioned-concurrency":
            assert sb.init(freeze_after=True) is None
        r = sb.invoke({"env": True})
        assert r.ok, r.text
        assert r.json()["env"]["AWS_LAMBDA_INITIALIZATION_TYPE"] == kind
        cpu_s, wall_s = r.json()["import_burned"]
        ratios[kind] = cpu_s / wall_s
        print(f"{kind} INIT at 128 MB: cpu/wall = {ratios[kind]:.3f} ({sb.freeze_mechanism})")
    # then the on-demand INIT was not held to the 128 MB share, the provisioned one was
    assert ratios["provisioned-concurrency"] < 0.2
    assert ratios["on-demand"] > 2 * ratios["provisioned-concurrency"]


# ------------------------------------------------------------------------------------------- memory
@needs_cgroups
def test_a_function_exceeding_its_memory_is_killed_as_on_lambda(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {}), memory_mb=128)
    assert sb.invoke({}).ok
    runtime = sb.pids()["runtime"]
    limit = int(own_cgroup_file(runtime, "memory", "memory.limit_in_bytes").read_text())
    print(f"memory limit {limit >> 20} MB ({sb.freeze_mechanism})")
    assert limit == 128 << 20 == sb.resources.memory_limit_bytes
    # a function that writes 256 MB is killed by the kernel: Runtime.ExitError, "signal: killed"
    r = sb.invoke({"allocate_mb": 256})
    assert (r.status, r.error_type) == (502, "Runtime.ExitError")
    assert r.json()["errorMessage"].endswith("Runtime exited with error: signal: killed")
    assert sb.invoke({}).ok  # a new INIT
