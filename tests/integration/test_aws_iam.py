"""RDS IAM authentication: a fresh token per upstream connect, sent with mysql_clear_password
over verified TLS only. The upstream is tests/rds_iam_front.py in front of a real MariaDB: it runs
the exchange as RDS does and verifies each token's SigV4 signature with the credentials moto's STS
issued (RDS's IAM policy evaluation is not emulated; MariaDB itself cannot verify a token)."""

from __future__ import annotations

import pymysql
import pytest

from tests.aws_endpoint import REGION
from tests.certificates import make_test_certificates
from tests.dbkeeper_process import start_dbkeeper
from tests.polling import wait_until
from tests.rds_iam_front import RdsIamFront, check_token

LOCAL_PASSWORD = "what-the-function-presents"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A private CA and a server certificate for localhost, made with openssl."""
    return make_test_certificates(tmp_path_factory.mktemp("iam-tls"), "localhost", "DNS:localhost")


@pytest.fixture
def front(fresh_mariadb, certificates, moto_server):
    front = RdsIamFront(fresh_mariadb, str(certificates / "server.pem"), str(certificates / "server.key"),
                        moto_server.role_credentials(), REGION)
    yield front
    front.close()


def iam_env(front, moto_server, ca) -> dict[str, str]:
    return {**moto_server.extension_env(), "DBKEEPER_DB_HOST": "localhost", "DBKEEPER_DB_PORT": str(front.port),
            "DBKEEPER_DB_IAM_AUTH": "true", "DBKEEPER_DB_TLS": "required", "DBKEEPER_DB_TLS_CA": str(ca),
            "DBKEEPER_CLIENT_PASSWORD": LOCAL_PASSWORD}


def test_every_upstream_connect_sends_a_new_valid_token_over_verified_tls(built_layer, fresh_mariadb, moto_server,
                                                                         front, certificates, free_port):
    ext = start_dbkeeper(built_layer.tree_x86_64, fresh_mariadb, free_port(), without=("DBKEEPER_DB_PASSWORD",),
                         extra_env=iam_env(front, moto_server, certificates / "ca.pem"))
    try:
        assert "DBKEEPER_DB_PASSWORD" not in ext.env
        with pymysql.connect(**ext.connect_kwargs(password=LOCAL_PASSWORD)) as conn, conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), 1")
            assert cur.fetchone()[1] == 1
        # the upstream goes away; the next session's connect signs a new token
        with fresh_mariadb.admin() as admin, admin.cursor() as cur:
            for row in fresh_mariadb.processlist(user=fresh_mariadb.user):
                cur.execute(f"KILL CONNECTION {row['ID']}")
        assert wait_until(lambda: not fresh_mariadb.processlist(user=fresh_mariadb.user))
        with pymysql.connect(**ext.connect_kwargs(password=LOCAL_PASSWORD)) as conn, conn.cursor() as cur:
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)
        connected = ext.events("upstream_connected")
        assert len(connected) >= 2 and all(line["tls"] for line in connected)
    finally:
        ext.stop()
    # one valid token per connect (signed anew each time: within one second two signatures of the
    # same request are equal, SigV4 timestamps having one-second resolution)
    assert [problem for _, problem in front.checked] == [None] * len(connected)


def test_an_upstream_whose_certificate_is_not_trusted_never_sees_a_token(built_layer, fresh_mariadb, moto_server,
                                                                        front, certificates, free_port):
    ext = start_dbkeeper(built_layer.tree_x86_64, fresh_mariadb, free_port(), without=("DBKEEPER_DB_PASSWORD",),
                         extra_env={**iam_env(front, moto_server, certificates / "other.pem"),
                                    "DBKEEPER_CONNECT_TIMEOUT_MS": "2000"})
    try:
        with pytest.raises(pymysql.err.OperationalError):
            pymysql.connect(**ext.connect_kwargs(password=LOCAL_PASSWORD, connect_timeout=10))
        failures = ext.events("upstream_connect_failed")
        assert failures and "TLS" in failures[0]["error"]
    finally:
        ext.stop()
    assert front.checked == []


def test_the_checker_refuses_what_rds_would_refuse(moto_server):
    """The front's verification can fail: a token signed with other credentials, for another
    user or endpoint, or tampered with."""
    import botocore.session

    credentials = moto_server.role_credentials()
    session = botocore.session.get_session()

    def token(host="localhost", port=3306, user="app", secret=credentials["SecretAccessKey"]):
        client = session.create_client("rds", region_name=REGION, aws_access_key_id=credentials["AccessKeyId"],
                                       aws_secret_access_key=secret, aws_session_token=credentials["SessionToken"])
        return client.generate_db_auth_token(host, port, user)

    assert check_token(token(), "localhost", 3306, "app", REGION, credentials) is None
    assert "signature" in check_token(token(secret="not-the-secret"), "localhost", 3306, "app", REGION, credentials)
    assert check_token(token(user="admin"), "localhost", 3306, "app", REGION, credentials)
    assert check_token(token(port=3307), "localhost", 3306, "app", REGION, credentials)
    tampered = token().replace("X-Amz-Expires=900", "X-Amz-Expires=3600")
    assert check_token(tampered, "localhost", 3306, "app", REGION, credentials)


def test_the_layer_as_built_verifies_against_its_rds_bundle_not_any_other_ca(built_layer, fresh_mariadb, moto_server,
                                                                            front, certificates, free_port):
    """No DBKEEPER_DB_TLS_CA: the shipped RDS bundle is the CA, so an upstream whose certificate no
    RDS root issued (here the test CA's) is refused before a token is sent."""
    env = {**iam_env(front, moto_server, ""), "DBKEEPER_CONNECT_TIMEOUT_MS": "2000"}
    del env["DBKEEPER_DB_TLS_CA"]
    ext = start_dbkeeper(built_layer.tree_x86_64, fresh_mariadb, free_port(), without=("DBKEEPER_DB_PASSWORD",),
                         extra_env=env)
    try:
        with pytest.raises(pymysql.err.OperationalError):
            pymysql.connect(**ext.connect_kwargs(password=LOCAL_PASSWORD, connect_timeout=10))
        failures = ext.events("upstream_connect_failed")
        assert failures and "certificate verify failed" in failures[0]["error"]
    finally:
        ext.stop()
    assert front.checked == []


def test_a_layer_built_with_the_rds_ca_bundle_verifies_rds_without_a_ca_setting(
        built_layer, fresh_mariadb, moto_server, front, certificates, free_port, tmp_path):
    # given the layer as build.sh makes it with RDS_CA_BUNDLE (here the test CA stands for RDS's)
    import shutil

    layer = tmp_path / "opt"
    shutil.copytree(built_layer.tree_x86_64, layer, symlinks=True)
    shutil.copyfile(certificates / "ca.pem", layer / "dbkeeper" / "rds-ca-bundle.pem")
    env = iam_env(front, moto_server, "")
    del env["DBKEEPER_DB_TLS_CA"]
    ext = start_dbkeeper(layer, fresh_mariadb, free_port(), without=("DBKEEPER_DB_PASSWORD",), extra_env=env)
    try:
        with pymysql.connect(**ext.connect_kwargs(password=LOCAL_PASSWORD)) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        ext.stop()
    assert front.checked and all(problem is None for _, problem in front.checked)
