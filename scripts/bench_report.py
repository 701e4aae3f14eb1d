#!/usr/bin/env python3
"""Reads loadtest JSON reports for scripts/bench.sh: pass/fail of a fan-out step, scenario
summaries, and the table printed at the end of `make bench`."""

import glob
import json
import os
import re
import resource
import subprocess
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def passes(r, p99_ms):
    """A fan-out step passes with p99 under the bound and nothing lost, duplicated,
    reordered or refused: every published message reached every display."""
    return (
        r["latency"]["p99_ms"] < p99_ms
        and r["lost"] == 0
        and r["duplicated_or_reordered"] == 0
        and not r["errors"]
        and r["delivered"] == r["expected"]
    )


def offered_share(r):
    """How much of the offered publish rate the load generator managed to send."""
    wanted = r["sessions"] * r["rate_per_session"] * r["publish_s"]
    return r["published"] / wanted if wanted else 0.0


def cpu(path):
    """CPU seconds the servers and Redis used during a run (from the .cpu sidecar)."""
    try:
        c = load(path + ".cpu")
    except (OSError, ValueError):
        return None
    out = {"server_cpu_s": c["server_ticks"] / c["clk_tck"], "redis_cpu_s": c["redis_ticks"] / c["clk_tck"]}
    if "loadgen_cpu_s" in c:
        out["loadgen_cpu_s"] = round(c["loadgen_cpu_s"], 2)
    if c.get("window_s"):
        out["window_s"] = c["window_s"]
        out["window_server_cpu_s"] = c["window_server_ticks"] / c["clk_tck"]
        out["window_redis_cpu_s"] = c["window_redis_ticks"] / c["clk_tck"]
    return out


def commandstats(path):
    """{command: (calls, usec)} from a saved `INFO commandstats`."""
    stats = {}
    with open(path) as f:
        for line in f:
            if line.startswith("cmdstat_"):
                name, fields = line.strip()[len("cmdstat_"):].split(":", 1)
                kv = dict(x.split("=", 1) for x in fields.split(","))
                stats[name] = (int(kv["calls"]), int(kv["usec"]))
    return stats


def commands_per_publish(path, published):
    """Redis commands run over the window, per published message: calls and µs of each
    (scripts count as EVALSHA; the commands a script runs are counted again under their
    own names, inside its µs)."""
    try:
        before, after = commandstats(path + ".commands0"), commandstats(path + ".commands1")
    except OSError:
        return None
    if not published:
        return None
    out = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls > c0:
            out[name] = {"calls": round((calls - c0) / published, 3), "us": round((usec - u0) / published, 2)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["us"]))


def delivered_within(r, seconds):
    """Deliveries in the first `seconds` of publishing, from the report's timeline."""
    return sum(p["delivered"] for p in r.get("timeline", []) if p["t"] < seconds)


def row(r, path=None):
    l = r["latency"]
    out = {
        "rate_per_session": r["rate_per_session"],
        "offered_share": round(offered_share(r), 3),
        "published": r["published"],
        "delivered": r["delivered"],
        "deliveries_per_s": round(r["deliveries_per_s"]),
        "lost": r["lost"],
        "duplicated_or_reordered": r["duplicated_or_reordered"],
        "p50_ms": l["p50_ms"],
        "p90_ms": l["p90_ms"],
        "p99_ms": l["p99_ms"],
        "p999_ms": l["p999_ms"],
        "max_ms": l["max_ms"],
        "errors": r["errors"],
    }
    if r.get("ack", {}).get("count"):
        out["ack_p50_ms"] = r["ack"]["p50_ms"]
        out["ack_p99_ms"] = r["ack"]["p99_ms"]
    c = cpu(path) if path else None
    if c:
        out.update(c)
        # Per delivery over the publishing window when it was measured (connecting and
        # closing left out), else over the whole run.
        in_window = delivered_within(r, c["window_s"]) if "window_s" in c else 0
        if in_window:
            out["server_cpu_us_per_delivery"] = round(1e6 * c["window_server_cpu_s"] / in_window, 2)
            out["redis_cpu_us_per_delivery"] = round(1e6 * c["window_redis_cpu_s"] / in_window, 2)
            out["cpu_measured_over"] = f"publishing window, {c['window_s']} s, {in_window} deliveries"
            # Messages published in the window, counted by what reached the displays.
            published = in_window / max(r["displays_per_session"], 1)
            out["published_in_window"] = published
            commands = commands_per_publish(path, published)
            if commands:
                out["redis_commands_per_publish"] = commands
        elif r["delivered"]:
            out["server_cpu_us_per_delivery"] = round(1e6 * c["server_cpu_s"] / r["delivered"], 2)
            out["redis_cpu_us_per_delivery"] = round(1e6 * c["redis_cpu_s"] / r["delivered"], 2)
            out["cpu_measured_over"] = "whole run"
            if "loadgen_cpu_s" in c:
                out["loadgen_cpu_us_per_delivery"] = round(1e6 * c["loadgen_cpu_s"] / r["delivered"], 2)
    return out


def steps(out, label):
    paths = sorted(glob.glob(os.path.join(out, f"fanout-{label}-r*.json")),
                   key=lambda p: float(p.rsplit("-r", 1)[1][:-5]))
    return [(p, load(p)) for p in paths]


def best_step(out, label):
    ok = [(p, r) for p, r in steps(out, label) if passes(r, 50)]
    return max(ok, key=lambda pr: pr[1]["deliveries_per_s"], default=None)


def quarter(out, label):
    """A quarter of the best passing step's achieved per-session publish rate."""
    best = best_step(out, label)
    if not best:
        return ""
    r = best[1]
    achieved = r["published"] / r["publish_s"] / r["sessions"]
    return f"{max(0.5, round(achieved / 4, 2))}"


def fanout(out, label):
    rows = [dict(row(r, p), passed=passes(r, 50)) for p, r in steps(out, label)]
    best = best_step(out, label)
    quarter_path = os.path.join(out, f"fanout-{label}-quarter.json")
    q = row(load(quarter_path), quarter_path) if os.path.exists(quarter_path) else None
    return {
        "scenario": "fanout",
        "server": label,
        "setup": "100 sessions x (1 controller + 10 displays), 2 instances, 64 B payload",
        "p99_bound_ms": 50,
        "best_deliveries_per_s": round(best[1]["deliveries_per_s"]) if best else 0,
        "best_step_rate_per_session": best[1]["rate_per_session"] if best else None,
        "steps": rows,
        "at_25_percent": q,
    }


def idle(label, window, clk, redis_ticks=None):
    nodes = []
    for line in sys.stdin:
        port, before, rss, conns, ticks = line.split()
        before, rss, conns, ticks = int(before), int(rss), int(conns), int(ticks)
        nodes.append({
            "port": int(port),
            "connections": conns,
            "rss_before_bytes": before,
            "rss_bytes": rss,
            "rss_per_connection_bytes": round((rss - before) / conns) if conns else None,
            "cpu_percent_of_one_core": round(100.0 * ticks / clk / window, 2),
        })
    per_conn = [n["rss_per_connection_bytes"] for n in nodes if n["rss_per_connection_bytes"]]
    return {
        "scenario": "idle",
        "server": label,
        "cpu_window_s": window,
        "nodes": nodes,
        "rss_per_connection_bytes": round(sum(per_conn) / len(per_conn)) if per_conn else None,
        # Redis at idle: the presence refreshes of every node's members.
        "redis_cpu_percent_of_one_core":
            round(100.0 * redis_ticks / clk / window, 2) if redis_ticks is not None else None,
    }


def table(out):
    lines = []
    for label in ("roomcast", "socketio"):
        p = os.path.join(out, f"fanout-{label}-summary.json")
        if os.path.exists(p):
            s = load(p)
            q = s["at_25_percent"] or {}
            lines.append(f"fan-out {label}: best {s['best_deliveries_per_s']} deliveries/s with p99 < 50 ms "
                         f"(step {s['best_step_rate_per_session']} msg/s/session); at 25 %: p50 {q.get('p50_ms')} "
                         f"p99 {q.get('p99_ms')} ms")
        p = os.path.join(out, f"idle-{label}.json")
        if os.path.exists(p):
            s = load(p)
            cpu = ", ".join(str(n["cpu_percent_of_one_core"]) for n in s["nodes"])
            lines.append(f"idle {label}: {s['rss_per_connection_bytes']} B RSS per connection; "
                         f"CPU % of a core per node: {cpu}")
    for name, title in (("storm-10k.json", "connect storm"), ("broadcast-10k.json", "broadcast")):
        p = os.path.join(out, name)
        if os.path.exists(p):
            r = load(p)
            lines.append(f"{title}: delivered {r['delivered']}/{r['expected']}, lost {r['lost']}, "
                         f"latency p99 {r['latency']['p99_ms']} ms, connect+join p99 "
                         f"{r['connect_join']['p99_ms']} ms, all joined {r['connect_phase_s']:.2f} s, "
                         f"errors {sum(r['errors'].values())}")
    p = os.path.join(out, "publish-path.json")
    if os.path.exists(p):
        s = load(p)
        lines.append(f"publish path: {s['gateway_store_publish_per_s']}/s; redis-benchmark "
                     f"{s['redis_benchmark_per_s']}/s, pipelined {s['redis_benchmark_pipelined_16_per_s']}/s; "
                     f"{s['ratio_to_ceiling']} of the ceiling")
    return "\n".join(lines)


def markdown(out, label):
    """The fan-out summary as a Markdown table (for BENCHMARKS.md)."""
    s = load(os.path.join(out, f"fanout-{label}-summary.json"))
    lines = ["| msg/s per session | sent of offered | deliveries/s | lost / dup | p50 | p90 | p99 | p99.9 | max | server CPU per delivery | generator CPU per delivery | p99 < 50 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(str(r["rate_per_session"]), r) for r in s["steps"]]
    if s["at_25_percent"]:
        rows.append((f"{s['at_25_percent']['rate_per_session']} (25 %)", dict(s["at_25_percent"], passed=passes_row(s["at_25_percent"]))))
    for name, r in rows:
        cpu_us = r.get("server_cpu_us_per_delivery")
        gen_us = r.get("loadgen_cpu_us_per_delivery")
        lines.append(
            f"| {name} | {100 * r['offered_share']:.0f} % | {r['deliveries_per_s']:,} | {r['lost']} / {r['duplicated_or_reordered']} "
            f"| {r['p50_ms']:.2f} ms | {r['p90_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['p999_ms']:.2f} ms | {r['max_ms']:.2f} ms "
            f"| {cpu_us if cpu_us is not None else '-'} µs | {gen_us if gen_us is not None else '-'} µs | {'yes' if r['passed'] else 'no'} |")
    return "\n".join(lines)


COMPARED = ("floor", "roomcast", "socketio")


def compare(out):
    """`scripts/bench.sh compare`: the three servers under one load, side by side, with
    the ratios issue 15 sets goals on; then the pinned search's best step per server."""
    def runs(prefix, server):
        return [(p, r) for p, r in steps(out, f"{prefix}-{server}")]

    unpinned = {}
    for server in COMPARED:
        for p, r in runs("compare", server):
            unpinned.setdefault(str(r["rate_per_session"]), {})[server] = dict(row(r, p), passed=passes(r, 50))
    ratios = {}
    for rate, by in unpinned.items():
        def per(server, key):
            return (by.get(server) or {}).get(key)
        def ratio(a, b):
            return round(a / b, 2) if a is not None and b else None
        fl, rc, io = (per(s, "server_cpu_us_per_delivery") for s in COMPARED)
        rc_total = rc + per("roomcast", "redis_cpu_us_per_delivery") if rc is not None else None
        io_total = io + per("socketio", "redis_cpu_us_per_delivery") if io is not None else None
        ratios[rate] = {
            "server_cpu_roomcast_over_floor": ratio(rc, fl),
            "server_cpu_roomcast_over_socketio": ratio(rc, io),
            "server_and_redis_cpu_roomcast_over_socketio": ratio(rc_total, io_total),
            "p99_roomcast_over_socketio": ratio(per("roomcast", "p99_ms"), per("socketio", "p99_ms")),
        }
    pinned = {}
    for server in COMPARED:
        rows = [dict(row(r, p), passed=passes(r, 50)) for p, r in runs("pinned", server)]
        best = max((x for x in rows if x["passed"]), key=lambda x: x["deliveries_per_s"], default=None)
        pinned[server] = {
            "best_deliveries_per_s_per_core": best["deliveries_per_s"] if best else 0,
            "best_rate_per_session": best["rate_per_session"] if best else None,
            "steps": rows,
        }
    best = {s: pinned[s]["best_deliveries_per_s_per_core"] for s in COMPARED}
    return {
        "scenario": "compare",
        "setup": "100 sessions x (1 controller + 10 displays), 64 B payload; floor: 1 process, "
                 "roomcast and socketio: 2 instances on one Redis",
        "pinned_setup": "servers and Redis on core 0 (taskset), the load generator on core 1; "
                        "steps until p99 >= 50 ms or a loss",
        "unpinned": unpinned,
        "ratios": ratios,
        "pinned": pinned,
        "pinned_roomcast_over_socketio": round(best["roomcast"] / best["socketio"], 2) if best["socketio"] else None,
        "pinned_roomcast_over_floor": round(best["roomcast"] / best["floor"], 2) if best["floor"] else None,
    }


def compare_markdown(out):
    s = load(os.path.join(out, "compare.json"))
    ms = lambda v: "-" if v is None else f"{v:.2f} ms"
    us = lambda v: "-" if v is None else f"{v:.1f} µs"
    lines = ["| msg/s per session | server | deliveries/s | lost / dup | server CPU per delivery | Redis CPU per delivery | p50 | p99 | publish→ack p50 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rate, by in s["unpinned"].items():
        for server in COMPARED:
            r = by.get(server)
            if r:
                lines.append(f"| {rate} | {server} | {r['deliveries_per_s']:,} | {r['lost']} / {r['duplicated_or_reordered']} "
                             f"| {us(r.get('server_cpu_us_per_delivery'))} | {us(r.get('redis_cpu_us_per_delivery'))} "
                             f"| {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {ms(r.get('ack_p50_ms'))} |")
    lines += ["", "| msg/s per session | server CPU Roomcast / floor | server CPU Roomcast / Socket.IO | server + Redis CPU Roomcast / Socket.IO | p99 Roomcast / Socket.IO |",
              "|---|---|---|---|---|"]
    for rate, x in s["ratios"].items():
        f = lambda v: "-" if v is None else f"{v}"
        lines.append(f"| {rate} | {f(x['server_cpu_roomcast_over_floor'])} | {f(x['server_cpu_roomcast_over_socketio'])} "
                     f"| {f(x['server_and_redis_cpu_roomcast_over_socketio'])} | {f(x['p99_roomcast_over_socketio'])} |")
    lines += ["", "| pinned (servers and Redis on one core) | best deliveries/s at p99 < 50 ms | at msg/s per session | steps run |",
              "|---|---|---|---|"]
    for server in COMPARED:
        p = s["pinned"][server]
        lines.append(f"| {server} | {p['best_deliveries_per_s_per_core']:,} | {p['best_rate_per_session']} | {len(p['steps'])} |")
    lines.append(f"\nRoomcast / Socket.IO per core: {s['pinned_roomcast_over_socketio']}; Roomcast / floor: {s['pinned_roomcast_over_floor']}")
    return "\n".join(lines)


def cost(out):
    """`scripts/bench.sh cost`: gateway CPU per published message with 2 and 10 displays
    per session, split into a fixed part per message and a part per delivery."""
    runs, per_publish = {}, {}
    for d in (2, 10):
        path = os.path.join(out, f"cost-d{d}.json")
        r = row(load(path), path)
        published = r["published_in_window"]
        per_publish[d] = 1e6 * r["window_server_cpu_s"] / published
        runs[d] = dict(r, server_cpu_us_per_publish=round(per_publish[d], 1),
                       redis_cpu_us_per_publish=round(1e6 * r["window_redis_cpu_s"] / published, 1))
    per_delivery = (per_publish[10] - per_publish[2]) / 8
    return {
        "scenario": "cost",
        "setup": "2 gateways, 100 sessions x (1 controller + D displays), 40 msg/s per session, 64 B",
        "gateway_us_per_published_message": round(per_publish[2] - 2 * per_delivery, 1),
        "gateway_us_per_delivery": round(per_delivery, 2),
        "runs": {f"displays_{d}": r for d, r in runs.items()},
    }


def small(out):
    """`scripts/bench.sh small`: CPU per published message in small rooms, per server,
    placement, displays per session and rate, with the ratios issue 30 sets goals on."""
    runs = []
    for path in sorted(glob.glob(os.path.join(out, "small-d*-r*.json"))):
        m = re.match(r"small-d(\d+)-(\w+)-(split|colocated)-r([\d.]+)\.json$",
                     os.path.basename(path))
        if not m:
            continue
        r = row(load(path), path)
        published = r["published_in_window"] or 1
        server_us = 1e6 * r["window_server_cpu_s"] / published
        redis_us = 1e6 * r["window_redis_cpu_s"] / published
        runs.append({
            "displays": int(m.group(1)), "server": m.group(2), "placement": m.group(3),
            "rate_per_session": float(m.group(4)),
            "messages_per_s": round(published / max(r["window_s"], 1)),
            "server_cpu_us_per_message": round(server_us, 1),
            "redis_cpu_us_per_message": round(redis_us, 1),
            "total_cpu_us_per_message": round(server_us + redis_us, 1),
            "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
            "lost": r["lost"], "duplicated_or_reordered": r["duplicated_or_reordered"],
            "offered_share": r["offered_share"], "errors": r["errors"],
        })
    floor = {(x["displays"], x["rate_per_session"]): x["total_cpu_us_per_message"]
             for x in runs if x["server"] == "floor"}
    peer = {(x["displays"], x["rate_per_session"], x["placement"]): x["total_cpu_us_per_message"]
            for x in runs if x["server"] == "socketio"}
    for x in runs:
        key = (x["displays"], x["rate_per_session"])
        if key in floor:
            x["vs_floor"] = round(x["total_cpu_us_per_message"] / floor[key], 2)
        if key + (x["placement"],) in peer:
            x["vs_socketio"] = round(
                x["total_cpu_us_per_message"] / peer[key + (x["placement"],)], 2)
    return {"scenario": "small",
            "setup": "sessions x (1 controller + D displays), 64 B, CPU over the publishing window",
            "runs": runs}


def small_markdown(out):
    runs = small(out)["runs"]
    lines = ["| displays | server | placement | msg/s | server µs/msg | Redis µs/msg | total | "
             "× floor | × Socket.IO | p99 ms | lost |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in sorted(runs, key=lambda x: (x["displays"], -x["rate_per_session"],
                                         x["server"], x["placement"])):
        lines.append(
            f"| {x['displays']} | {x['server']} | {x['placement']} | {x['messages_per_s']} | "
            f"{x['server_cpu_us_per_message']} | {x['redis_cpu_us_per_message']} | "
            f"{x['total_cpu_us_per_message']} | {x.get('vs_floor', '')} | "
            f"{x.get('vs_socketio', '')} | {x['p99_ms']} | {x['lost']} |")
    return "\n".join(lines)


def perf_counts(path):
    """A `perf stat -x,` output file: {event: count}."""
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                counts[parts[2]] = float(parts[0])
    return counts


def budget(out):
    """`scripts/bench.sh budget`: per published message, on each server process and in
    Redis, the system calls, context switches and allocations `perf stat` counted over
    the publishing window, and the Redis commands from commandstats."""
    names = {"raw_syscalls:sys_enter": "syscalls", "context-switches": "context_switches",
             "probe_libc:malloc": "malloc", "probe_libc:calloc": "calloc",
             "probe_libc:realloc": "realloc"}
    runs = []
    for path in sorted(glob.glob(os.path.join(out, "budget-*-*.json"))):
        m = re.match(r"budget-(\w+)-(split|colocated)\.json$", os.path.basename(path))
        if not m:
            continue
        r = row(load(path), path)
        published = r.get("published_in_window") or 0
        if not published:
            continue
        processes = {}
        for perf in sorted(glob.glob(path + ".perf-*")):
            who = perf.rsplit(".perf-", 1)[1]
            c = {names.get(k, k): v / published for k, v in perf_counts(perf).items()}
            c["allocations"] = c.pop("malloc", 0) + c.pop("calloc", 0) + c.pop("realloc", 0)
            processes["redis" if who == "redis" else f"server {who}"] = {
                k: round(v, 2) for k, v in c.items()}
        servers = [v for k, v in processes.items() if k != "redis"]
        total = {k: round(sum(s.get(k, 0) for s in servers), 2)
                 for k in ("syscalls", "context_switches", "allocations")}
        runs.append({"server": m.group(1), "placement": m.group(2),
                     "published_in_window": round(published),
                     "per_message": processes, "servers_per_message": total,
                     "redis_commands_per_publish": r.get("redis_commands_per_publish"),
                     "p99_ms": r["p99_ms"], "lost": r["lost"]})
    return {"scenario": "budget",
            "setup": "sessions x (1 controller + 1 display), counts per published message "
                     "over the publishing window",
            "runs": runs}


def budget_markdown(out):
    lines = ["| server | placement | process | syscalls | context switches | allocations |",
             "|---|---|---|---|---|---|"]
    for x in budget(out)["runs"]:
        for who, c in x["per_message"].items():
            lines.append(f"| {x['server']} | {x['placement']} | {who} | {c.get('syscalls', '')} | "
                         f"{c.get('context_switches', '')} | {c.get('allocations', '')} |")
        t = x["servers_per_message"]
        lines.append(f"| {x['server']} | {x['placement']} | **all server processes** | "
                     f"{t['syscalls']} | {t['context_switches']} | {t['allocations']} |")
    return "\n".join(lines)


def passes_row(r):
    return r["p99_ms"] < 50 and r["lost"] == 0 and r["duplicated_or_reordered"] == 0 and not r["errors"]


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "step":
        r = load(args[0])
        ok = passes(r, float(args[1]))
        saturated = offered_share(r) < 0.8
        verdict = "pass" if ok else "FAIL"
        if ok and saturated:
            verdict = "pass, but the load generator sent under 80 % of the offered rate: stop"
        print(f"{verdict}: {json.dumps(row(r, args[0]))}", file=sys.stderr)
        sys.exit(0 if ok and not saturated else (2 if ok else 1))
    elif cmd == "child-cpu":
        # child-cpu FILE COMMAND...: runs COMMAND, writes the CPU seconds it (and its
        # children: the load generator's workers) used to FILE, exits with its code.
        code = subprocess.run(args[1:]).returncode
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(args[0], "w") as f:
            f.write(f"{usage.ru_utime + usage.ru_stime:.3f}\n")
        sys.exit(code)
    elif cmd == "quarter":
        print(quarter(args[0], args[1]))
    elif cmd == "fanout":
        print(json.dumps(fanout(args[0], args[1]), indent=2))
    elif cmd == "idle":
        redis_ticks = int(args[3]) if len(args) > 3 else None
        print(json.dumps(idle(args[0], float(args[1]), float(args[2]), redis_ticks), indent=2))
    elif cmd == "markdown":
        print(markdown(args[0], args[1]))
    elif cmd == "compare":
        print(json.dumps(compare(args[0]), indent=2))
    elif cmd == "cost":
        print(json.dumps(cost(args[0]), indent=2))
    elif cmd == "compare-markdown":
        print(compare_markdown(args[0]))
    elif cmd == "small":
        print(json.dumps(small(args[0]), indent=2))
    elif cmd == "small-markdown":
        print(small_markdown(args[0]))
    elif cmd == "budget":
        print(json.dumps(budget(args[0]), indent=2))
    elif cmd == "budget-markdown":
        print(budget_markdown(args[0]))
    elif cmd == "table":
        print(table(args[0]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
