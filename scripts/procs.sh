# Process helpers of scripts/bench.sh (sourced, not run; soak and chaos have moved to
# `cargo xtask`, on the test kit):
# private processes started in the background, remembered in PIDS, stopped by pid.

PIDS=()
# Stops in the reverse order of starting: gateways (and load) before the Redis they
# drain against, so none waits out Redis timeouts on its way out.
stop_all() {
  local i p
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    p=${PIDS[i]}
    kill "$p" 2>/dev/null || continue
    # A gateway drains its clients before it exits: give it the grace period.
    for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}

# Gateway settings for a load generator, which is one address with many clients: the
# per-address and per-user limits that would refuse it are off; the rest is the default.
LOADGEN_ENV=(ROOMCAST_MAX_PENDING_PER_IP=0 ROOMCAST_RATE_PUBLISH=0 ROOMCAST_RATE_PUBLISH_IP=0
  ROOMCAST_RATE_CONNECT=0 ROOMCAST_RATE_BURST=0 ROOMCAST_RATE_FRAMES=0
  ROOMCAST_RATE_API_STRICT=0 ROOMCAST_RATE_CREATE=0 ROOMCAST_MAX_CONNECTIONS=19000)

log() { printf '\n== %s\n' "$*" >&2; }

free_port() { "${XTASK[@]}" free-port; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds or time is up.
wait_for() {
  local what=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "${0##*/}: timed out waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

# cpu_ticks PID: user + system clock ticks so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
