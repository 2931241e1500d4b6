"""Two psycopg 3 connections with default settings (prepare_threshold 5) take turns on a pooler
with pool_size 1: rollbacks, failed transactions and DROP/ALTER make psycopg send DEALLOCATE ALL
(simple protocol) or run it in a pipeline (extended protocol). Every returned value is checked;
any error (26000 above all) fails the script. Usage: psycopg_alternate.py DSN ROUNDS"""

import sys

import psycopg
from psycopg import errors

dsn, rounds = sys.argv[1], int(sys.argv[2])
a = psycopg.connect(dsn)
b = psycopg.connect(dsn)
with a.cursor() as cur:
    cur.execute("DROP TABLE IF EXISTS alt_t")
    cur.execute("CREATE TABLE alt_t (id int PRIMARY KEY, v text)")
a.commit()

checked = 0
for i in range(rounds):
    for n, c in enumerate((a, b)):
        key = i * 2 + n
        # Prepared after five executions: every client reaches the threshold.
        with c.cursor() as cur:
            cur.execute("SELECT %s::int + 1", (key,))
            assert cur.fetchone() == (key + 1,)
            cur.execute("INSERT INTO alt_t VALUES (%s, %s)", (key, f"v{key}"))
            cur.execute("SELECT v FROM alt_t WHERE id = %s", (key,))
            assert cur.fetchone() == (f"v{key}",)
        if i % 3 == 0:
            c.rollback()  # psycopg deallocates everything after a ROLLBACK
            with c.cursor() as cur:
                cur.execute("SELECT count(*) FROM alt_t WHERE id = %s", (key,))
                assert cur.fetchone() == (0,), "rolled back row is gone"
        c.commit()
        # A failed transaction block.
        try:
            with c.transaction():
                with c.cursor() as cur:
                    cur.execute("SELECT 1 / %s", (0,))
        except errors.DivisionByZero:
            pass
        else:
            raise AssertionError("division by zero did not fail")
        c.commit()
        if i % 5 == 4:
            # DDL also makes psycopg drop its prepared statements.
            with c.cursor() as cur:
                cur.execute(f"ALTER TABLE alt_t ADD COLUMN c{key} int")
                cur.execute(f"ALTER TABLE alt_t DROP COLUMN c{key}")
            c.commit()
        # The pipeline runs DEALLOCATE ALL through the extended protocol.
        if i % 4 == 1:
            with c.pipeline():
                with c.cursor() as cur:
                    cur.execute("SELECT %s::text", (f"p{key}",))
                    assert cur.fetchone() == (f"p{key}",)
            c.rollback()
            with c.pipeline():
                with c.cursor() as cur:
                    cur.execute("SELECT %s::int * 2", (key,))
                    assert cur.fetchone() == (key * 2,)
            c.commit()
        checked += 1

with a.cursor() as cur:
    cur.execute("SELECT count(*) FROM alt_t")
    (rows,) = cur.fetchone()
a.commit()
expected = sum(1 for i in range(rounds) for _ in range(2) if i % 3 != 0)
assert rows == expected, (rows, expected)
print(f"ok {checked} turns, {rows} rows")
