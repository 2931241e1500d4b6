# Shared by the bench/ scripts: package installs, a work dir whose processes are stopped on exit,
# and medians. Source it from the repository root.

# need CMD:PACKAGE ... — installs the Debian packages whose command is missing.
need() {
  local missing=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  [ ${#missing[@]} -eq 0 ] && return
  local sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
}

# A temp dir in $WORK; every PID appended to PIDS is killed and the dir removed on exit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d); chmod 755 "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT

# median < numbers, one per line
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# cpu_ticks PID... — "user system" clock ticks (see CLK_TCK) used so far by these processes and
# their direct children, all threads (e.g. nginx's master and its worker; runuser and pgbouncer).
cpu_ticks() {
  local p pids=() u=0 s=0 fu fs
  for p in "$@"; do pids+=("$p"); mapfile -t -O "${#pids[@]}" pids < <(pgrep -P "$p" || true); done
  for p in "${pids[@]}"; do
    # Fields 14 and 15 of /proc/PID/stat; the name in parentheses may contain spaces.
    read -r fu fs < <(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12, $13}') || continue
    u=$((u + ${fu:-0})); s=$((s + ${fs:-0}))
  done
  echo "$u $s"
}

# cpu_per TICKS0 TICKS1 COUNT — "user system total" µs of CPU per unit of work between two
# cpu_ticks readings ("u s" each).
cpu_per() {
  awk -v a="$1" -v b="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(a, x, " "); split(b, y, " ");
    if (n <= 0) { print "nan nan nan"; exit }
    u = (y[1] - x[1]) / hz * 1e6 / n; s = (y[2] - x[2]) / hz * 1e6 / n
    printf "%.2f %.2f %.2f\n", u, s, u + s }'
}

# start_backends PORT1 PORT2 — the HTTP benchmarks' two backends: nginx on loopback answering
# /tiny ("ok\n") and /64k (65,536 bytes), keep-alive without a request limit. The 64 KiB file
# lives in a directory of its own: scalegate watches its config file's directory for reloads, and
# inotify reports every open of a file there (notify's watch mask includes IN_OPEN), so a file
# the backends open for every request beside the config would wake scalegate's watcher once per
# request (bench/RESULTS.md, session 15).
start_backends() {
  mkdir -p "$WORK/www"
  head -c 65536 /dev/zero | tr '\0' 'x' > "$WORK/www/64k"
  cat > "$WORK/backend.conf" <<NGX
worker_processes 1;
pid $WORK/backend.pid;
error_log $WORK/backend.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; location /tiny { return 200 "ok\n"; } location /64k { alias $WORK/www/64k; } }
  server { listen 127.0.0.1:$2; location /tiny { return 200 "ok\n"; } location /64k { alias $WORK/www/64k; } }
}
NGX
  nginx -c "$WORK/backend.conf" -g 'daemon off;' & PIDS+=($!)
}

# sg_proxy_config FILE PORT ADMIN_PORT BACKEND1 BACKEND2 [MODE] — scalegate with one worker
# (runtime.mode MODE, default thread_per_core) proxying every path to the two backends, round robin.
sg_proxy_config() {
  cat > "$1" <<SGC
[runtime]
worker_threads = 1
mode = "${6:-thread_per_core}"
[admin]
listen = "127.0.0.1:$3"
[[listeners]]
name = "public"
bind = "127.0.0.1:$2"
[[routes]]
match = { path_prefix = "/" }
upstream = "app"
[upstreams.app]
balance = "round_robin"
endpoints = ["127.0.0.1:$4", "127.0.0.1:$5"]
SGC
}

# pg_start PORT SCALE [-c name=value ...] — a PostgreSQL of this machine's newest version in
# $WORK/pg on 127.0.0.1:PORT (as the postgres user when run as root), with a `bench` database
# initialised by pgbench at SCALE. Sets PGBIN, RUNAS and PID_direct.
pg_start() {
  local port=$1 scale=$2; shift 2
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  RUNAS=(); [ "$(id -u)" -eq 0 ] && RUNAS=(runuser -u postgres --)
  chown -R postgres: "$WORK" 2>/dev/null || true
  "${RUNAS[@]}" "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth=trust --no-sync >/dev/null
  "${RUNAS[@]}" "$PGBIN/postgres" -D "$WORK/pg" -p "$port" -h 127.0.0.1 -k "$WORK" \
    -c fsync=off -c synchronous_commit=off "$@" >"$WORK/pg.log" 2>&1 & PIDS+=($!); PID_direct=$!
  until "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port"; do sleep 0.2; done
  "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -c "CREATE DATABASE bench" postgres
  "$PGBIN/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$port" -U postgres bench >/dev/null 2>&1
}

# callgrind_count NAME BIN CONFIG UNIT READY LOAD WARM N — runs BIN with CONFIG alone under
# callgrind, waits until the command READY succeeds, runs `LOAD WARM`, zeroes the counters, runs
# `LOAD N` (which prints how many UNITs it completed) and prints the user-space instructions per
# UNIT; the dump stays in bench/out/callgrind.NAME.* for callgrind_annotate. With TOP > 0, lists
# the TOP costliest functions too.
callgrind_count() {
  local name=$1 bin=$2 config=$3 unit=$4 ready=$5 load=$6 warm=$7 n=$8
  local out="$PWD/bench/out/callgrind.$name" vg ok dump ir
  rm -f "$out" "$out".*
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run --config "$config" \
    2>"$WORK/vg.$name.err" & vg=$!; PIDS+=($vg)
  for _ in $(seq 600); do $ready >/dev/null 2>&1 && break; sleep 0.2; done
  $load "$warm" >/dev/null
  callgrind_control -z "$vg" >/dev/null
  ok=$($load "$n")
  callgrind_control -d "$vg" >/dev/null
  sleep 1
  kill "$vg"; wait "$vg" 2>/dev/null || true
  dump=$(ls -t "$out".* 2>/dev/null | head -1)
  ir=$(awk '/^summary:|^totals:/ {print $2; exit}' "$dump")
  awk -v n="$name" -v ir="$ir" -v r="$ok" -v u="$unit" -v d="$dump" \
    'BEGIN { printf "%s: %d %s, %.0f Ir per %s (%s)\n", n, r, u "s", ir / r, u, d }'
  if [ "${TOP:-0}" -gt 0 ]; then
    callgrind_annotate --inclusive=no --threshold=100 "$dump" 2>/dev/null \
      | awk '/file:function/ {go=1; getline; next} go && NF && !/\(100.0%\)/' | head -"$TOP" | sed 's/^/    /' || true
  fi
}

# pooler_config FILE PG_PORT LISTEN_PORT ADMIN_PORT POOL [LINE ...] — a scalegate config: a
# transaction-mode pool of POOL connections to the `bench` database of the PostgreSQL on PG_PORT,
# one worker, listening on LISTEN_PORT; each LINE is added to its [postgres] table.
pooler_config() {
  local file=$1 pg=$2 listen=$3 admin=$4 pool=$5; shift 5
  {
    printf '[admin]\nlisten = "127.0.0.1:%s"\n[postgres]\nlisten = "127.0.0.1:%s"\nworker_threads = 1\n' "$admin" "$listen"
    for line in "$@"; do printf '%s\n' "$line"; done
    printf '[postgres.databases.bench]\nprimary = "postgres://postgres@127.0.0.1:%s/bench"\npool_mode = "transaction"\npool_size = %s\n' "$pg" "$pool"
  } > "$file"
}
