#!/usr/bin/env python3
"""Runs the workspace's test binaries several at a time, each as `cargo test` would.

`cargo test` runs its test binaries one after another, and most of ours spend their time
waiting on the services they start (PostgreSQL, Redis, NATS), on timeouts they provoke and on
sockets: one binary at a time kept a 2-core machine about a third busy. This builds them with
`cargo test --no-run`, then runs up to TEST_JOBS (default 3) at once, the longest first, each
from its package's directory with its output kept apart; a binary's output is printed when it
ends (whole when it failed). Arguments after the script's name go to every binary (a name
filter, `--nocapture`). Exits non-zero when any test failed.
"""

import json
import os
import subprocess
import sys
import threading
import time

# Binaries that take the longest (about 20 s or more when run alone), started first so that
# the run is not left waiting on one of them at its end.
LONGEST = [
    "queue_faults", "pg_routing", "pg", "hostile", "pg_clients", "slow_clients",
    "balancer_recovery", "cache_purge", "queue", "pg_outage",
]


def binaries():
    """(name, executable, package directory) of every test binary, built now if needed."""
    cmd = ["cargo", "test", "--workspace", "--locked", "--no-run", "--message-format=json"]
    built = subprocess.run(cmd, stdout=subprocess.PIPE, check=True, text=True)
    found = []
    for line in built.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue
        name = msg["target"]["name"]
        found.append((name, msg["executable"], os.path.dirname(msg["manifest_path"])))
    rank = {n: i for i, n in enumerate(LONGEST)}
    return sorted(found, key=lambda b: rank.get(b[0], len(LONGEST)))


def main():
    jobs = int(os.environ.get("TEST_JOBS", "3"))
    args = sys.argv[1:]
    todo = binaries()
    lock = threading.Lock()
    failed = []

    def run(name, exe, pkg_dir):
        env = dict(os.environ, CARGO_MANIFEST_DIR=pkg_dir)
        start = time.monotonic()
        done = subprocess.run([exe, *args], cwd=pkg_dir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace")
        took = time.monotonic() - start
        lines = done.stdout.splitlines()
        summary = next((l for l in reversed(lines) if l.startswith("test result:")), "")
        with lock:
            print(f"{name} ({os.path.basename(exe)}): {took:.1f}s {summary}", flush=True)
            if done.returncode != 0:
                failed.append(name)
                print(done.stdout, flush=True)

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                item = todo.pop(0)
            run(*item)

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        print(f"FAILED: {' '.join(failed)}", flush=True)
        sys.exit(1)
    print("every test binary passed", flush=True)


if __name__ == "__main__":
    main()
