"""asyncpg's type lookup through the pooler, on a server with JIT: the first use of an array
type makes asyncpg run `SELECT current_setting('jit') AS cur, set_config('jit', 'off', false)
AS new`, then the lookup, then `SELECT set_config('jit', $1, false)` with the old value. Found
from outside: the parameter form pinned every such client to its server connection for good
(transaction pooling became session pooling: with more clients than servers, 53300), and a
sharded database refused it (0A000). Each client here uses an array type; there are more
clients than server connections, and each must end with its own `jit` back as it was.
Usage: asyncpg_jit.py DSN CLIENTS"""

import asyncio
import sys

import asyncpg


async def main(dsn: str, clients: int) -> None:
    conns = [await asyncpg.connect(dsn) for _ in range(clients)]
    jit = await conns[0].fetchval("SHOW jit")
    for i, c in enumerate(conns):
        assert await c.fetchval("SELECT $1::int[]", [i, 1]) == [i, 1]
    for i, c in enumerate(conns):
        assert await c.fetchval("SELECT cardinality($1::int[])", [i, 2, 3]) == 3
        assert await c.fetchval("SHOW jit") == jit, "jit restored"
    # One client turns JIT off for itself: it stays off for it, on for the others.
    await conns[0].execute("SET jit = off")
    assert await conns[0].fetchval("SELECT $1::text[]", ["a"]) == ["a"]
    for c in conns[1:]:
        assert await c.fetchval("SHOW jit") == jit
    assert await conns[0].fetchval("SHOW jit") == "off"
    for c in conns:
        await c.close()
    print(f"ok {clients} clients, jit {jit}")


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
