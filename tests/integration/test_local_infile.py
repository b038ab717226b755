"""Spec: LOAD DATA LOCAL INFILE goes through dbkeeper when, and only when, the client enabled it.

    given a client that enabled LOCAL INFILE itself (its own CLIENT_LOCAL_FILES),
    when it loads a file it wrote,
    then the rows are in, as directly, and its session goes on; when it leaves, the next session
    gets the same upstream connection, reset;
    given a client that did not enable it, when it asks for a load,
    then it gets the server's own refusal (MariaDB: 4166), errno and message as directly,
    whichever upstream was free before: LOCAL_FILES is part of the session profile, so a client
    never gets an upstream whose LOCAL INFILE setting differs from its own.

dbkeeper never opens a file: the driver reads it and sends it, and dbkeeper relays the packets.
A client packet that answers no server request gets what it gets directly (1156, hang-up), and
that upstream is never lent again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.integration.client_ops import TRANSPORTS, Target, dbkeeper_target_of, direct_target_of, open_session
from tests.integration.raw_mysql import RawClient, ServerError, packet

ER_LOAD_INFILE_CAPABILITY_DISABLED = 4166  # MariaDB's refusal of a client without CLIENT_LOCAL_FILES
ER_NET_PACKETS_OUT_OF_ORDER = 1156
ROWS = 20_000  # about 200 KB: many of the drivers' file packets


def connect(target: Target, transport: str = "tcp", **kw: Any) -> pymysql.connections.Connection:
    endpoint = ({"unix_socket": target.unix_socket} if transport == "unix"
                else {"host": target.host, "port": target.port})
    params: dict[str, Any] = dict(user=target.user, password=target.password, database=target.database,
                                  connect_timeout=10, read_timeout=30, autocommit=True)
    params.update(kw)
    return pymysql.connect(**endpoint, **params)


def one(conn: pymysql.connections.Connection, sql: str, args: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def csv_file(directory: Path, rows: int = ROWS) -> Path:
    path = directory / f"rows_{os.urandom(3).hex()}.csv"
    path.write_text("".join(f"{i},name {i}\n" for i in range(1, rows + 1)))
    return path


class Table:
    """A table of its own per test, created and dropped directly on the server."""

    def __init__(self, db: Any) -> None:
        self.name = f"infile_{os.urandom(4).hex()}"
        self._target = direct_target_of(db)

    def __enter__(self) -> Table:
        with connect(self._target) as conn:
            conn.cursor().execute(f"CREATE TABLE `{self.name}` (id INT PRIMARY KEY, v VARCHAR(40))")
        return self

    def __exit__(self, *exc: object) -> None:
        with connect(self._target) as conn:
            conn.cursor().execute(f"DROP TABLE IF EXISTS `{self.name}`")

    def load_sql(self, path: Path | str) -> str:
        return f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE `{self.name}` FIELDS TERMINATED BY ','"

    def contents(self, conn: pymysql.connections.Connection) -> tuple:
        return one(conn, f"SELECT COUNT(*), COALESCE(SUM(id), 0), MAX(v) FROM `{self.name}`")

    def empty(self) -> None:
        with connect(self._target) as conn:
            conn.cursor().execute(f"DELETE FROM `{self.name}`")


def load(conn: pymysql.connections.Connection, sql: str) -> tuple:
    """(affected rows, warnings) of a load, or ("error", errno, message)."""
    try:
        with conn.cursor() as cur:
            return cur.execute(sql), cur.warning_count
    except pymysql.MySQLError as exc:
        return ("error", *exc.args)


def upstream_of(conn: pymysql.connections.Connection) -> int:
    return one(conn, "SELECT CONNECTION_ID()")[0]


# --------------------------------------------------------------------------- enabled: relayed


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_that_enabled_local_infile_loads_a_file_it_wrote(transport, mariadb, dbkeeper_factory, tmp_path):
    # one upstream connection, whose profile has LOCAL_FILES as the function declared
    running = dbkeeper_factory(mariadb, DBKEEPER_POOL_SIZE="1", DBKEEPER_CLIENT_FLAGS="MULTI_RESULTS,LOCAL_FILES")
    running.wait_for_event("upstream_connected")
    target = dbkeeper_target_of(running)
    data = csv_file(tmp_path)
    with Table(mariadb) as table:
        # given what a direct connection makes of the load
        with connect(direct_target_of(mariadb), transport, local_infile=True) as conn:
            direct = load(conn, table.load_sql(data)), table.contents(conn)
        table.empty()
        # when a client that enabled LOCAL INFILE loads the file through dbkeeper
        with connect(target, transport, local_infile=True) as conn:
            through = load(conn, table.load_sql(data)), table.contents(conn)
            # then the rows are in, as directly
            assert through == direct
            assert through[1] == (ROWS, ROWS * (ROWS + 1) // 2, "name 9999")
            # and its session goes on
            conn.cursor().execute("SET @left_behind = 'load session'")
            assert one(conn, "SELECT 'after the load', @left_behind") == ("after the load", "load session")
            loaded_on = upstream_of(conn)
        # and the next session gets the same upstream, reset
        with connect(target, transport, local_infile=True) as conn:
            assert upstream_of(conn) == loaded_on
            assert one(conn, "SELECT @left_behind, @@in_transaction") == (None, 0)
    assert running.events("upstream_not_reusable") == []
    assert len(running.events("upstream_connected")) == 1


def test_the_file_of_a_load_goes_through_with_each_driver(mariadb, dbkeeper_factory, tmp_path):
    # mysqlclient (libmariadb) and mysql-connector cut a file into packets of their own sizes
    running = dbkeeper_factory(mariadb, DBKEEPER_POOL_SIZE="1")
    target = dbkeeper_target_of(running)
    data = csv_file(tmp_path)
    for driver in ("pymysql", "mysqldb", "mysqlconnector_pure"):
        with Table(mariadb) as table:
            session = open_session(driver, target, "tcp", autocommit=True, local_infile=True)
            try:
                loaded = session.execute(table.load_sql(data)).rowcount
                counted = session.scalar(f"SELECT COUNT(*) FROM `{table.name}`")
                assert session.scalar("SELECT 'goes on'") == "goes on"
            finally:
                session.close()
        assert (driver, loaded, counted) == (driver, ROWS, ROWS)
    assert running.events("upstream_not_reusable") == []


def test_a_load_and_a_query_in_one_multi_statement_work_as_directly(mariadb, dbk, direct, tmp_path):
    data = csv_file(tmp_path, rows=50)

    def run(target: Target) -> list:
        with Table(mariadb) as table, \
                connect(target, local_infile=True, client_flag=CLIENT.MULTI_STATEMENTS) as conn:
            results = []
            with conn.cursor() as cur:
                cur.execute(f"{table.load_sql(data)}; SELECT COUNT(*) FROM `{table.name}`; {table.load_sql(data)}")
                results.append(cur.rowcount)
                while cur.nextset():
                    results.append((cur.rowcount, cur.fetchall()))
            results.append(one(conn, "SELECT 'next'"))
            return results

    through = run(dbkeeper_target_of(dbk))
    assert through == run(direct)
    assert through[:2] == [50, (1, ((50,),))]


def test_a_load_whose_file_is_missing_on_the_client_side_works_as_directly(mariadb, dbkeeper_factory, tmp_path):
    # the driver cannot open the file: it sends just the empty packet that ends a file, and the
    # server answers OK (0 rows); PyMySQL then reports its own error
    running = dbkeeper_factory(mariadb, DBKEEPER_POOL_SIZE="1", DBKEEPER_CLIENT_FLAGS="MULTI_RESULTS,LOCAL_FILES")
    target = dbkeeper_target_of(running)
    missing = tmp_path / "never_written.csv"
    with Table(mariadb) as table:
        with connect(direct_target_of(mariadb), local_infile=True) as conn:
            direct = load(conn, table.load_sql(missing)), table.contents(conn)
        with connect(target, local_infile=True) as conn:
            through = load(conn, table.load_sql(missing)), table.contents(conn)
            assert through == direct
            assert through[0][0] == "error" and through[1][0] == 0
            assert one(conn, "SELECT 'goes on'") == ("goes on",)
            loaded_on = upstream_of(conn)
        with connect(target, local_infile=True) as conn:
            assert upstream_of(conn) == loaded_on
    assert running.events("upstream_not_reusable") == []


# --------------------------------------------------------------------------- not enabled: refused


def refusal(target: Target, transport: str, table: Table, path: Path) -> tuple:
    with connect(target, transport, local_infile=False) as conn:
        outcome = load(conn, table.load_sql(path))
        after = one(conn, "SELECT 'goes on'"), table.contents(conn)[0]
    return outcome, after


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_without_local_infile_is_refused_exactly_as_directly(transport, mariadb, dbk, direct, tmp_path):
    data = csv_file(tmp_path, rows=10)
    with Table(mariadb) as table:
        expected = refusal(direct, transport, table, data)
        got = refusal(dbkeeper_target_of(dbk), transport, table, data)
    assert got == expected
    assert got[0][:2] == ("error", ER_LOAD_INFILE_CAPABILITY_DISABLED), got
    assert got[1] == (("goes on",), 0)


def test_whether_a_session_may_load_is_its_clients_choice_whatever_upstream_was_free(mariadb, dbkeeper_factory,
                                                                                      direct, tmp_path):
    # one upstream connection, lent in turn to clients with and without LOCAL INFILE
    running = dbkeeper_factory(mariadb, DBKEEPER_POOL_SIZE="1")
    target = dbkeeper_target_of(running)
    data = csv_file(tmp_path, rows=10)
    with Table(mariadb) as table:
        refused_directly = refusal(direct, "tcp", table, data)
        for _ in range(2):
            with connect(target, local_infile=True) as conn:
                assert load(conn, table.load_sql(data)) == (10, 0)
            table.empty()
            assert refusal(target, "tcp", table, data) == refused_directly
    # each change of LOCAL INFILE setting cost a new upstream connection, never a shared one
    assert [e["reason"] for e in running.events("upstream_connected")] == ["init"] + ["borrow"] * 4


# --------------------------------------------------------------------------- packets answering nothing


def test_a_packet_out_of_sequence_is_answered_as_directly_and_its_upstream_never_lent_again(mariadb,
                                                                                           dbkeeper_factory):
    running = dbkeeper_factory(mariadb, DBKEEPER_POOL_SIZE="1")
    stray = packet(b"\x03SELECT 'stray'", 5)  # a whole query, but not starting at sequence id 0

    def answer(host: str, port: int) -> tuple:
        client = RawClient.connect(host=host, port=port, timeout=5)
        client.login(mariadb.user, mariadb.password, mariadb.database)
        client.query("SET @x = 'dirty'")
        client.send_raw(stray)
        try:
            return ServerError.parse(client.read_packet()).errno, client.wait_closed(5)
        finally:
            client.close()

    assert answer(mariadb.host, mariadb.port) == (ER_NET_PACKETS_OUT_OF_ORDER, [])
    assert answer(running.host, running.port) == (ER_NET_PACKETS_OUT_OF_ORDER, [])
    with connect(dbkeeper_target_of(running)) as conn:
        assert one(conn, "SELECT @x, 'next'") == (None, "next")
