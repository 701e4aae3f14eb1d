#!/usr/bin/env bash
# Installs what building, running and testing Roomcast needs, when it is missing:
# redis-server and redis-cli (Debian packages), promtool (Debian package prometheus),
# and for the TypeScript SDK's tests Node.js ≥ 20 with npm (Debian packages nodejs, npm)
# Chromium for the demo's browser tests (Debian package chromium), and Python's
# standardwebhooks (PyPI in .run/py-venv, npm in .run/node-webhooks) for the webhook tests.
# Idempotent and quiet when everything is there.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if [[ "${1:-}" == "--test" ]]; then
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  # Certificates for the TLS-to-Redis tests are made at test time.
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  # The demo's browser tests drive Debian's Chromium; nothing downloads a browser.
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
fi
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  install() {
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  }
  others=()
  for p in "${missing[@]}"; do [[ $p == prometheus ]] || others+=("$p"); done
  # Debian's redis-server package starts a server on 6379; `make run` can use it as is.
  ((${#others[@]} == 0)) || install "${others[@]}"
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    # The prometheus package would start a server; we only want promtool. Debian's
    # policy-rc.d (exit 101: "action forbidden") keeps its scripts from starting it, so
    # nothing has to be stopped afterwards. A policy the admin already has is left alone.
    policy=/usr/sbin/policy-rc.d
    ours=""
    if [[ ! -e $policy ]]; then
      printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && ours=1
    fi
    status=0
    install prometheus || status=$?
    [[ -z $ours ]] || $sudo rm -f "$policy"
    ((status == 0)) || exit "$status"
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
if [[ "${1:-}" == "--test" ]]; then
  major=$(node -p 'process.versions.node.split(".")[0]')
  ((major >= 20)) || { echo "Node.js $major is too old for clients/js: 20 or newer" >&2; exit 1; }
  # The webhook tests check every signature with Python's standardwebhooks too (an
  # implementation that shares no code with ours), from a private venv.
  venv="$(cd "$(dirname "$0")/.." && pwd)/.run/py-venv"
  if ! "$venv/bin/python" -c 'import standardwebhooks' >/dev/null 2>&1; then
    echo "installing standardwebhooks into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q standardwebhooks==1.1.0
  fi
  # And with npm's standardwebhooks: the README's receiver runs as written in a test.
  hooks="$(cd "$(dirname "$0")/.." && pwd)/.run/node-webhooks"
  if [[ ! -e $hooks/node_modules/standardwebhooks/package.json ]]; then
    echo "installing standardwebhooks (npm) into $hooks"
    mkdir -p "$hooks"
    (cd "$hooks" && npm install --silent --no-audit --no-fund --no-save standardwebhooks@1.3.0)
  fi
fi
