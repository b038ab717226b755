"""bench/cpushare.py: a cgroup CFS quota that gives a group of processes a Lambda function's CPU share."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import cpushare

pytestmark = pytest.mark.skipif(cpushare.unavailable_reason() is not None,
                                reason=f"no CPU quota here: {cpushare.unavailable_reason()}")

# Burns CPU until it has used `ms` of it, then prints the wall time that took.
_SPIN = """
import sys, time
need = float(sys.argv[1]) / 1000
input()
c0, t0 = time.process_time(), time.monotonic()
while time.process_time() - c0 < need:
    pass
print(time.monotonic() - t0, flush=True)
"""


def test_processes_in_a_128_mb_share_get_no_more_cpu_than_its_quota():
    # given a process that needs 50 ms of CPU, in a 128 MB share (7.2 ms per 100 ms period)
    proc = subprocess.Popen([sys.executable, "-c", _SPIN, "50"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        with cpushare.CpuShare("test", memory_mb=128) as share:
            share.add(proc.pid)
            assert share.pids() == {proc.pid}
            before = share.stats()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            wall_s = float(proc.stdout.readline())
            after = share.stats()
        # then it ran at most one quota per period it touched: 50 ms of CPU spans at least 7 periods, so
        # at least 5 whole ones (0.5 s; 50 ms unthrottled), whatever else the machine does
        assert wall_s >= (50 / 7.236 - 2) * 0.1, wall_s
        assert after["nr_throttled"] - before["nr_throttled"] >= 5
        assert after["throttled_ms"] > before["throttled_ms"]
    finally:
        proc.kill()
        proc.wait()


def test_leaving_the_share_puts_the_process_back_and_removes_the_group():
    proc = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE)
    try:
        origin = cpushare._own_group(proc.pid, cpushare._root()[0])
        with cpushare.CpuShare("test", memory_mb=128) as share:
            share.add(proc.pid)
            path = share.path
            assert path.is_dir()
            assert cpushare._own_group(proc.pid, share.version) != origin
        assert not path.exists()
        assert cpushare._own_group(proc.pid, cpushare._root()[0]) == origin
    finally:
        proc.kill()
        proc.wait()


def test_a_group_left_by_a_dead_run_is_removed_by_the_next_one():
    # given an empty group named after a process that no longer exists, where this run makes its own
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    version, root = cpushare._root()
    stale = root / cpushare._own_group(os.getpid(), version) / f"{cpushare._PREFIX}{dead.pid}-left"
    stale.mkdir()
    try:
        # when a new share is made
        with cpushare.CpuShare("test", memory_mb=128):
            pass
        # then the stale group is gone
        assert not stale.exists()
    finally:
        if stale.exists():
            stale.rmdir()
