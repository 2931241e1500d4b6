"""psycopg 3 with default settings through the pooler: prepared statements (threshold 5),
pipeline mode, COPY in and out, executemany, rollbacks, server-side settings. Every value is
checked. Usage: psycopg_features.py DSN"""

import sys

import psycopg

dsn = sys.argv[1]
with psycopg.connect(dsn) as conn:
    conn.execute("DROP TABLE IF EXISTS pf_t")
    conn.execute("CREATE TABLE pf_t (id int PRIMARY KEY, v text)")
    conn.commit()

    # Prepared after five executions, reused after.
    for i in range(12):
        assert conn.execute("SELECT %s::int * 3", (i,)).fetchone() == (i * 3,)
    conn.commit()

    # COPY in and out.
    with conn.cursor() as cur:
        with cur.copy("COPY pf_t (id, v) FROM STDIN") as copy:
            for i in range(500):
                copy.write_row((i, f"r{i}"))
    conn.commit()
    with conn.cursor() as cur:
        rows = []
        with cur.copy("COPY (SELECT id, v FROM pf_t ORDER BY id) TO STDOUT") as copy:
            for row in copy.rows():
                rows.append(row)
    assert len(rows) == 500 and rows[0] == ("0", "r0") and rows[-1] == ("499", "r499"), rows[:2]
    conn.commit()

    # Pipeline mode.
    with conn.pipeline():
        curs = [conn.execute("SELECT v FROM pf_t WHERE id = %s", (i,)) for i in range(20)]
        conn.execute("UPDATE pf_t SET v = 'p' WHERE id = %s", (1,))
    assert [c.fetchone()[0] for c in curs] == [f"r{i}" for i in range(20)]
    conn.commit()
    assert conn.execute("SELECT v FROM pf_t WHERE id = 1").fetchone() == ("p",)
    conn.commit()

    # executemany and a rollback.
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO pf_t VALUES (%s, %s)", [(1000 + i, "m") for i in range(50)])
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM pf_t WHERE id >= 1000").fetchone() == (0,)
    conn.commit()

    # A session setting is kept for this client across transactions.
    conn.execute("SET application_name = 'pf-app'")
    conn.commit()
    for _ in range(3):
        assert conn.execute("SHOW application_name").fetchone() == ("pf-app",)
        conn.commit()

print("ok")
