#!/usr/bin/env bash
# Installs what building, running and testing Roomcast needs, when it is missing:
# redis-server and redis-cli (Debian packages), promtool (Debian package prometheus).
# Idempotent and quiet when everything is there.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if [[ "${1:-}" == "--test" ]]; then
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
fi
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The prometheus package may start a server; we only want promtool.
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || $sudo pkill -x prometheus >/dev/null 2>&1 || true
  fi
  # Debian's redis-server package starts a server on 6379; `make run` can use it as is.
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
