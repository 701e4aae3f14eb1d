#!/usr/bin/env python3
"""Judges and tabulates `make chaos` runs (scripts/chaos.sh).

    chaos_report.py check REPORT.json EXPECTATION FAULT SLOW_CLOSES
        adds a "chaos" section (the fault, the gateways' slow-consumer closes, the
        verdict) to the load generator's report and exits 1 if the expectation fails:
          balanced  every acked message delivered to every display once, in order;
                    no numbering reset, nothing beyond the history window
          reset     the same, except that every display must have been told its
                    session's numbering started over (Redis lost the keys)
          report    the accounting is reported, loss included (a durability setting
                    that allows it); only a run without acks fails
    chaos_report.py markdown DIR
        the RELIABILITY table of every judged report in DIR
"""
import json
import os
import sys

ORDER = [
    "kill",
    "term",
    "pubsub",
    "restart-always",
    "restart-everysec",
    "restart-none",
    "latency",
    "partition",
    "churn",
]


def verdict(r, expectation):
    problems = []
    if not r.get("acked"):
        problems.append("nothing was acked")
    if expectation in ("balanced", "reset"):
        for field in ("lost", "duplicated", "out_of_order", "unexplained"):
            if r.get(field):
                problems.append(f"{field} {r[field]}")
    if expectation == "balanced":
        for field in ("numbering_resets", "unrecoverable", "reset_lost"):
            if r.get(field):
                problems.append(f"{field} {r[field]}")
    if expectation == "reset":
        displays = r["sessions"] * r["displays_per_session"]
        if r.get("numbering_resets", 0) < displays:
            problems.append(
                f"only {r.get('numbering_resets', 0)} of {displays} displays were told of the reset"
            )
    return problems


def check(path, expectation, fault, slow):
    with open(path) as f:
        r = json.load(f)
    problems = verdict(r, expectation)
    r["chaos"] = {
        "scenario": os.path.basename(path)[: -len(".json")],
        "fault": fault,
        "expectation": expectation,
        "slow_consumer_closes": int(slow),
        "passed": not problems,
        "problems": problems,
    }
    with open(path, "w") as f:
        json.dump(r, f, indent=2)
    status = "passed" if not problems else "FAILED: " + "; ".join(problems)
    print(f"chaos {r['chaos']['scenario']}: {status}", file=sys.stderr)
    return 0 if not problems else 1


def not_ready(r):
    return max((v["not_ready_s"] for v in r.get("readiness", {}).values()), default=0.0)


def markdown(directory):
    rows = []
    for name in os.listdir(directory):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(directory, name)) as f:
            r = json.load(f)
        if "chaos" in r:
            rows.append(r)
    rows.sort(key=lambda r: ORDER.index(r["chaos"]["scenario"]) if r["chaos"]["scenario"] in ORDER else 99)
    out = [
        "| scenario | fault | acked | delivered | lost | dup / reordered | resets (seqs) | beyond window | reconnects | publish retries | caught up p50 / p99 / max | worst second p99 | max not ready | slow-consumer closes | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["chaos"]
        rec = r["recovery"]
        caught = (
            f"{rec['p50_ms']:.0f} / {rec['p99_ms']:.0f} / {rec['max_ms']:.0f} ms"
            if rec["count"]
            else "-"
        )
        worst = r.get("worst_second") or {}
        out.append(
            "| {s} | {fault} | {acked:,} | {delivered:,} | {lost} | {dup} / {ooo} | {resets} ({reset_lost}) | {unrec} | {rc:,} | {retries} | {caught} | {worst} | {nr:.1f} s | {slow} | {verdict} |".format(
                s=c["scenario"],
                fault=c["fault"],
                acked=r["acked"],
                delivered=r["delivered"],
                lost=r["lost"],
                dup=r["duplicated"],
                ooo=r["out_of_order"],
                resets=r["numbering_resets"],
                reset_lost=r["reset_lost"],
                unrec=r["unrecoverable"],
                rc=r["reconnects"],
                retries=r["publish_retries"],
                caught=caught,
                worst=f"{worst.get('p99_ms', 0):.0f} ms (t={worst.get('t', '-')} s)",
                nr=not_ready(r),
                slow=c["slow_consumer_closes"],
                verdict="pass" if c["passed"] else "FAIL: " + "; ".join(c["problems"]),
            )
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "check":
        sys.exit(check(*args))
    elif cmd == "markdown":
        print(markdown(args[0]), end="")
    else:
        sys.exit(f"chaos_report.py: unknown command {cmd}")
