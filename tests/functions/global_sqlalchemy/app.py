"""One global SQLAlchemy 2 engine (mysql+pymysql, the default QueuePool, pool_pre_ping=False), made at
module level from DB_HOST/DB_PORT/DB_USER/DB_PASSWORD/DB_NAME and kept for the sandbox's life.

Each invocation runs one transaction, `with engine.begin()`: reads (how many rows
`global_connection_writes` holds), writes one row tagged with its invocation number; leaving the block
commits. A driver error is returned, not raised, so a caller can count failed invocations. The pool
invalidates a connection it saw die (its own behaviour) and connects anew at the next checkout; without
pre-ping the first use of a connection that died while pooled fails.

Event: {"invocation": n}. Result: {"invocation", "rows_before", "connection_id"} or {"invocation", "error"}.
"""

import os

from sqlalchemy import URL, create_engine, text

DRIVER = "sqlalchemy"
engine = create_engine(
    URL.create("mysql+pymysql", username=os.environ["DB_USER"], password=os.environ["DB_PASSWORD"],
               host=os.environ["DB_HOST"], port=int(os.environ["DB_PORT"]), database=os.environ["DB_NAME"]),
    pool_pre_ping=False,
    connect_args={"connect_timeout": 5, "read_timeout": 10, "write_timeout": 10},
)


def handler(event, context):
    n = int(event["invocation"])
    try:
        with engine.begin() as c:
            rows_before, connection_id = c.execute(
                text("SELECT COUNT(*), CONNECTION_ID() FROM global_connection_writes")).one()
            c.execute(text("INSERT INTO global_connection_writes (invocation, driver) VALUES (:n, :driver)"),
                      {"n": n, "driver": DRIVER})
    except Exception as exc:  # counted by the caller
        return {"invocation": n, "error": repr(exc)}
    return {"invocation": n, "rows_before": int(rows_before), "connection_id": int(connection_id)}
