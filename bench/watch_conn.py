"""Watches, from a separate process, when the server drops one connection (so the watcher's own
polling never competes for the benchmark process's GIL, which serves the sandbox's API).

    python -m bench.watch_conn <server unix socket> <connection id> <deadline s>

Prints "ready" after its first poll, then, when the connection is gone or the deadline passed, one
JSON line: {"polls": [[before, after, present, threads_connected], ...]} with time.monotonic()
stamps (CLOCK_MONOTONIC: comparable across processes).
"""

from __future__ import annotations

import json
import sys
import time

import pymysql


def main(socket_path: str, connection_id: int, deadline_s: float) -> None:
    conn = pymysql.connect(unix_socket=socket_path, user="root", password="", autocommit=True)
    cursor = conn.cursor()
    sql = ("SELECT (SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %d), "
           "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'THREADS_CONNECTED')"
           % connection_id)
    polls = []

    def poll():
        before = time.monotonic()
        cursor.execute(sql)
        present, threads = cursor.fetchone()
        polls.append((before, time.monotonic(), int(present), int(threads)))
        return int(present)

    poll()
    print("ready", flush=True)
    deadline = time.monotonic() + deadline_s
    while polls[-1][2] and time.monotonic() < deadline:
        poll()
    conn.close()
    print(json.dumps({"polls": polls}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
