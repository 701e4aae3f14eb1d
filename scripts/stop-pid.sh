#!/usr/bin/env bash
# Stops the process whose pid is in FILE and says so only once it has exited.
# Usage: scripts/stop-pid.sh FILE NAME
# SIGTERM first; after 10 s without an exit, SIGKILL. Exits non-zero if it is still there.
set -uo pipefail
file=$1 name=$2
if [[ ! -f $file ]]; then
  echo "no $name started by make run"
  exit 0
fi
pid=$(cat "$file")
if ! kill -0 "$pid" 2>/dev/null; then
  echo "$name (pid $pid) had already stopped"
  rm -f "$file"
  exit 0
fi
kill "$pid"
for _ in $(seq 1 100); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$file"; echo "$name (pid $pid) stopped"; exit 0; }
  sleep 0.1
done
echo "$name (pid $pid) did not stop within 10 s; sending SIGKILL"
kill -9 "$pid" 2>/dev/null
for _ in $(seq 1 50); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$file"; echo "$name (pid $pid) killed"; exit 0; }
  sleep 0.1
done
echo "$name (pid $pid) is still running" >&2
exit 1
