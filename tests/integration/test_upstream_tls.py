"""TLS toward the upstream: negotiated when the server offers it, certificates always verified
(CA and host name), and `required` refuses a server without TLS."""

from __future__ import annotations

import pymysql
import pytest

from tests.certificates import make_test_certificates


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A private CA and a server certificate for 127.0.0.1, made with openssl."""
    return make_test_certificates(tmp_path_factory.mktemp("tls"), "127.0.0.1", "IP:127.0.0.1,DNS:localhost")


@pytest.fixture
def tls_mariadb(mariadb_factory, certificates):
    return mariadb_factory(extra_args=[f"--ssl-ca={certificates / 'ca.pem'}",
                                       f"--ssl-cert={certificates / 'server.pem'}",
                                       f"--ssl-key={certificates / 'server.key'}"])


def tls_version_seen_by_the_server(running) -> str:
    with pymysql.connect(**running.connect_kwargs()) as conn, conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        return cur.fetchone()[1]


@pytest.mark.parametrize("mode", ["preferred", "required"])
def test_the_upstream_hop_uses_verified_tls_when_the_server_offers_it(dbkeeper_factory, tls_mariadb, certificates,
                                                                      mode):
    running = dbkeeper_factory(tls_mariadb, DBKEEPER_DB_TLS=mode, DBKEEPER_DB_TLS_CA=str(certificates / "ca.pem"))
    assert running.wait_for_event("upstream_connected")["tls"] is True
    assert tls_version_seen_by_the_server(running).startswith("TLSv1.")


def test_a_certificate_from_an_unknown_ca_is_refused(dbkeeper_factory, tls_mariadb, certificates):
    running = dbkeeper_factory(tls_mariadb, DBKEEPER_DB_TLS="required",
                               DBKEEPER_DB_TLS_CA=str(certificates / "other.pem"),
                               DBKEEPER_INIT_CONNECT_BUDGET_MS="0", DBKEEPER_BORROW_TIMEOUT_MS="300")
    failure = running.wait_for_event("upstream_connect_failed")
    assert "certificate verify failed" in failure["error"]
    with pytest.raises(pymysql.err.OperationalError) as caught:
        tls_version_seen_by_the_server(running)
    assert caught.value.args[0] == 2003 and "certificate verify failed" in caught.value.args[1]


def test_required_refuses_a_server_without_tls(dbkeeper_factory, fresh_mariadb):
    running = dbkeeper_factory(fresh_mariadb, DBKEEPER_DB_TLS="required", DBKEEPER_INIT_CONNECT_BUDGET_MS="0")
    assert "does not offer TLS" in running.wait_for_event("upstream_connect_failed")["error"]


def test_preferred_stays_plain_with_a_server_without_tls(dbkeeper_factory, fresh_mariadb):
    running = dbkeeper_factory(fresh_mariadb, DBKEEPER_DB_TLS="preferred")
    assert running.wait_for_event("upstream_connected")["tls"] is False
    assert tls_version_seen_by_the_server(running) == ""
