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
PG=19421; P_SG=19423; SG_ADMIN=19429
pg_start $PG 1 -c max_connections=200
pooler_config "$WORK/sg.toml" $PG $P_SG $SG_ADMIN $POOL
load() {
  "$PGBIN/pgbench" -h 127.0.0.1 -p $P_SG -U postgres -S -n -M "$MODE" -c "$CLIENTS" -j 1 -t "$1" bench 2>&1 \
    | awk '/^number of transactions actually processed:/ {split($6, a, "/"); print a[1]}'
}
ready() { "$PGBIN/pg_isready" -q -h 127.0.0.1 -p $P_SG; }
for entry in "$@"; do
  callgrind_count "pg.${entry%%=*}" "${entry#*=}" "$WORK/sg.toml" "$MODE transaction" ready load "$WARM" "$TXNS"
done
