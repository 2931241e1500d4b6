#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: a measure that
# does not move with the machine's load (wall-clock and CPU time do, on a shared 2-core VM), so two
# builds can be compared to the instruction. The kernel's share (~2/3 of a request's CPU) is not
# counted; bench/http.sh measures the whole.
#
# Each scalegate binary runs alone under callgrind in front of two nginx backends (as in
# bench/http.sh): WARM requests first, then the counters are zeroed, REQUESTS requests are sent
# with h2load (HTTP/1.1, 50 connections, fixed count) and the counters are dumped.
#
# Usage: bench/instructions.sh name=path [name=path ...]   (e.g. two commits' release binaries)
# Env:   REQUESTS (default 20000), WARM (default 2000), CONNS (default 50), URLPATH (default /tiny),
#        TOP functions to list per binary (default 25; 0 lists none), PROTO=h2 for HTTP/2 with
#        prior knowledge (h2c, 20 connections × 10 streams, as bench/http.sh's HTTP/2 row).
# Prints Ir per request for each binary and keeps the callgrind files in bench/out/ for
# callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-20000}; WARM=${WARM:-2000}; CONNS=${CONNS:-50}; URLPATH=${URLPATH:-/tiny}
TOP=${TOP:-25}
source bench/lib.sh
need valgrind:valgrind nginx:nginx-light h2load:nghttp2-client
mkdir -p bench/out

B1=19201; B2=19202; P_SG=19213; SG_ADMIN=19219
start_backends $B1 $B2
sg_proxy_config "$WORK/sg.toml" $P_SG $SG_ADMIN $B1 $B2

case ${PROTO:-h1} in
  h2) FLAGS=(-c20 -m10) ;;
  *) FLAGS=(--h1 -c"$CONNS") ;;
esac
load() { h2load -t1 "${FLAGS[@]}" -n"$1" "http://127.0.0.1:$P_SG$URLPATH" | awk '/^requests:/ {print $8}'; }
ready() { curl -sf "http://127.0.0.1:$P_SG$URLPATH"; }
for entry in "$@"; do
  callgrind_count "${entry%%=*}" "${entry#*=}" "$WORK/sg.toml" request ready load "$WARM" "$REQUESTS"
done
