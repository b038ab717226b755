"""One global PyMySQL connection, PyMySQL's defaults (autocommit off), never reconnected by the code.

Made on the first invocation from DB_HOST/DB_PORT/DB_USER/DB_PASSWORD/DB_NAME and kept for the
sandbox's life, as AWS's examples do. Each invocation reads (how many rows `global_connection_writes`
holds), writes one row tagged with its invocation number, then commit(). A driver error is returned, not
raised, so a caller can count failed invocations; the next invocation uses the same connection object.

Event: {"invocation": n}. Result: {"invocation", "rows_before", "connection_id"} or {"invocation", "error"}.
"""

import os

import pymysql

DRIVER = "pymysql"
_conn = None


def _connection():
    global _conn
    if _conn is None:
        _conn = pymysql.connect(host=os.environ["DB_HOST"], port=int(os.environ["DB_PORT"]), user=os.environ["DB_USER"],
                                password=os.environ["DB_PASSWORD"], database=os.environ["DB_NAME"],
                                connect_timeout=5, read_timeout=10, write_timeout=10)
    return _conn


def handler(event, context):
    n = int(event["invocation"])
    try:
        conn = _connection()
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*), CONNECTION_ID() FROM global_connection_writes")
            rows_before, connection_id = cur.fetchone()
            cur.execute("INSERT INTO global_connection_writes (invocation, driver) VALUES (%s, %s)", (n, DRIVER))
        conn.commit()
    except Exception as exc:  # counted by the caller; the connection is kept as it is
        return {"invocation": n, "error": repr(exc)}
    return {"invocation": n, "rows_before": int(rows_before), "connection_id": int(connection_id)}
