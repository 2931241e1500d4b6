"""asyncpg clients holding a prepared statement across a schema change that alters its result
type. Found from outside (session 21): after the first client met PostgreSQL's 0A000 "cached plan
must not change result type", the pooler prepared the old statement afresh for another client on
a server that no longer had it, and that client decoded the new rows with the description it had
cached: a `real` 2.0 read as the `int` 1073741824, or a ProtocolError for a new column, on every
later call. Each client must read the table's current rows, as it does straight to PostgreSQL
(where asyncpg gets 0A000 and prepares the statement again by itself).
Usage: asyncpg_alter.py DSN CLIENTS"""

import asyncio
import sys

import asyncpg


async def main(dsn: str, clients: int) -> None:
    cs = [await asyncpg.connect(dsn) for _ in range(clients)]
    await cs[0].execute(
        "DROP TABLE IF EXISTS alter_t; CREATE TABLE alter_t (id int, x int);"
        "INSERT INTO alter_t VALUES (1, 2)"
    )
    q = "SELECT * FROM alter_t WHERE pg_sleep(0.2) IS NOT NULL"
    # Every client prepares and caches the statement; the sleep spreads them over the servers.
    for row in await asyncio.gather(*[c.fetchrow(q) for c in cs]):
        assert tuple(row) == (1, 2), tuple(row)
    await cs[0].execute("ALTER TABLE alter_t ALTER COLUMN x TYPE real")
    for c in cs[1:] * 3:
        row = tuple(await c.fetchrow(q))
        assert row == (1, 2.0), f"read {row} after the type change"
    await cs[0].execute("ALTER TABLE alter_t ADD COLUMN y text DEFAULT 'new'")
    for c in cs[1:] * 3:
        row = tuple(await c.fetchrow(q))
        assert row == (1, 2.0, "new"), f"read {row} after the new column"
    await cs[0].execute("DROP TABLE alter_t")
    for c in cs:
        await c.close()
    print(f"ok {clients} clients")


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
