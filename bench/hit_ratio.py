"""Hit ratio of a cache key sequence over one or more scalegate instances.

Usage: hit_ratio.py KEYS REQUESTS PORT [PORT ...]
Sends REQUESTS GETs for /obj/<k>, k uniform in [0, KEYS) from a fixed seed, round-robin over the
ports (keep-alive), and prints the share answered from a cache (Cache-Status says "hit").
"""
import http.client
import random
import sys

keys, requests = int(sys.argv[1]), int(sys.argv[2])
ports = [int(p) for p in sys.argv[3:]]
conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=10) for p in ports]
rng = random.Random(42)
hits = 0
for i in range(requests):
    c = conns[i % len(conns)]
    c.request("GET", f"/obj/{rng.randrange(keys)}")
    r = c.getresponse()
    r.read()
    if "hit" in (r.getheader("cache-status") or ""):
        hits += 1
print(f"{hits / requests:.3f}")
