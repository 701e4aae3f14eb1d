#!/usr/bin/env bash
# `make bench` (`cargo xtask bench`, which runs the scenarios already moved to Rust
# itself, xtask/src/bench/, and hands the others to this script): the benchmark scenarios of
# BENCHMARKS.md, each against fresh private
# processes (one redis-server, release gateways or Socket.IO peers) on loopback, stopped by
# pid at the end. Results go to bench/ (BENCH_OUT overrides) as JSON, one file per run,
# plus a summary per scenario.
#
#   scripts/bench.sh [fanout|idle|cluster|peer|compare|profile|cost|small|budget|all]...
#
# Knobs (environment): BENCH_DURATION (publishing time per fan-out step, default 15s),
# BENCH_RATES (per-session rates tried by the fan-out search), BENCH_IDLE_PER_NODE
# (default 15000), BENCH_COMPARE_RATES
# (default "20 40"; empty: skip), BENCH_PINNED_RATES (the pinned search's steps; empty:
# skip) and BENCH_COMPARE_SERVERS (default "floor roomcast socketio"). GATEWAY_ENV adds
# variables to the gateways a scenario starts.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${BENCH_OUT:-bench}"
WORK="$PWD/.run/bench"
SECRET="bench-secret-0123456789abcdef"
DURATION="${BENCH_DURATION:-15s}"
RATES="${BENCH_RATES:-10 20 30 40 60 80 100 120}"
IDLE_PER_NODE="${BENCH_IDLE_PER_NODE:-15000}"
LT=target/release/loadtest
FLOOR=target/release/floor
COMPARE_RATES="${BENCH_COMPARE_RATES-20 40}"
PINNED_RATES="${BENCH_PINNED_RATES-2.5 5 10 20 30 40 50 60 80 100 120}"
COMPARE_SERVERS="${BENCH_COMPARE_SERVERS:-floor roomcast socketio}"
# Command prefixes: the pinned comparison puts the servers and Redis on one core
# (SERVER_PIN) and the load generator on the other (LT_PIN).
SERVER_PIN=()
LT_PIN=()
# ROOMCAST_BIN benchmarks another gateway build (an A/B against an older commit).
GW=${ROOMCAST_BIN:-target/release/roomcast}
mkdir -p "$OUT" "$WORK"

# The reports are read in Rust, with the load generator's own types (`xtask report`,
# xtask/src/bench/report.rs): through the binary `cargo xtask bench` runs as, or cargo's.
if [[ -n ${XTASK:-} ]]; then XTASK=("$XTASK"); else XTASK=(cargo run -q -p roomcast-xtask --); fi

# shellcheck source=scripts/procs.sh
source scripts/procs.sh
trap stop_all EXIT

REDIS_PORT=""
REDIS_PID=""
# Every Redis process of the current run (one server, or a cluster's nodes): their CPU
# time is what a scenario reports as Redis's.
REDIS_PIDS=()
start_redis() {
  REDIS_PORT=$(free_port)
  local dir="$WORK/redis-$REDIS_PORT"
  mkdir -p "$dir"
  "${SERVER_PIN[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" --maxclients 20000 &
  REDIS_PID=$!
  REDIS_PIDS=("$REDIS_PID")
  PIDS+=($!)
  wait_for "redis on $REDIS_PORT" 10 redis-cli -p "$REDIS_PORT" ping
}

# start_gateway: appends "port:pid" to NODES. Limits that would refuse a load generator
# (one IP, many clients) are off (LOADGEN_ENV); GATEWAY_ENV comes after them and wins.
NODES=()
start_gateway() {
  local port
  port=$(free_port)
  # shellcheck disable=SC2086
  env "${LOADGEN_ENV[@]}" ${GATEWAY_ENV:-} ROOMCAST_LISTEN="127.0.0.1:$port" \
    ROOMCAST_REDIS_URL="${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}" \
    ROOMCAST_JWT_SECRET="$SECRET" ROOMCAST_LOG=warn ROOMCAST_NODE_ID="bench-$port" \
    "${SERVER_PIN[@]}" "$GW" >"$WORK/gateway-$port.log" 2>&1 &
  PIDS+=($!)
  NODES+=("$port:$!")
  wait_for "gateway on $port" 20 curl -sf "http://127.0.0.1:$port/health/ready"
}

start_peer() {
  local port
  port=$(free_port)
  PORT="$port" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    "${SERVER_PIN[@]}" node loadtest/peers/socketio/server.js >"$WORK/peer-$port.log" 2>&1 &
  PIDS+=($!)
  NODES+=("$port:$!")
  wait_for "peer on $port" 20 curl -sf "http://127.0.0.1:$port/health"
}

# The floor peer (loadtest/peers/floor): one process, as it has nothing to share.
start_floor() {
  local port
  port=$(free_port)
  PORT="$port" "${SERVER_PIN[@]}" "$FLOOR" >"$WORK/floor-$port.log" 2>&1 &
  PIDS+=($!)
  NODES+=("$port:$!")
  wait_for "floor on $port" 20 curl -sf "http://127.0.0.1:$port/health"
}

# urls PROTOCOL: --url flags for every node in NODES.
urls() {
  local n
  for n in "${NODES[@]}"; do
    if [[ $1 == socketio ]]; then echo "--url ws://127.0.0.1:${n%%:*}"; else echo "--url ws://127.0.0.1:${n%%:*}/ws"; fi
  done
}

# node_health PORT FIELD: rss or conns, from either server's /health.
node_health() { "${XTASK[@]}" health "$1" "$2"; }

# server_ticks: clock ticks used so far by every server process in NODES.
server_ticks() {
  local n total=0
  for n in "${NODES[@]}"; do total=$((total + $(cpu_ticks "${n##*:}"))); done
  echo "$total"
}

fresh() {
  stop_all
  NODES=()
  start_redis
}

build() {
  log "building release binaries"
  cargo build --release -q -p roomcast-gateway -p roomcast-loadtest -p roomcast-floor
}

# commandstats FILE: a standalone Redis's INFO commandstats (calls and µs per command),
# read at both ends of a fan-out window: `xtask report` turns the difference into calls
# and Redis µs per published message (`redis_commands_per_publish` in the step's row).
commandstats() {
  if [[ ${#REDIS_PIDS[@]} == 1 && -n $REDIS_PORT ]]; then
    redis-cli -p "$REDIS_PORT" INFO commandstats >"$1" 2>/dev/null || rm -f "$1"
  fi
}

# run_cpu SERVER_TICKS0 REDIS_TICKS0 LT_CPU_FILE: the JSON fields of a run's CPU since
# those tick counts (servers, Redis) and the generator's CPU seconds (child-cpu's file).
run_cpu() {
  echo "\"server_ticks\": $(($(server_ticks) - $1)), \"redis_ticks\": $(($(redis_ticks) - $2)), \"clk_tck\": $(getconf CLK_TCK), \"loadgen_cpu_s\": $(cat "$3")"
}

# --- 1. fan-out (and 6. the same against the peer) -------------------------------------
# fanout_run LABEL PROTOCOL RATE FILE: one fan-out run (DISPLAYS per session, default 10),
# with the CPU time the servers and Redis used during it written next to the report
# (FILE.cpu): over the whole run, and over the publishing window alone (from the
# generator's go for BENCH_DURATION), which leaves out connecting and closing and is what
# the per-delivery figures use; and Redis' commandstats at both ends of that window.
fanout_run() {
  local label=$1 protocol=$2 rate=$3 file=$4
  local s0 r0 w0 wr0 w1=0 wr1=0 lt deadline window=${DURATION%s}
  s0=$(server_ticks)
  r0=$(redis_ticks)
  rm -f "$file.started"
  # The load generator shares the cores: its own CPU time (user + system, from the
  # kernel's accounting of the finished child) goes into the sidecar too.
  # shellcheck disable=SC2046
  "${XTASK[@]}" report child-cpu "$file.lt-cpu" -- \
    "${LT_PIN[@]}" "$LT" $(urls "$protocol") --protocol "$protocol" --secret "$SECRET" --sessions "${SESSIONS:-100}" \
    --displays "${DISPLAYS:-10}" --rate "$rate" --payload 64 --duration "$DURATION" --ramp 2s \
    --prefix "f$label$rate" --progress false --json "$file" --started-file "$file.started" \
    --placement "${PLACEMENT:-client}" >&2 &
  lt=$!
  deadline=$((SECONDS + 120))
  while [[ ! -e $file.started ]] && kill -0 "$lt" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.02; done
  w0=$(server_ticks)
  wr0=$(redis_ticks)
  commandstats "$file.commands0"
  if [[ -e $file.started && $window =~ ^[0-9]+$ ]]; then
    if [[ -n ${PERF_EVENTS:-} ]]; then
      perf_stat_window "$file" "$window" # counts per process; the window itself
    else
      sleep "$window" # the measurement window itself
    fi
    w1=$(server_ticks)
    wr1=$(redis_ticks)
    commandstats "$file.commands1"
  else
    window=0
  fi
  wait "$lt"
  echo "{$(run_cpu "$s0" "$r0" "$file.lt-cpu"), \"window_s\": $window, \"window_server_ticks\": $((w1 - w0)), \"window_redis_ticks\": $((wr1 - wr0))}" >"$file.cpu"
  rm -f "$file.lt-cpu" "$file.started"
}

# perf_stat_window FILE SECONDS: counts PERF_EVENTS in every server process and in Redis
# for SECONDS, one `perf stat` each (FILE.perf-<port>, FILE.perf-redis).
perf_stat_window() {
  local n perfs=()
  for n in "${NODES[@]}"; do
    perf stat -x, -e "$PERF_EVENTS" -p "${n##*:}" -o "$1.perf-${n%%:*}" -- sleep "$2" >/dev/null 2>&1 &
    perfs+=($!)
  done
  perf stat -x, -e "$PERF_EVENTS" -p "$REDIS_PID" -o "$1.perf-redis" -- sleep "$2" >/dev/null 2>&1 &
  perfs+=($!)
  wait "${perfs[@]}"
}

# Steps the per-session rate up while p99 stays under 50 ms with nothing lost, duplicated
# or reordered, and stops at the first failing step or once the load generator can no
# longer offer the rate (it shares the cores); then runs at a quarter of the best
# achieved rate. `xtask report step` decides: 0 go on, 1 failed, 2 saturated.
fanout_search() {
  local label=$1 protocol=$2
  local rate file verdict
  for rate in $RATES; do
    file="$OUT/fanout-$label-r$rate.json"
    log "fan-out $label: 100 sessions x 10 displays, $rate msg/s per session"
    fanout_run "$label" "$protocol" "$rate" "$file"
    verdict=0
    "${XTASK[@]}" report step "$file" 50 || verdict=$?
    [[ $verdict == 0 ]] || break
  done
  local quarter
  quarter=$("${XTASK[@]}" report quarter "$OUT" "$label")
  if [[ -z $quarter ]]; then
    echo "bench: fan-out $label failed at the lowest rate" >&2
    return 0
  fi
  log "fan-out $label at 25 % of the best achieved rate: $quarter msg/s per session"
  fanout_run "$label" "$protocol" "$quarter" "$OUT/fanout-$label-quarter.json"
  "${XTASK[@]}" report fanout "$OUT" "$label" >"$OUT/fanout-$label-summary.json"
}

scenario_fanout() {
  fresh
  start_gateway
  start_gateway
  fanout_search roomcast json
}

# --- 2. broadcast: `cargo xtask bench broadcast` (xtask/src/bench/simple.rs).

# --- 3. idle capacity (and 6. against the peer) ------------------------------------------
idle_run() {
  local label=$1 protocol=$2
  local total=$((IDLE_PER_NODE * ${#NODES[@]}))
  local n port pid before=() hold=90
  for n in "${NODES[@]}"; do before+=("$(node_health "${n%%:*}" rss)"); done
  log "idle $label: $IDLE_PER_NODE joined connections on each of ${#NODES[@]} instances"
  # Each worker's clients all go to one node (index modulo workers = index modulo urls).
  # shellcheck disable=SC2046
  "$LT" $(urls "$protocol") --protocol "$protocol" --secret "$SECRET" \
    --sessions $((total / 15)) --displays 14 --rate 0 --duration "${hold}s" --drain 0s \
    --concurrency 500 --workers "${#NODES[@]}" --prefix "idle$label" --progress false \
    --json "$OUT/idle-$label-loadtest.json" >&2 &
  local lt=$!
  for n in "${NODES[@]}"; do
    port=${n%%:*}
    wait_for "$IDLE_PER_NODE connections on $port" 120 \
      bash -c "[[ \$(curl -sf http://127.0.0.1:$port/health | grep -o '\"\\(count\\|sockets\\)\":[0-9]*' | grep -o '[0-9]*$') -ge $IDLE_PER_NODE ]]"
  done
  sleep 5 # let the join burst's allocations settle before reading RSS
  local rows=() i=0 t0 t1 r0
  r0=$(redis_ticks)
  for n in "${NODES[@]}"; do
    port=${n%%:*} pid=${n##*:}
    t0=$(cpu_ticks "$pid")
    rows+=("$port $pid ${before[$i]} $t0")
    i=$((i + 1))
  done
  local window=30
  sleep "$window" # heartbeats (25 s) and presence refreshes fall inside this window
  local result=() redis_used
  redis_used=$(($(redis_ticks) - r0))
  for row in "${rows[@]}"; do
    read -r port pid b t0 <<<"$row"
    t1=$(cpu_ticks "$pid")
    result+=("$port $b $(node_health "$port" rss) $(node_health "$port" conns) $((t1 - t0))")
  done
  wait "$lt" || true
  printf '%s\n' "${result[@]}" |
    "${XTASK[@]}" report idle "$label" "$window" "$(getconf CLK_TCK)" "$redis_used" >"$OUT/idle-$label.json"
  cat "$OUT/idle-$label.json" >&2
}

scenario_idle() {
  fresh
  start_gateway
  start_gateway
  idle_run roomcast json
}

# --- 4. connect storm, 5. publish path, durable mode: `cargo xtask bench storm
# publish-path durable` (xtask/src/bench/).

# --- Redis Cluster: the publish path on 1, 2 and 3 primaries, fan-out against standalone
# free_cluster_port: a port whose cluster-bus port (+10000) is free too.
free_cluster_port() { "${XTASK[@]}" free-port --cluster; }

# start_cluster N: a private Redis Cluster of N primaries (no replicas), the slots split
# evenly (redis-cli --cluster create wants three, so the slots are assigned by hand).
# Sets CLUSTER_URL and REDIS_PIDS.
CLUSTER_URL=""
start_cluster() {
  local n=$1 i port dir ports=()
  REDIS_PIDS=()
  for ((i = 0; i < n; i++)); do
    port=$(free_cluster_port)
    dir="$WORK/cluster-$port"
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      --cluster-announce-ip 127.0.0.1 \
      --dir "$dir" --logfile "$dir/redis.log" --maxclients 20000 &
    PIDS+=($!)
    REDIS_PIDS+=($!)
    ports+=("$port")
    wait_for "cluster node on $port" 10 redis-cli -p "$port" ping
  done
  for ((i = 0; i < n; i++)); do
    redis-cli -p "${ports[$i]}" CLUSTER ADDSLOTSRANGE $((16384 * i / n)) $((16384 * (i + 1) / n - 1)) >/dev/null
    [[ $i == 0 ]] || redis-cli -p "${ports[0]}" CLUSTER MEET 127.0.0.1 "${ports[$i]}" >/dev/null
  done
  for port in "${ports[@]}"; do
    wait_for "cluster ok on $port" 30 bash -c \
      "redis-cli -p $port CLUSTER INFO | grep -q cluster_state:ok"
  done
  CLUSTER_URL="redis-cluster://127.0.0.1:${ports[0]}"
  if ((n > 1)); then
    CLUSTER_URL+="?node=127.0.0.1:${ports[1]}"
    for port in "${ports[@]:2}"; do CLUSTER_URL+="&node=127.0.0.1:$port"; done
  fi
}

redis_ticks() {
  local p total=0
  for p in "${REDIS_PIDS[@]}"; do total=$((total + $(cpu_ticks "$p"))); done
  echo "$total"
}

scenario_cluster() {
  local n concurrency=64 r0 file
  for n in 1 2 3; do
    stop_all
    NODES=()
    start_cluster "$n"
    log "cluster: Store::publish on $n primaries, $concurrency in flight, 1000 sessions"
    file="$WORK/cluster-publish-$n.json"
    r0=$(redis_ticks)
    cargo bench -q -p roomcast-gateway --bench publish_path -- \
      "$CLUSTER_URL" 10 "$concurrency" 1000 >"$file"
    "${XTASK[@]}" report cluster-publish "$file" "$n" "$(($(redis_ticks) - r0))" "$(getconf CLK_TCK)"
    cat "$file" >&2
  done
  # Fan-out at one load, standalone against the 3-primary cluster: two gateways,
  # 100 sessions x 10 displays, 20 msg/s per session.
  local rate=${BENCH_CLUSTER_RATE:-20} label url
  for label in standalone cluster3; do
    stop_all
    NODES=()
    if [[ $label == standalone ]]; then
      start_redis
      url="redis://127.0.0.1:$REDIS_PORT"
    else
      start_cluster 3
      url=$CLUSTER_URL
    fi
    REDIS_URL=$url start_gateway
    REDIS_URL=$url start_gateway
    log "cluster: fan-out on $label, $rate msg/s per session"
    file="$OUT/cluster-fanout-$label.json"
    fanout_run "cl$label" json "$rate" "$file"
  done
  "${XTASK[@]}" report cluster "$WORK" "$OUT" >"$OUT/cluster.json"
  cat "$OUT/cluster.json" >&2
}

# --- 6. the Socket.IO peer ---------------------------------------------------------------
scenario_peer() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "bench: the peer needs node and npm (apt-get install -y nodejs npm)" >&2
    return 1
  fi
  (cd loadtest/peers/socketio && npm ci --silent --no-audit --no-fund)
  fresh
  start_peer
  start_peer
  fanout_search socketio socketio
  fresh
  start_peer
  start_peer
  idle_run socketio socketio
}

# --- 6b. floor, Roomcast and the Socket.IO peer under one load (issue 15) ----------------
# compare_servers PREFIX RATES...: the fan-out load (100 sessions x 10 displays) at each
# rate against the floor peer, two gateways and two Socket.IO peers, each on a fresh Redis;
# reports go to fanout-PREFIX-<server>-r<rate>.json with their CPU sidecars. A server's
# steps stop at the first one that fails the p99 bound (the pinned search).
compare_servers() {
  local prefix=$1 server rate file verdict
  shift
  [[ $# -gt 0 ]] || return 0
  for server in $COMPARE_SERVERS; do
    rm -f "$OUT/fanout-$prefix-$server"-*.json*
    fresh
    case $server in
    floor) start_floor ;;
    roomcast) start_gateway && start_gateway ;;
    socketio) start_peer && start_peer ;;
    esac
    for rate in "$@"; do
      file="$OUT/fanout-$prefix-$server-r$rate.json"
      log "$prefix $server: 100 sessions x 10 displays, $rate msg/s per session"
      fanout_run "$prefix-$server" "$([[ $server == socketio ]] && echo socketio || echo json)" "$rate" "$file"
      verdict=0
      "${XTASK[@]}" report step "$file" 50 || verdict=$?
      [[ $prefix != pinned || $verdict == 0 ]] || break
    done
  done
}

scenario_compare() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "bench: the peer needs node and npm (apt-get install -y nodejs npm)" >&2
    return 1
  fi
  (cd loadtest/peers/socketio && npm ci --silent --no-audit --no-fund)
  # shellcheck disable=SC2086
  compare_servers compare $COMPARE_RATES
  if [[ $(nproc) -ge 2 ]] && command -v taskset >/dev/null; then
    SERVER_PIN=(taskset -c 0)
    LT_PIN=(taskset -c 1)
    # shellcheck disable=SC2086
    compare_servers pinned $PINNED_RATES
    SERVER_PIN=()
    LT_PIN=()
  else
    echo "bench: the pinned comparison needs taskset and two cores; skipped" >&2
  fi
  stop_all
  "${XTASK[@]}" report compare "$OUT" >"$OUT/compare.json"
  "${XTASK[@]}" report compare-markdown "$OUT" >&2
}

# --- profiles: where the CPU goes under fan-out (issue 15) and in small rooms (30) ------
# perf record -g (999 Hz, 8 s; PROFILE_CALLGRAPH below) of one gateway and of Redis, then of the floor peer, during
# the fan-out load at PROFILE_RATE msg/s per session; stacks folded into
# bench/profile-<process>.folded (any flame-graph renderer reads them) and a summary of
# the heaviest frames in bench/profile-<process>.txt (scripts/perf_fold.py).
# PROFILE_CALLGRAPH=dwarf unwinds from DWARF at a lower rate (299 Hz): whole stacks through
# code built without frame pointers, where the default (fp) cuts most stacks at the leaf.
# Its stacks go to bench/profile-<process>-dwarf.folded.gz (10 times the size), with
# bench/profile-<process>-dwarf-parts.txt: the share of each part of the gateway.
# PROFILE_CALLGRAPH=offcpu records where threads go off the CPU instead (every
# sched:sched_switch, DWARF stacks): a count of the sleeps and wake-ups by the part of
# the process that slept, in bench/profile-<process>-offcpu-parts.txt.
# PROFILE_LOAD=small profiles the small-room load instead (500 sessions x 1 controller +
# 1 display, PROFILE_RATE 10 msg/s per session, split: the first gateway holds the
# controllers, so it is the publishing instance); its files are named profile-*-small*.
profile_pids() {
  local name=$1 pid=$2 how=(-F 999 -g)
  case ${PROFILE_CALLGRAPH:-fp} in
  dwarf) how=(-F 299 --call-graph dwarf,16384) ;;
  offcpu) how=(-e sched:sched_switch --call-graph dwarf,16384) ;;
  esac
  [[ ${PROFILE_CALLGRAPH:-fp} == fp ]] || name=$name-$PROFILE_CALLGRAPH
  perf record "${how[@]}" -o "$WORK/perf-$name.data" -p "$pid" -- sleep 8 >/dev/null 2>&1
  perf script -i "$WORK/perf-$name.data" 2>/dev/null | python3 scripts/perf_fold.py fold >"$OUT/profile-$name.folded"
  python3 scripts/perf_fold.py top "$OUT/profile-$name.folded" 30 >"$OUT/profile-$name.txt"
  if [[ ${PROFILE_CALLGRAPH:-fp} != fp ]]; then
    python3 scripts/perf_fold.py parts "$OUT/profile-$name.folded" >"$OUT/profile-$name-parts.txt"
    gzip -f "$OUT/profile-$name.folded"
  fi
}

scenario_profile() {
  if ! command -v perf >/dev/null; then
    echo "bench: profiles need perf (apt-get install -y linux-perf)" >&2
    return 1
  fi
  local rate=${PROFILE_RATE:-40} server suffix="" tag="" load=(--sessions 100 --displays 10)
  if [[ ${PROFILE_LOAD:-fanout} == small ]]; then
    rate=${PROFILE_RATE:-10}
    tag=-small
    load=(--sessions 500 --displays 1 --placement client)
  fi
  [[ ${PROFILE_CALLGRAPH:-fp} == fp ]] || suffix=-$PROFILE_CALLGRAPH
  for server in roomcast floor; do
    fresh
    if [[ $server == roomcast ]]; then start_gateway && start_gateway; else start_floor; fi
    rm -f "$WORK/profile.started"
    log "profile $server: ${PROFILE_LOAD:-fanout} load at $rate msg/s per session"
    # shellcheck disable=SC2046
    "$LT" $(urls json) --secret "$SECRET" "${load[@]}" --rate "$rate" \
      --payload 64 --duration 14s --ramp 2s --prefix "prof$server" --progress false \
      --started-file "$WORK/profile.started" --json "$OUT/profile-$server$tag$suffix-loadtest.json" >&2 &
    local lt=$!
    wait_for "publishing" 60 test -e "$WORK/profile.started"
    local first=${NODES[0]}
    if [[ $server == roomcast ]]; then
      profile_pids "gateway$tag" "${first##*:}" &
      local gateway_profile=$!
      profile_pids "redis$tag" "$REDIS_PID"
      # Not a bare `wait`: that would wait for the servers too.
      wait "$gateway_profile"
    else
      profile_pids "floor$tag" "${first##*:}"
    fi
    wait "$lt" || true
  done
}

# --- the gateway's cost per published message and per delivery (issue 15) ---------------
# Two gateways, 100 sessions at 40 msg/s each, with 2 and then 10 displays per session:
# the gateways' CPU per published message over the publishing window is a + D × b, which
# two runs split into a (frame decode, publish script round trip, ack, pub/sub reception
# on both instances, the pump) and b (one delivery). bench/cost.json.
scenario_cost() {
  local d
  for d in 2 10; do
    fresh
    start_gateway
    start_gateway
    log "cost: 100 sessions x $d displays, 40 msg/s per session"
    DISPLAYS=$d fanout_run "cost$d" json 40 "$OUT/cost-d$d.json"
  done
  "${XTASK[@]}" report cost "$OUT" >"$OUT/cost.json"
  cat "$OUT/cost.json" >&2
}

# --- small rooms: what one published message costs (issue 30) -------------------------
# SMALL_SESSIONS sessions (500) x 1 controller + D displays (SMALL_DISPLAYS, "1 3") at
# SMALL_RATES msg/s per session ("10 1": 5,000 and 500 msg/s in all), SMALL_DURATION
# (30 s) each, on the floor peer (one process), two gateways and two Socket.IO peers
# (SMALL_SERVERS), each on a fresh Redis. Two placements for the servers that run two
# instances: split (a session's controller and displays on different instances, the
# load generator's default) and co-located (`--placement session`: one instance per
# session, as a session-affine ingress gives). Server and Redis CPU per published
# message are counted over the publishing window only (connects and joins excluded).
# Reports: small-d<D>-<server>-<placement>-r<rate>.json; summary small.json.
# small_placements SERVER: the placements a small-room step runs (one floor process has
# nothing to split).
small_placements() { if [[ $1 == floor ]]; then echo split; else echo split colocated; fi; }

# small_start SERVER: a fresh Redis and the server's instances: the floor's one process,
# two gateways, or two Socket.IO peers.
small_start() {
  fresh
  case $1 in
  floor) start_floor ;;
  roomcast) start_gateway && start_gateway ;;
  socketio) start_peer && start_peer ;;
  esac
}

# placement_flag PLACEMENT: the load generator's --placement for it.
placement_flag() { if [[ $1 == colocated ]]; then echo session; else echo client; fi; }

scenario_small() {
  local DURATION=${SMALL_DURATION:-30s} d server placement rate file
  local servers=${SMALL_SERVERS:-floor roomcast socketio}
  if [[ $servers == *socketio* ]]; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
      echo "bench: the Socket.IO peer needs node and npm (apt-get install -y nodejs npm)" >&2
      return 1
    fi
    (cd loadtest/peers/socketio && npm ci --silent --no-audit --no-fund)
  fi
  rm -f "$OUT"/small-*.json*
  for d in ${SMALL_DISPLAYS:-1 3}; do
    for server in $servers; do
      for placement in $(small_placements "$server"); do
        small_start "$server"
        for rate in ${SMALL_RATES:-10 1}; do
          file="$OUT/small-d$d-$server-$placement-r$rate.json"
          log "small rooms: $server $placement, ${SMALL_SESSIONS:-500} x (1 + $d), $rate msg/s per session"
          SESSIONS=${SMALL_SESSIONS:-500} DISPLAYS=$d PLACEMENT=$(placement_flag "$placement") \
            fanout_run "s$d$server${placement:0:1}" "$([[ $server == socketio ]] && echo socketio || echo json)" "$rate" "$file"
        done
      done
    done
  done
  stop_all
  "${XTASK[@]}" report small "$OUT" >"$OUT/small.json"
  "${XTASK[@]}" report small-markdown "$OUT" >&2
}

# --- small rooms: a published message's budget in syscalls, wake-ups, allocations -------
# The small-room load (BUDGET_SESSIONS 500 x 1 controller + 1 display, BUDGET_RATE 10
# msg/s per session, BUDGET_DURATION 15 s) on the floor, two gateways split and two
# co-located, with `perf stat` counting in each server process and in Redis over the
# publishing window: system calls, context switches (a thread that slept and was woken,
# or was preempted), and calls of malloc, calloc and realloc (uprobes on the libc both
# servers link). Counting slows the processes, so no CPU figure is taken from these
# runs; Redis calls per publish come from commandstats as in every fan-out row.
# Reports: budget-<server>-<placement>.json and their .perf-* files; summary budget.json.
scenario_budget() {
  if ! command -v perf >/dev/null; then
    echo "bench: the budget needs perf (apt-get install -y linux-perf)" >&2
    return 1
  fi
  local libc probes fn server placement file DURATION=${BUDGET_DURATION:-15s}
  libc=$(ldd "$GW" | awk '/libc\.so/ {print $3}')
  probes=$(perf probe -l 2>/dev/null || true)
  for fn in malloc calloc realloc; do
    [[ $probes == *"probe_libc:$fn "* ]] || perf probe -q -x "$libc" --add "$fn" >/dev/null 2>&1 || {
      echo "bench: cannot add a uprobe on $fn in $libc (needs root)" >&2
      return 1
    }
  done
  rm -f "$OUT"/budget-*.json*
  for server in floor roomcast; do
    for placement in $(small_placements "$server"); do
      small_start "$server"
      file="$OUT/budget-$server-$placement.json"
      log "budget: $server $placement, ${BUDGET_SESSIONS:-500} x (1 + 1), ${BUDGET_RATE:-10} msg/s per session"
      SESSIONS=${BUDGET_SESSIONS:-500} DISPLAYS=1 PLACEMENT=$(placement_flag "$placement") \
        PERF_EVENTS=raw_syscalls:sys_enter,context-switches,probe_libc:malloc,probe_libc:calloc,probe_libc:realloc \
        fanout_run "b$server${placement:0:1}" json "${BUDGET_RATE:-10}" "$file"
    done
  done
  stop_all
  "${XTASK[@]}" report budget "$OUT" >"$OUT/budget.json"
  "${XTASK[@]}" report budget-markdown "$OUT" >&2
}

# --- 7. the lifecycle clock at scale: `cargo xtask bench lifecycle` (xtask/src/bench.rs).

# --- 8. silent sockets: `cargo xtask bench silent` (xtask/src/bench/silent.rs).

# --- 9. webhooks: `cargo xtask bench webhooks` (xtask/src/bench/webhooks.rs).

scripts/install-deps.sh --test >/dev/null
build
ulimit -n 20000 2>/dev/null || true
[[ $# -gt 0 ]] || set -- all
for s in "$@"; do
  case $s in
  fanout) scenario_fanout ;;
  idle) scenario_idle ;;
  cluster) scenario_cluster ;;
  peer) scenario_peer ;;
  compare) scenario_compare ;;
  profile) scenario_profile ;;
  cost) scenario_cost ;;
  small) scenario_small ;;
  budget) scenario_budget ;;
  all)
    scenario_cluster
    scenario_fanout
    scenario_idle
    scenario_peer
    scenario_compare
    scenario_cost
    scenario_small
    scenario_budget
    ;;
  *)
    echo "usage: scripts/bench.sh [fanout|idle|cluster|peer|compare|profile|cost|small|budget|all]..." >&2
    exit 64
    ;;
  esac
done
stop_all
"${XTASK[@]}" report table "$OUT" >&2
