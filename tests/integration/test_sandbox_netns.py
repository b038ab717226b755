"""Spec: a sandbox in its own network namespace; reclaim() destroys it without any FIN/RST reaching peers,
like Lambda destroying a frozen execution environment."""

import os
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root (lambda_sandbox, tests.*)

from lambda_sandbox import SandboxError  # noqa: E402
from tests.sandbox_fixtures.helpers import (  # noqa: E402,F401
    Listener,
    make_opt,
    needs_netns,
    netns_names,
    pid_alive,
    sandboxes,
)

SILENCE_S = 0.5  # how long a reclaimed connection must stay silent (a local FIN arrives within milliseconds)


@pytest.fixture
def listener():
    lst = Listener("0.0.0.0")
    yield lst
    lst.close()


@needs_netns
def test_processes_run_in_their_own_network_namespace_and_reach_the_host_address(tmp_path, sandboxes, listener):
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}), netns=True)
    assert sb.netns_name in netns_names()
    assert sb.api_address.startswith(sb.host_address + ":")
    r = sb.invoke({"connect": f"{sb.host_address}:{listener.port}"})
    assert r.ok, r.body
    conn = listener.accept()
    assert conn.getpeername()[0] == sb.sandbox_address
    own = os.stat("/proc/self/ns/net").st_ino
    for pid in sb.pids().values():
        assert os.stat(f"/proc/{pid}/ns/net").st_ino != own
    name = sb.netns_name
    sb.shutdown()
    assert name not in netns_names()


@needs_netns
def test_reclaim_without_shutdown_sends_no_fin_for_open_connections(tmp_path, sandboxes, listener):
    # given a frozen sandbox whose extension and runtime each hold a TCP connection to the host
    sb = sandboxes(make_opt(tmp_path, {"testext": {"events": ["INVOKE"], "connect": f"__HOST__:{listener.port}"}}),
                   netns=True)
    cfg = Path(sb.opt_dir) / "testext-config" / "testext.json"
    cfg.write_text(cfg.read_text().replace("__HOST__", sb.host_address))
    assert sb.invoke({"connect": f"{sb.host_address}:{listener.port}"}).ok
    ext_conn, rt_conn = listener.accept(), listener.accept()
    assert sb.wait_frozen()
    pids = sb.all_pids()
    name = sb.netns_name
    # when it is reclaimed
    rep = sb.reclaim(graceful=False)
    # then every process is gone, and neither connection ever sees FIN or RST
    assert rep.reclaimed and rep["testext"].killed and rep.runtime_exit_code == -9
    assert not any(pid_alive(p) for p in pids)
    assert not Listener.closed_by_peer(ext_conn, SILENCE_S)
    assert not Listener.closed_by_peer(rt_conn, 0.05)
    assert name not in netns_names()


@needs_netns
def test_control_a_normal_shutdown_does_close_the_connection(tmp_path, sandboxes, listener):
    # the same setup, ended with shutdown(): the kernel closes the sockets and the peer sees FIN
    sb = sandboxes(make_opt(tmp_path, {"testext": {}}), netns=True)
    assert sb.invoke({"connect": f"{sb.host_address}:{listener.port}"}).ok
    conn = listener.accept()
    sb.shutdown()
    assert Listener.closed_by_peer(conn, SILENCE_S)


@needs_netns
def test_graceful_reclaim_sends_shutdown_then_cuts_before_killing_the_stubborn(tmp_path, sandboxes, listener):
    # given an extension subscribed to SHUTDOWN that ignores it while holding a connection
    sb = sandboxes(make_opt(tmp_path, {"testext": {"events": ["SHUTDOWN"], "ignore_shutdown": True,
                                                   "connect": f"__HOST__:{listener.port}"}}), netns=True)
    cfg = Path(sb.opt_dir) / "testext-config" / "testext.json"
    cfg.write_text(cfg.read_text().replace("__HOST__", sb.host_address))
    assert sb.invoke({}).ok
    conn = listener.accept()
    assert sb.wait_frozen()
    # when reclaimed (default: graceful, because an extension subscribed to SHUTDOWN)
    rep = sb.reclaim()
    # then it was thawed and got SHUTDOWN, was still running at the deadline, and its socket never closed
    sb.wait_for_json("testext", lambda e: e["event"] == "ignoring_shutdown")
    assert rep["testext"].delivered_ms is not None and rep["testext"].killed
    assert rep["testext"].exited_ms >= 1900
    assert not Listener.closed_by_peer(conn, SILENCE_S)


@needs_netns
def test_two_netns_sandboxes_at_once(tmp_path, sandboxes):
    a = sandboxes(make_opt(tmp_path / "a", {"testext": {}}), netns=True)
    b = sandboxes(make_opt(tmp_path / "b", {"testext": {}}), netns=True)
    assert a.netns_name != b.netns_name and a.host_address != b.host_address
    out = {}
    threads = [threading.Thread(target=lambda s=s: out.__setitem__(s.name, s.invoke({"x": s.name}))) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[a.name].ok and out[b.name].ok


def test_reclaim_needs_a_network_namespace(tmp_path, sandboxes):
    sb = sandboxes(make_opt(tmp_path, {}))
    with pytest.raises(SandboxError, match="netns=True"):
        sb.reclaim()
