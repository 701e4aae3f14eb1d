#!/usr/bin/env python3
"""Folds `perf script` output into flame-graph stacks, and summarises them.

    perf script -i perf.data | scripts/perf_fold.py fold > stacks.folded
    scripts/perf_fold.py top stacks.folded [N]
    scripts/perf_fold.py parts stacks.folded

`parts` needs whole stacks (`perf record --call-graph dwarf`): it puts each sample of a
gateway in the part of the gateway it was taken in (a client's writer, a connection's
reader, a session pump, the Redis client, the runtime) and shows how much of each part
is spent writing to sockets (send, write, writev) and in the allocator.

`fold` writes one line per distinct stack, root first, frames joined by `;`, then its
sample count: the input of any flame-graph renderer (inferno, flamegraph.pl,
speedscope). `top` prints the frames with the most samples on the stack (inclusive) and
at the leaf (exclusive), as shares of all samples: what BENCHMARKS.md quotes.
"""

import collections
import re
import sys

FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.+?)\s+\((.*)\)\s*$")


def clean(symbol, dso):
    symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol)
    if symbol == "[unknown]":
        symbol = f"[{dso.rsplit('/', 1)[-1]}]"
    return symbol.replace(";", ":")


def fold(lines):
    stacks = collections.Counter()
    comm, frames = None, []

    def flush():
        if comm is not None and frames:
            stacks[";".join([comm] + frames[::-1])] += 1

    for line in lines:
        if not line.strip():
            flush()
            comm, frames = None, []
        elif not line.startswith((" ", "\t")):
            flush()
            comm, frames = line.split()[0], []
        else:
            m = FRAME.match(line)
            if m:
                frames.append(clean(m.group(1), m.group(2)))
    flush()
    return stacks


def stacks(path):
    """(frames below the thread name, sample count) for each line of a folded file."""
    with open(path) as f:
        for line in f:
            stack, count = line.rsplit(" ", 1)
            yield stack.split(";")[1:], int(count)


def top(path, n):
    inclusive, exclusive, total = collections.Counter(), collections.Counter(), 0
    for frames, count in stacks(path):
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            exclusive[frames[-1]] += count
    print(f"{total} samples")
    print("inclusive (on the stack):")
    for frame, c in inclusive.most_common(n):
        print(f"  {100 * c / total:5.1f} %  {frame}")
    print("exclusive (at the leaf):")
    for frame, c in exclusive.most_common(n):
        print(f"  {100 * c / total:5.1f} %  {frame}")


# The gateway's parts, first match from the top of the list wins (a pump's offer runs
# inside the pump, not the writer).
PARTS = [
    ("client writers (client::run_writer)", r"gateway::client::run_writer"),
    ("session pumps (session::pump)", r"gateway::session::"),
    ("connection readers (conn::)", r"gateway::conn::"),
    ("Redis client (fred)", r"fred::"),
    ("pub/sub bus (bus::)", r"gateway::bus"),
    ("other gateway code", r"gateway::"),
    ("runtime: parked, polling I/O", r"worker::Context::park|runtime::driver|io::driver"),
    ("runtime: other", r"tokio::"),
]
SEND = re.compile(r"^(tcp_sendmsg|__x64_sys_sendto|__x64_sys_writev?|__GI___writev)$")
ALLOC = re.compile(r"malloc|_int_free|cfree|libc_free|realloc")


def parts(path):
    total = 0
    share = collections.Counter()
    send = collections.Counter()
    alloc = collections.Counter()
    rules = [(name, re.compile(rx)) for name, rx in PARTS]
    for frames, count in stacks(path):
        total += count
        part = next((name for name, rx in rules if any(rx.search(x) for x in frames)), "other")
        share[part] += count
        if any(SEND.search(x) for x in frames):
            send[part] += count
        if any(ALLOC.search(x) for x in frames):
            alloc[part] += count
    print(f"{total} samples; share of all samples: part, of which writing to sockets, of which malloc/free")
    for part, c in share.most_common():
        pct = lambda n: 100 * n / max(total, 1)
        print(f"  {pct(c):5.1f} %  {part:<36} write {pct(send[part]):5.1f} %  alloc {pct(alloc[part]):4.1f} %")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "fold":
        for stack, count in sorted(fold(sys.stdin).items()):
            print(f"{stack} {count}")
    elif len(sys.argv) >= 3 and sys.argv[1] == "top":
        top(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 25)
    elif len(sys.argv) >= 3 and sys.argv[1] == "parts":
        parts(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
