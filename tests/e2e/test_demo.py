"""The main job, end to end: `python -m demo` runs the sample function without and with the built
layer in local Lambda sandboxes and prints a table whose numbers must tell a consistent story.

Runs the real demo as a subprocess (real MariaDB, real sandboxes, real extension).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lambda_sandbox import netns_unavailable_reason

REPO = Path(__file__).resolve().parents[2]
ARCH = {"aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "x86_64")
NETNS = netns_unavailable_reason() is None


@pytest.fixture
def workdir():
    """A scratch directory of our own: pytest's numbered tmp dirs may be rotated away by another
    pytest session on the same machine while the demo still runs."""
    d = Path(tempfile.mkdtemp(prefix="dbkeeper-demo-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DBKEEPER_"))}
    env.update(extra)
    return env


def run_demo(workdir: Path, layer_dir: Path, *flags: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> tuple[subprocess.CompletedProcess, dict, float]:
    out = workdir / "demo.json"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--layer-dir", str(layer_dir), "--json", str(out), *flags],
        cwd=REPO, env=env or demo_env(), capture_output=True, text=True, timeout=timeout,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc, json.loads(out.read_text()), elapsed


def table_row(stdout: str, label: str) -> list[str]:
    """The cells of one row of the printed table."""
    for line in stdout.splitlines():
        if line.startswith(label):
            return re.split(r"\s{2,}", line[len(label):].strip())
    raise AssertionError(f"row {label!r} not in:\n{stdout}")


def phase(result: dict, handler: str, layer: bool) -> dict:
    (p,) = [p for p in result["phases"] if p["handler"] == handler and p["layer"] == layer]
    return p


PER_INVOKE, GLOBAL = "handler_connect_per_invoke", "handler_global_connection"
COLUMNS = [(PER_INVOKE, False), (PER_INVOKE, True), (GLOBAL, False), (GLOBAL, True)]


@pytest.fixture(scope="module")
def small_run(built_layer):
    tmp = Path(tempfile.mkdtemp(prefix="dbkeeper-demo-test-"))
    try:
        yield run_demo(tmp, getattr(built_layer, f"tree_{ARCH}"), "--sandboxes", "3", "--invocations", "8")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_every_invocation_succeeds_in_every_column(small_run):
    _proc, result, _ = small_run
    assert len(result["phases"]) == 4
    for handler, layer in COLUMNS:
        p = phase(result, handler, layer)
        assert p["errors"] == [], p["errors"]
        assert p["invocations"] == p["ok"] == 3 * 8
        assert p["p50_ms"] is not None and p["p99_ms"] >= p["p50_ms"] > 0
        assert p["cold_p50_ms"] > 0


def test_with_the_layer_the_wrapper_pointed_every_sandbox_at_the_extension(small_run):
    _proc, result, _ = small_run
    for handler in (PER_INVOKE, GLOBAL):
        assert phase(result, handler, True)["wrapper_pointed"] == 3
        assert phase(result, handler, False)["wrapper_pointed"] == 0


def test_connections_opened_tell_the_story(small_run):
    _proc, result, _ = small_run
    # without the layer: one connection per invocation, or one per sandbox for the global connection
    assert phase(result, PER_INVOKE, False)["connections_opened"] == 24
    assert phase(result, PER_INVOKE, False)["connection_ids"] == 24
    assert phase(result, GLOBAL, False)["connections_opened"] == 3
    assert phase(result, GLOBAL, False)["connection_ids"] == 3
    # with the layer: the extension keeps one upstream connection per sandbox, whatever the function does
    for handler in (PER_INVOKE, GLOBAL):
        p = phase(result, handler, True)
        assert p["connections_opened"] == 3, p
        assert p["connection_ids"] == 3, p


def test_connections_held_after_the_sandboxes_are_gone(small_run):
    _proc, result, _ = small_run
    for handler in (PER_INVOKE, GLOBAL):
        assert phase(result, handler, True)["held_after"] == 0
    assert phase(result, PER_INVOKE, False)["held_after"] == 0  # it closed each connection itself
    if result["netns"]:
        # reclaimed like Lambda: the function's global connections never got a FIN
        assert result["ending"] == "reclaim"
        assert phase(result, GLOBAL, False)["held_after"] == 3
    else:
        assert result["ending"] == "shutdown" and result["note"]
        assert phase(result, GLOBAL, False)["held_after"] == 0


def test_the_printed_table_shows_the_same_numbers(small_run):
    proc, result, _ = small_run
    assert proc.stdout.count("with dbkeeper") >= 2
    expected = {
        "invocations": "invocations",
        "errors": None,
        "upstream connections opened": "connections_opened",
        "distinct CONNECTION_ID() seen": "connection_ids",
        "connections held after sandboxes gone": "held_after",
    }
    for label, key in expected.items():
        cells = table_row(proc.stdout, label)
        assert len(cells) == 4, cells
        for cell, (handler, layer) in zip(cells, COLUMNS):
            p = phase(result, handler, layer)
            assert int(cell) == (len(p["errors"]) if key is None else p[key]), (label, handler, layer)
    for label, key in (("invoke latency p50 (warm)", "p50_ms"), ("invoke latency p99 (warm)", "p99_ms")):
        for cell, (handler, layer) in zip(table_row(proc.stdout, label), COLUMNS):
            assert cell.endswith(" ms")
            assert float(cell[:-3]) == pytest.approx(phase(result, handler, layer)[key], abs=0.6)
    assert result["table"] in proc.stdout


def test_a_progress_line_is_shown_while_it_runs(small_run):
    proc, _result, _ = small_run
    assert re.search(r"global connection, with dbkeeper: 24/24 invocations", proc.stderr), proc.stderr


@pytest.mark.skipif(not NETNS, reason=f"network namespaces unavailable: {netns_unavailable_reason()}")
def test_full_size_run_finishes_within_a_minute(built_layer, workdir):
    proc, result, elapsed = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), timeout=120)
    assert elapsed < 60, f"took {elapsed:.1f} s"
    assert result["sandboxes"] == 4 and result["invocations_per_sandbox"] == 50
    assert phase(result, GLOBAL, True)["held_after"] == 0
    assert phase(result, GLOBAL, False)["held_after"] == 4
    assert phase(result, PER_INVOKE, True)["connections_opened"] == 4
    assert phase(result, PER_INVOKE, False)["connections_opened"] == 200


def test_without_network_namespaces_it_shuts_down_and_says_so(built_layer, workdir):
    proc, result, _ = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), "--no-netns",
                               "--sandboxes", "2", "--invocations", "3", "--handler", GLOBAL)
    assert result["ending"] == "shutdown" and not result["netns"]
    assert "note: network namespaces not used (--no-netns given)" in proc.stdout
    assert phase(result, GLOBAL, False)["held_after"] == 0  # the kernel sent FIN
    assert phase(result, GLOBAL, True)["held_after"] == 0
    assert phase(result, GLOBAL, True)["connections_opened"] == 2


def test_db_settings_in_the_environment_select_that_database(built_layer, mariadb_factory, workdir):
    db = mariadb_factory(bind_address="0.0.0.0" if NETNS else "127.0.0.1")
    env = demo_env(DB_HOST="127.0.0.1", DB_PORT=str(db.port), DB_USER=db.user, DB_PASSWORD=db.password,
                   DB_NAME=db.database)
    proc, result, _ = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), "--sandboxes", "1",
                               "--invocations", "3", "--handler", GLOBAL, env=env)
    assert f"at 127.0.0.1:{db.port} (from DB_HOST)" in proc.stdout
    assert phase(result, GLOBAL, True)["held_after"] == 0
    # the visits landed in that database: 3 without the layer + 3 with it
    assert db.query("SELECT COUNT(*) AS n FROM appdb.visits")[0]["n"] == 6
    # nothing of the demo is left connected to it (the demo KILLs what the reclaim left behind)
    deadline = time.monotonic() + 5
    while db.processlist(db.user) and time.monotonic() < deadline:
        time.sleep(0.02)  # a KILLed session leaves the process list asynchronously
    assert db.processlist(db.user) == []


def test_dbkeeper_rie_selects_the_rie_sandbox_class(built_layer, workdir, request):
    # lambda_sandbox's RIE-compatible command line stands in for the aws-lambda-rie binary here;
    # RieSandbox runs it exactly like the real one (private mount namespace, /opt and /var/task).
    if os.geteuid() != 0:
        pytest.skip("RieSandbox needs root (unshare -m, bind mounts)")
    # (anywhere works: a binary under /tmp is bound back into the RIE's private /tmp)
    bin_dir = Path(tempfile.mkdtemp(prefix="dbkeeper-demo-rie-", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(bin_dir, ignore_errors=True))
    stand_in = bin_dir / "aws-lambda-rie"
    stand_in.write_text(f"#!/bin/sh\ncd {REPO} && exec {sys.executable} -m lambda_sandbox rie \"$@\"\n")
    stand_in.chmod(0o755)
    proc, result, _ = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), "--sandboxes", "2",
                               "--invocations", "3", "--handler", GLOBAL, env=demo_env(DBKEEPER_RIE=str(stand_in)))
    assert result["sandbox_kind"] == "aws-lambda-rie"
    assert phase(result, GLOBAL, True)["wrapper_pointed"] == 2
    assert phase(result, GLOBAL, True)["connections_opened"] == 2
    assert phase(result, GLOBAL, True)["held_after"] == 0
    assert phase(result, GLOBAL, False)["held_after"] == (2 if result["netns"] else 0)


REAL_RIE = os.environ.get("DBKEEPER_RIE") or shutil.which("aws-lambda-rie")


@pytest.mark.skipif(not REAL_RIE, reason="no aws-lambda-rie binary (set DBKEEPER_RIE=/path/to/aws-lambda-rie)")
def test_on_the_real_rie(built_layer, workdir):
    proc, result, _ = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), "--rie", REAL_RIE,
                               "--sandboxes", "2", "--invocations", "5")
    assert result["sandbox_kind"] == "aws-lambda-rie"
    for handler in (PER_INVOKE, GLOBAL):
        assert phase(result, handler, True)["connections_opened"] == 2
        assert phase(result, handler, True)["held_after"] == 0
    assert phase(result, GLOBAL, False)["held_after"] == (2 if result["netns"] else 0)


def test_missing_layer_is_reported(workdir):
    proc = subprocess.run([sys.executable, "-m", "demo", "--layer-dir", str(workdir)], cwd=REPO,
                          env=demo_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "run ./build.sh first" in proc.stderr


# --------------------------------------------------------------------------- the function the demo runs


@pytest.fixture
def sample_app(mariadb, monkeypatch):
    """sample_function/app.py imported fresh (module state = a new sandbox), DB_* pointing at MariaDB."""
    import importlib.util

    for k, v in {"DB_HOST": mariadb.host, "DB_PORT": str(mariadb.port), "DB_USER": mariadb.user,
                 "DB_PASSWORD": mariadb.password, "DB_NAME": mariadb.database}.items():
        monkeypatch.setenv(k, v)
    spec = importlib.util.spec_from_file_location("sample_app_under_test", REPO / "sample_function" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    if module._conn is not None:
        module._conn.close()


class _Context:
    aws_request_id = "req-1"


def test_sample_function_connect_per_invoke_uses_a_new_connection_every_time(sample_app, mariadb):
    opened = mariadb.connections_opened()
    first = sample_app.handler_connect_per_invoke({"page": "/a"}, _Context())
    second = sample_app.handler_connect_per_invoke({"page": "/a"}, _Context())
    assert first["cold"] is True and second["cold"] is False
    assert second["page_visits"] == first["page_visits"] + 1
    assert second["visits_total"] == first["visits_total"] + 1
    assert first["connection_id"] != second["connection_id"]
    assert mariadb.connections_opened() - opened == 2
    # and it closed both
    mine = {first["connection_id"], second["connection_id"]}
    deadline = time.monotonic() + 5
    while mine & {r["ID"] for r in mariadb.processlist(mariadb.user)} and time.monotonic() < deadline:
        time.sleep(0.02)  # COM_QUIT is processed asynchronously by the server
    assert not mine & {r["ID"] for r in mariadb.processlist(mariadb.user)}


def test_sample_function_global_connection_is_reused_and_survives_a_killed_session(sample_app, mariadb):
    first = sample_app.handler_global_connection({"page": "/b"}, _Context())
    second = sample_app.handler_global_connection({}, _Context())
    assert first["connection_id"] == second["connection_id"]
    assert second["page"] == "/"
    # the server drops the session (wait_timeout, failover, KILL): the next invocation reconnects
    mariadb.query(f"KILL CONNECTION {first['connection_id']}")
    third = sample_app.handler_global_connection({"page": "/b"}, _Context())
    assert third["connection_id"] != first["connection_id"]
    assert third["page_visits"] == first["page_visits"] + 1
