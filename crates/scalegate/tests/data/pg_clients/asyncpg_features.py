"""asyncpg through the pooler: a pool, prepared statements, executemany, COPY in and out,
transactions with rollback. asyncpg prepares every statement under its own names and resets
connections on release (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL). Every value is
checked. Usage: asyncpg_features.py DSN"""

import asyncio
import sys

import asyncpg


async def main(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    async with pool.acquire() as c:
        await c.execute("DROP TABLE IF EXISTS ap_t; CREATE TABLE ap_t (id int PRIMARY KEY, v text)")

    async def worker(w: int) -> None:
        for i in range(30):
            async with pool.acquire() as c:
                assert await c.fetchval("SELECT $1::int + $2::int", w, i) == w + i
                stmt = await c.prepare("SELECT $1::text || '-' || $2::text")
                assert await stmt.fetchval(str(w), str(i)) == f"{w}-{i}"
                if i % 5 == 0:
                    try:
                        async with c.transaction():
                            await c.execute("INSERT INTO ap_t VALUES ($1, 'x')", w * 1000 + i)
                            raise RuntimeError("roll back")
                    except RuntimeError:
                        pass
                    assert await c.fetchval("SELECT count(*) FROM ap_t WHERE id = $1", w * 1000 + i) == 0

    await asyncio.gather(*(worker(w) for w in range(4)))

    async with pool.acquire() as c:
        await c.executemany("INSERT INTO ap_t VALUES ($1, $2)", [(i, f"e{i}") for i in range(100)])
        assert await c.fetchval("SELECT count(*) FROM ap_t") == 100
        n = await c.copy_records_to_table("ap_t", records=[(200 + i, f"c{i}") for i in range(300)])
        assert n == "COPY 300", n
        rows = await c.fetch("SELECT id, v FROM ap_t WHERE id >= 200 ORDER BY id")
        assert len(rows) == 300 and rows[0]["v"] == "c0" and rows[-1]["v"] == "c299"
        out = []

        async def sink(chunk: bytes) -> None:
            out.append(chunk)

        await c.copy_from_query("SELECT id FROM ap_t WHERE id < 5 ORDER BY id", output=sink)
        assert b"".join(out) == b"0\n1\n2\n3\n4\n", out
    await pool.close()
    print("ok")


asyncio.run(main(sys.argv[1]))
