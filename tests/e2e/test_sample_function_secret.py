"""The sample function with no password in any environment variable: it reads its password from
Secrets Manager (moto in server mode), and so does the extension (DBKEEPER_DB_SECRET). The secret
is rotated mid-run, step by step as Secrets Manager's single-user rotation does it."""

from __future__ import annotations

import json
import os

import pytest

from tests.dbkeeper_process import EXTENSION
from tests.polling import wait_until


def rds_secret(db, password: str) -> str:
    return json.dumps({"engine": "mariadb", "host": "127.0.0.1", "port": db.port, "username": db.user,
                       "password": password, "dbname": db.database})


@pytest.fixture
def secret(moto_server, fresh_mariadb, request):
    name = f"e2e-{request.node.name[:40]}-{os.urandom(3).hex()}"  # [sandbox] and [rie] runs share a server
    moto_server.client("secretsmanager").create_secret(
        Name=name, SecretString=rds_secret(fresh_mariadb, fresh_mariadb.password))
    return name


def extension_events(sandbox, name: str) -> list[dict]:
    lines = []
    for source, line in sandbox.logs:
        # the RIE merges every process's output into one stream ("rie"): any source is the extension's there
        if (source == EXTENSION or sandbox.merged_sources) and line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                lines.append(record)
    return lines


def test_secret_only_rotated_mid_run_with_no_failed_invocation(lambda_function, fresh_mariadb, moto_server, secret):
    fresh_mariadb.set_global("wait_timeout", 1)  # idle upstreams die between phases: each phase reconnects
    manager = moto_server.client("secretsmanager")
    sandbox = lambda_function(fresh_mariadb, DB_SECRET_ID=secret, DBKEEPER_DB_SECRET=secret,
                              **moto_server.extension_env())
    del sandbox.env["DB_PASSWORD"]
    assert not [name for name, value in sandbox.env.items() if fresh_mariadb.password in value]
    results = []

    def phase(invocations: int = 10):
        for _ in range(invocations):
            results.append(sandbox.invoke({"page": f"/rotation/{len(results)}"}))
        assert wait_until(lambda: not fresh_mariadb.processlist(user=fresh_mariadb.user), timeout=10)

    phase()
    new = "rotated-" + fresh_mariadb.password
    version = manager.put_secret_value(SecretId=secret, SecretString=rds_secret(fresh_mariadb, new),
                                       VersionStages=["AWSPENDING"])["VersionId"]  # createSecret
    with fresh_mariadb.admin() as admin, admin.cursor() as cur:                   # setSecret
        cur.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (fresh_mariadb.user, new))
    phase()
    current = next(v for v, stages in manager.describe_secret(SecretId=secret)["VersionIdsToStages"].items()
                   if "AWSCURRENT" in stages)
    manager.update_secret_version_stage(SecretId=secret, VersionStage="AWSCURRENT", MoveToVersionId=version,
                                        RemoveFromVersionId=current)                  # finishSecret
    phase()

    failed = [r.text for r in results if not r.ok]
    assert failed == [] and len(results) == 30
    assert [r.json()["visits_total"] for r in results] == list(range(1, 31))
    refused = [line for line in extension_events(sandbox, "upstream_connect_failed") if line.get("errno") == 1045]
    assert refused and all(line["retrying"] for line in refused)  # the rotation was felt, and absorbed
