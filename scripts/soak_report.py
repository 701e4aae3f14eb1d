#!/usr/bin/env python3
"""Judges a `make soak` run (scripts/soak.sh).

    soak_report.py DIR WARMUP_S WAVES FAILED_WAVES

Reads DIR/samples.jsonl (one line per gateway and one for Redis every 10 s), DIR/keys.json
and the base load's report DIR/base.json. For each gateway and for RSS, open fds, tokio
tasks and session pumps it compares the samples after the warm-up: growth is the mean of
the last three samples against the mean of the first three after the warm-up, and the
slope is a least-squares fit per minute. It writes DIR/summary.json and DIR/summary.md and
exits 1 when:
  - RSS or fds grew more than SOAK_MAX_GROWTH (5 %) after the warm-up;
  - a key the run created lives without a TTL (it would outlive its session forever);
  - the base load lost, duplicated or reordered anything, or a wave failed;
  - after every session ended (the last sample), a gateway still has session pumps, or
    more than 10 tokio tasks above its idle count (the first sample, before any client).
"""
import json
import os
import sys

MAX_GROWTH = float(os.environ.get("SOAK_MAX_GROWTH", "5"))
# Tasks a gateway may keep after a run beyond its idle count (pooled background work).
TASK_SLACK = 10


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def slope_per_min(points):
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = mean(xs), mean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def main(directory, warmup, waves, failed_waves):
    samples = [json.loads(l) for l in open(os.path.join(directory, "samples.jsonl")) if l.strip()]
    keys = json.load(open(os.path.join(directory, "keys.json")))
    base = json.load(open(os.path.join(directory, "base.json")))
    nodes = sorted({s["node"] for s in samples if s["node"] != "redis"})
    problems = []
    gateways = {}
    for node in nodes:
        series = [s for s in samples if s["node"] == node]
        # The last sample is after the load: growth is judged under load.
        loaded = [s for s in series[1:-1] if s["t"] >= warmup]
        row = {}
        for metric in ("rss", "fds", "tasks", "pumps"):
            pts = [(s["t"], s[metric]) for s in loaded]
            first = mean([p[1] for p in pts[:3]])
            last = mean([p[1] for p in pts[-3:]])
            growth = 100 * (last - first) / first if first else 0.0
            row[metric] = {
                "after_warmup": first,
                "end_of_load": last,
                "growth_pct": round(growth, 2),
                "slope_per_min": round(slope_per_min(pts), 2),
                "peak": max((s[metric] for s in series), default=0),
                "after_sessions_ended": series[-1][metric] if series else None,
            }
            if metric in ("rss", "fds") and growth > MAX_GROWTH:
                problems.append(f"{node} {metric} grew {growth:.1f} % after the warm-up")
        idle, after = series[0], series[-1]
        row["idle"] = {m: idle[m] for m in ("rss", "fds", "tasks", "pumps")}
        # Once every session ended and every client left, what the load created is gone.
        if after["pumps"] != 0:
            problems.append(f"{node}: {after['pumps']} session pumps alive after every session ended")
        if after["tasks"] > idle["tasks"] + TASK_SLACK:
            problems.append(f"{node}: {after['tasks']} tasks after the run, {idle['tasks']} idle")
        gateways[node] = row
    redis = [s for s in samples if s["node"] == "redis"]
    loaded = [s for s in redis[:-1] if s["t"] >= warmup]
    redis_row = {
        "keys_after_warmup": mean([s["keys"] for s in loaded[:3]]),
        "keys_end_of_load": mean([s["keys"] for s in loaded[-3:]]),
        "keys_after_sessions_ended": redis[-1]["keys"] if redis else None,
        "memory_after_warmup": mean([s["used_memory"] for s in loaded[:3]]),
        "memory_end_of_load": mean([s["used_memory"] for s in loaded[-3:]]),
    }
    if keys["without_ttl_count"]:
        problems.append(f"{keys['without_ttl_count']} keys without a TTL: {keys['without_ttl'][:5]}")
    for field in ("lost", "duplicated", "out_of_order", "unexplained"):
        if base.get(field):
            problems.append(f"base load {field} {base[field]}")
    if int(failed_waves):
        problems.append(f"{failed_waves} of {waves} waves failed")
    summary = {
        "warmup_s": warmup,
        "duration_s": max((s["t"] for s in samples), default=0),
        "waves": int(waves),
        "base": {k: base.get(k) for k in ("acked", "delivered", "lost", "duplicated", "reconnects", "deliveries_per_s")},
        "gateways": gateways,
        "redis": redis_row,
        "keys": {k: keys[k] for k in ("baseline_keys", "new_keys", "without_ttl_count", "max_ttl_s")},
        "passed": not problems,
        "problems": problems,
    }
    with open(os.path.join(directory, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = [
        f"Soak: {summary['duration_s']:.0f} s, {summary['waves']} waves, base load {base.get('deliveries_per_s', 0):,.0f} deliveries/s,"
        f" {base.get('reconnects', 0)} reconnects, lost {base.get('lost')}, duplicated {base.get('duplicated')}.",
        "",
        "| gateway | RSS after warm-up → end (growth, slope/min) | fds | tokio tasks | pumps | after sessions ended: RSS / fds / tasks / pumps |",
        "|---|---|---|---|---|---|",
    ]
    for node, row in gateways.items():
        def cell(m, scale=1, unit=""):
            r = row[m]
            return (
                f"{r['after_warmup'] / scale:,.1f}{unit} → {r['end_of_load'] / scale:,.1f}{unit}"
                f" ({r['growth_pct']:+.1f} %, {r['slope_per_min'] / scale:+.2f}{unit}/min)"
            )
        after = "{:.1f} MB / {} / {} / {}".format(
            (row["rss"]["after_sessions_ended"] or 0) / 1e6,
            row["fds"]["after_sessions_ended"],
            row["tasks"]["after_sessions_ended"],
            row["pumps"]["after_sessions_ended"],
        )
        lines.append(f"| {node} | {cell('rss', 1e6, ' MB')} | {cell('fds')} | {cell('tasks')} | {cell('pumps')} | {after} |")
    lines += [
        "",
        f"Redis: keys {redis_row['keys_after_warmup']:,.0f} after warm-up, {redis_row['keys_end_of_load']:,.0f} at the end of the load,"
        f" {redis_row['keys_after_sessions_ended']} once every session ended; memory {redis_row['memory_after_warmup'] / 1e6:.1f} → {redis_row['memory_end_of_load'] / 1e6:.1f} MB."
        f" Keys the run created without a TTL: {keys['without_ttl_count']}; the longest TTL left: {keys['max_ttl_s'] / 3600:.1f} h.",
        "",
        "Verdict: " + ("pass" if not problems else "FAIL: " + "; ".join(problems)),
    ]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(directory, "summary.md"), "w") as f:
        f.write(md)
    print(md, end="")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]))
