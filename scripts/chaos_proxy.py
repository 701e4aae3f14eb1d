#!/usr/bin/env python3
"""A TCP proxy for `make chaos` that puts faults between gateways and Redis.

    chaos_proxy.py LISTEN_PORT UPSTREAM_PORT CONTROL_PORT

Forwards 127.0.0.1:LISTEN_PORT to 127.0.0.1:UPSTREAM_PORT. Commands, one line per
connection to 127.0.0.1:CONTROL_PORT (answered `ok`):

    delay MS     every chunk from Redis waits MS milliseconds: MS more round-trip time
                 (0: none); requests pass at once, so the round trip grows by MS, not 2 MS
    blackhole    a partition: nothing is forwarded any more, and new connections are
                 accepted but never reach Redis, so clients see timeouts, not errors
    heal         the partition ends: connections held through it are closed (they died
                 in it, as TCP connections do when a partition outlasts their timeouts)
                 and new ones are forwarded again

Delays keep each direction's byte order: chunks go through one queue per direction.
"""
import asyncio
import sys

state = {"delay": 0.0, "blackhole": False}


class Conn:
    """One proxied connection: its two writers, and whether it lived through a partition."""

    def __init__(self):
        self.alive = True
        self.partitioned = False
        self.writers = []

    def close(self):
        self.alive = False
        for w in self.writers:
            try:
                w.close()
            except OSError:
                pass


conns = set()


async def pump(reader, writer, conn, delayed):
    queue = asyncio.Queue()

    async def read():
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                delay = state["delay"] if delayed else 0.0
                await queue.put((asyncio.get_running_loop().time() + delay, data))
        except (ConnectionError, OSError):
            pass
        await queue.put((0, None))

    async def write():
        try:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - asyncio.get_running_loop().time()
                if wait > 0:
                    await asyncio.sleep(wait)
                while state["blackhole"] and conn.alive:
                    await asyncio.sleep(0.05)
                if not conn.alive:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        # One direction ended: the connection is over.
        conn.close()

    await asyncio.gather(read(), write())


async def handle(client_reader, client_writer, upstream_port):
    conn = Conn()
    conn.writers.append(client_writer)
    conns.add(conn)
    try:
        while state["blackhole"] and conn.alive:
            await asyncio.sleep(0.05)
        if not conn.alive:
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            return
        conn.writers.append(up_writer)
        await asyncio.gather(
            pump(client_reader, up_writer, conn, False), pump(up_reader, client_writer, conn, True)
        )
    finally:
        conn.close()
        conns.discard(conn)


async def control(reader, writer):
    line = (await reader.readline()).decode().split()
    if line and line[0] == "delay" and len(line) == 2:
        state["delay"] = float(line[1]) / 1000.0
    elif line == ["blackhole"]:
        state["blackhole"] = True
        # Everything open now is on the far side of the partition.
        for conn in list(conns):
            conn.partitioned = True
    elif line == ["heal"]:
        for conn in list(conns):
            if conn.partitioned:
                conn.close()
        state["blackhole"] = False
    writer.write(b"ok\n")
    await writer.drain()
    writer.close()


async def main():
    listen, upstream, ctl = (int(a) for a in sys.argv[1:4])
    proxy = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream), "127.0.0.1", listen
    )
    control_server = await asyncio.start_server(control, "127.0.0.1", ctl)
    async with proxy, control_server:
        await asyncio.gather(proxy.serve_forever(), control_server.serve_forever())


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
