#!/usr/bin/env python3
"""Opens N keep-alive connections to HOST:PORT, sends one request on each, reads the response,
then holds them all idle until stdin closes or a signal arrives. Prints 'ready N' when done."""
import asyncio
import sys


async def one(host, port, path, conns, errors):
    try:
        r, w = await asyncio.open_connection(host, port)
        w.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await r.readexactly(length)
        conns.append((r, w))
    except Exception as e:  # noqa: BLE001 - counted and reported
        errors.append(repr(e))


async def main():
    host, port, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    conns, errors = [], []
    batch = 500
    for start in range(0, n, batch):
        await asyncio.gather(*(one(host, port, path, conns, errors) for _ in range(min(batch, n - start))))
    print(f"ready {len(conns)} errors {len(errors)} {errors[:1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
