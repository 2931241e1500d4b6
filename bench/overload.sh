#!/usr/bin/env bash
# Overload benchmark: a backend of fixed capacity (CAP concurrent requests of SERVICE_MS each)
# offered 3x its capacity, open loop, through scalegate (bulkhead + shedding), haproxy
# (server maxconn + queue timeout) and nginx (plain proxy) in interleaved rounds. Prints
# goodput as a share of capacity, p99 of admitted requests against the unloaded p99, and how
# rejections were answered.
#
# Usage: bench/overload.sh [--write]
# Env: ROUNDS (3), SECS (5), CAP (32), SERVICE_MS (10), QUEUE_MS (queue timeout for scalegate
#      and haproxy, default SERVICE_MS / 2)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-5}; CAP=${CAP:-32}; SERVICE_MS=${SERVICE_MS:-10}; WRITE=${1:-}
QUEUE_MS=${QUEUE_MS:-$(( SERVICE_MS / 2 ))}

source bench/lib.sh
need nginx:nginx-light haproxy:haproxy
cargo build --release --quiet -p scalegate -p scalegate-testkit
BIN=$PWD/target/release

BE=19201; P_SG=19211; P_HA=19212; P_NG=19213; SG_ADMIN=19219
CAPACITY_RPS=$(( CAP * 1000 / SERVICE_MS ))
OFFERED=$(( CAPACITY_RPS * 3 ))

"$BIN/capacity_backend" $BE "$CAP" "$SERVICE_MS" & PIDS+=($!)

cat > "$WORK/sg.toml" <<CFG
[runtime]
worker_threads = 1
[admin]
listen = "127.0.0.1:$SG_ADMIN"
[[listeners]]
name = "public"
bind = "127.0.0.1:$P_SG"
[[routes]]
match = { path_prefix = "/" }
upstream = "app"
[upstreams.app]
endpoints = ["127.0.0.1:$BE"]
passive = { consecutive_failures = 0 }
concurrency = { max_in_flight = $CAP, queue = $CAP, queue_timeout = "${QUEUE_MS}ms" }
CFG
RUST_LOG=error "$BIN/scalegate" run --config "$WORK/sg.toml" & PIDS+=($!)

cat > "$WORK/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout queue ${QUEUE_MS}ms
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HA
  default_backend app
backend app
  server b1 127.0.0.1:$BE maxconn $CAP
CFG
haproxy -f "$WORK/haproxy.cfg" -q & PIDS+=($!)

cat > "$WORK/nginx.conf" <<CFG
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err crit;
events { worker_connections 16000; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$BE; keepalive 64; }
  server { listen 127.0.0.1:$P_NG; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CFG
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)
for port in $BE $P_SG $P_HA $P_NG; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# Unloaded p99: 30% of capacity straight to the backend.
BASE=$("$BIN/loadgen" "http://127.0.0.1:$BE/" $(( CAPACITY_RPS * 3 / 10 )) "$SECS")
BASE_P99=$(field "$BASE" ok_p99_ms)
# The backend's real capacity: each slot turns over once per unloaded response time.
MEASURED_RPS=$(awk -v c="$CAP" -v p="$(field "$BASE" ok_p50_ms)" 'BEGIN { printf "%.0f", c * 1000 / p }')
echo "unloaded (30% of capacity, direct): $BASE" >&2

declare -A GOOD P99 REJ RA REJP99 ERR
for r in $(seq "$ROUNDS"); do
  for px in "scalegate:$P_SG" "haproxy:$P_HA" "nginx:$P_NG"; do
    name=${px%%:*}
    out=$("$BIN/loadgen" "http://127.0.0.1:${px#*:}/" "$OFFERED" "$SECS")
    echo "round $r $name: $out" >&2
    GOOD[$name]+="$(field "$out" goodput_rps) "; P99[$name]+="$(field "$out" ok_p99_ms) "
    REJ[$name]+="$(field "$out" rejected) "; RA[$name]+="$(field "$out" rejected_with_retry_after) "
    REJP99[$name]+="$(field "$out" rejected_p99_ms) "; ERR[$name]+="$(field "$out" errors) "
    sleep 2
  done
done

report() {
  echo "### $(date -u +%Y-%m-%d) — bench/overload.sh"
  echo
  echo "Backend: $CAP concurrent × ${SERVICE_MS} ms (nominal $CAPACITY_RPS req/s; measured $MEASURED_RPS req/s = $CAP slots / unloaded p50); offered $OFFERED req/s (3× nominal) open loop for ${SECS} s; unloaded p99 ${BASE_P99} ms (30% load, direct)."
  echo "Command: \`ROUNDS=$ROUNDS SECS=$SECS CAP=$CAP SERVICE_MS=$SERVICE_MS QUEUE_MS=$QUEUE_MS bench/overload.sh\`; medians of $ROUNDS interleaved rounds. scalegate: bulkhead max_in_flight $CAP, queue $CAP, queue_timeout ${QUEUE_MS} ms; haproxy: server maxconn $CAP, timeout queue ${QUEUE_MS} ms; nginx: plain proxy."
  echo
  echo "| proxy | goodput req/s | goodput / measured capacity | admitted p99 ms | p99 / unloaded p99 | rejected | with Retry-After | rejected p99 ms | errors/timeouts |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for name in scalegate haproxy nginx; do
    g=$(tr ' ' '\n' <<<"${GOOD[$name]}" | grep . | median); p=$(tr ' ' '\n' <<<"${P99[$name]}" | grep . | median)
    rj=$(tr ' ' '\n' <<<"${REJ[$name]}" | grep . | median); ra=$(tr ' ' '\n' <<<"${RA[$name]}" | grep . | median)
    rp=$(tr ' ' '\n' <<<"${REJP99[$name]}" | grep . | median); e=$(tr ' ' '\n' <<<"${ERR[$name]}" | grep . | median)
    printf "| %s | %.0f | %.2f | %.2f | %.2f× | %s | %s | %.2f | %s |\n" "$name" "$g" "$(awk -v a="$g" -v b="$MEASURED_RPS" 'BEGIN{print a/b}')" "$p" "$(awk -v a="$p" -v b="$BASE_P99" 'BEGIN{print a/b}')" "$rj" "$ra" "$rp" "$e"
  done
  echo
}
report | tee "$WORK/report.md"
if [ "$WRITE" = "--write" ]; then cat "$WORK/report.md" >> bench/RESULTS.md; fi
