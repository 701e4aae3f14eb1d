#!/usr/bin/env python3
"""Scores a `make mutants` run per file: cargo-mutants' caught/missed/timeout/unviable
lists plus the Lua mutants' results, less the survivors justified as equivalent in
.cargo/mutants-equivalent.txt.

    scripts/mutants_report.py [MUTANTS_OUT_DIR]

MUTANTS_OUT_DIR holds one folder per group (`make mutants` writes
mutants.out/<group>/mutants.out/*.txt and mutants.out/lua/lua.json); a cargo-mutants
output folder itself is read too.

The score of a file is (caught + timeouts + equivalent) / (every viable mutant). A
timeout counts as caught: the mutant made a test hang, which the suite notices.
Prints a table and writes MUTANTS_OUT_DIR/score.json. Exit status 1 when a survivor is
neither killed nor justified.
"""

import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EQUIVALENT = os.path.join(ROOT, ".cargo", "mutants-equivalent.txt")
# "gateway/src/client.rs:120:9: replace ClientHandle::close_code -> CloseCode with ..."
LINE = re.compile(r"^(?P<file>[^:]+):\d+(?::\d+)?: (?P<what>.*)$")


def read_list(out, name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def equivalents():
    """{(file, mutant text): reason}: line numbers left out, so edits elsewhere in a
    file do not orphan a justification."""
    found = {}
    if not os.path.exists(EQUIVALENT):
        return found
    with open(EQUIVALENT, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            mutant, _, reason = line.partition(" ## ")
            file, _, what = mutant.partition(": ")
            found[(file.strip(), what.strip())] = reason.strip()
    return found


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "mutants.out")
    justified = equivalents()
    files = {}

    def row(file):
        return files.setdefault(file, {"caught": 0, "timeout": 0, "equivalent": 0,
                                       "missed": 0, "unviable": 0, "survivors": []})

    runs = [d for d in glob.glob(os.path.join(out, "**", "mutants.out"), recursive=True)]
    if os.path.exists(os.path.join(out, "outcomes.json")):
        runs.append(out)
    # `--iterate` runs list what earlier runs caught, and found unviable, in
    # previously_caught.txt; the earlier run (mutants.out.old) tells which were unviable.
    old_unviable = {e for d in glob.glob(os.path.join(out, "**", "mutants.out.old"),
                                         recursive=True)
                    for e in read_list(d, "unviable.txt")}
    # `--iterate` runs list what earlier runs caught in previously_caught.txt.
    lists = {"caught": ("caught.txt", "previously_caught.txt"), "timeout": ("timeout.txt",),
             "missed": ("missed.txt",), "unviable": ("unviable.txt",)}
    for outcome, names in lists.items():
        for entry in (e for run in runs for n in names for e in read_list(run, n)):
            m = LINE.match(entry)
            if not m:
                continue
            if outcome == "caught" and entry in old_unviable:
                outcome_here = "unviable"
            else:
                outcome_here = outcome
            r = row(m["file"])
            if outcome_here == "missed" and (m["file"], m["what"]) in justified:
                r["equivalent"] += 1
            elif outcome_here == "missed":
                r["missed"] += 1
                r["survivors"].append(entry)
            else:
                r[outcome_here] += 1
    for lua in glob.glob(os.path.join(out, "**", "lua.json"), recursive=True):
        with open(lua, encoding="utf-8") as f:
            for result in json.load(f):
                r = row(f"redis/{result['script']}.lua")
                outcome = result["outcome"]
                if outcome in ("caught", "equivalent", "missed", "unviable"):
                    r[outcome] += 1
                if outcome == "missed":
                    r["survivors"].append(f"{result['name']}: {result['breaks']}")

    total = {"caught": 0, "timeout": 0, "equivalent": 0, "missed": 0, "unviable": 0}
    print(f"{'file':34} {'caught':>6} {'t/o':>4} {'equiv':>5} {'missed':>6} {'unviable':>8} {'score':>6}")
    for file in sorted(files):
        r = files[file]
        viable = r["caught"] + r["timeout"] + r["equivalent"] + r["missed"]
        r["score"] = round(100 * (viable - r["missed"]) / viable, 1) if viable else None
        for k in total:
            total[k] += r[k]
        score = f"{r['score']:.1f}" if r["score"] is not None else "-"
        print(f"{file:34} {r['caught']:6} {r['timeout']:4} {r['equivalent']:5} "
              f"{r['missed']:6} {r['unviable']:8} {score:>6}")
    viable = total["caught"] + total["timeout"] + total["equivalent"] + total["missed"]
    overall = round(100 * (viable - total["missed"]) / viable, 1) if viable else None
    print(f"{'all':34} {total['caught']:6} {total['timeout']:4} {total['equivalent']:5} "
          f"{total['missed']:6} {total['unviable']:8} {overall if overall is not None else '-':>6}")
    survivors = [s for r in files.values() for s in r["survivors"]]
    if survivors:
        print("\nsurvivors (kill with a test, or justify in .cargo/mutants-equivalent.txt):")
        for s in survivors:
            print(f"  {s}")
    with open(os.path.join(out, "score.json"), "w", encoding="utf-8") as f:
        json.dump({"files": files, "total": total, "score": overall}, f, indent=2)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
