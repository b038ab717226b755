"""A visit counter: an ordinary AWS Lambda function using PyMySQL, written the way users write them.

Nothing here knows about dbkeeper. It reads the usual settings from the environment:
DB_HOST, DB_PORT (default 3306), DB_USER, DB_PASSWORD, DB_NAME, and DB_SSL_CA (optional: a CA
bundle, e.g. the RDS one shipped with the function; when set, the connection uses TLS and checks
the server's certificate and host name against it); or, instead of DB_PASSWORD, DB_SECRET_ID: a
Secrets Manager secret whose `password` it reads at every connect (so a rotated password is
picked up; boto3 is part of Lambda's Python runtimes). With the dbkeeper layer and
AWS_LAMBDA_EXEC_WRAPPER=/opt/dbkeeper-wrapper, DB_HOST/DB_PORT point at the extension instead.

Two handlers, the two patterns found in the wild:
  handler_connect_per_invoke  connect, query, close on every invocation (the common anti-pattern:
                              a new database connection, with its handshake, for every request)
  handler_global_connection   one module-level connection, created on first use and reused by
                              later invocations of the same sandbox; ping(reconnect=True) before
                              use, and one reconnect + retry if the connection broke anyway.

Event (all optional): {"page": "/pricing"}
Result: {"handler", "page", "visits_total", "page_visits", "connection_id", "cold": bool}
"""

import os

import pymysql

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS visits (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    page VARCHAR(255) NOT NULL,
    request_id VARCHAR(64) NULL,
    visited_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY page_idx (page)
) ENGINE=InnoDB
"""

_schema_ready = False  # per sandbox: CREATE TABLE IF NOT EXISTS once
_conn = None  # handler_global_connection's connection, reused across invocations
_cold = True
_secrets = None  # the Secrets Manager client, made at the first connect that needs it


def _tls():
    ca = os.environ.get("DB_SSL_CA")
    if not ca:
        return {}
    # PyMySQL negotiates TLS when the server offers it (a database requiring TLS always does) and
    # stays plain when it does not: the dbkeeper extension on 127.0.0.1 never offers TLS.
    return {"ssl_ca": ca, "ssl_verify_cert": True, "ssl_verify_identity": True}


def _connect():
    return pymysql.connect(
        host=os.environ["DB_HOST"],
        port=int(os.environ.get("DB_PORT", "3306")),
        user=os.environ["DB_USER"],
        password=_password(),
        database=os.environ["DB_NAME"],
        connect_timeout=5,
        read_timeout=30,
        write_timeout=30,
        autocommit=False,
        charset="utf8mb4",
        **_tls(),
    )


def _password():
    global _secrets
    secret_id = os.environ.get("DB_SECRET_ID")
    if not secret_id:
        return os.environ.get("DB_PASSWORD", "")
    import json

    import boto3

    if _secrets is None:
        _secrets = boto3.client("secretsmanager")
    return json.loads(_secrets.get_secret_value(SecretId=secret_id)["SecretString"])["password"]


def _record_visit(conn, event, context):
    global _schema_ready
    page = str((event or {}).get("page") or "/")[:255]
    request_id = getattr(context, "aws_request_id", None)
    with conn.cursor() as cur:
        if not _schema_ready:
            cur.execute(CREATE_TABLE)
            _schema_ready = True
        cur.execute("INSERT INTO visits (page, request_id) VALUES (%s, %s)", (page, request_id))
        cur.execute("SELECT COUNT(*), SUM(page = %s), CONNECTION_ID() FROM visits", (page,))
        total, page_visits, connection_id = cur.fetchone()
    conn.commit()
    return {
        "page": page,
        "visits_total": int(total),
        "page_visits": int(page_visits or 0),
        "connection_id": int(connection_id),
    }


def _result(handler, body):
    global _cold
    body = {"handler": handler, **body, "cold": _cold}
    _cold = False
    return body


def handler_connect_per_invoke(event, context):
    conn = _connect()
    try:
        body = _record_visit(conn, event, context)
    finally:
        conn.close()
    return _result("handler_connect_per_invoke", body)


def _global_connection():
    global _conn
    if _conn is None:
        _conn = _connect()
    else:
        _conn.ping(reconnect=True)  # reconnects if the server closed it (wait_timeout, failover)
    return _conn


def handler_global_connection(event, context):
    global _conn
    conn = _global_connection()
    try:
        body = _record_visit(conn, event, context)
    except (pymysql.err.OperationalError, pymysql.err.InterfaceError):
        # The connection broke between the ping and the query: reconnect once and retry.
        try:
            conn.close()
        except Exception:
            pass
        _conn = None
        conn = _global_connection()
        body = _record_visit(conn, event, context)
    return _result("handler_global_connection", body)
