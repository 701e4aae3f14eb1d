#!/usr/bin/env python3
"""Opens COUNT TCP connections to HOST:PORT that never send a byte, holds them for at most
HOLD seconds, and reports how the server treated them (`make bench SCENARIOS=silent`).

  silent_flood.py HOST PORT COUNT HOLD

Prints one JSON line: how many connected, how many the server refused outright (a 429 or
503 answer), how many it closed silently and when (seconds after connect, percentiles),
and how many were still open at the end. Loopback only; bounded in count and time.
"""
import json
import selectors
import socket
import sys
import time


def main():
    host, port, count, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    if not host.startswith("127."):
        sys.exit("silent_flood.py sends to loopback addresses only")
    sel = selectors.DefaultSelector()
    opened = {}
    failed = 0
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            failed += 1
            s.close()
            continue
        opened[s.fileno()] = (s, time.monotonic())
        sel.register(s, selectors.EVENT_READ)
    refused = {"429": 0, "503": 0}
    closed_after = []
    deadline = time.monotonic() + hold
    while opened and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s, started = opened.pop(key.fd)
            sel.unregister(s)
            try:
                data = s.recv(256)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 429"):
                refused["429"] += 1
            elif data.startswith(b"HTTP/1.1 503"):
                refused["503"] += 1
            else:
                closed_after.append(time.monotonic() - started)
            s.close()
    still_open = len(opened)
    for s, _ in opened.values():
        s.close()
    closed_after.sort()
    pick = lambda q: round(closed_after[min(len(closed_after) - 1, int(q * len(closed_after)))], 3)
    print(json.dumps({
        "attempted": count,
        "connect_failed": failed,
        "refused": refused,
        "closed_silently": len(closed_after),
        "closed_after_s": {"p50": pick(0.5), "p99": pick(0.99), "max": closed_after[-1]}
        if closed_after else {},
        "still_open_at_end": still_open,
    }))


if __name__ == "__main__":
    main()
