#!/usr/bin/env bash
# `make run`: a local Redis (reused if one answers on the port) and one gateway with a
# development config, plus a token and the commands to try it.
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_PORT="${REDIS_PORT:-6379}"
# Loopback unless asked otherwise: `make run LISTEN=0.0.0.0:8080` opens it to the LAN
# (a phone on the same network), never silently.
LISTEN="${LISTEN:-${ROOMCAST_LISTEN:-127.0.0.1:8080}}"
export ROOMCAST_LISTEN="$LISTEN"
export ROOMCAST_REDIS_URL="${ROOMCAST_REDIS_URL:-redis://127.0.0.1:${REDIS_PORT}}"
export ROOMCAST_JWT_SECRET="${ROOMCAST_JWT_SECRET:-roomcast-dev-secret-do-not-use-in-production}"
export ROOMCAST_API_KEY="${ROOMCAST_API_KEY:-roomcast-dev-api-key}"
export ROOMCAST_LOG_FORMAT="${ROOMCAST_LOG_FORMAT:-pretty}"
export ROOMCAST_NODE_ID="${ROOMCAST_NODE_ID:-dev-1}"
# The demo app at /demo (a display and a phone controller); off by default elsewhere.
export ROOMCAST_DEMO="${ROOMCAST_DEMO:-true}"
# Development limits: a phone tapping through slides must not hit ten publishes a minute.
export ROOMCAST_RATE_PUBLISH="${ROOMCAST_RATE_PUBLISH:-600/60s}"
export ROOMCAST_RATE_PUBLISH_IP="${ROOMCAST_RATE_PUBLISH_IP:-1200/60s}"
export ROOMCAST_RATE_API_STRICT="${ROOMCAST_RATE_API_STRICT:-200/15m}"
export ROOMCAST_RATE_CREATE="${ROOMCAST_RATE_CREATE:-200/15m}"

mkdir -p .run
port=${LISTEN##*:}
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "make run: port $port is taken (another gateway? stop it, or: make run LISTEN=127.0.0.1:8081)" >&2
  exit 1
fi
if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "using the Redis already answering on port $REDIS_PORT"
else
  # Append-only file: stopping this Redis keeps sessions and their numbering (without it,
  # a restart would wipe every session and start every seq at 1 again).
  echo "starting redis-server on port $REDIS_PORT (AOF in .run/, pid in .run/redis.pid)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync everysec --dir "$PWD/.run" --pidfile "$PWD/.run/redis.pid" --daemonize yes \
    --logfile "$PWD/.run/redis.log"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

cargo build -q -p roomcast-gateway
BIN=target/debug/roomcast
CTL=$("$BIN" token --sub alice --role controller --name Alice --ttl 12h)
TV=$("$BIN" token --sub tv --role display --name "Living room" --ttl 12h)

host=${LISTEN%:*}
# The address to show: this machine's LAN address when every interface is bound (so the
# demo's QR code points somewhere a phone can reach), else what was asked for.
if [[ $host == 0.0.0.0 || $host == "[::]" ]]; then
  lan=$(hostname -I 2>/dev/null | awk '{print $1}')
  shown="${lan:-127.0.0.1}:$port"
else
  shown=$LISTEN
fi
lan_hint="Only this machine can connect; for a phone on your LAN: make run LISTEN=0.0.0.0:8080"
[[ $shown == "$LISTEN" ]] || lan_hint="Listening on every interface: phones on your LAN can reach http://$shown"

cat <<MSG

Roomcast is starting on http://$LISTEN   (Ctrl-C, or make stop from another terminal,
stops it; make stop also stops the Redis this started)
  Demo:       http://$shown/demo/   (a display; scan its QR code with a phone to control it)
  API key:    $ROOMCAST_API_KEY   (server routes: Authorization: Bearer <key>)
  JWT secret: $ROOMCAST_JWT_SECRET   (HS256)
  To mint more tokens in another terminal:
    export ROOMCAST_JWT_SECRET=$ROOMCAST_JWT_SECRET
    $BIN token --sub NAME --role controller|display|observer
  Dev limits: 600 publishes a minute per user.
  $lan_hint

Try it by hand (two terminals; needs: pip install websockets):
  A display (user tv, 12 h token):
  python3 -m websockets "ws://$shown/ws?token=$TV"
      > {"type":"join","session":"demo"}
  A controller (user alice, 12 h token):
  python3 -m websockets "ws://$shown/ws?token=$CTL"
      > {"type":"join","session":"demo"}
      > {"type":"publish","session":"demo","data":{"slide":2},"ref":"p1"}
  The controller gets an ack with the seq and its own message, in either order (they
  travel different paths); the display gets the message.

Health: curl http://$shown/health     Metrics: curl http://$shown/metrics
Protocol: docs/PROTOCOL.md    SDK: clients/js/README.md

MSG
echo $$ >.run/gateway.pid
exec "$BIN" serve
