"""The layer's lifecycle end to end: one upstream connection per sandbox, kept across invocations
and freezes, closed with COM_QUIT on SHUTDOWN; bad settings and a missing database handled.

Every test runs in the project's sandbox and, with DBKEEPER_RIE, in the real RIE (conftest.py); where the
two differ the sandbox follows the RIE (docs/LAMBDA_SANDBOX.md says where Lambda differs from both)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from lambda_sandbox import netns_unavailable_reason
from tests.dbkeeper_process import EXTENSION
from tests.e2e.conftest import skip_under_the_rie
from tests.polling import wait_until
from tests.sandbox_fixtures.helpers import frozen_by

SLOW_FUNCTION = Path(__file__).resolve().parents[1] / "functions" / "slow"
NOOP_FUNCTION = Path(__file__).resolve().parents[1] / "functions" / "noop"


def app_connections(db) -> list[dict]:
    return db.processlist(user=db.user)



def wait_event(sandbox, name, **fields):
    """The extension's first `name` line with these fields; its stdout is read asynchronously."""
    return sandbox.wait_for_json(EXTENSION, lambda line: line.get("event") == name
                                 and all(line.get(k) == v for k, v in fields.items()))


def test_after_init_exactly_one_upstream_connection_exists(lambda_function, fresh_mariadb):
    # a function that never touches the database: the only connection is the one opened during INIT
    # (the RIE has no INIT without an invoke, so the first invoke runs it). Not frozen after it, as under
    # the RIE: the connect runs in the background and a freeze right after a 1 ms invoke would hold it
    # half-way until the next invoke (as Lambda would)
    sandbox = lambda_function(fresh_mariadb, handler="app.handler", task_dir=NOOP_FUNCTION, freeze=False)
    first = sandbox.invoke({})
    assert first.ok and first.init_duration_ms is not None, first.text
    sandbox.wait_for_json(EXTENSION, lambda line: line["event"] == "upstream_connected")
    connections = app_connections(fresh_mariadb)
    assert len(connections) == 1
    assert connections[0]["COMMAND"] == "Sleep"


def test_fifty_connect_per_invocation_calls_open_no_new_upstream_connection(lambda_function, fresh_mariadb):
    sandbox = lambda_function(fresh_mariadb)
    first = sandbox.invoke({"page": "/"})
    assert first.ok, first.text
    opened_before = fresh_mariadb.connections_opened()
    results = [sandbox.invoke({"page": f"/p{i % 3}"}) for i in range(50)]
    assert all(r.ok for r in results), [r.text for r in results if not r.ok]
    assert fresh_mariadb.connections_opened() - opened_before == 0
    assert {r.json()["connection_id"] for r in results} == {first.json()["connection_id"]}
    assert [r.json()["visits_total"] for r in results] == list(range(2, 52))


def test_shutdown_closes_every_upstream_connection_before_the_deadline(lambda_function, fresh_mariadb):
    sandbox = lambda_function(fresh_mariadb)
    assert sandbox.invoke({}).ok
    assert len(app_connections(fresh_mariadb)) == 1
    report = sandbox.shutdown()
    extension = report.extensions[EXTENSION]
    assert extension.exit_code == 0 and not extension.killed
    # gone within the first half of the 2000 ms budget, counted from the shutdown signal (the runtime's
    # SIGTERM comes first; the SHUTDOWN delivery itself is not observable under the RIE)
    assert extension.exited_ms < 1000
    assert wait_until(lambda: not app_connections(fresh_mariadb)), app_connections(fresh_mariadb)
    complete = wait_event(sandbox, "shutdown_complete")
    assert complete["upstreams_closed"] == 1
    assert complete["ms_left_before_deadline"] > 1000


BAD_SETTINGS = [("DBKEEPER_POOL_SIZE", "lots"), ("DBKEEPER_DB_TLS", "sometimes"), ("DBKEEPER_LISTEN_PORT", "99999")]


@pytest.mark.parametrize("name, value", BAD_SETTINGS)
def test_a_bad_setting_leaves_the_function_working_directly_and_says_why(lambda_function, fresh_mariadb, name, value):
    sandbox = lambda_function(fresh_mariadb, **{name: value})
    opened_before = fresh_mariadb.connections_opened()
    results = [sandbox.invoke({}) for _ in range(5)]
    assert [r.ok for r in results] == [True] * 5, [r.text for r in results if not r.ok]
    failed = wait_event(sandbox, "init_failed")
    assert name in failed["error"] and failed["fail_mode"] == "open"
    # the function connected to the database itself, once per invocation: dbkeeper touched nothing
    assert fresh_mariadb.connections_opened() - opened_before == 5
    assert sandbox.wait_for_json("runtime", lambda line: line.get("event") == "wrapper_passthrough")


@pytest.mark.parametrize("name, value", BAD_SETTINGS[:1])
def test_fail_mode_closed_fails_init_with_a_message_naming_the_setting(lambda_function, fresh_mariadb, name, value):
    sandbox = lambda_function(fresh_mariadb, DBKEEPER_FAIL_MODE="closed", **{name: value})
    result = sandbox.invoke({})
    # the extension reports init/error and exits: the RIE answers 502 with an empty body (its log says
    # Extension.InitError; the error type the extension reported is only in the extension's own log)
    assert (result.status, result.body) == (502, b"")
    assert name in wait_event(sandbox, "init_failed")["error"]
    assert not app_connections(fresh_mariadb)


def test_an_unreachable_database_does_not_stretch_init_and_the_sandbox_recovers(lambda_function, fresh_mariadb):
    fresh_mariadb.stop()
    sandbox = lambda_function(fresh_mariadb, DBKEEPER_BORROW_TIMEOUT_MS="500", DBKEEPER_CONNECT_TIMEOUT_MS="200")
    failed = sandbox.invoke({})
    # the connect runs in the background, never inside INIT (INIT as the emulator measured it)
    assert failed.init_duration_ms is not None and failed.init_duration_ms < 2000
    assert not failed.ok and "2003" in failed.text  # the function sees a normal "can't connect" error
    extension_pid = sandbox.pids()[EXTENSION]

    fresh_mariadb.restart()
    recovered = sandbox.invoke({})
    assert recovered.ok, recovered.text
    assert sandbox.pids()[EXTENSION] == extension_pid  # the same extension, no re-INIT
    assert len(app_connections(fresh_mariadb)) == 1


def test_the_database_restarting_between_invocations_is_invisible_to_the_function(lambda_function, fresh_mariadb):
    sandbox = lambda_function(fresh_mariadb)
    before = sandbox.invoke({})
    assert before.ok
    fresh_mariadb.kill()
    fresh_mariadb.restart()
    after = sandbox.invoke({})
    assert after.ok, after.text
    # noticed at the next borrow (stale, closed) or by the background reset the kill cut off
    assert wait_event(sandbox, "upstream_closed")["reason"] in ("stale", "closed", "reset_failed")
    wait_event(sandbox, "upstream_connected", opened_total=2)  # reopened once, transparently


def test_shutdown_while_frozen_then_thawed_still_cleans_up(lambda_function, fresh_mariadb, emulator):
    skip_under_the_rie(emulator, "the RIE never freezes a sandbox (Lambda does)")
    sandbox = lambda_function(fresh_mariadb, freeze=True)
    for _ in range(3):
        assert sandbox.invoke({}).ok
        assert sandbox.wait_frozen()
        pid = sandbox.pids()[EXTENSION]
        print(f"frozen by {sandbox.freeze_mechanism}")
        assert frozen_by(pid) == sandbox.freeze_mechanism
    report = sandbox.shutdown()
    assert report.extensions[EXTENSION].exit_code == 0
    assert wait_until(lambda: not app_connections(fresh_mariadb))


def test_a_function_timeout_shuts_the_extension_down_and_the_next_invoke_starts_afresh(lambda_function, fresh_mariadb):
    sandbox = lambda_function(fresh_mariadb, handler="app.handler", task_dir=SLOW_FUNCTION, timeout_s=1)
    timed_out = sandbox.invoke({"sleep": 3})
    assert timed_out.timed_out and b"Task timed out after 1.00 seconds" in timed_out.body
    wait_event(sandbox, "shutdown_complete", reason="Timeout")
    assert wait_until(lambda: not app_connections(fresh_mariadb))
    again = sandbox.invoke({})
    assert again.ok, again.text
    assert len(app_connections(fresh_mariadb)) == 1


def test_a_listener_that_cannot_bind_leaves_the_function_working_on_its_own_settings(lambda_function, fresh_mariadb):
    # the port is taken: the extension serves nothing, the wrapper must not point the function at it
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        sandbox = lambda_function(fresh_mariadb, DBKEEPER_LISTEN_PORT=str(blocker.getsockname()[1]))
        results = [sandbox.invoke({}) for _ in range(5)]
        assert [r.ok for r in results] == [True] * 5, [r.text for r in results if not r.ok]
        failed = wait_event(sandbox, "init_failed")
        assert failed["error_type"] == "Extension.ListenFailed" and "DBKEEPER_LISTEN_PORT" in failed["error"]
    finally:
        blocker.close()


def test_a_listener_that_cannot_bind_fails_init_in_fail_mode_closed(lambda_function, fresh_mariadb):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        sandbox = lambda_function(fresh_mariadb, DBKEEPER_LISTEN_PORT=str(blocker.getsockname()[1]),
                                  DBKEEPER_FAIL_MODE="closed")
        result = sandbox.invoke({})
        assert (result.status, result.body) == (502, b"")  # as the RIE answers a failed INIT
        assert wait_event(sandbox, "init_failed")["error_type"] == "Extension.ListenFailed"
    finally:
        blocker.close()


@pytest.fixture
def netns_reason():
    return netns_unavailable_reason()


@pytest.mark.parametrize("layer", [False, True], ids=["without_layer", "with_layer"])
def test_reclaim_without_fin(lambda_function, mariadb_factory, netns_reason, layer, emulator):
    """Lambda destroys a frozen sandbox without closing its sockets. Without the layer the function's
    global connection is orphaned in the DB; with it, SHUTDOWN closed the upstream first."""
    skip_under_the_rie(emulator, "the RIE has no reclaim; it is modelled by the project's sandbox only")
    if netns_reason:
        pytest.skip(f"reclaim without FIN needs a network namespace: {netns_reason}")
    db = mariadb_factory(bind_address="0.0.0.0")
    sandbox = lambda_function(db, handler="app.handler_global_connection", layer=layer, netns=True)
    assert sandbox.invoke({}).ok
    assert len(app_connections(db)) == 1
    sandbox.reclaim()
    if layer:
        assert wait_until(lambda: not app_connections(db))
    else:
        # nothing told the DB: the session stays until wait_timeout (hours by default)
        time.sleep(0.5)  # a bounded look for a close that must not come; not synchronisation
        assert len(app_connections(db)) == 1


@pytest.mark.parametrize("handler", ["app.handler_connect_per_invoke", "app.handler_global_connection"],
                         ids=["connect_per_invoke", "global_connection"])
def test_a_sandbox_reclaimed_without_shutdown_leaves_its_idle_upstream_only_for_the_idle_wait_timeout(
        lambda_function, mariadb_factory, netns_reason, emulator, handler):
    """Lambda may destroy a frozen sandbox with no SHUTDOWN at all (a crash, CPU starvation): no
    FIN, no COM_QUIT. dbkeeper's idle connection carries a short session wait_timeout, so the
    server drops it after DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S instead of its own 8 hours: the pool's
    idle connection (a function that connects per invocation), and the connection lent to a
    function's global connection, idle between invocations (its session could move, so the short
    wait_timeout stays: were it dropped, the next command would get another connection)."""
    skip_under_the_rie(emulator, "the RIE has no reclaim; it is modelled by the project's sandbox only")
    if netns_reason:
        pytest.skip(f"reclaim without FIN needs a network namespace: {netns_reason}")
    db = mariadb_factory(bind_address="0.0.0.0")
    sandbox = lambda_function(db, handler=handler, netns=True, DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S="2",
                              DBKEEPER_LOG_LEVEL="debug")
    for _ in range(3):
        result = sandbox.invoke({})
        if not result.ok:
            print("\n".join(f"[{s}] {line}" for s, line in sandbox.logs if '"upstream_state"' not in line))
        assert result.ok
    assert len(app_connections(db)) == 1
    reclaimed_at = time.monotonic()
    sandbox.reclaim(graceful=False)
    assert wait_until(lambda: not app_connections(db), timeout=2 + 5), app_connections(db)
    print(f"{handler}: upstream gone {time.monotonic() - reclaimed_at:.1f} s after a reclaim without SHUTDOWN "
          f"(DBKEEPER_UPSTREAM_WAIT_TIMEOUT_S=2)")


def test_a_statement_running_at_a_function_timeout_is_stopped_within_two_seconds(lambda_function, fresh_mariadb):
    """Without the layer the function's socket dies with its process and MariaDB aborts a SLEEP
    ~5 s later (most statements never notice); through dbkeeper the upstream lives on, so the
    SHUTDOWN (reason Timeout) must KILL the statement."""
    tag = f"timeout-{time.monotonic_ns()}"
    sandbox = lambda_function(fresh_mariadb, handler="app.handler", task_dir=SLOW_FUNCTION, timeout_s=3)
    timed_out = sandbox.invoke({"sql_sleep": 20, "tag": tag})
    ended = time.monotonic()
    assert timed_out.timed_out, timed_out.text
    running = lambda: [p for p in fresh_mariadb.processlist() if tag in (p.get("INFO") or "")]  # noqa: E731
    assert wait_until(lambda: not running(), timeout=2.0), running()
    print(f"statement gone {(time.monotonic() - ended) * 1000:.0f} ms after the timeout answer")
    complete = wait_event(sandbox, "shutdown_complete")
    # killed when the runtime's socket closed mid-query (the orphan KILL queued: it may find the
    # statement already gone, the server having seen the aborted connection first), or at the
    # SHUTDOWN, whichever came first
    orphans = [line for _src, line in sandbox.logs if '"orphan_kill_queued"' in line]
    assert complete["reason"].lower() == "timeout" and complete["statements_killed"] + len(orphans) >= 1
