#!/usr/bin/env bash
# Cache benchmark (issue 5): the hit path of scalegate against varnish and against the origin
# itself, an nginx static-file server, in interleaved rounds of the same run; then the hit ratio
# of three scalegate instances sharing Redis against one instance on the same key sequence.
#
# Each server gets one worker (nginx worker_processes 1, varnish one thread pool, scalegate
# worker_threads 1); wrk -t1 -c$CONNS hits one cached 1 KiB object.
#
# Usage: bench/cache.sh [--write]     (--write appends the results to bench/RESULTS.md)
# Env:   ROUNDS (default 5), DURATION seconds per run (default 8), CONNS (default 50),
#        KEYS (default 2000), REQUESTS (default 6000) for the hit-ratio part
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}; DURATION=${DURATION:-8}; CONNS=${CONNS:-50}
KEYS=${KEYS:-2000}; REQUESTS=${REQUESTS:-6000}; WRITE=${1:-}

source bench/lib.sh
need wrk:wrk nginx:nginx-light varnishd:varnish redis-server:redis-server python3:python3
cargo build --release --quiet -p scalegate
SG=$PWD/target/release/scalegate

ORIGIN=19301; P_V=19311; P_SG=19312; SG_ADMIN=19319; REDIS=19320
P_A=19321; P_B=19322; P_C=19323; P_ONE=19324

# --- origin: nginx serving a 1 KiB page (and any other path) with max-age -------------------
# In a directory of its own, away from the config files scalegate watches (see lib.sh).
mkdir -p "$WORK/www"
head -c 1024 /dev/zero | tr '\0' 'x' > "$WORK/www/page.html"
cat > "$WORK/origin.conf" <<NGX
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/origin.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$ORIGIN;
    location = /page.html { root $WORK/www; add_header Cache-Control "max-age=3600"; }
    location / { add_header Cache-Control "max-age=3600"; return 200 "object \$uri\n"; }
  }
}
NGX
nginx -c "$WORK/origin.conf" -g 'daemon off;' & PIDS+=($!)

# --- varnish ---------------------------------------------------------------------------------
mkdir -p "$WORK/varnish"
varnishd -F -n "$WORK/varnish" -a "127.0.0.1:$P_V" -b "127.0.0.1:$ORIGIN" -s malloc,256m \
  -p thread_pools=1 -T none >/dev/null 2>&1 & PIDS+=($!)

# --- scalegate -------------------------------------------------------------------------------
sg_config() { # port admin [redis]
  echo "[runtime]"; echo "worker_threads = 1"
  echo "[admin]"; echo "listen = \"127.0.0.1:$2\""
  if [ -n "${3:-}" ]; then echo "[cache]"; echo "redis = { url = \"redis://127.0.0.1:$3\" }"; fi
  echo "[[listeners]]"; echo "name = \"public\""; echo "bind = \"127.0.0.1:$1\""
  echo "[[routes]]"; echo "match = { path_prefix = \"/\" }"; echo "upstream = \"app\""; echo "cache = {}"
  echo "[upstreams.app]"; echo "endpoints = [\"127.0.0.1:$ORIGIN\"]"
}
sg_config $P_SG $SG_ADMIN > "$WORK/sg.toml"
RUST_LOG=warn "$SG" run --config "$WORK/sg.toml" & PIDS+=($!)

for port in $ORIGIN $P_V $P_SG; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/page.html" >/dev/null && break; sleep 0.1; done
done
for port in $P_V $P_SG; do curl -sf -o /dev/null "http://127.0.0.1:$port/page.html"; done

to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
run_wrk() { # port -> "rps p99"
  local out; out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$1/page.html" 2>&1)
  local errs; errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  [ -n "$errs" ] && echo "  port $1: $errs" >&2
  echo "$(awk '/^Requests\/sec/ {print $2}' <<<"$out") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")"
}

TARGETS=("nginx-origin:$ORIGIN" "varnish:$P_V" "scalegate:$P_SG")
declare -A RPS P99
for t in "${TARGETS[@]}"; do wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:${t#*:}/page.html" >/dev/null; done
for r in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    name=${t%%:*}; read -r rps p99 < <(run_wrk "${t#*:}")
    RPS[$name]+="$rps "; P99[$name]+="$p99 "
    echo "round $r $name: $rps req/s p99 ${p99}ms" >&2
  done
done
med() { tr ' ' '\n' <<<"$1" | grep . | median; }

# --- hit ratio: three instances sharing Redis vs one instance --------------------------------
redis-server --port $REDIS --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >/dev/null & PIDS+=($!)
for i in 0 1 2; do
  port=$((P_A + i)); sg_config $port $((SG_ADMIN - 1 - i)) $REDIS > "$WORK/sg$i.toml"
  RUST_LOG=warn "$SG" run --config "$WORK/sg$i.toml" & PIDS+=($!)
done
sg_config $P_ONE $((SG_ADMIN - 4)) > "$WORK/one.toml"
RUST_LOG=warn "$SG" run --config "$WORK/one.toml" & PIDS+=($!)
for port in $P_A $P_B $P_C $P_ONE; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/warmup" >/dev/null && break; sleep 0.1; done
done
sleep 1
HIT3=$(python3 bench/hit_ratio.py "$KEYS" "$REQUESTS" $P_A $P_B $P_C)
HIT1=$(python3 bench/hit_ratio.py "$KEYS" "$REQUESTS" $P_ONE)

report() {
  local o_rps o_p99 v_rps v_p99 s_rps s_p99
  o_rps=$(med "${RPS[nginx-origin]}"); o_p99=$(med "${P99[nginx-origin]}")
  v_rps=$(med "${RPS[varnish]}"); v_p99=$(med "${P99[varnish]}")
  s_rps=$(med "${RPS[scalegate]}"); s_p99=$(med "${P99[scalegate]}")
  echo "### $(date -u +%Y-%m-%d) — bench/cache.sh"
  echo
  echo "Machine: $(nproc) cores; $(uname -r). Peers: $(nginx -v 2>&1 | sed 's/.*\///'), $(varnishd -V 2>&1 | head -1 | sed 's/.*(varnish-\([^ ]*\).*/varnish \1/'), scalegate $($SG --version | awk '{print $2}')."
  echo "Command: \`ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS bench/cache.sh\` — wrk -t1 -c$CONNS -d${DURATION}s on one cached 1 KiB object, $ROUNDS interleaved rounds, medians."
  echo
  echo "| server | req/s | p99 ms | scalegate ÷ it (req/s) | scalegate p99 ÷ its p99 |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  printf "| nginx static (the origin) | %.0f | %.3f | %.2f× | %.2f× |\n" "$o_rps" "$o_p99" "$(awk -v a="$s_rps" -v b="$o_rps" 'BEGIN {print a/b}')" "$(awk -v a="$s_p99" -v b="$o_p99" 'BEGIN {print a/b}')"
  printf "| varnish | %.0f | %.3f | %.2f× | %.2f× |\n" "$v_rps" "$v_p99" "$(awk -v a="$s_rps" -v b="$v_rps" 'BEGIN {print a/b}')" "$(awk -v a="$s_p99" -v b="$v_p99" 'BEGIN {print a/b}')"
  printf "| scalegate (hit path) | %.0f | %.3f | | |\n" "$s_rps" "$s_p99"
  echo
  echo "Hit ratio over $REQUESTS requests for $KEYS keys (uniform): one instance $HIT1; three instances sharing Redis, requests round-robin over them, $HIT3."
  echo
}
report | tee "$WORK/report.md"
if [ "$WRITE" = "--write" ]; then cat "$WORK/report.md" >> bench/RESULTS.md; fi
