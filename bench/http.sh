#!/usr/bin/env bash
# HTTP proxy benchmark: scalegate beside nginx and haproxy, same machine, same run.
#
# Each proxy gets one worker (nginx worker_processes 1, haproxy nbthread 1, scalegate
# worker_threads 1) in front of two nginx backends on loopback (HTTP/1.1 keep-alive). wrk
# (-t1 -c50) drives each proxy in turn for every body in PATHS, and h2load (h2c, -t1, 20 clients
# × 10 streams) for the HTTP/2 row, in interleaved rounds. For every run the proxy's own CPU
# time (user + system, all threads, from /proc/PID/stat before and after) is divided by the
# requests served: µs of CPU per request, the measure that still separates proxies on a small
# machine where wrk and the backends share the cores (the req/s ratios are capped by them).
# Medians over rounds and ratios to haproxy are printed. Then scalegate's RSS is read with
# 10,000 idle keep-alive client connections open.
#
# Usage: bench/http.sh [--write]     (--write appends the results to bench/RESULTS.md)
# Env:   ROUNDS (default 5), DURATION seconds per run (default 8), CONNS (default 50),
#        IDLE idle connections for the RSS step (default 10000; 0 skips it),
#        PATHS (default "/tiny /64k"), H2 (1 = add the HTTP/2 row on /tiny, default 1),
#        H2_CLIENTS (20) and H2_STREAMS (10),
#        PEERS (default "nginx haproxy"; haproxy is the baseline of every ratio and always runs),
#        SG_BINS ("name=path ..." scalegate binaries to compare side by side, e.g. two commits;
#                 default: this tree's release build, named scalegate, built first),
#        SG_MODE (thread_per_core | work_stealing, default thread_per_core),
#        FLOOR=1 also runs crates/testkit's floor_proxy (the least a proxy can do: parse, relay, no
#        features) as another column, to show how close to the machine's floor each proxy is,
#        and floor_proxy_uring (the same work on io_uring: multishot accept and receive,
#        provided buffers, one submission per loop turn), to show what io_uring saves here.
# On a shared machine run it under the build lock so that no build overlaps a round:
#        flock /tmp/scalegate-cargo.lock bash bench/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
CONNS=${CONNS:-50}
IDLE=${IDLE:-10000}
PATHS=${PATHS:-/tiny /64k}
H2=${H2:-1}; H2_PATH=/tiny; H2_CLIENTS=${H2_CLIENTS:-20}; H2_STREAMS=${H2_STREAMS:-10}
PEERS=${PEERS:-nginx haproxy}
SG_BINS=${SG_BINS:-}
SG_MODE=${SG_MODE:-thread_per_core}
FLOOR=${FLOOR:-0}
WRITE=${1:-}
CMD="ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS IDLE=$IDLE PATHS=\"$PATHS\" H2=$H2 PEERS=\"$PEERS\"${SG_BINS:+ SG_BINS=\"$SG_BINS\"} FLOOR=$FLOOR bench/http.sh"

source bench/lib.sh
LOAD0=$(cut -d" " -f1-3 /proc/loadavg); SG_VERSIONS=""
need wrk:wrk nginx:nginx-light haproxy:haproxy python3:python3 h2load:nghttp2-client
if [ -z "$SG_BINS" ]; then
  cargo build --release --quiet
  SG_BINS="scalegate=$PWD/target/release/scalegate"
fi
case " $PEERS " in *" haproxy "*) ;; *) PEERS="$PEERS haproxy";; esac

B1=19101; B2=19102; P_NGINX=19111; P_HAPROXY=19112; P_FLOOR=19114; P_FLOOR_URING=19115
P_NGINX_H2=19121; P_HAPROXY_H2=19122; P_SG0=19130; SG_ADMIN0=19150

start_backends $B1 $B2

# PROXIES: "name:port:pid:h2port" (h2port "-" when the proxy has no HTTP/2 listener).
PROXIES=()

# --- nginx as proxy (HTTP/1.1 port, and an h2c port: nginx cannot sniff h2c on one port) ----
if [[ " $PEERS " == *" nginx "* ]]; then
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
    listen 127.0.0.1:$P_NGINX_H2 http2;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)
PROXIES+=("nginx:$P_NGINX:$!:$P_NGINX_H2")
fi

# --- haproxy (HTTP/1.1 frontend and an h2c frontend) -----------------------------------------
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
  bind 127.0.0.1:$P_HAPROXY_H2 proto h2
  default_backend app
backend app
  balance roundrobin
  server b1 127.0.0.1:$B1
  server b2 127.0.0.1:$B2
HAP
haproxy -f "$WORK/haproxy.cfg" -q & PIDS+=($!)
PROXIES+=("haproxy:$P_HAPROXY:$!:$P_HAPROXY_H2")

# --- scalegate, one per binary in SG_BINS (h2c is sniffed on the same port) -----------------
i=0; SG_FIRST_PID=""
for entry in $SG_BINS; do
  name=${entry%%=*}; bin=${entry#*=}; port=$((P_SG0 + i)); admin=$((SG_ADMIN0 + i))
  sg_proxy_config "$WORK/$name.toml" "$port" "$admin" $B1 $B2 "$SG_MODE"
  RUST_LOG=warn "$bin" run --config "$WORK/$name.toml" & PIDS+=($!)
  PROXIES+=("$name:$port:$!:$port")
  SG_VERSIONS+="$name $("$bin" --version | awk '{print $2}'), "
  [ -n "$SG_FIRST_PID" ] || { SG_FIRST_PID=$!; SG_FIRST_PORT=$port; SG_FIRST=$name; }
  i=$((i + 1))
done

if [ "$FLOOR" = 1 ]; then
  cargo build --release --quiet -p scalegate-testkit --bin floor_proxy --bin floor_proxy_uring
  "$PWD/target/release/floor_proxy" "127.0.0.1:$P_FLOOR" "127.0.0.1:$B1" "127.0.0.1:$B2" & PIDS+=($!)
  PROXIES+=("floor:$P_FLOOR:$!:-")
  "$PWD/target/release/floor_proxy_uring" "127.0.0.1:$P_FLOOR_URING" "127.0.0.1:$B1" "127.0.0.1:$B2" & PIDS+=($!)
  PROXIES+=("floor_uring:$P_FLOOR_URING:$!:-")
fi

wait_http() { # port [--http2-prior-knowledge]
  for _ in $(seq 100); do curl -sf ${2:-} "http://127.0.0.1:$1/tiny" >/dev/null && return; sleep 0.1; done
  echo "nothing answers on port $1" >&2; exit 1
}
wait_http $B1; wait_http $B2
for px in "${PROXIES[@]}"; do
  IFS=: read -r name port pid h2port <<<"$px"
  wait_http "$port"
  [ "$H2" = 1 ] && [ "$h2port" != - ] && wait_http "$h2port" --http2-prior-knowledge
done

to_ms() { # wrk latency like 850.00us / 1.23ms / 1.20s -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
run_wrk() { # name port path pid -> "rps p50 p99 user_us sys_us cpu_us"
  local t0 t1 out; t0=$(cpu_ticks "$4")
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$2$3" 2>&1)
  t1=$(cpu_ticks "$4")
  local rps p50 p99 errs n
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  [ -n "$errs" ] && echo "  $1 $3: $errs" >&2
  echo "$rps $p50 $p99 $(cpu_per "$t0" "$t1" "$n")"
}
run_h2() { # name port path pid [duration] -> "rps p50 p99 user_us sys_us cpu_us"
  local t0 t1 out log="$WORK/h2.log"; t0=$(cpu_ticks "$4")
  out=$(h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"${5:-$DURATION}" --log-file="$log" \
        "http://127.0.0.1:$2$3" 2>&1)
  t1=$(cpu_ticks "$4")
  local rps n bad p50 p99
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  n=$(awk '/^requests:/ {print $8}' <<<"$out")   # succeeded
  bad=$(awk '/^requests:/ {print $10 + $12 + $14}' <<<"$out")   # failed + errored + timeout
  [ "${bad:-1}" = 0 ] || echo "  $1 h2 $3: $(grep -E '^(requests|status codes):' <<<"$out" | tr '\n' ' ')" >&2
  read -r p50 p99 < <(awk -F'\t' '{print $3}' "$log" | sort -n | awk '{a[NR]=$1} END {
    if (NR == 0) { print "nan nan"; exit }
    i50 = int(NR * 0.50); i99 = int(NR * 0.99); if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1
    printf "%.3f %.3f\n", a[i50] / 1000, a[i99] / 1000 }')
  echo "${rps:-0} $p50 $p99 $(cpu_per "$t0" "$t1" "${n:-0}")"
}

# CASES: "/path" for wrk over HTTP/1.1, "h2:/path" for h2load over h2c.
CASES=($PATHS); [ "$H2" = 1 ] && CASES+=("h2:$H2_PATH")
declare -A RPS P50 P99 USR SYS CPU
for case in "${CASES[@]}"; do
  for px in "${PROXIES[@]}"; do  # warm-up
    IFS=: read -r name port pid h2port <<<"$px"
    if [[ $case == h2:* ]]; then
      [ "$h2port" = - ] || run_h2 "$name" "$h2port" "${case#h2:}" "$pid" 2 >/dev/null
    else
      wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port$case" >/dev/null
    fi
  done
  for r in $(seq "$ROUNDS"); do
    # Each round starts one proxy further along the list, so no proxy always runs first.
    order=("${PROXIES[@]:$(( (r - 1) % ${#PROXIES[@]} ))}" "${PROXIES[@]:0:$(( (r - 1) % ${#PROXIES[@]} ))}")
    for px in "${order[@]}"; do
      IFS=: read -r name port pid h2port <<<"$px"
      if [[ $case == h2:* ]]; then
        [ "$h2port" = - ] && continue
        read -r rps p50 p99 usr sys cpu < <(run_h2 "$name" "$h2port" "${case#h2:}" "$pid")
      else
        read -r rps p50 p99 usr sys cpu < <(run_wrk "$name" "$port" "$case" "$pid")
      fi
      k="$name $case"
      RPS[$k]+="$rps "; P50[$k]+="$p50 "; P99[$k]+="$p99 "; USR[$k]+="$usr "; SYS[$k]+="$sys "; CPU[$k]+="$cpu "
      echo "round $r $case $name: $rps req/s p50 ${p50}ms p99 ${p99}ms CPU ${cpu}us/req (user $usr sys $sys)" >&2
    done
  done
done

# --- RSS with idle keep-alive connections (the first scalegate) -----------------------------
if [ "$IDLE" -gt 0 ]; then
  rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
  RSS_BEFORE=$(rss_kib "$SG_FIRST_PID")
  mkfifo "$WORK/hold"
  python3 bench/idle_conns.py 127.0.0.1 "$SG_FIRST_PORT" "$IDLE" /tiny < "$WORK/hold" > "$WORK/idle.out" & IDLE_PID=$!; PIDS+=($IDLE_PID)
  exec 3>"$WORK/hold"
  for _ in $(seq 600); do grep -q ready "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
  RSS_BUSY=$(rss_kib "$SG_FIRST_PID")
  sleep 6   # idle connections park after 1 s; workers return free pages every 2 s
  RSS_IDLE=$(rss_kib "$SG_FIRST_PID")
  IDLE_OPEN=$(awk '{print $2}' "$WORK/idle.out")
  exec 3>&-
fi

# --- report ----------------------------------------------------------------------------------
med() { tr ' ' '\n' <<<"$1" | grep . | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }'; }
report() {
  echo "### $(date -u +%Y-%m-%d) — bench/http.sh"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(uname -r); load average before the run $LOAD0."
  echo "Peers: nginx $(nginx -v 2>&1 | sed 's/.*\///'), haproxy $(haproxy -v | awk 'NR==1 {print $3}'), $(h2load --version | head -1 | awk '{print $2}'); scalegate: ${SG_VERSIONS%, } (commit $(git rev-parse --short HEAD) of this tree)."
  echo "Command: \`$CMD\` — wrk -t1 -c$CONNS -d${DURATION}s$([ "$H2" = 1 ] && echo "; h2load -t1 -c$H2_CLIENTS -m$H2_STREAMS -D$DURATION (h2c)"), $ROUNDS interleaved rounds (each starting one proxy further along), medians. CPU = the proxy process's user + system time (all threads) ÷ requests served."
  echo
  echo "| case | proxy | req/s | p50 ms | p99 ms | CPU µs/req | user µs | sys µs | req/s vs haproxy | p99 vs haproxy | CPU vs haproxy |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  local case px name k h_rps h_p99 h_cpu rps p50 p99 usr sys cpu label
  for case in "${CASES[@]}"; do
    h_rps=$(med "${RPS[haproxy $case]}"); h_p99=$(med "${P99[haproxy $case]}"); h_cpu=$(med "${CPU[haproxy $case]}")
    label=$case; [[ $case == h2:* ]] && label="h2c ${case#h2:} (${H2_CLIENTS}×${H2_STREAMS})"
    for px in "${PROXIES[@]}"; do
      name=${px%%:*}; k="$name $case"
      [ -n "${RPS[$k]:-}" ] || continue
      rps=$(med "${RPS[$k]}"); p50=$(med "${P50[$k]}"); p99=$(med "${P99[$k]}")
      usr=$(med "${USR[$k]}"); sys=$(med "${SYS[$k]}"); cpu=$(med "${CPU[$k]}")
      printf "| %s | %s | %.0f | %.3f | %.3f | %.2f | %.2f | %.2f | %s | %s | %s |\n" "$label" "$name" \
        "$rps" "$p50" "$p99" "$cpu" "$usr" "$sys" "$(ratio "$rps" "$h_rps")" "$(ratio "$p99" "$h_p99")" "$(ratio "$cpu" "$h_cpu")"
    done
  done
  echo
  echo "CPU µs per request by round:"
  echo
  echo '```'
  for case in "${CASES[@]}"; do
    for px in "${PROXIES[@]}"; do
      name=${px%%:*}; k="$name $case"
      [ -n "${CPU[$k]:-}" ] && echo "${case} ${name}: ${CPU[$k]% }"
    done
  done
  echo '```'
  if [ "$IDLE" -gt 0 ]; then
    echo
    echo "$SG_FIRST RSS: $((RSS_BEFORE / 1024)) MiB after the runs; $((RSS_BUSY / 1024)) MiB right after opening $IDLE_OPEN keep-alive client connections (one request each); $((RSS_IDLE / 1024)) MiB once they had idled 6 s (target ≤ 64 MiB)."
  fi
  echo
}
report | tee "$WORK/report.md"
if [ "$WRITE" = "--write" ]; then cat "$WORK/report.md" >> bench/RESULTS.md; fi
