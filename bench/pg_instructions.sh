#!/usr/bin/env bash
# User-space instructions per pooled transaction, counted by valgrind's callgrind (the pooler's
# counterpart of bench/instructions.sh): a measure that does not move with the machine's load,
# so two builds can be compared to the instruction. The kernel's share is not counted;
# bench/pg.sh measures the whole against PgBouncer.
#
# Each scalegate binary runs alone under callgrind as a transaction-mode pooler (pool POOL) in
# front of its own PostgreSQL: WARM transactions first, then the counters are zeroed, pgbench -S
# runs TXNS transactions per client over CLIENTS clients and the counters are dumped.
#
# Usage: bench/pg_instructions.sh name=path [name=path ...]
# Env:   MODE (simple, extended or prepared; default simple), CLIENTS (default 50), TXNS per
#        client (default 400), WARM per client (default 40), POOL (default 20), TOP functions to
#        list per binary (default 25; 0 lists none).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-simple}; CLIENTS=${CLIENTS:-50}; TXNS=${TXNS:-400}; WARM=${WARM:-40}
POOL=${POOL:-20}; TOP=${TOP:-25}
source bench/lib.sh
need valgrind:valgrind pgbench:postgresql-client
mkdir -p bench/out
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PG=19421; P_SG=19423; SG_ADMIN=19429
RUNAS=(); [ "$(id -u)" -eq 0 ] && RUNAS=(runuser -u postgres --)
chown -R postgres: "$WORK" 2>/dev/null || true
"${RUNAS[@]}" "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth=trust --no-sync >/dev/null
"${RUNAS[@]}" "$PGBIN/postgres" -D "$WORK/pg" -p $PG -h 127.0.0.1 -k "$WORK" \
  -c max_connections=200 -c fsync=off -c synchronous_commit=off >"$WORK/pg.log" 2>&1 & PIDS+=($!)
until "$PGBIN/pg_isready" -q -h 127.0.0.1 -p $PG; do sleep 0.2; done
"$PGBIN/psql" -X -q -h 127.0.0.1 -p $PG -U postgres -c "CREATE DATABASE bench" postgres
"$PGBIN/pgbench" -i -q -s 1 -h 127.0.0.1 -p $PG -U postgres bench >/dev/null 2>&1
cat > "$WORK/sg.toml" <<TOML
[admin]
listen = "127.0.0.1:$SG_ADMIN"
[postgres]
listen = "127.0.0.1:$P_SG"
worker_threads = 1
[postgres.databases.bench]
primary = "postgres://postgres@127.0.0.1:$PG/bench"
pool_mode = "transaction"
pool_size = $POOL
TOML
load() {
  "$PGBIN/pgbench" -h 127.0.0.1 -p $P_SG -U postgres -S -n -M "$MODE" -c "$CLIENTS" -j 1 -t "$1" bench 2>&1 \
    | awk '/^number of transactions actually processed:/ {split($6, a, "/"); print a[1]}'
}
for entry in "$@"; do
  name=${entry%%=*}; bin=${entry#*=}; out="$PWD/bench/out/callgrind.pg.$name"
  rm -f "$out" "$out".*
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run --config "$WORK/sg.toml" \
    2>"$WORK/vg.$name.err" & VG=$!; PIDS+=($VG)
  for _ in $(seq 600); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p $P_SG && break; sleep 0.2; done
  load "$WARM" >/dev/null
  callgrind_control -z "$VG" >/dev/null
  ok=$(load "$TXNS")
  callgrind_control -d "$VG" >/dev/null
  sleep 1
  kill "$VG"; wait "$VG" 2>/dev/null || true
  dump=$(ls -t "$out".* 2>/dev/null | head -1)
  ir=$(awk '/^summary:|^totals:/ {print $2; exit}' "$dump")
  awk -v n="$name" -v ir="$ir" -v r="$ok" -v m="$MODE" 'BEGIN { printf "%s: %d %s transactions, %.0f Ir per transaction (%s)\n", n, r, m, ir / r, "'"$dump"'" }'
  if [ "$TOP" -gt 0 ]; then
    callgrind_annotate --inclusive=no --threshold=100 "$dump" 2>/dev/null | awk '/file:function/ {go=1; getline; next} go && NF && !/\(100.0%\)/' | head -"$TOP" | sed 's/^/    /' || true
  fi
done
