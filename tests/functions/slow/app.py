"""Queries through DB_HOST/DB_PORT, then sleeps past the function timeout when asked to: in
Python (`sleep`) or in the database (`sql_sleep`, tagged so a test can find the statement)."""

import os
import time

import pymysql


def handler(event, context):
    conn = pymysql.connect(host=os.environ["DB_HOST"], port=int(os.environ["DB_PORT"]), user=os.environ["DB_USER"],
                           password=os.environ["DB_PASSWORD"], database=os.environ["DB_NAME"])
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        (connection_id,) = cur.fetchone()
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("sql_sleep"):
        with conn.cursor() as cur:
            cur.execute("SELECT SLEEP(%s), %s", (event["sql_sleep"], event.get("tag", "")))
    conn.close()
    return {"connection_id": connection_id}
