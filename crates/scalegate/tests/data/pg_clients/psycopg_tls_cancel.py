"""psycopg 3 (libpq 17+ sends cancel requests over TLS) cancels a query through the pooler
with sslmode=require: the query must end with QueryCanceled and cancel_safe() must return
without an error (found from outside: the pooler closed the TLS connection of a cancel
without close_notify, and libpq reported the cancel as failed)."""
import sys
import threading
import time

import psycopg

dsn = sys.argv[1] + " sslmode=require"
for turn in range(3):
    conn = psycopg.connect(dsn, autocommit=True)
    outcome = {}

    def sleep():
        try:
            conn.execute("SELECT pg_sleep(5)")
            outcome["query"] = "finished"
        except psycopg.errors.QueryCanceled:
            outcome["query"] = "cancelled"

    worker = threading.Thread(target=sleep)
    worker.start()
    time.sleep(0.5)
    conn.cancel_safe()
    worker.join()
    assert outcome.get("query") == "cancelled", outcome
    conn.close()
print("ok 3 cancels over TLS")
