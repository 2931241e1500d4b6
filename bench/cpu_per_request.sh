#!/usr/bin/env bash
# CPU per request of one running proxy: drives it with wrk -t1 -c50 for DURATION seconds and
# reads the process's user and system time from /proc/PID/stat before and after.
#
# Usage: bench/cpu_per_request.sh PID URL      (e.g. a proxy started by hand in front of nginx)
# Env:   DURATION (default 5), CONNS (default 50)
# Prints: req/s, user µs, system µs and total µs of CPU per request.
set -euo pipefail
PID=$1; URL=$2
DURATION=${DURATION:-5}; CONNS=${CONNS:-50}
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$PID/stat")
out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "$URL")
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$PID/stat")
n=$(awk '/requests in/ {print $1}' <<<"$out")
awk -v n="$n" -v d="$DURATION" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v t="$(getconf CLK_TCK)" \
  'BEGIN { printf "req/s %.0f  user %.2f us  sys %.2f us  total %.2f us per request\n", n/d, u/t*1e6/n, s/t*1e6/n, (u+s)/t*1e6/n }'
