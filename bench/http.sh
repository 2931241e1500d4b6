#!/usr/bin/env bash
# HTTP proxy benchmark: scalegate beside nginx and haproxy, same machine, same run.
#
# Each proxy gets one worker (nginx worker_processes 1, haproxy nbthread 1, scalegate
# worker_threads 1) in front of two nginx backends on loopback; wrk (-t1 -c50) drives each in
# interleaved rounds, and the medians and ratios to haproxy are printed. Then scalegate's RSS is
# read with 10,000 idle keep-alive client connections open.
#
# Usage: bench/http.sh [--write]     (--write appends the results to bench/RESULTS.md)
# Env:   ROUNDS (default 5), DURATION seconds per run (default 8), CONNS (default 50),
#        IDLE (default 10000), PATHS (default "/tiny /64k"),
#        SG_MODE (thread_per_core | work_stealing, default thread_per_core),
#        FLOOR=1 also runs crates/testkit's floor_proxy (the least a proxy can do: parse, relay, no
#        features) as a fourth column, to show how close to the machine's floor each proxy is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
CONNS=${CONNS:-50}
IDLE=${IDLE:-10000}
PATHS=${PATHS:-/tiny /64k}
SG_MODE=${SG_MODE:-thread_per_core}
FLOOR=${FLOOR:-0}
WRITE=${1:-}

source bench/lib.sh
need wrk:wrk nginx:nginx-light haproxy:haproxy python3:python3
cargo build --release --quiet
SG=$PWD/target/release/scalegate


B1=19101; B2=19102; P_NGINX=19111; P_HAPROXY=19112; P_SG=19113; P_FLOOR=19114; SG_ADMIN=19119

# --- backends: two nginx servers, a tiny body and a 64 KiB body ---------------------------
head -c 65536 /dev/zero | tr '\0' 'x' > "$WORK/64k"
cat > "$WORK/backend.conf" <<NGX
worker_processes 1;
pid $WORK/backend.pid;
error_log $WORK/backend.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$B1; location /tiny { return 200 "ok\n"; } location /64k { alias $WORK/64k; } }
  server { listen 127.0.0.1:$B2; location /tiny { return 200 "ok\n"; } location /64k { alias $WORK/64k; } }
}
NGX
nginx -c "$WORK/backend.conf" -g 'daemon off;' & PIDS+=($!)

# --- nginx as proxy --------------------------------------------------------------------------
cat > "$WORK/nginx.conf" <<NGX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 128; }
  server {
    listen 127.0.0.1:$P_NGINX;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)

# --- haproxy ---------------------------------------------------------------------------------
cat > "$WORK/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend app
backend app
  balance roundrobin
  server b1 127.0.0.1:$B1
  server b2 127.0.0.1:$B2
HAP
haproxy -f "$WORK/haproxy.cfg" -q & PIDS+=($!)

# --- scalegate -------------------------------------------------------------------------------
cat > "$WORK/scalegate.toml" <<SGC
[runtime]
worker_threads = 1
mode = "$SG_MODE"
[admin]
listen = "127.0.0.1:$SG_ADMIN"
[[listeners]]
name = "public"
bind = "127.0.0.1:$P_SG"
[[routes]]
match = { path_prefix = "/" }
upstream = "app"
[upstreams.app]
balance = "round_robin"
endpoints = ["127.0.0.1:$B1", "127.0.0.1:$B2"]
SGC
RUST_LOG=warn "$SG" run --config "$WORK/scalegate.toml" & SG_PID=$!; PIDS+=($SG_PID)

PROXIES=("nginx:$P_NGINX" "haproxy:$P_HAPROXY" "scalegate:$P_SG")
if [ "$FLOOR" = 1 ]; then
  cargo build --release --quiet -p scalegate-testkit --bin floor_proxy
  "$PWD/target/release/floor_proxy" "127.0.0.1:$P_FLOOR" "127.0.0.1:$B1" "127.0.0.1:$B2" & PIDS+=($!)
  PROXIES+=("floor:$P_FLOOR")
fi

for port in $B1 $B2 ${PROXIES[@]#*:}; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/tiny" >/dev/null && break; sleep 0.1; done
done

to_ms() { # wrk latency like 850.00us / 1.23ms / 1.20s -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
run_wrk() { # name port path -> "rps p50 p99"
  local out; out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$2$3" 2>&1)
  local rps p50 p99 errs
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  [ -n "$errs" ] && echo "  $1 $3: $errs" >&2
  echo "$rps $p50 $p99"
}

declare -A RPS P50 P99
for path in $PATHS; do
  for px in "${PROXIES[@]}"; do wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:${px#*:}$path" >/dev/null; done  # warm-up
  for r in $(seq "$ROUNDS"); do
    for px in "${PROXIES[@]}"; do
      name=${px%%:*}; read -r rps p50 p99 < <(run_wrk "$name" "${px#*:}" "$path")
      RPS[$name$path]+="$rps "; P50[$name$path]+="$p50 "; P99[$name$path]+="$p99 "
      echo "round $r $path $name: $rps req/s p50 ${p50}ms p99 ${p99}ms" >&2
    done
  done
done

# --- RSS with idle keep-alive connections --------------------------------------------------
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
RSS_BEFORE=$(rss_kib "$SG_PID")
mkfifo "$WORK/hold"
python3 bench/idle_conns.py 127.0.0.1 "$P_SG" "$IDLE" /tiny < "$WORK/hold" > "$WORK/idle.out" & IDLE_PID=$!; PIDS+=($IDLE_PID)
exec 3>"$WORK/hold"
for _ in $(seq 600); do grep -q ready "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
RSS_BUSY=$(rss_kib "$SG_PID")
sleep 6   # idle connections park after 1 s; workers return free pages every 2 s
RSS_IDLE=$(rss_kib "$SG_PID")
IDLE_OPEN=$(awk '{print $2}' "$WORK/idle.out")
exec 3>&-

# --- report ----------------------------------------------------------------------------------
report() {
  echo "### $(date -u +%Y-%m-%d) — bench/http.sh"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(uname -r)."
  echo "Peers: $(nginx -v 2>&1 | sed 's/.*\///'), haproxy $(haproxy -v | awk 'NR==1 {print $3}'), scalegate $($SG --version | awk '{print $2}')."
  echo "Command: \`ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS SG_MODE=$SG_MODE bench/http.sh\` — wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS interleaved rounds, medians."
  echo
  echo "| body | proxy | req/s | p50 ms | p99 ms | req/s vs haproxy | p99 vs haproxy |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
  for path in $PATHS; do
    local h_rps h_p99
    h_rps=$(tr ' ' '\n' <<<"${RPS[haproxy$path]}" | grep . | median)
    h_p99=$(tr ' ' '\n' <<<"${P99[haproxy$path]}" | grep . | median)
    for px in "${PROXIES[@]}"; do
      name=${px%%:*}
      rps=$(tr ' ' '\n' <<<"${RPS[$name$path]}" | grep . | median)
      p50=$(tr ' ' '\n' <<<"${P50[$name$path]}" | grep . | median)
      p99=$(tr ' ' '\n' <<<"${P99[$name$path]}" | grep . | median)
      printf "| %s | %s | %.0f | %.3f | %.3f | %.2f× | %.2f× |\n" "$path" "$name" "$rps" "$p50" "$p99" \
        "$(awk -v a="$rps" -v b="$h_rps" 'BEGIN {print a/b}')" "$(awk -v a="$p99" -v b="$h_p99" 'BEGIN {print a/b}')"
    done
  done
  echo
  echo "scalegate RSS: $((RSS_BEFORE / 1024)) MiB after the runs; $((RSS_BUSY / 1024)) MiB right after opening $IDLE_OPEN keep-alive client connections (one request each); $((RSS_IDLE / 1024)) MiB once they had idled 6 s (target ≤ 64 MiB)."
  echo
}
report | tee "$WORK/report.md"
if [ "$WRITE" = "--write" ]; then cat "$WORK/report.md" >> bench/RESULTS.md; fi
