#!/usr/bin/env python3
"""The lifecycle-clock benchmark's Redis side (`make bench SCENARIOS=lifecycle`).

  lifecycle_bench.py populate PORT N SPREAD_MS WARNING_MS   files N idle sessions
  lifecycle_bench.py done PORT N                            exit 0 once all are inactive
  lifecycle_bench.py report PORT N WARNING_MS TIMEOUT_MS    lateness as JSON on stdout

`populate` writes N sessions the way the gateway leaves them (a meta hash and an entry in
the due index), with last activity spread evenly over SPREAD_MS from now, so that their
warnings and timeouts fall due at a steady rate while the gateways run the clock.
`report` reads when each warning and each inactive transition happened (`warned_at`,
`inactive_at` in the meta) against when it was due (last activity plus the threshold).
Plain RESP over a socket: no client library needed.
"""
import json
import socket
import sys
import time

PREFIX = "rc"
# The gateway's index buckets (keys.rs `INDEX_BUCKETS`, `bucket_of`): an id's Redis key
# slot (CRC16/XMODEM of the id, hash tags aside: ours have no braces) modulo 16.
BUCKETS = 16


def crc16(data):
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def bucket_of(sid):
    return (crc16(sid.encode()) % 16384) % BUCKETS


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    return b"".join(out)


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-"):
            return rest.decode()
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise ValueError(f"unexpected reply {line!r}")


def ids(n):
    return [f"lc-{i:07d}" for i in range(n)]


def populate(port, n, spread_ms, warning_ms):
    c = Conn(port)
    now = int(time.time() * 1000)
    expires = now + 24 * 3600 * 1000
    batch = []
    for i, sid in enumerate(ids(n)):
        last = now + (spread_ms * i) // max(n - 1, 1)
        meta = f"{PREFIX}:{{s:{sid}}}:meta"
        batch.append(resp("HSET", meta, "status", "active", "created_at", now,
                          "expires_at", expires, "last_activity", last, "state", "null"))
        batch.append(resp("PEXPIRE", meta, 3 * 3600 * 1000))
        # The bucketed due index, as `Store::touch_indexes` files it.
        batch.append(resp("ZADD", f"{PREFIX}:sessions:due:{{b{bucket_of(sid)}}}", last + warning_ms, sid))
        if len(batch) >= 3000:
            c.send(b"".join(batch))
            for _ in batch:
                c.reply()
            batch = []
    if batch:
        c.send(b"".join(batch))
        for _ in batch:
            c.reply()


def fields(port, n, names):
    c = Conn(port)
    out = []
    all_ids = ids(n)
    for start in range(0, n, 5000):
        chunk = all_ids[start : start + 5000]
        c.send(b"".join(resp("HMGET", f"{PREFIX}:{{s:{s}}}:meta", *names) for s in chunk))
        out.extend(c.reply() for _ in chunk)
    return out


def percentiles(values):
    values = sorted(values)
    if not values:
        return {}
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]
    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": values[-1],
            "count": len(values)}


def main():
    mode, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if mode == "populate":
        populate(port, n, int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "done":
        rows = fields(port, n, ["inactive_at"])
        missing = sum(1 for r in rows if r[0] is None)
        print(f"{n - missing}/{n} inactive", file=sys.stderr)
        sys.exit(0 if missing == 0 else 1)
    elif mode == "report":
        warning, timeout = int(sys.argv[4]), int(sys.argv[5])
        rows = fields(port, n, ["last_activity", "warned_at", "inactive_at"])
        warned = [int(r[1]) - int(r[0]) - warning for r in rows if r[1]]
        inactive = [int(r[2]) - int(r[0]) - timeout for r in rows if r[2]]
        print(json.dumps({
            "sessions": n,
            "warned": len(warned),
            "inactive": len(inactive),
            "warning_lateness": percentiles(warned),
            "inactive_lateness": percentiles(inactive),
        }, indent=2))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
