"""The many-clients workload of test_connection_sharing.py: clients that each keep ONE global
PyMySQL connection (driver defaults: autocommit off), as a Lambda function's module-level
connection does, and run short transactions until the run's tickets are used up.

A ticket is one transaction (one invocation): the client locks its own counter row, bumps it and
writes a ledger row saying which counter value it saw, then commits. A client whose connection
failed connects again for its next ticket, as a function's next invocation would. Every outcome
is recorded: the ticket of each acknowledged COMMIT, the errno of each failure.

Run in threads of the test process and in worker processes (`multiprocessing`, spawn), so this
module holds only what a spawned process must import: PyMySQL and the standard library.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pymysql

SCHEMA = (
    "CREATE TABLE counters (client INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, ticket INT NOT NULL, client INT NOT NULL,"
    " seen INT NOT NULL) ENGINE=InnoDB",
)


def take_ticket(tickets: Any) -> int:
    """The next ticket of the shared counter (a multiprocessing.Value)."""
    with tickets.get_lock():
        ticket = int(tickets.value)
        tickets.value = ticket + 1
        return ticket


def _errno(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def run_client(connect_kwargs: dict[str, Any], client: int, tickets: Any, total: int, start: Any,
               outcome: dict[str, list[Any]]) -> None:
    """One client: its global connection made at "INIT", then transactions until no ticket is left."""
    conn: pymysql.connections.Connection | None = None
    try:
        conn = pymysql.connect(**connect_kwargs)
    except pymysql.MySQLError as exc:  # counted as a failed INIT; the next ticket tries again
        outcome["errors"].append(("connect", client, _errno(exc), str(exc)[:200]))
    try:
        start.wait(60)  # every client has its connection (or its error) before the first ticket
    except threading.BrokenBarrierError:
        outcome["errors"].append(("start", client, None, "start barrier broken"))
        return
    while (ticket := take_ticket(tickets)) < total:
        try:
            if conn is None:
                conn = pymysql.connect(**connect_kwargs)
            with conn.cursor() as cursor:
                cursor.execute("SELECT n FROM counters WHERE client = %s FOR UPDATE", (client,))
                (seen,) = cursor.fetchone()
                cursor.execute("UPDATE counters SET n = n + 1 WHERE client = %s", (client,))
                cursor.execute("INSERT INTO ledger (ticket, client, seen) VALUES (%s, %s, %s)", (ticket, client, seen))
            conn.commit()
            outcome["committed"].append(ticket)
        except pymysql.MySQLError as exc:
            outcome["errors"].append((ticket, client, _errno(exc), str(exc)[:200]))
            if conn is not None:
                try:
                    conn.rollback()
                except pymysql.MySQLError:  # the connection itself is gone: a new one for the next ticket
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
    if conn is not None and conn.open:
        conn.close()


def run_clients(connect_kwargs: dict[str, Any], clients: list[int], tickets: Any, total: int,
                start: Any) -> dict[str, list[Any]]:
    """`clients` in threads of this process; their outcomes merged (list.append is thread safe)."""
    outcome: dict[str, list[Any]] = {"committed": [], "errors": []}
    threads = [threading.Thread(target=run_client, args=(connect_kwargs, c, tickets, total, start, outcome),
                                name=f"client-{c}", daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome


def worker_process(connect_kwargs: dict[str, Any], clients: list[int], tickets: Any, total: int, start: Any,
                   results: Any) -> None:
    """Entry point of a worker process: its clients' outcomes go back through `results` (a Queue)."""
    try:
        results.put(run_clients(connect_kwargs, clients, tickets, total, start))
    except BaseException as exc:  # the parent must hear of a crash, not wait for a result forever
        results.put({"committed": [], "errors": [("worker", clients[0], None, repr(exc)[:200])]})
        raise
