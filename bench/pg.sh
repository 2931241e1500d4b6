#!/usr/bin/env bash
# PostgreSQL pooler benchmark (issue 6): pgbench -S (select-only) through scalegate, through
# PgBouncer (transaction mode, same pool size) and straight to PostgreSQL, in interleaved rounds
# of the same run, for each protocol mode (simple, extended, prepared) and client count.
#
# One PostgreSQL 15 cluster (initdb in a temp dir, fsync off), pgbench scale 10. PgBouncer and
# scalegate each run one thread (PgBouncer is single-threaded; postgres.worker_threads = 1).
#
# Usage: bench/pg.sh [--write]     (--write appends the results to bench/RESULTS.md)
# Env:   ROUNDS (default 5), DURATION seconds per run (default 5), CLIENTS (default "50 500"),
#        MODES (default "simple extended prepared"), POOL (default 20), JOBS pgbench threads (1),
#        FLOOR=1 also runs crates/testkit's floor_pooler (the least a transaction pooler can do:
#        relay batches, hand server connections back at an idle ReadyForQuery) as another column.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}; DURATION=${DURATION:-5}; CLIENTS=${CLIENTS:-50 500}
MODES=${MODES:-simple extended prepared}; POOL=${POOL:-20}; JOBS=${JOBS:-1}; WRITE=${1:-}
FLOOR=${FLOOR:-0}

source bench/lib.sh
need pgbench:postgresql-client pgbouncer:pgbouncer
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release --quiet -p scalegate
SG=$PWD/target/release/scalegate

PG=19401; P_BOUNCER=19402; P_SG=19403; P_FLOOR=19404; SG_ADMIN=19409
RUNAS=(); [ "$(id -u)" -eq 0 ] && RUNAS=(runuser -u postgres --)
chown -R postgres: "$WORK" 2>/dev/null || true

# --- PostgreSQL ------------------------------------------------------------------------------
"${RUNAS[@]}" "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth=trust --no-sync >/dev/null
"${RUNAS[@]}" "$PGBIN/postgres" -D "$WORK/pg" -p $PG -h 127.0.0.1 -k "$WORK" \
  -c max_connections=600 -c fsync=off -c synchronous_commit=off -c shared_buffers=256MB \
  >"$WORK/pg.log" 2>&1 & PIDS+=($!)
until "$PGBIN/pg_isready" -q -h 127.0.0.1 -p $PG; do sleep 0.2; done
"$PGBIN/psql" -X -q -h 127.0.0.1 -p $PG -U postgres -c "CREATE DATABASE bench" postgres
"$PGBIN/pgbench" -i -q -s 10 -h 127.0.0.1 -p $PG -U postgres bench >/dev/null 2>&1

# --- PgBouncer -------------------------------------------------------------------------------
echo '"postgres" ""' > "$WORK/users.txt"
# max_prepared_statements (protocol-level prepared statements in transaction mode) exists from
# PgBouncer 1.21; older versions refuse the key, and -M prepared then fails through them.
BOUNCER_VERSION=$(pgbouncer --version | head -1)
PREPARED_LINE=""
if printf '%s\n' "1.21" "$(echo "$BOUNCER_VERSION" | awk '{print $2}')" | sort -V -C; then
  PREPARED_LINE="max_prepared_statements = 200"
fi
cat > "$WORK/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PG dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $P_BOUNCER
unix_socket_dir =
auth_type = trust
auth_file = $WORK/users.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 2000
$PREPARED_LINE
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
INI
chown postgres: "$WORK"/pgbouncer.ini "$WORK"/users.txt 2>/dev/null || true
"${RUNAS[@]}" pgbouncer "$WORK/pgbouncer.ini" >/dev/null 2>&1 & PIDS+=($!)

# --- scalegate -------------------------------------------------------------------------------
cat > "$WORK/sg.toml" <<TOML
[admin]
listen = "127.0.0.1:$SG_ADMIN"
[postgres]
listen = "127.0.0.1:$P_SG"
worker_threads = 1
max_client_conn = 2000
[postgres.databases.bench]
primary = "postgres://postgres@127.0.0.1:$PG/bench"
pool_mode = "transaction"
pool_size = $POOL
TOML
RUST_LOG=warn "$SG" run --config "$WORK/sg.toml" & PIDS+=($!)
TARGETS="direct pgbouncer scalegate"
if [ "$FLOOR" = 1 ]; then
  cargo build --release --quiet -p scalegate-testkit --bin floor_pooler
  "$PWD/target/release/floor_pooler" "127.0.0.1:$P_FLOOR" "127.0.0.1:$PG" postgres bench "$POOL" & PIDS+=($!)
  TARGETS+=" floor"
fi
sleep 1

# run TARGET_PORT MODE CLIENTS → tps (0 when pgbench fails)
run() {
  local out
  out=$("$PGBIN/pgbench" -h 127.0.0.1 -p "$1" -U postgres -S -n -M "$2" -c "$3" -j "$JOBS" \
        -T "$DURATION" bench 2>&1) || true
  local tps; tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p')
  # A run where clients aborted (e.g. prepared statements a pooler lost) counts as failed.
  if [ -z "$tps" ] || ! echo "$out" | grep -q "number of failed transactions: 0" \
     || echo "$out" | grep -q "aborted"; then
    echo "$out" | tail -3 >&2; tps=0
  fi
  echo "${tps:-0}"
}

declare -A R
for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do
    for c in $CLIENTS; do
      for t in $TARGETS; do
        case $t in direct) port=$PG;; pgbouncer) port=$P_BOUNCER;; scalegate) port=$P_SG;; floor) port=$P_FLOOR;; esac
        # Direct with 500 clients needs 500 backends; it runs, it is just the physical limit.
        v=$(run "$port" "$mode" "$c")
        R[$mode,$c,$t]+="$v "
        echo "round $round $mode c=$c $t: $v tps" >&2
      done
    done
  done
done

table=$(
  if [ "$FLOOR" = 1 ]; then
    echo "| mode | clients | direct tps | pgbouncer tps | scalegate tps | scalegate ÷ pgbouncer | scalegate ÷ direct | floor tps | floor ÷ pgbouncer |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  else
    echo "| mode | clients | direct tps | pgbouncer tps | scalegate tps | scalegate ÷ pgbouncer | scalegate ÷ direct |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  fi
  for mode in $MODES; do
    for c in $CLIENTS; do
      d=$(echo ${R[$mode,$c,direct]} | tr ' ' '\n' | median)
      b=$(echo ${R[$mode,$c,pgbouncer]} | tr ' ' '\n' | median)
      s=$(echo ${R[$mode,$c,scalegate]} | tr ' ' '\n' | median)
      rb=$(awk -v s="$s" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f×", s / b; else print "pgbouncer failed" }')
      rd=$(awk -v s="$s" -v d="$d" 'BEGIN { if (d > 0) printf "%.2f×", s / d; else print "-" }')
      if [ "$FLOOR" = 1 ]; then
        f=$(echo ${R[$mode,$c,floor]} | tr ' ' '\n' | median)
        rf=$(awk -v f="$f" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f×", f / b; else print "-" }')
        echo "| $mode | $c | $d | $b | $s | $rb | $rd | $f | $rf |"
      else
        echo "| $mode | $c | $d | $b | $s | $rb | $rd |"
      fi
    done
  done
)
echo "$table"
if [ "$WRITE" = "--write" ]; then
  {
    echo
    echo "### $(date +%F) — bench/pg.sh"
    echo
    echo "Machine: $(nproc) cores; $(uname -r). Peers: $BOUNCER_VERSION, PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), scalegate $("$SG" --version | awk '{print $2}')."
    echo "Command: \`ROUNDS=$ROUNDS DURATION=$DURATION bench/pg.sh\` — pgbench -S -j $JOBS -T $DURATION, pool size $POOL, transaction mode; medians of $ROUNDS interleaved rounds."
    echo
    echo "$table"
  } >> bench/RESULTS.md
fi
