"""Spec: PyMySQL's own LOAD DATA LOCAL INFILE tests pass through dbkeeper, as they do directly.

    given PyMySQL 1.1.1's pymysql/tests/test_load_local.py (vendored verbatim, with base.py and
    its data files, in tests/third_party/pymysql-1.1.1: the PyPI sdist does not ship PyMySQL's
    tests; SOURCE.md there says where they come from),
    when they run with the pinned PyMySQL against MariaDB directly, and through dbkeeper over TCP
    and over its Unix socket,
    then every one of them passes each way, and dbkeeper reused its upstream connections after
    every load (no upstream_not_reusable).

Each run copies the vendored tree to a temporary directory, writes the databases.json its
base.py reads (local_infile on, as PyMySQL's own CI sets it), and runs the tests with unittest in
a child process, which reports its counts as JSON.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.client_ops import dbkeeper_target_of

VENDORED = Path(__file__).resolve().parents[1] / "third_party" / "pymysql-1.1.1"
PYMYSQL_VERSION = "1.1.1"
SUITE = "pymysql.tests.test_load_local"
EXPECTED = {"test_load_file", "test_load_warnings", "test_no_file", "test_unbuffered_load_file"}

# The child runs the vendored package as pymysql.tests of the installed PyMySQL.
_RUN = """
import json, os, sys, unittest
import pymysql
pymysql.__path__.append(os.path.join(sys.argv[1], "pymysql"))
suite = unittest.defaultTestLoader.loadTestsFromName(sys.argv[2])
result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
def names(pairs):
    return sorted(test.id().rsplit(".", 1)[-1] for test, _ in pairs)
print(json.dumps({
    "ran": result.testsRun,
    "failures": names(result.failures), "errors": names(result.errors), "skipped": names(result.skipped),
    "unexpected_successes": len(result.unexpectedSuccesses),
}))
"""


def run_suite(tmp_path: Path, settings: dict) -> dict:
    tree = tmp_path / "pymysql-suite"
    shutil.copytree(VENDORED, tree)
    (tree / "pymysql" / "tests" / "databases.json").write_text(json.dumps([settings]))
    proc = subprocess.run([sys.executable, "-c", _RUN, str(tree), SUITE], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-4000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    outcome["log"] = proc.stderr
    return outcome


def test_the_vendored_suite_matches_the_pinned_pymysql():
    assert importlib.metadata.version("PyMySQL") == PYMYSQL_VERSION
    assert (VENDORED / "LICENSE").is_file() and (VENDORED / "SOURCE.md").is_file()


@pytest.mark.parametrize("route", ["direct", "dbkeeper-tcp", "dbkeeper-unix"])
def test_pymysql_load_local_tests_pass(route, upstream, request, tmp_path):
    settings = dict(user=upstream.user, password=upstream.password, database=upstream.database,
                    use_unicode=True, local_infile=True)
    running = None
    if route == "direct":
        settings.update(host=upstream.host, port=upstream.port)
    else:
        running = request.getfixturevalue("dbk")
        target = dbkeeper_target_of(running)
        settings.update({"unix_socket": target.unix_socket} if route == "dbkeeper-unix"
                        else {"host": target.host, "port": target.port})
        not_reusable_before = len(running.events("upstream_not_reusable"))
    # when PyMySQL's own LOAD LOCAL tests run against the route
    outcome = run_suite(tmp_path, settings)
    # then all of them ran and passed
    print(f"PyMySQL {PYMYSQL_VERSION} {SUITE} via {route}: {outcome['ran']} ran, "
          f"{outcome['ran'] - len(outcome['failures']) - len(outcome['errors']) - len(outcome['skipped'])} passed, "
          f"failures={outcome['failures']} errors={outcome['errors']} skipped={outcome['skipped']}")
    assert outcome["ran"] == len(EXPECTED), outcome["log"]
    assert (outcome["failures"], outcome["errors"], outcome["skipped"]) == ([], [], []), outcome["log"]
    assert all(f"{name} " in outcome["log"] for name in EXPECTED), outcome["log"]
    if running is not None:
        # and every session's upstream went back to the pool fit for the next one
        assert len(running.events("upstream_not_reusable")) == not_reusable_before
