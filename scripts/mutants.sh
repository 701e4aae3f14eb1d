#!/usr/bin/env bash
# `make mutants`: mutation testing of the modules that carry the guarantees (TESTING.md).
#
#   make mutants                  the mutants in code changed since the base (below)
#   make mutants GROUP=delivery   one group: delivery, limits, health, auth, store, lua
#   make mutants GROUP=all        every group, one after another (hours: TESTING.md)
#   make mutants SHARD=1/4        with GROUP: one quarter of that group's mutants
#
# Each group mutates its files with cargo-mutants (settings in .cargo/mutants.toml) and
# tests every mutant with the unit tests plus the integration tests that cover those
# files, against real redis-server processes. `lua` runs scripts/lua-mutants.py.
# Results: mutants.out/<group>/ and a score per file (scripts/mutants_report.py).
# MUTANTS_BASE: the commit changes are counted from (default: the merge base with
# origin/main, else HEAD~1). MUTANTS_ARGS: more cargo-mutants arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_MUTANTS_VERSION=27.0.0
GROUP=${GROUP:-changed}

files() {
  case $1 in
  delivery) echo gateway/src/session/pump.rs gateway/src/session/pump/events.rs gateway/src/session/pump/joins.rs gateway/src/session/pump/numbering.rs gateway/src/session/mod.rs gateway/src/client.rs ;;
  limits) echo gateway/src/ratelimit.rs gateway/src/store/limits.rs ;;
  health) echo gateway/src/app.rs gateway/src/background.rs gateway/src/http.rs ;;
  auth) echo gateway/src/auth.rs ;;
  store) echo gateway/src/store/mod.rs gateway/src/store/error.rs gateway/src/store/scripts.rs gateway/src/store/realtime.rs gateway/src/store/presence.rs gateway/src/store/nodes.rs gateway/src/store/sessions.rs gateway/src/store/indexes.rs gateway/src/store/tls.rs gateway/src/lifecycle.rs gateway/src/api/history.rs ;;
  esac
}

# The unit tests and the integration modules (gateway/tests/it) a group runs, as a
# nextest filter (one word: the caller splits on spaces).
tests() {
  local modules
  case $1 in
  delivery) modules='protocol|recovery' ;;
  limits) modules='limits|edge' ;;
  health) modules='operations|recovery|edge' ;;
  auth) modules='input|refusals|operations|rest' ;;
  store) modules='rest|lifecycle|protocol|refusals|recovery|durability|tls' ;;
  esac
  echo "--lib --test it -E kind(lib)|test(/^($modules)::/)"
}

scripts/install-deps.sh --test
if ! cargo mutants --version 2>/dev/null | grep -q "$CARGO_MUTANTS_VERSION"; then
  echo "mutants: installing cargo-mutants $CARGO_MUTANTS_VERSION" >&2
  cargo install --locked --quiet cargo-mutants --version "$CARGO_MUTANTS_VERSION"
fi
command -v cargo-nextest >/dev/null || cargo install --locked --quiet cargo-nextest

mkdir -p mutants.out
started=$SECONDS
failed=0

# run_group NAME: one group into mutants.out/NAME.
run_group() {
  local name=$1 status=0 f args=()
  if [[ $name == lua ]]; then
    scripts/lua-mutants.py --out mutants.out/lua/lua.json || status=$?
    [[ $status -le 1 ]] || failed=1
    return 0
  fi
  for f in $(files "$name"); do args+=(-f "$f"); done
  [[ -n ${SHARD:-} ]] && args+=(--shard "$SHARD")
  echo "mutants: group $name ($(files "$name"))" >&2
  # shellcheck disable=SC2046,SC2086
  cargo mutants --jobs 1 -o "mutants.out/$name" "${args[@]}" ${MUTANTS_ARGS:-} \
    -- $(tests "$name") || status=$?
  # 2: mutants were missed; 3: some timed out. The report says which.
  [[ $status -eq 0 || $status -eq 2 || $status -eq 3 ]] || failed=1
}

case $GROUP in
changed)
  base=${MUTANTS_BASE:-$(git merge-base HEAD origin/main 2>/dev/null || git rev-parse HEAD~1)}
  git diff "$base" -- gateway/src >mutants.out/changed.diff
  if [[ ! -s mutants.out/changed.diff ]]; then
    echo "mutants: no change in gateway/src since $base" >&2
  else
    status=0
    # shellcheck disable=SC2086
    cargo mutants --jobs 1 -o mutants.out/changed --in-diff mutants.out/changed.diff \
      ${MUTANTS_ARGS:-} || status=$?
    [[ $status -eq 0 || $status -eq 2 || $status -eq 3 ]] || failed=1
  fi
  ;;
all) for g in delivery limits health auth store lua; do run_group "$g"; done ;;
delivery | limits | health | auth | store | lua) run_group "$GROUP" ;;
*)
  echo "mutants: GROUP is changed, all, delivery, limits, health, auth, store or lua" >&2
  exit 64
  ;;
esac

echo "mutants: $(((SECONDS - started) / 60)) min" >&2
report=0
python3 scripts/mutants_report.py mutants.out || report=$?
[[ $failed -eq 0 ]] || exit 1
exit "$report"
