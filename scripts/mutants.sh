#!/usr/bin/env bash
# `make mutants`: mutation testing of the modules that carry the guarantees.
#
#   1. cargo-mutants over the files in .cargo/mutants.toml, one mutant at a time, each
#      tested by the gateway's whole suite (real redis-server processes) under nextest;
#   2. scripts/lua-mutants.py over the Lua scripts (cargo-mutants cannot mutate Lua);
#   3. a score per file (scripts/mutants_report.py), also written to
#      mutants.out/score.json.
#
# MUTANTS_ARGS adds cargo-mutants arguments, e.g. MUTANTS_ARGS="-f gateway/src/client.rs"
# for one file, or "--shard 1/4". MUTANTS_LUA=0 skips the Lua mutants. Not part of
# `make test`/.ci/run: it takes about an hour (TESTING.md has the measured times).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_MUTANTS_VERSION=27.0.0
scripts/install-deps.sh --test
if ! cargo mutants --version 2>/dev/null | grep -q "$CARGO_MUTANTS_VERSION"; then
  echo "mutants: installing cargo-mutants $CARGO_MUTANTS_VERSION" >&2
  cargo install --locked --quiet cargo-mutants --version "$CARGO_MUTANTS_VERSION"
fi
command -v cargo-nextest >/dev/null || cargo install --locked --quiet cargo-nextest

started=$SECONDS
status=0
# shellcheck disable=SC2086
cargo mutants --jobs 1 ${MUTANTS_ARGS:-} || status=$?
# cargo-mutants exits 2 when mutants were missed, 3 on timeouts: the report says which.
if [[ $status -ne 0 && $status -ne 2 && $status -ne 3 ]]; then
  echo "mutants: cargo-mutants failed (exit $status)" >&2
  exit "$status"
fi
lua_status=0
if [[ ${MUTANTS_LUA:-1} != 0 ]]; then
  scripts/lua-mutants.py --out mutants.out/lua.json || lua_status=$?
fi
python3 scripts/mutants_report.py mutants.out
echo "mutants: $(((SECONDS - started) / 60)) min" >&2
[[ $status -eq 0 && $lua_status -eq 0 ]]
