"""Watches, from a separate process, when the server drops one connection (so the watcher's own
polling never competes for the benchmark process's GIL, which serves the sandbox's API).

    python -m bench.watch_conn <server unix socket> <connection id> <deadline s>

Polls SHOW PROCESSLIST (~0.1 ms a poll; information_schema.PROCESSLIST / GLOBAL_STATUS cost 0.2-0.3 ms).
Prints "ready" after its first poll, then, when the connection is gone or the deadline passed, one
JSON line: {"polls": [[before, after, present, connections], ...]} with time.monotonic() stamps
(CLOCK_MONOTONIC: comparable across processes); connections = rows of SHOW PROCESSLIST, i.e. the
server's connected client threads (Threads_connected) as of that poll.
"""

from __future__ import annotations

import json
import sys
import time

import pymysql


def main(socket_path: str, connection_id: int, deadline_s: float) -> None:
    conn = pymysql.connect(unix_socket=socket_path, user="root", password="", autocommit=True)
    cursor = conn.cursor()
    polls = []

    def poll():
        before = time.monotonic()
        cursor.execute("SHOW PROCESSLIST")
        rows = cursor.fetchall()
        after = time.monotonic()
        present = any(row[0] == connection_id for row in rows)
        polls.append((before, after, int(present), len(rows)))
        return present

    poll()
    print("ready", flush=True)
    deadline = time.monotonic() + deadline_s
    while polls[-1][2] and time.monotonic() < deadline:
        poll()
    conn.close()
    print(json.dumps({"polls": polls}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
