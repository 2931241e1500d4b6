#!/usr/bin/env bash
# CPU per request of one running proxy: drives it with wrk -t1 -c50 for DURATION seconds and
# reads the user and system time of the process (all threads, and its direct children) from
# /proc/PID/stat before and after. bench/http.sh does the same for every proxy in each round.
#
# Usage: bench/cpu_per_request.sh PID URL      (e.g. a proxy started by hand in front of nginx)
# Env:   DURATION (default 5), CONNS (default 50)
# Prints: req/s, user µs, system µs and total µs of CPU per request.
set -euo pipefail
PID=$1; URL=$2
DURATION=${DURATION:-5}; CONNS=${CONNS:-50}
source "$(dirname "$0")/lib.sh"
t0=$(cpu_ticks "$PID")
out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "$URL")
t1=$(cpu_ticks "$PID")
n=$(awk '/requests in/ {print $1}' <<<"$out")
read -r u s t < <(cpu_per "$t0" "$t1" "$n")
awk -v n="$n" -v d="$DURATION" -v u="$u" -v s="$s" -v t="$t" \
  'BEGIN { printf "req/s %.0f  user %.2f us  sys %.2f us  total %.2f us per request\n", n/d, u, s, t }'
