"""Upstream credentials from Secrets Manager (moto in server mode): the extension process from
the built layer, no password in its environment, the secret rotated while clients keep coming."""

from __future__ import annotations

import json

import pymysql
import pytest

from tests.dbkeeper_process import start_dbkeeper
from tests.polling import wait_until

DB_VARIABLES = ("DBKEEPER_DB_HOST", "DBKEEPER_DB_PORT", "DBKEEPER_DB_USER", "DBKEEPER_DB_PASSWORD", "DBKEEPER_DB_NAME")


def rds_secret(db, password: str) -> str:
    return json.dumps({"engine": "mariadb", "host": db.host, "port": db.port, "username": db.user,
                       "password": password, "dbname": db.database})


@pytest.fixture
def secret(moto_server, fresh_mariadb, request):
    name = f"db-{request.node.name[:40]}"
    moto_server.client("secretsmanager").create_secret(
        Name=name, SecretString=rds_secret(fresh_mariadb, fresh_mariadb.password))
    return name


def current_password(moto_server, name: str, stage: str = "AWSCURRENT") -> str:
    """What a function reading the secret itself would present."""
    value = moto_server.client("secretsmanager").get_secret_value(SecretId=name, VersionStage=stage)
    return json.loads(value["SecretString"])["password"]


def session(ext, password: str) -> tuple[str, int]:
    with pymysql.connect(host=ext.host, port=ext.port, user=ext.upstream.user, password=password,
                         database=ext.upstream.database, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT DATABASE(), CONNECTION_ID()")
        return cur.fetchone()


def test_with_only_a_secret_the_extension_finds_host_user_password_and_database(built_layer, fresh_mariadb, moto_server,
                                                                               secret, free_port):
    # given no database setting at all in the environment, only the secret's name
    ext = start_dbkeeper(built_layer.tree_x86_64, fresh_mariadb, free_port(), without=DB_VARIABLES,
                         extra_env={**moto_server.extension_env(), "DBKEEPER_DB_SECRET": secret})
    try:
        assert not any(name in ext.env for name in DB_VARIABLES)
        # when the function logs in with the secret's user and password
        database, _ = session(ext, current_password(moto_server, secret))
        # then it is served by the upstream the secret names, and the secret was read once
        assert database == fresh_mariadb.database
        fetched = ext.events("secret_fetched")
        assert len(fetched) == 1 and fetched[0]["stages"] == ["AWSCURRENT"]
        # and a wrong local password is refused, with no second fetch (dbkeeper's copy is newer than the client's)
        with pytest.raises(pymysql.err.OperationalError) as refused:
            session(ext, "not-the-password")
        assert refused.value.args[0] == 1045
    finally:
        ext.stop()


def test_a_rotation_mid_run_costs_no_client_an_error(built_layer, fresh_mariadb, moto_server, secret, free_port):
    """Secrets Manager's single-user rotation, step by step (createSecret, setSecret, finishSecret),
    with sessions in every phase; the server closes idle upstream connections after 1 s, so every
    phase opens a new one with whatever credentials dbkeeper holds by then."""
    fresh_mariadb.set_global("wait_timeout", 1)
    manager = moto_server.client("secretsmanager")
    ext = start_dbkeeper(built_layer.tree_x86_64, fresh_mariadb, free_port(), without=DB_VARIABLES,
                         extra_env={**moto_server.extension_env(), "DBKEEPER_DB_SECRET": secret})
    errors, sessions = [], 0
    old, new = fresh_mariadb.password, "rotated-" + fresh_mariadb.password

    def phase(passwords):
        nonlocal sessions
        for _ in range(10):
            for password in passwords:
                try:
                    session(ext, password)
                except pymysql.err.MySQLError as exc:
                    errors.append(exc.args)
                sessions += 1
        # the upstream goes idle; the server drops it (wait_timeout): the next phase reconnects
        assert wait_until(lambda: not fresh_mariadb.processlist(user=fresh_mariadb.user), timeout=10)

    try:
        phase([current_password(moto_server, secret)])
        # createSecret: the new version is AWSPENDING; setSecret: the database already wants it
        version = manager.put_secret_value(SecretId=secret, SecretString=rds_secret(fresh_mariadb, new),
                                           VersionStages=["AWSPENDING"])["VersionId"]
        with fresh_mariadb.admin() as admin, admin.cursor() as cur:
            cur.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (fresh_mariadb.user, new))
        phase([current_password(moto_server, secret)])  # functions still read the old one
        # finishSecret: AWSCURRENT moves to the new version, the old one becomes AWSPREVIOUS
        current = next(v for v, stages in manager.describe_secret(SecretId=secret)["VersionIdsToStages"].items()
                       if "AWSCURRENT" in stages)
        manager.update_secret_version_stage(SecretId=secret, VersionStage="AWSCURRENT", MoveToVersionId=version,
                                            RemoveFromVersionId=current)
        assert current_password(moto_server, secret) == new
        # functions that read the secret anew, and functions whose copy is still the old one
        phase([new, old])
        phase([new])
    finally:
        ext.stop()
    assert errors == [] and sessions == 50
    # the refusals the rotation caused stayed inside dbkeeper: 1045 upstream, fetched again, then in
    refused = [line for line in ext.events("upstream_connect_failed") if line.get("errno") == 1045]
    assert refused and all(line["retrying"] for line in refused)
    assert ext.events("secret_refetch")
    assert {line["credentials"] for line in refused} <= {"secret:AWSCURRENT", "secret:AWSPREVIOUS"}
    assert len(ext.events("secret_fetched")) <= 4
