#!/usr/bin/env bash
# `make chaos`: the fault scenarios of BENCHMARKS.md's RELIABILITY section. Each one
# starts private processes on loopback (redis-server, release gateways, sometimes a
# fault proxy), runs the load generator's reconnecting clients at a steady load, injects
# one fault at a fixed time after publishing starts, and checks the acked-vs-delivered
# accounting (scripts/chaos_report.py). Reports go to bench/chaos/ as JSON, with a
# summary table.
#
#   scripts/chaos.sh [kill|term|pubsub|restart-always|restart-everysec|restart-none|latency|partition|churn|all]...
#
# Knobs (environment): CHAOS_SESSIONS (200), CHAOS_DISPLAYS (10 per session), CHAOS_RATE
# (20 msg/s per session), CHAOS_PUBLISH (60 s of publishing), CHAOS_FAULT_AT (20 s after
# publishing starts), CHAOS_OUT (bench/chaos). ROOMCAST_BIN runs another gateway build.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${CHAOS_OUT:-bench/chaos}"
WORK="$PWD/.run/chaos"
SECRET="chaos-secret-0123456789abcdef"
SESSIONS=${CHAOS_SESSIONS:-200}
DISPLAYS=${CHAOS_DISPLAYS:-10}
RATE=${CHAOS_RATE:-20}
PUBLISH=${CHAOS_PUBLISH:-60}
FAULT_AT=${CHAOS_FAULT_AT:-20}
LT=target/release/loadtest
GW=${ROOMCAST_BIN:-target/release/roomcast}
mkdir -p "$OUT" "$WORK"

# shellcheck source=scripts/procs.sh
source scripts/procs.sh
trap stop_all EXIT

# start_redis ARGS...: a fresh redis-server with ARGS (persistence settings); sets
# REDIS_PORT, REDIS_PID and REDIS_ARGS (for restart_redis).
REDIS_PORT=""
REDIS_PID=""
REDIS_ARGS=()
start_redis() {
  REDIS_PORT=$(free_port)
  REDIS_ARGS=("$@")
  rm -rf "$WORK/redis-$REDIS_PORT"
  mkdir -p "$WORK/redis-$REDIS_PORT"
  launch_redis
}

launch_redis() {
  local dir="$WORK/redis-$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --dir "$dir" \
    --logfile "$dir/redis.log" --maxclients 20000 "${REDIS_ARGS[@]}" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  wait_for "redis on $REDIS_PORT" 30 redis-cli -p "$REDIS_PORT" ping
}

# restart_redis: a crash (SIGKILL) and a start with the same settings and files.
restart_redis() {
  kill -9 "$REDIS_PID"
  wait "$REDIS_PID" 2>/dev/null || true
  launch_redis
}

# start_proxy: a fault proxy in front of Redis (the test kit's, as the `fault-proxy`
# binary); sets PROXY_PORT and PROXY_CTL.
start_proxy() {
  PROXY_PORT=$(free_port)
  PROXY_CTL=$(free_port)
  target/release/fault-proxy "$PROXY_PORT" "$REDIS_PORT" "$PROXY_CTL" &
  PIDS+=($!)
  wait_for "proxy on $PROXY_PORT" 10 redis-cli -p "$PROXY_PORT" ping
}

# proxy CTL COMMAND...: tells a proxy what to do (`delay MS`, `blackhole`, `heal`; see
# testkit/src/proxy.rs) and fails unless it answers `ok`.
proxy() {
  local answer
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  shift
  echo "$*" >&3
  read -r answer <&3
  exec 3>&-
  [[ $answer == ok ]] || {
    echo "chaos: the proxy answered '$answer' to '$*'" >&2
    return 1
  }
}

# start_gateway [REDIS_PORT]: appends "port:pid" to NODES, with the load generator's
# settings (LOADGEN_ENV, as in make bench) and then GATEWAY_ENV.
NODES=()
start_gateway() {
  local port redis_port=${1:-$REDIS_PORT}
  port=$(free_port)
  # shellcheck disable=SC2086
  env "${LOADGEN_ENV[@]}" ${GATEWAY_ENV:-} ROOMCAST_LISTEN="127.0.0.1:$port" \
    ROOMCAST_REDIS_URL="redis://127.0.0.1:$redis_port" ROOMCAST_JWT_SECRET="$SECRET" \
    ROOMCAST_LOG=warn ROOMCAST_NODE_ID="chaos-$port" \
    "$GW" >"$WORK/gateway-$port.log" 2>&1 &
  PIDS+=($!)
  NODES+=("$port:$!")
  wait_for "gateway on $port" 20 curl -sf "http://127.0.0.1:$port/health/ready"
}

fresh() {
  stop_all
  NODES=()
}

# run_load NAME [LOADTEST ARGS...]: the load generator in the background over every
# node, watching their readiness; sets LOAD_PID. Publishing time: CHAOS_PUBLISH, or
# PUBLISH_S for one scenario.
run_load() {
  local name=$1 n args=()
  shift
  for n in "${NODES[@]}"; do
    args+=(--url "ws://127.0.0.1:${n%%:*}/ws" --ready-url "http://127.0.0.1:${n%%:*}/health/ready")
  done
  rm -f "$WORK/started"
  "$LT" "${args[@]}" --secret "$SECRET" --sessions "$SESSIONS" --displays "$DISPLAYS" \
    --rate "$RATE" --payload 64 --duration "${PUBLISH_S:-$PUBLISH}s" --drain 10s --ramp 5s \
    --reconnect --prefix "c$name$RANDOM" --progress false --started-file "$WORK/started" \
    --json "$OUT/$name.json" "$@" >"$WORK/$name.table" 2>"$WORK/$name.log" &
  LOAD_PID=$!
  wait_for "publishing to start" 120 test -e "$WORK/started"
  START=$SECONDS
}

# at T: waits until T seconds after publishing started.
at() { while ((SECONDS - START < $1)); do sleep 0.1; done; }

# finish NAME EXPECTATION: waits for the load generator, adds what the gateways counted,
# and checks the report against the scenario's expectation.
finish() {
  local name=$1 expect=$2 n slow=0
  wait "$LOAD_PID" || true
  for n in "${NODES[@]}"; do
    local v
    v=$(curl -sf "http://127.0.0.1:${n%%:*}/metrics" 2>/dev/null |
      awk '/^roomcast_slow_consumer_disconnects_total/ {s += $2} END {print s + 0}') || v=0
    slow=$((slow + ${v%.*}))
  done
  cat "$WORK/$name.table" >&2
  python3 scripts/chaos_report.py check "$OUT/$name.json" "$expect" "$FAULT_DESC" "$slow" || FAILED+=("$name")
}

FAILED=()

# --- the scenarios -----------------------------------------------------------------------

scenario_kill() {
  fresh
  start_redis --appendonly no
  start_gateway
  start_gateway
  start_gateway
  FAULT_DESC="SIGKILL one of 3 gateways at ${FAULT_AT}s"
  run_load kill
  at "$FAULT_AT"
  kill -9 "${NODES[2]##*:}"
  wait "${NODES[2]##*:}" 2>/dev/null || true
  finish kill balanced
}

scenario_term() {
  fresh
  start_redis --appendonly no
  start_gateway
  start_gateway
  start_gateway
  FAULT_DESC="SIGTERM (drain) one of 3 gateways at ${FAULT_AT}s"
  run_load term
  at "$FAULT_AT"
  kill -TERM "${NODES[2]##*:}"
  finish term balanced
}

scenario_pubsub() {
  fresh
  start_redis --appendonly no
  start_gateway
  start_gateway
  start_gateway
  FAULT_DESC="CLIENT KILL TYPE pubsub every 2 s for 30 s from ${FAULT_AT}s"
  run_load pubsub
  at "$FAULT_AT"
  local t
  for t in $(seq 0 2 28); do
    at $((FAULT_AT + t))
    redis-cli -p "$REDIS_PORT" CLIENT KILL TYPE pubsub >/dev/null
  done
  finish pubsub balanced
}

# restart_scenario NAME EXPECTATION REDIS ARGS...: Redis crashes (SIGKILL) and restarts
# with the same files.
restart_scenario() {
  local name=$1 expect=$2
  shift 2
  fresh
  start_redis "$@"
  start_gateway
  start_gateway
  start_gateway
  FAULT_DESC="Redis SIGKILL and restart at ${FAULT_AT}s ($*)"
  run_load "$name"
  at "$FAULT_AT"
  restart_redis
  finish "$name" "$expect"
}

scenario_restart_always() { restart_scenario restart-always balanced --appendonly yes --appendfsync always; }
scenario_restart_everysec() { restart_scenario restart-everysec report --appendonly yes --appendfsync everysec; }
scenario_restart_none() { restart_scenario restart-none reset --appendonly no; }

scenario_latency() {
  fresh
  start_redis --appendonly no
  start_proxy
  start_gateway "$PROXY_PORT"
  start_gateway "$PROXY_PORT"
  start_gateway "$PROXY_PORT"
  FAULT_DESC="Redis behind a proxy: +50 ms for 20 s from ${FAULT_AT}s, then +500 ms for 20 s"
  PUBLISH_S=$((FAULT_AT + 60)) run_load latency
  at "$FAULT_AT"
  proxy "$PROXY_CTL" delay 50
  at $((FAULT_AT + 20))
  proxy "$PROXY_CTL" delay 500
  at $((FAULT_AT + 40))
  proxy "$PROXY_CTL" delay 0
  finish latency balanced
}

scenario_partition() {
  fresh
  start_redis --appendonly no
  start_proxy
  start_gateway
  start_gateway
  start_gateway "$PROXY_PORT"
  FAULT_DESC="one of 3 gateways partitioned from Redis for 10 s at ${FAULT_AT}s"
  run_load partition
  at "$FAULT_AT"
  proxy "$PROXY_CTL" blackhole
  at $((FAULT_AT + 10))
  proxy "$PROXY_CTL" heal
  finish partition balanced
}

scenario_churn() {
  fresh
  start_redis --appendonly no
  start_gateway
  start_gateway
  start_gateway
  FAULT_DESC="20 % of displays leave and come back, at ${FAULT_AT}s, +10 s and +20 s"
  run_load churn --churn-at "${FAULT_AT}s,$((FAULT_AT + 10))s,$((FAULT_AT + 20))s" --churn-fraction 0.2
  finish churn balanced
}

ALL="kill term pubsub restart-always restart-everysec restart-none latency partition churn"
SCENARIOS="${*:-all}"
[[ $SCENARIOS == all ]] && SCENARIOS=$ALL
log "building release binaries"
cargo build --release -q -p roomcast-gateway -p roomcast-loadtest
cargo build --release -q -p roomcast-testkit --bin fault-proxy
scripts/install-deps.sh --test >/dev/null
for s in $SCENARIOS; do
  log "chaos: $s ($SESSIONS sessions x $DISPLAYS displays, $RATE msg/s each, ${PUBLISH}s)"
  "scenario_${s//-/_}"
done
stop_all
python3 scripts/chaos_report.py markdown "$OUT" >"$OUT/summary.md"
cat "$OUT/summary.md"
if ((${#FAILED[@]})); then
  echo "chaos: failed: ${FAILED[*]}" >&2
  exit 1
fi
