#!/usr/bin/env bash
# `make sdk-test`: the TypeScript SDK (clients/js) built and tested against a freshly built
# gateway and private redis-servers the tests start. npm dependencies come from the
# committed lockfile (`npm ci`), installed when missing or stale. Then it checks that the
# demo's embedded copy of the SDK (gateway/demo/sdk) is this build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
${CARGO:-cargo} build -q -p roomcast-gateway
cd clients/js
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
ROOMCAST_BIN="$PWD/../../target/debug/roomcast" npm test
# The demo embeds the SDK's compiled modules (gateway/demo/sdk): they must be this build.
stale=0
for f in ../../gateway/demo/sdk/*.js; do
  cmp -s "$f" "dist/$(basename "$f")" || { echo "sdk-test: $f differs from the SDK build" >&2; stale=1; }
done
if ((stale)); then
  echo "sdk-test: run 'make demo-sdk' and commit gateway/demo/sdk" >&2
  exit 1
fi
