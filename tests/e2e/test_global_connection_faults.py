"""A function that keeps ONE global database connection survives its upstream dying while the sandbox is
idle (issue 9, "Must show (a)"): with the layer, 0 errors; without it, the same faults are errors.

Specified: a function per driver (tests/functions/global_*: PyMySQL with its defaults and commit() after
its write, mysql-connector-python, SQLAlchemy 2 with pool_pre_ping=False), each keeping one global
connection it never reconnects itself, runs 50 invocations in the project's sandbox against a throwaway
MariaDB with `wait_timeout=2`. Each invocation reads, writes one row tagged with its number and commits.
Between invocations, while the sandbox is frozen (the client idle):
  - before every 5th: `KILL CONNECTION` of every server session serving the function (with the layer,
    the upstream connections dbkeeper opened: connection attribute program_name=dbkeeper; without it,
    the function's own connection);
  - before every 7th: the sandbox stays frozen until the server has dropped those sessions by its 2 s
    wait_timeout (observed in PROCESSLIST, not timed);
  - once, before invocation 26: the database restarts (a clean stop and start; wait_timeout=2 set again).
  (Invocation 35 is both a 5th and a 7th: the freeze expires the sessions, the kill then finds none.)
With the layer no invocation fails. Without the layer the faults are real: some invocations fail (the
count is printed). Either way every invocation that succeeded wrote its row exactly once, none that
failed wrote one, and each read saw every earlier committed write.

One line per run: `global_connection driver=<d> variant=<v> invocations=50 errors=<n> kills=<k>
freezes=<f> restarts=1 sessions_killed=<s> sessions_expired=<e>` (kills/freezes: the events;
sessions_*: the server sessions they ended).

A fault finds nothing to end when the invocation before it failed and left no connection (PyMySQL and
mysql-connector stay broken after their first fault; SQLAlchemy's pool drops the dead connection and
connects anew at the next checkout): sessions_* say how many faults hit. With the layer, every fault
must hit a live upstream (bar the kill at 35).

Cost: a run whose connection is live at every fault spends ~2-3 s in each of the 7 freezes (~16 s a run
measured); one that stays broken after its first fault ~1 s. The whole matrix (6 runs) is part of the
test command. To compare with another build of dbkeeper (e.g. an older commit's), point
DBKEEPER_TEST_LAYER_TREE at its dist/layer-x86_64 (tests/e2e/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pymysql
import pytest

from tests.e2e.conftest import skip_under_the_rie
from tests.polling import wait_until

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions"
INVOCATIONS = 50
KILL_BEFORE_EVERY = 5
FREEZE_BEFORE_EVERY = 7
RESTART_BEFORE = 26  # neither a 5th nor a 7th: the restart stands on its own
WAIT_TIMEOUT_S = 2
TABLE = "global_connection_writes"

DRIVERS = {"pymysql": "global_pymysql", "mysql_connector": "global_mysql_connector",
           "sqlalchemy": "global_sqlalchemy"}


@pytest.fixture
def faulty_db(mariadb_factory):
    """A throwaway MariaDB with performance_schema (to tell dbkeeper's sessions by their connection
    attributes), wait_timeout=2 and the table the functions write to."""
    db = mariadb_factory(extra_args=["--performance-schema=ON"])
    db.set_global("wait_timeout", WAIT_TIMEOUT_S)
    db.query(f"CREATE TABLE {db.database}.{TABLE} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
             "invocation INT NOT NULL, driver VARCHAR(32) NOT NULL) ENGINE=InnoDB")
    return db


def app_sessions(db) -> dict[int, str]:
    """The app user's server sessions: id -> the client's program_name connection attribute ('' if none)."""
    rows = db.query("SELECT p.ID AS id, COALESCE(a.ATTR_VALUE, '') AS program FROM information_schema.PROCESSLIST p "
                    "LEFT JOIN performance_schema.session_connect_attrs a "
                    "ON a.PROCESSLIST_ID = p.ID AND a.ATTR_NAME = 'program_name' WHERE p.USER = %s", (db.user,))
    return {int(row["id"]): row["program"] for row in rows}


def serving_the_function(db, with_layer: bool) -> set[int]:
    """The sessions serving the function: dbkeeper's upstreams with the layer, the function's own without."""
    sessions = app_sessions(db)
    theirs = {sid for sid, program in sessions.items() if (program == "dbkeeper") == with_layer}
    # with the layer the function never reaches the database itself; without it nothing is dbkeeper's
    assert theirs == set(sessions), f"unexpected app sessions: {sessions}"
    return theirs


def gone(db, sessions: set[int], timeout: float) -> bool:
    """Whether the server has ended all of `sessions` within `timeout` s (polled)."""
    return wait_until(lambda: not sessions & set(app_sessions(db)), timeout=timeout)


def kill(db, sessions: set[int]) -> None:
    for sid in sessions:
        try:
            db.query(f"KILL CONNECTION {int(sid)}")
        except pymysql.err.MySQLError as exc:  # 1094 unknown thread: it ended in between
            if exc.args[0] != 1094:
                raise
    assert gone(db, sessions, timeout=10), app_sessions(db)


def outcome(result, n: int) -> dict:
    if not result.ok:  # the handler itself failed (it returns driver errors): counted as an error too
        return {"invocation": n, "error": f"{result.error_type}: {result.text}"}
    return result.json()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["without_layer", "with_layer"])
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_a_global_connection_survives_kills_wait_timeouts_and_a_restart(lambda_function, faulty_db, emulator,
                                                                        driver, variant):
    skip_under_the_rie(emulator, "the scenario holds the sandbox frozen past wait_timeout (the RIE never freezes)")
    db = faulty_db
    with_layer = variant == "with_layer"
    sandbox = lambda_function(db, handler="app.handler", task_dir=FUNCTIONS / DRIVERS[driver], layer=with_layer,
                              freeze=True)
    outcomes: list[dict] = []
    kills = freezes = restarts = sessions_killed = sessions_expired = 0
    empty_faults: list[str] = []  # fault events that found no session serving the function
    for n in range(1, INVOCATIONS + 1):
        if n > 1:
            # the previous invocation is over and the sandbox frozen: the function's connection is idle
            assert sandbox.wait_frozen(), "the sandbox did not freeze after an invocation"
            if n == RESTART_BEFORE:
                db.restart()
                db.set_global("wait_timeout", WAIT_TIMEOUT_S)  # the server's configuration, as my.cnf keeps it
                restarts += 1
            if n % FREEZE_BEFORE_EVERY == 0:
                idle = serving_the_function(db, with_layer)
                # frozen until the server has ended every idle session serving the function by wait_timeout
                assert gone(db, idle, timeout=WAIT_TIMEOUT_S + 10), \
                    f"sessions {idle} outlived wait_timeout={WAIT_TIMEOUT_S}: {app_sessions(db)}"
                assert sandbox.frozen, "the sandbox thawed during the freeze"
                freezes += 1
                sessions_expired += len(idle)
                if not idle:
                    empty_faults.append(f"freeze before {n}")
            if n % KILL_BEFORE_EVERY == 0:
                victims = serving_the_function(db, with_layer)
                kill(db, victims)
                kills += 1
                sessions_killed += len(victims)
                if not victims:
                    empty_faults.append(f"kill before {n}")
        outcomes.append(outcome(sandbox.invoke({"invocation": n}), n))

    failed = [o for o in outcomes if "error" in o]
    print(f"global_connection driver={driver} variant={variant} invocations={INVOCATIONS} errors={len(failed)} "
          f"kills={kills} freezes={freezes} restarts={restarts} sessions_killed={sessions_killed} "
          f"sessions_expired={sessions_expired}")
    for o in failed[:5]:
        print(f"  invocation {o['invocation']}: {o['error']}")

    # every succeeded invocation's write is committed once, a failed one wrote nothing, every read saw
    # all the writes committed before it
    succeeded = [o for o in outcomes if "error" not in o]
    written = [row["invocation"] for row in db.query(f"SELECT invocation FROM {db.database}.{TABLE} ORDER BY id")]
    assert written == [o["invocation"] for o in succeeded]
    assert [o["rows_before"] for o in succeeded] == list(range(len(succeeded)))

    if with_layer:
        if failed:  # what the extension saw, for the report
            for source, line in sandbox.logs:
                if source != "runtime" and '"event"' in line and '"upstream_state"' not in line:
                    print(f"  [{source}] {line}")
        assert failed == [], f"{len(failed)} of {INVOCATIONS} invocations failed through dbkeeper: {failed}"
        # and the faults hit what served the function: each event found live upstreams (but at 35, where
        # the freeze before it had already ended them)
        assert empty_faults == [f"kill before {FREEZE_BEFORE_EVERY * KILL_BEFORE_EVERY}"], empty_faults
    else:
        # the faults are real: they ended the function's own connection, and invocations failed
        assert sessions_killed > 0, "no KILL found the function's connection"
        assert failed, "no invocation failed without the layer: the faults did not reach the function"
