#!/usr/bin/env python3
"""Mutation testing of the Lua scripts (`make mutants-lua`; `make mutants` runs it too).

cargo-mutants cannot mutate Lua, so this keeps a short list of hand-written mutants of
the scripts that carry the guarantees: publish, join, ratelimit, publish_limits,
session_transition, presence_refresh and node_prune. For each mutant it edits the script in place (the scripts are compiled
into the gateway with include_str!), runs the tests that cover that script, and restores
the original whatever happens. A mutant is "caught" when a test fails, "missed" when
every test passes, "unviable" when the gateway no longer builds.

    scripts/lua-mutants.py [--list] [--only NAME] [--out FILE]

Exit status: 0 when every mutant is caught or listed as equivalent, 1 otherwise.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tests per script that exercise it against a real redis-server: the gateway's unit
# tests and the modules of the one integration binary (gateway/tests/it), as libtest
# filters (a test runs when its path contains one of them).
TESTS = {
    "publish": ["store::", "session::", "protocol::", "recovery::", "rest::", "refusals::",
                "lifecycle::"],
    "join": ["store::", "session::", "protocol::", "refusals::", "lifecycle::", "recovery::"],
    "ratelimit": ["ratelimit::", "store::", "limits::", "edge::", "rest::"],
    "publish_limits": ["ratelimit::", "store::", "limits::", "edge::"],
    "session_transition": ["rest::", "lifecycle::", "refusals::"],
    "presence_refresh": ["store::", "session::", "protocol::", "recovery::", "refusals::"],
    "node_prune": ["store::", "rest::"],
}
# Every selection builds the same two test targets, so a mutant costs one build.
TARGETS = ["test", "-p", "roomcast-gateway", "--lib", "--test", "it"]

# (name, script, original text, replacement, what the mutant breaks). The original must
# occur exactly once in the script.
MUTANTS = [
    ("publish-history-101", "publish",
     "redis.call('LTRIM', KEYS[2], 0, cap - 1)",
     "redis.call('LTRIM', KEYS[2], 0, cap)",
     "history keeps one entry more than its cap"),
    ("publish-no-fanout", "publish",
     "redis.call('SPUBLISH', KEYS[4], '\\146\\1' .. entry)",
     "local _ = entry",
     "a stored message is never published (live delivery only through gap fill)"),
    ("publish-to-ended", "publish",
     "elseif status == 'ended' then\n  return -1\n",
     "",
     "an ended session accepts publishes"),
    ("publish-no-reactivation", "publish",
     "  reactivated = 1\n",
     "",
     "a publish into an inactive session does not report the reactivation"),
    ("publish-seq-no-ttl", "publish",
     "redis.call('PEXPIRE', KEYS[1], ARGV[3])",
     "local _ = ARGV[3]",
     "the seq key never expires"),
    ("publish-created-no-lifetime", "publish",
     "  redis.call('HSETNX', KEYS[3], 'expires_at', ARGV[6])\n",
     "",
     "a session a publish creates has no end of life"),
    ("join-since-short", "join",
     "n = math.min(n, seq - since)",
     "n = math.min(n, seq - since - 1)",
     "recovery returns one message too few"),
    ("join-ended", "join",
     "if status == 'ended' then\n  return {-1}\nend\n",
     "",
     "an ended session can be joined"),
    ("join-observer-activity", "join",
     "if ARGV[13] == '1' then",
     "if true then",
     "an observer's join counts as activity"),
    ("join-always-creates", "join",
     "  if ARGV[12] ~= '1' then\n    return {-2}\n  end\n",
     "",
     "a join creates a missing session even when creation was not allowed"),
    ("join-silent-sweep", "join",
     "    redis.call('SPUBLISH', KEYS[6], '\\146\\3' .. info)",
     "    local _ = info",
     "members of a dead node are swept without a leave"),
    ("ratelimit-off-by-one", "ratelimit",
     "if count < limit then",
     "if count <= limit then",
     "a window admits limit + 1"),
    ("ratelimit-no-window", "ratelimit",
     "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)",
     "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)",
     "every admission is forgotten at once: nothing is ever limited"),
    ("limits-off-by-one", "publish_limits",
     "if count >= tonumber(ARGV[a + 1]) then",
     "if count > tonumber(ARGV[a + 1]) then",
     "a window folded into the publish admits limit + 1"),
    ("limits-no-window", "publish_limits",
     "redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - tonumber(ARGV[a]))",
     "redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)",
     "every admission is forgotten at once: nothing is ever limited"),
    ("limits-not-counted", "publish_limits",
     "redis.call('ZADD', KEYS[i], now, ARGV[a + 2])",
     "local _ = ARGV[a + 2]",
     "admissions are never recorded: nothing is ever limited"),
    ("limits-first-only", "publish_limits",
     "  for i = 5, #KEYS do\n    local a = 8 + (i - 5) * 3\n    redis.call('ZREMRANGEBYSCORE'",
     "  for i = 5, math.min(#KEYS, 5) do\n    local a = 8 + (i - 5) * 3\n    redis.call('ZREMRANGEBYSCORE'",
     "only the first window is checked: the per-address limit never refuses"),
    ("limits-refusal-counts", "publish_limits",
     "      return {-3, i - 4, count, tonumber(first[2] or '0'), now}",
     "      redis.call('ZADD', KEYS[5], now, ARGV[10])\n      return {-3, i - 4, count, tonumber(first[2] or '0'), now}",
     "a publish one window refuses still counts in the user's window"),
    ("transition-any-status", "session_transition",
     "if ARGV[2] ~= '*' and not string.find(",
     "if false and not string.find(",
     "a transition ignores the statuses it is allowed from"),
    ("transition-silent", "session_transition",
     "if ARGV[4] ~= '' then",
     "if false then",
     "a transition is never announced to members"),
    ("refresh-silent-sweep", "presence_refresh",
     "    redis.call('SPUBLISH', KEYS[3], '\\146\\3' .. info)",
     "    local _ = info",
     "members of a dead node are swept without a leave"),
    ("refresh-no-missing", "presence_refresh",
     "      missing[#missing + 1] = ARGV[i]",
     "      local _ = i",
     "a member swept while its node stalled is never re-added"),
    ("refresh-first-chunk-only", "presence_refresh",
     "for first = 5, #ARGV, chunk do",
     "for first = 5, math.min(#ARGV, 5), chunk do",
     "members past the first chunk are never refreshed and expire under their node"),
    ("refresh-no-push", "presence_refresh",
     "    redis.call('ZADD', KEYS[1], 'XX', unpack(present))",
     "    local _ = present",
     "a present member's expiry is never pushed"),
    ("refresh-seq-expires", "presence_refresh",
     "  redis.call('PEXPIRE', KEYS[4], ARGV[3])",
     "  local _ = KEYS[4]",
     "the seq can expire under live members"),
    ("prune-keeps-counts", "node_prune",
     "  redis.call('HDEL', KEYS[2], unpack(gone, first, math.min(first + chunk - 1, #gone)))",
     "  local _ = gone",
     "a dead node's connection count stays forever"),
    ("prune-drops-live-counts", "node_prune",
     "    if not scores[i - first + 1] then",
     "    if true then",
     "a live node's connection count is forgotten at every heartbeat"),
    ("prune-keeps-dead-nodes", "node_prune",
     "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])",
     "local _ = ARGV[1]",
     "a dead node stays registered (and its count with it)"),
]

# Mutants that cannot change behaviour, each with the reason (none so far).
EQUIVALENT = {}


def cargo(args, timeout):
    return subprocess.run(["cargo"] + args, cwd=ROOT, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_one(mutant, timeout):
    name, script, original, replacement, _ = mutant
    path = os.path.join(ROOT, "redis", f"{script}.lua")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    if source.count(original) != 1:
        return "stale", f"the original text occurs {source.count(original)} times in {script}.lua"
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(source.replace(original, replacement))
        build = cargo(TARGETS + ["--no-run"], timeout)
        if build.returncode != 0:
            return "unviable", build.stdout[-2000:]
        try:
            tests = cargo(TARGETS + ["--"] + TESTS[script], timeout)
        except subprocess.TimeoutExpired:
            return "caught", "timed out"
        if tests.returncode != 0:
            # libtest lists the failed tests, indented, after a "failures:" line.
            tail = tests.stdout.rsplit("\nfailures:\n", 1)[-1].splitlines()
            failed = [l.strip() for l in tail if l.startswith("    ") and " " not in l.strip()]
            return "caught", "failed: " + ", ".join(failed[:5]) if failed else tests.stdout[-500:]
        return "missed", ""
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", help="run the mutants whose name contains this")
    parser.add_argument("--out", default=os.path.join(ROOT, "mutants.out", "lua.json"))
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or args.only in m[0]]
    if args.list:
        for name, script, _, _, what in chosen:
            print(f"{name:28} {script + '.lua':24} {what}")
        return 0
    # The unmutated scripts must pass first, or every mutant would look caught.
    print("baseline: building and running the selected tests unmutated", flush=True)
    for script in sorted({m[1] for m in chosen}):
        base = cargo(TARGETS + ["--"] + TESTS[script], args.timeout)
        if base.returncode != 0:
            print(base.stdout[-3000:])
            print(f"baseline failed for {script}.lua's tests", file=sys.stderr)
            return 2
    results = []
    for mutant in chosen:
        started = time.monotonic()
        outcome, detail = run_one(mutant, args.timeout)
        if outcome == "missed" and mutant[0] in EQUIVALENT:
            outcome = "equivalent"
        secs = time.monotonic() - started
        print(f"{outcome:10} {mutant[0]:28} {secs:6.0f}s  {detail[:160]}", flush=True)
        results.append({"name": mutant[0], "script": mutant[1], "breaks": mutant[4],
                        "outcome": outcome, "detail": detail[:2000], "seconds": round(secs)})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    caught = sum(r["outcome"] in ("caught", "equivalent") for r in results)
    viable = sum(r["outcome"] in ("caught", "equivalent", "missed") for r in results)
    print(f"lua mutants: {caught}/{viable} caught or equivalent "
          f"({100 * caught / max(viable, 1):.0f} %); results in {args.out}")
    return 0 if caught == viable and not any(r["outcome"] == "stale" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
