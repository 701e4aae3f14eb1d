#!/usr/bin/env bash
# `make soak`: a long run at about half of the measured fan-out capacity with continuous
# churn, watching for growth. Private redis-server and three gateways on loopback:
#   - a base load (sessions of one controller and N displays) for the whole run, with
#     10 % of its displays leaving and coming back every 30 s;
#   - waves of short-lived sessions one after another: connect, join (which creates the
#     session), publish, leave; each wave's sessions then end by inactivity.
# Every 10 s it samples per gateway RSS, open fds, tokio tasks and session pumps, and
# Redis' keys and memory (bench/soak/samples.jsonl). After the load, once every session
# has ended, it checks that no key of theirs lives without a TTL. scripts/soak_report.py
# reports the growth after the warm-up and fails above SOAK_MAX_GROWTH (5 %).
#
# Knobs: SOAK_MINUTES (10), SOAK_WARMUP (120 s), SOAK_SESSIONS (100), SOAK_DISPLAYS (10),
# SOAK_RATE (20 msg/s per session), SOAK_OUT (bench/soak), SOAK_PROFILE (release; the
# short form in `make test` uses the debug build its tests just made).
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${SOAK_MINUTES:-10}
WARMUP=${SOAK_WARMUP:-120}
SESSIONS=${SOAK_SESSIONS:-100}
DISPLAYS=${SOAK_DISPLAYS:-10}
RATE=${SOAK_RATE:-20}
OUT="${SOAK_OUT:-bench/soak}"
PROFILE=${SOAK_PROFILE:-release}
WORK="$PWD/.run/soak/$(basename "$OUT")"
SECRET="soak-secret-0123456789abcdef"
LT=target/$PROFILE/loadtest
GW=${ROOMCAST_BIN:-target/$PROFILE/roomcast}
mkdir -p "$OUT" "$WORK"

# shellcheck source=scripts/procs.sh
source scripts/procs.sh
trap stop_all EXIT

if [[ $PROFILE == release ]]; then
  log "building release binaries"
  cargo build --release -q -p roomcast-gateway -p roomcast-loadtest
elif [[ ! -x $GW || ! -x $LT ]]; then
  # The short form runs after `cargo test --workspace`, which built both.
  cargo build -q --workspace
fi
scripts/install-deps.sh --test >/dev/null

REDIS_PORT=$(free_port)
rm -rf "$WORK"
mkdir -p "$WORK/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK/redis" --logfile "$WORK/redis/redis.log" --maxclients 20000 &
PIDS+=($!)
wait_for "redis on $REDIS_PORT" 10 redis-cli -p "$REDIS_PORT" ping
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# Sessions end 20 s after their last activity, so the waves' sessions come and go
# within the run and the base load's within a minute after it.
NODES=()
for _ in 1 2 3; do
  port=$(free_port)
  env "${LOADGEN_ENV[@]}" ROOMCAST_MAX_SESSIONS_PER_USER=0 ROOMCAST_LISTEN="127.0.0.1:$port" \
    ROOMCAST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" ROOMCAST_JWT_SECRET="$SECRET" \
    ROOMCAST_LOG=warn ROOMCAST_NODE_ID="soak-$port" \
    ROOMCAST_INACTIVITY_WARNING=10s ROOMCAST_INACTIVITY_TIMEOUT=20s \
    "$GW" >"$WORK/gateway-$port.log" 2>&1 &
  PIDS+=($!)
  NODES+=("$port:$!")
  wait_for "gateway on $port" 30 curl -sf "http://127.0.0.1:$port/health/ready"
done
URLS=()
for n in "${NODES[@]}"; do URLS+=(--url "ws://127.0.0.1:${n%%:*}/ws"); done
# Keys before any session: the node registry.
rcli --scan >"$WORK/baseline-keys"

# sample T: one JSON line per gateway and one for Redis.
sample() {
  local t=$1 n port pid
  for n in "${NODES[@]}"; do
    port=${n%%:*}
    pid=${n##*:}
    curl -sf "http://127.0.0.1:$port/health" | python3 -c '
import json, os, sys
t, node, pid = sys.argv[1:4]
h = json.load(sys.stdin)["checks"]
status = open(f"/proc/{pid}/status").read()
rss = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmRSS:"))) * 1024
print(json.dumps({"t": float(t), "node": node, "rss": rss,
    "fds": len(os.listdir(f"/proc/{pid}/fd")), "tasks": h["runtime"]["tasks"],
    "pumps": h["sessions"]["local"], "connections": h["connections"]["count"]}))' \
      "$t" "$port" "$pid" >>"$OUT/samples.jsonl"
  done
  printf '{"t": %s, "node": "redis", "keys": %s, "used_memory": %s}\n' "$t" \
    "$(rcli dbsize)" "$(rcli info memory | awk -F: '/^used_memory:/ {print $2+0}')" \
    >>"$OUT/samples.jsonl"
}

# Storms every 30 s for the whole run.
storms=()
for ((s = 30; s < MINUTES * 60; s += 30)); do storms+=("${s}s"); done
churn_at=$(
  IFS=,
  echo "${storms[*]}"
)
log "soak: ${MINUTES} min, $SESSIONS sessions x $DISPLAYS displays at $RATE msg/s, churn every 30 s, waves of 20 sessions"
: >"$OUT/samples.jsonl"
# The idle point, before any client: what tasks and pumps must come back to.
sample -10
rm -f "$WORK/started"
"$LT" "${URLS[@]}" --secret "$SECRET" --sessions "$SESSIONS" --displays "$DISPLAYS" \
  --rate "$RATE" --duration "${MINUTES}m" --drain 5s --ramp 5s --reconnect \
  --churn-at "$churn_at" --churn-fraction 0.1 --prefix "soak$RANDOM" --progress false \
  --started-file "$WORK/started" --json "$OUT/base.json" >"$WORK/base.table" 2>"$WORK/base.log" &
BASE=$!
wait_for "publishing to start" 120 test -e "$WORK/started"
START=$SECONDS

# Waves until the base load ends: each 20 sessions x 4 displays for 15 s.
(
  w=0
  while ((SECONDS - START < MINUTES * 60 - 20)); do
    w=$((w + 1))
    "$LT" "${URLS[@]}" --secret "$SECRET" --sessions 20 --displays 4 --rate 5 \
      --duration 15s --drain 2s --reconnect --prefix "wave$RANDOM-$w" --progress false \
      --fail-on-loss --json "$WORK/wave.json" >/dev/null 2>>"$WORK/waves.log" ||
      echo "wave $w failed" >>"$WORK/waves.failed"
    echo "$w" >"$WORK/waves.count"
  done
) &
WAVES=$!

next=0
while kill -0 "$BASE" 2>/dev/null; do
  if ((SECONDS - START >= next)); then
    sample "$next"
    next=$((next + 10))
  fi
  sleep 0.5
done
wait "$BASE" || true
wait "$WAVES" || true
cat "$WORK/base.table" >&2

# Every session ends 20 s after its last activity; wait for the pumps to go.
log "soak: waiting for every session to end"
deadline=$((SECONDS + 120))
until python3 - "${NODES[@]}" <<'EOF'; do
import json, sys, urllib.request
pumps = 0
for n in sys.argv[1:]:
    port = n.split(":")[0]
    h = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health"))
    pumps += h["checks"]["sessions"]["local"]
sys.exit(0 if pumps == 0 else 1)
EOF
  if ((SECONDS >= deadline)); then
    echo "soak: sessions still open after 120 s" >&2
    break
  fi
  sleep 1
done
sample "$((SECONDS - START))"

# Keys the run left without a TTL (the bucketed indexes, whose entries the sweeper
# prunes, are reported apart): each would outlive its session forever.
rcli --scan | sort >"$WORK/after-keys"
python3 - "$REDIS_PORT" "$WORK/baseline-keys" "$WORK/after-keys" >"$OUT/keys.json" <<'EOF'
import json, subprocess, sys
port, base, after = sys.argv[1:4]
baseline = set(open(base).read().split())
keys = [k for k in open(after).read().split() if k not in baseline]
def cli(*a):
    return subprocess.run(["redis-cli", "-p", port, *a], capture_output=True, text=True).stdout.strip()
index, persistent, ttls = [], [], []
for k in keys:
    ttl = int(cli("pttl", k))
    if ":{b" in k:
        index.append((k, int(cli("zcard", k) or 0) if cli("type", k) == "zset" else None))
    elif ttl < 0:
        persistent.append(k)
    else:
        ttls.append(ttl)
print(json.dumps({
    "baseline_keys": len(baseline), "new_keys": len(keys),
    "without_ttl": persistent[:20], "without_ttl_count": len(persistent),
    "max_ttl_s": max(ttls, default=0) / 1000,
    "index_keys": [{"key": k, "entries": n} for k, n in index],
}, indent=2))
EOF
waves=$(cat "$WORK/waves.count" 2>/dev/null || echo 0)
failed=0
[[ -e $WORK/waves.failed ]] && failed=$(wc -l <"$WORK/waves.failed")
stop_all
python3 scripts/soak_report.py "$OUT" "$WARMUP" "$waves" "$failed"
