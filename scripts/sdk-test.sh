#!/usr/bin/env bash
# `make sdk-test`: the TypeScript SDK (clients/js) built and tested against a freshly built
# gateway and private redis-servers the tests start. npm dependencies come from the
# committed lockfile (`npm ci`), installed when missing or stale.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
${CARGO:-cargo} build -q -p roomcast-gateway
cd clients/js
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
ROOMCAST_BIN="$PWD/../../target/debug/roomcast" npm test
