"""A psycopg 3 client connected with client_encoding LATIN1 resets its session (RESET ALL,
DISCARD ALL, RESET client_encoding) and then stores and reads back non-ASCII text: the encoding
psycopg writes in must be the one the session reads (a regression hunt found 'é' stored as two
characters after RESET ALL). Usage: psycopg_encoding_reset.py DSN PREPARE_THRESHOLD ('none' or
a number)"""

import sys

import psycopg

dsn, threshold = sys.argv[1], sys.argv[2]
conn = psycopg.connect(dsn, client_encoding="LATIN1", autocommit=True)
conn.prepare_threshold = None if threshold == "none" else int(threshold)
checked = 0
for reset in ["RESET ALL", "DISCARD ALL", "RESET client_encoding", "SET client_encoding TO DEFAULT"]:
    for _ in range(3):
        conn.execute("SET client_encoding = 'LATIN1'")
        conn.execute(reset)
        row = conn.execute("SELECT %s::text, length(%s::text)", ("é", "é")).fetchone()
        assert row == ("é", 1), (reset, row)
        checked += 1
print(f"ok {checked} checks")
