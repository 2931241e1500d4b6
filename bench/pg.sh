#!/usr/bin/env bash
# PostgreSQL pooler benchmark (issue 6): pgbench -S (select-only) through scalegate, through
# PgBouncer (transaction mode, same pool size) and straight to PostgreSQL, in interleaved rounds
# of the same run, for each protocol mode (simple, extended, prepared) and client count. For every
# run through a pooler, its own CPU time (user + system, from /proc/PID/stat before and after) is
# divided by the transactions pgbench completed: µs of CPU per transaction, and its ratio to
# PgBouncer's (the pooler's cost, which tps on this small machine hides: PostgreSQL and pgbench
# take most of the cores).
#
# One PostgreSQL 15 cluster (initdb in a temp dir, fsync off), pgbench scale 10. PgBouncer and
# scalegate each run one thread (PgBouncer is single-threaded; postgres.worker_threads = 1).
#
# Usage: bench/pg.sh [--write]     (--write appends the results to bench/RESULTS.md)
# Env:   ROUNDS (default 5), DURATION seconds per run (default 5), CLIENTS (default "50 500"),
#        MODES (default "simple extended prepared"), POOL (default 20), JOBS pgbench threads (1),
#        FLOOR=1 also runs crates/testkit's floor_pooler (the least a transaction pooler can do:
#        relay batches, hand server connections back at an idle ReadyForQuery) as another column,
#        DIRECT=0 skips the runs straight to PostgreSQL, SG=path runs that scalegate binary.
# On a shared machine run it under the build lock so that no build overlaps a round:
#        flock /tmp/scalegate-cargo.lock bash bench/pg.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}; DURATION=${DURATION:-5}; CLIENTS=${CLIENTS:-50 500}
MODES=${MODES:-simple extended prepared}; POOL=${POOL:-20}; JOBS=${JOBS:-1}; WRITE=${1:-}
FLOOR=${FLOOR:-0}; DIRECT=${DIRECT:-1}

source bench/lib.sh
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
need pgbench:postgresql-client pgbouncer:pgbouncer
if [ -z "${SG:-}" ]; then  # SG=path runs a prebuilt binary instead of this tree's release build
  cargo build --release --quiet -p scalegate
  SG=$PWD/target/release/scalegate
fi

PG=19401; P_BOUNCER=19402; P_SG=19403; P_FLOOR=19404; SG_ADMIN=19409
pg_start $PG 10 -c max_connections=600 -c shared_buffers=256MB

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
"${RUNAS[@]}" pgbouncer "$WORK/pgbouncer.ini" >/dev/null 2>&1 & PIDS+=($!); PID_pgbouncer=$!

# --- scalegate -------------------------------------------------------------------------------
pooler_config "$WORK/sg.toml" $PG $P_SG $SG_ADMIN $POOL "max_client_conn = 2000"
RUST_LOG=warn "$SG" run --config "$WORK/sg.toml" & PIDS+=($!); PID_scalegate=$!
TARGETS="pgbouncer scalegate"; [ "$DIRECT" = 1 ] && TARGETS="direct $TARGETS"
if [ "$FLOOR" = 1 ]; then
  cargo build --release --quiet -p scalegate-testkit --bin floor_pooler
  "$PWD/target/release/floor_pooler" "127.0.0.1:$P_FLOOR" "127.0.0.1:$PG" postgres bench "$POOL" & PIDS+=($!); PID_floor=$!
  TARGETS+=" floor"
fi
sleep 1

# run TARGET_PORT MODE CLIENTS [PID] → "tps cpu_us" (tps 0 when pgbench fails; cpu_us is the
# process's µs of CPU per transaction, "-" without a PID)
run() {
  local out t0 t1 n cpu=-
  [ -n "${4:-}" ] && t0=$(cpu_ticks "$4")
  out=$("$PGBIN/pgbench" -h 127.0.0.1 -p "$1" -U postgres -S -n -M "$2" -c "$3" -j "$JOBS" \
        -T "$DURATION" bench 2>&1) || true
  if [ -n "${4:-}" ]; then
    t1=$(cpu_ticks "$4")
    n=$(echo "$out" | awk '/^number of transactions actually processed:/ {print $6}')
    cpu=$(cpu_per "$t0" "$t1" "${n:-0}" | awk '{print $3}')
  fi
  local tps; tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p')
  # A run where clients aborted (e.g. prepared statements a pooler lost) counts as failed.
  if [ -z "$tps" ] || ! echo "$out" | grep -q "number of failed transactions: 0" \
     || echo "$out" | grep -q "aborted"; then
    echo "$out" | tail -3 >&2; tps=0
  fi
  [ "${tps:-0}" = 0 ] && cpu=-
  echo "${tps:-0} $cpu"
}

declare -A R C
for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do
    for c in $CLIENTS; do
      for t in $TARGETS; do
        pid=""
        case $t in direct) port=$PG;; pgbouncer) port=$P_BOUNCER; pid=$PID_pgbouncer;;
                   scalegate) port=$P_SG; pid=$PID_scalegate;; floor) port=$P_FLOOR; pid=$PID_floor;; esac
        # Direct with 500 clients needs 500 backends; it runs, it is just the physical limit.
        read -r v cpu < <(run "$port" "$mode" "$c" "$pid")
        R[$mode,$c,$t]+="$v "; [ "$cpu" = - ] || C[$mode,$c,$t]+="$cpu "
        echo "round $round $mode c=$c $t: $v tps, $cpu µs CPU per transaction" >&2
      done
    done
  done
done

med() { # median of space-separated numbers, "-" for none
  [ -n "${1// /}" ] || { echo -; return; }
  tr ' ' '\n' <<<"$1" | grep . | median
}
tps() { [ "$1" = - ] && echo - || printf "%.0f" "$1"; }
ratio() { awk -v a="$1" -v b="$2" -v bad="$3" 'BEGIN { if (a != "-" && b != "-" && b > 0 && a > 0) printf "%.2f×", a / b; else print bad }'; }
table=$(
  head="| mode | clients | direct tps | pgbouncer tps | scalegate tps |"; rule="| --- | ---: | ---: | ---: | ---: |"
  [ "$FLOOR" = 1 ] && { head+=" floor tps |"; rule+=" ---: |"; }
  head+=" scalegate ÷ pgbouncer | scalegate ÷ direct | pgbouncer µs/txn | scalegate µs/txn |"; rule+=" ---: | ---: | ---: | ---: |"
  [ "$FLOOR" = 1 ] && { head+=" floor µs/txn |"; rule+=" ---: |"; }
  head+=" CPU scalegate ÷ pgbouncer |"; rule+=" ---: |"
  [ "$FLOOR" = 1 ] && { head+=" CPU floor ÷ pgbouncer |"; rule+=" ---: |"; }
  echo "$head"; echo "$rule"
  for mode in $MODES; do
    for c in $CLIENTS; do
      d=$(med "${R[$mode,$c,direct]:-}"); b=$(med "${R[$mode,$c,pgbouncer]:-}"); s=$(med "${R[$mode,$c,scalegate]:-}")
      cb=$(med "${C[$mode,$c,pgbouncer]:-}"); cs=$(med "${C[$mode,$c,scalegate]:-}")
      row="| $mode | $c | $(tps "$d") | $(tps "$b") | $(tps "$s") |"
      [ "$FLOOR" = 1 ] && { f=$(med "${R[$mode,$c,floor]:-}"); cf=$(med "${C[$mode,$c,floor]:-}"); row+=" $(tps "$f") |"; }
      row+=" $(ratio "$s" "$b" "pgbouncer failed") | $(ratio "$s" "$d" -) | $cb | $cs |"
      [ "$FLOOR" = 1 ] && row+=" $cf |"
      row+=" $(ratio "$cs" "$cb" -) |"
      [ "$FLOOR" = 1 ] && row+=" $(ratio "$cf" "$cb" -) |"
      echo "$row"
    done
  done
  echo
  echo "µs of CPU per transaction by round:"
  echo
  echo '```'
  for mode in $MODES; do for c in $CLIENTS; do for t in $TARGETS; do
    [ -n "${C[$mode,$c,$t]:-}" ] && echo "$mode c=$c $t: ${C[$mode,$c,$t]% }"
  done; done; done
  echo '```'
)
echo "$table"
if [ "$WRITE" = "--write" ]; then
  {
    echo
    echo "### $(date +%F) — bench/pg.sh"
    echo
    echo "Machine: $(nproc) cores; $(uname -r); load average before the run $LOAD0. Peers: $BOUNCER_VERSION, PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), scalegate $("$SG" --version | awk '{print $2}') (commit $(git rev-parse --short HEAD))."
    echo "Command: \`ROUNDS=$ROUNDS DURATION=$DURATION CLIENTS=\"$CLIENTS\" MODES=\"$MODES\" POOL=$POOL DIRECT=$DIRECT FLOOR=$FLOOR bench/pg.sh\` — pgbench -S -j $JOBS -T $DURATION, pool size $POOL, transaction mode; medians of $ROUNDS interleaved rounds. µs/txn = the pooler process's user + system time ÷ transactions completed."
    echo
    echo "$table"
  } >> bench/RESULTS.md
fi
