"""The main job, end to end: `python -m demo` runs the sample function without and with the built
layer in local Lambda sandboxes, at two function memory sizes, against a database that requires
verified TLS behind an emulated 1 ms network, and prints a table whose numbers must tell a
consistent story.

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

from lambda_sandbox import cgroups, netns_unavailable_reason

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


def table_row(stdout: str, section: str, label: str) -> list[str]:
    """The cells of one row of the printed table, in the section of one handler."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(section)), None)
    assert start is not None, f"section {section!r} not in:\n{stdout}"
    for line in lines[start + 1:]:
        if not line.strip():
            break
        if line.startswith(label):
            return re.split(r"\s{2,}", line[len(label):].strip())
    raise AssertionError(f"row {label!r} not in section {section!r}:\n{stdout}")


def phase(result: dict, handler: str, layer: bool, memory_mb: int = 1769) -> dict:
    (p,) = [p for p in result["phases"]
            if p["handler"] == handler and p["layer"] == layer and p["memory_mb"] == memory_mb]
    return p


PER_INVOKE, GLOBAL = "handler_connect_per_invoke", "handler_global_connection"
SECTIONS = {PER_INVOKE: "connect per invoke", GLOBAL: "global connection"}
MEMORY = (128, 1769)
COLUMNS = [(memory, layer) for memory in MEMORY for layer in (False, True)]  # left to right in each section


@pytest.fixture(scope="module")
def small_run(built_layer):
    tmp = Path(tempfile.mkdtemp(prefix="dbkeeper-demo-test-"))
    try:
        yield run_demo(tmp, getattr(built_layer, f"tree_{ARCH}"), "--sandboxes", "3", "--invocations", "8")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_every_invocation_succeeds_in_every_column(small_run):
    _proc, result, _ = small_run
    assert len(result["phases"]) == 8
    assert result["memory_mb"] == list(MEMORY)
    for handler in (PER_INVOKE, GLOBAL):
        for memory, layer in COLUMNS:
            p = phase(result, handler, layer, memory)
            assert p["errors"] == [], p["errors"]
            assert p["invocations"] == p["ok"] == 3 * 8
            assert p["p50_ms"] is not None and p["p99_ms"] >= p["p50_ms"] > 0
            assert p["cold_p50_ms"] > 0


def test_by_default_the_database_requires_tls_and_sits_behind_a_1_ms_network(small_run):
    proc, result, _ = small_run
    assert result["tls_required"] is True and result["network"] == "emulated 1 ms RTT"
    assert "requiring TLS" in result["database"] and "emulated network of 1 ms RTT" in proc.stdout
    # every invocation crosses the delay line at least three times (INSERT, SELECT, COMMIT; without the
    # layer also the connect, TLS and authentication): no warm invocation can take less than 3 ms
    for handler in (PER_INVOKE, GLOBAL):
        for memory, layer in COLUMNS:
            assert phase(result, handler, layer, memory)["p50_ms"] >= 3.0
    # a connect per invocation without the layer adds TCP + greeting (2 RTT), TLS (1) and authentication (1)
    for memory in MEMORY:
        assert phase(result, PER_INVOKE, False, memory)["p50_ms"] >= 7.0


@pytest.mark.skipif(cgroups.unavailable_reason() is not None,
                    reason=f"no cgroups for a CPU quota: {cgroups.unavailable_reason()}")
def test_each_memory_size_runs_with_its_share_of_a_vcpu(small_run):
    proc, result, _ = small_run
    # then every sandbox of a column had its memory's CFS quota (runtime and extension together)
    for p in result["phases"]:
        assert p["cpu_quota_us"] == round(100_000 * p["memory_mb"] / 1769), p
        assert p["cpu_ms_per_warm_invocation"] > 0
    assert result["cpu_share_note"] is None and "CPU not limited" not in proc.stdout


def test_with_the_layer_the_wrapper_pointed_every_sandbox_at_the_extension(small_run):
    _proc, result, _ = small_run
    for handler in (PER_INVOKE, GLOBAL):
        for memory in MEMORY:
            assert phase(result, handler, True, memory)["wrapper_pointed"] == 3
            assert phase(result, handler, False, memory)["wrapper_pointed"] == 0


def test_connections_opened_tell_the_story(small_run):
    _proc, result, _ = small_run
    for memory in MEMORY:
        # without the layer: one connection per invocation, or one per sandbox for the global connection
        assert phase(result, PER_INVOKE, False, memory)["connections_opened"] == 24
        assert phase(result, PER_INVOKE, False, memory)["connection_ids"] == 24
        assert phase(result, GLOBAL, False, memory)["connections_opened"] == 3
        assert phase(result, GLOBAL, False, memory)["connection_ids"] == 3
        # with the layer: the extension keeps one upstream connection per sandbox, whatever the function does
        for handler in (PER_INVOKE, GLOBAL):
            assert phase(result, handler, True, memory)["connection_ids"] == 3
        assert phase(result, PER_INVOKE, True, memory)["connections_opened"] == 3
        # ...and at SHUTDOWN it may KILL what runs on the session a global connection still holds, over a
        # side connection when none is idle (the janitor): at most one more per sandbox
        assert 3 <= phase(result, GLOBAL, True, memory)["connections_opened"] <= 6


def test_connections_held_after_the_sandboxes_are_gone(small_run):
    _proc, result, _ = small_run
    for memory in MEMORY:
        for handler in (PER_INVOKE, GLOBAL):
            assert phase(result, handler, True, memory)["held_after"] == 0
        assert phase(result, PER_INVOKE, False, memory)["held_after"] == 0  # it closed each connection itself
        if result["netns"]:
            # reclaimed like Lambda: the function's global connections never got a FIN
            assert result["ending"] == "reclaim"
            assert phase(result, GLOBAL, False, memory)["held_after"] == 3
        else:
            assert result["ending"] == "shutdown" and result["note"]
            assert phase(result, GLOBAL, False, memory)["held_after"] == 0


def test_the_printed_table_shows_the_same_numbers(small_run):
    proc, result, _ = small_run
    assert "128 MB function" in proc.stdout and "1,769 MB function" in proc.stdout
    expected = {
        "invocations": "invocations",
        "errors": None,
        "upstream connections opened": "connections_opened",
        "distinct CONNECTION_ID() seen": "connection_ids",
        "connections held after sandboxes gone": "held_after",
    }
    for handler, section in SECTIONS.items():
        for label, key in expected.items():
            cells = table_row(proc.stdout, section, label)
            assert len(cells) == 4, cells
            for cell, (memory, layer) in zip(cells, COLUMNS, strict=True):
                p = phase(result, handler, layer, memory)
                assert int(cell) == (len(p["errors"]) if key is None else p[key]), (label, handler, memory, layer)
        for label, key in (("invoke latency p50 (warm)", "p50_ms"), ("invoke latency p99 (warm)", "p99_ms"),
                           ("CPU per warm invocation (all processes)", "cpu_ms_per_warm_invocation")):
            for cell, (memory, layer) in zip(table_row(proc.stdout, section, label), COLUMNS, strict=True):
                value = phase(result, handler, layer, memory)[key]
                if value is None:  # no cgroup, so no CPU figure
                    assert cell == "-" and key == "cpu_ms_per_warm_invocation"
                    continue
                assert cell.endswith(" ms")
                assert float(cell[:-3]) == pytest.approx(value, rel=0.01, abs=0.6)
    assert result["table"] in proc.stdout


def test_a_progress_line_is_shown_while_it_runs(small_run):
    proc, _result, _ = small_run
    assert re.search(r"global connection, 1769 MB, with dbkeeper: 24/24 invocations", proc.stderr), proc.stderr


@pytest.mark.skipif(not NETNS, reason=f"network namespaces unavailable: {netns_unavailable_reason()}")
def test_full_size_run_finishes_within_two_minutes(built_layer, workdir):
    proc, result, elapsed = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), timeout=240)
    assert elapsed < 120, f"took {elapsed:.1f} s"
    assert result["sandboxes"] == 4 and result["invocations_per_sandbox"] == 50
    for memory in MEMORY:
        assert phase(result, GLOBAL, True, memory)["held_after"] == 0
        assert phase(result, GLOBAL, False, memory)["held_after"] == 4
        assert phase(result, PER_INVOKE, True, memory)["connections_opened"] == 4
        assert phase(result, PER_INVOKE, False, memory)["connections_opened"] == 200
        assert phase(result, GLOBAL, True, memory)["connection_ids"] == 4


def test_without_network_namespaces_it_shuts_down_and_says_so(built_layer, workdir):
    proc, result, _ = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), "--no-netns", "--memory", "1769",
                               "--sandboxes", "2", "--invocations", "3", "--handler", GLOBAL)
    assert result["ending"] == "shutdown" and not result["netns"]
    assert result["tls_required"] is True  # the emulated network and TLS work on the host's loopback too
    assert "note: network namespaces not used (--no-netns given)" in proc.stdout
    assert phase(result, GLOBAL, False)["held_after"] == 0  # the kernel sent FIN
    assert phase(result, GLOBAL, True)["held_after"] == 0
    assert phase(result, GLOBAL, True)["connection_ids"] == 2


def test_loopback_runs_the_database_on_this_host_without_tls(built_layer, workdir):
    proc, result, _ = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), "--loopback", "--memory", "1769",
                               "--sandboxes", "1", "--invocations", "3", "--handler", GLOBAL)
    assert result["network"] == "loopback" and result["tls_required"] is False
    assert "no TLS (--loopback)" in proc.stdout
    assert phase(result, GLOBAL, True)["connection_ids"] == 1
    assert phase(result, GLOBAL, True)["held_after"] == 0


def test_db_settings_in_the_environment_select_that_database(built_layer, mariadb_factory, workdir):
    db = mariadb_factory(bind_address="0.0.0.0" if NETNS else "127.0.0.1")
    env = demo_env(DB_HOST="127.0.0.1", DB_PORT=str(db.port), DB_USER=db.user, DB_PASSWORD=db.password,
                   DB_NAME=db.database)
    proc, result, _ = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), "--sandboxes", "1", "--memory", "1769",
                               "--invocations", "3", "--handler", GLOBAL, env=env)
    assert f"at 127.0.0.1:{db.port} (from DB_HOST), reached as it is, no TLS asked for" in proc.stdout
    assert result["network"] == "as is" and result["tls_required"] is False
    assert phase(result, GLOBAL, True)["held_after"] == 0
    # the visits landed in that database: 3 without the layer + 3 with it
    assert db.query("SELECT COUNT(*) AS n FROM appdb.visits")[0]["n"] == 6
    # nothing of the demo is left connected to it (the demo KILLs what the reclaim left behind)
    deadline = time.monotonic() + 5
    while db.processlist(db.user) and time.monotonic() < deadline:
        time.sleep(0.02)  # a KILLed session leaves the process list asynchronously
    assert db.processlist(db.user) == []


def test_db_ssl_ca_makes_the_function_and_dbkeeper_require_verified_tls(built_layer, mariadb_factory, workdir):
    from bench.tlsca import make_ca
    from demo.main import primary_address

    # given a database on this host that requires TLS, with a certificate for the addresses sandboxes use
    address = primary_address() if NETNS else None
    certs = make_ca(workdir / "ca", ips=["127.0.0.1"] + ([address] if address else []))
    db = mariadb_factory(bind_address="0.0.0.0" if NETNS else "127.0.0.1",
                         extra_args=[*certs.mariadb_args(), "--require-secure-transport=ON"])
    env = demo_env(DB_HOST="127.0.0.1", DB_PORT=str(db.port), DB_USER=db.user, DB_PASSWORD=db.password,
                   DB_NAME=db.database, DB_SSL_CA=str(certs.ca))
    accepted = int(db.query("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'")[0]["Value"])
    proc, result, _ = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), "--sandboxes", "1", "--memory", "1769",
                               "--invocations", "3", "--handler", PER_INVOKE, env=env)
    assert "reached as it is, verified TLS (DB_SSL_CA)" in proc.stdout and result["tls_required"] is True
    # then every connection the server accepted was TLS (it refuses others): 3 of the function's own,
    # 1 of dbkeeper's, and the demo's observer connection
    assert phase(result, PER_INVOKE, False)["connections_opened"] == 3
    assert phase(result, PER_INVOKE, True)["connections_opened"] == 1
    assert int(db.query("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'")[0]["Value"]) - accepted == 3 + 1 + 1


@pytest.mark.parametrize("env_extra, flags, message", [
    ({"DB_PORT": "3307"}, (), "demo: DB_PORT set but DB_HOST is not: set DB_HOST to use your database"),
    ({"DB_HOST": "127.0.0.1", "DB_USER": "app"}, (),
     "demo: DB_HOST is set, so the demo uses that database; also set DB_NAME"),
    ({"DB_HOST": "127.0.0.1", "DB_PORT": "http", "DB_USER": "app", "DB_NAME": "appdb"}, (),
     "demo: DB_PORT must be a TCP port number, not 'http'"),
    ({"DB_HOST": "127.0.0.1", "DB_PORT": "1", "DB_USER": "app", "DB_NAME": "appdb"}, (),
     "demo: cannot connect to the database in DB_HOST (127.0.0.1:1): OperationalError: (2003"),
    ({"DB_HOST": "127.0.0.1", "DB_USER": "app", "DB_NAME": "appdb", "DB_SSL_CA": "/nonexistent/ca.pem"}, (),
     "demo: DB_SSL_CA=/nonexistent/ca.pem: no such file"),
    ({"DB_HOST": "127.0.0.1", "DB_USER": "app", "DB_NAME": "appdb"}, ("--loopback",),
     "demo: --loopback places the demo's own database; DB_HOST selects yours"),
    ({}, ("--memory", "64"), "demo: argument --memory: Lambda memory sizes are 128 to 10,240 MB"),
])
def test_a_demo_error_is_one_line(built_layer, env_extra, flags, message):
    proc = subprocess.run([sys.executable, "-m", "demo", "--layer-dir", str(getattr(built_layer, f"tree_{ARCH}")),
                           "--quiet", *flags], cwd=REPO, env=demo_env(**env_extra), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(message), proc.stderr


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
    proc, result, _ = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), "--sandboxes", "2", "--memory", "1769",
                               "--invocations", "3", "--handler", GLOBAL, env=demo_env(DBKEEPER_RIE=str(stand_in)))
    assert result["sandbox_kind"] == "aws-lambda-rie"
    assert phase(result, GLOBAL, True)["wrapper_pointed"] == 2
    assert phase(result, GLOBAL, True)["connection_ids"] == 2
    assert phase(result, GLOBAL, True)["held_after"] == 0
    assert phase(result, GLOBAL, False)["held_after"] == (2 if result["netns"] else 0)


REAL_RIE = os.environ.get("DBKEEPER_RIE") or shutil.which("aws-lambda-rie")


@pytest.mark.skipif(not REAL_RIE, reason="no aws-lambda-rie binary (set DBKEEPER_RIE=/path/to/aws-lambda-rie)")
def test_on_the_real_rie(built_layer, workdir):
    proc, result, _ = run_demo(workdir, getattr(built_layer, f"tree_{ARCH}"), "--rie", REAL_RIE,
                               "--sandboxes", "2", "--invocations", "5")
    assert result["sandbox_kind"] == "aws-lambda-rie"
    for memory in MEMORY:
        for handler in (PER_INVOKE, GLOBAL):
            assert phase(result, handler, True, memory)["connection_ids"] == 2
            assert phase(result, handler, True, memory)["held_after"] == 0
        assert phase(result, GLOBAL, False, memory)["held_after"] == (2 if result["netns"] else 0)


def test_missing_layer_is_reported(workdir):
    proc = subprocess.run([sys.executable, "-m", "demo", "--layer-dir", str(workdir)], cwd=REPO,
                          env=demo_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"demo: no built layer at {workdir}: run ./build.sh first\n"


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
