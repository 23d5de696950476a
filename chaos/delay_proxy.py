"""The `delay` fault: a TCP proxy on one node's Raft links that holds bytes back.

This kernel has no `tc netem`, so delay is made in user space. In a run that
asks for `delay`, every node namespace gets a NAT rule that sends its outgoing
connections to the other nodes' Raft ports to this proxy (on 127.0.0.1 in the
same namespace). The proxy learns where each connection was headed
(SO_ORIGINAL_DST), connects there itself with a socket mark the rule skips, and
copies bytes both ways. Its upstream connection leaves from the node's own
address, so partitions and packet loss (rules by source address) still apply.

While the control file names a node's address, bytes on every connection to or
from that node are forwarded `ms` milliseconds after they arrived, in order.
Each proxy writes its counters to a stats file, so the nemesis can prove the
delay really held Raft traffic back: a fault asked for is never skipped.

    python -m chaos.delay_proxy --self-ip 10.77.0.10 --port 6299 --control C --stats S
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import time

SO_ORIGINAL_DST = 80
MARK = 0x7                      # the NAT rule skips the proxy's own connections by this mark
QUEUE_CHUNKS = 64               # chunks held per direction before reading pauses (back-pressure)
CONTROL_POLL_S = 0.1


def write_control(path: str, delayed: list[str], ms: int) -> None:
    """Delay every link of the nodes at these addresses by `ms` (none: no delay)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"delayed": delayed, "ms": ms}, f)
    os.replace(tmp, path)


def read_stats(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class Proxy:
    def __init__(self, self_ip: str, control: str, stats: str):
        self.self_ip = self_ip
        self.control = control
        self.stats_path = stats
        self.delayed: set[str] = set()
        self.ms = 0
        # delayed_bytes: bytes that were held back by a delay above zero.
        self.stats = {"connections": 0, "open": 0, "bytes": 0, "delayed_bytes": 0, "failed_upstream": 0}

    def delay_for(self, peer_ip: str) -> float:
        if self.ms and (peer_ip in self.delayed or self.self_ip in self.delayed):
            return self.ms / 1000.0
        return 0.0

    async def watch_control(self) -> None:
        last = None
        while True:
            try:
                with open(self.control) as f:
                    raw = f.read()
                if raw != last:
                    c = json.loads(raw)
                    self.delayed, self.ms, last = set(c.get("delayed", [])), int(c.get("ms", 0)), raw
            except (OSError, ValueError):
                pass
            tmp = self.stats_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({**self.stats, "at": time.time()}, f)
            os.replace(tmp, self.stats_path)
            await asyncio.sleep(CONTROL_POLL_S)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack_from("!H", raw, 2)[0]
        ip = socket.inet_ntoa(raw[4:8])
        self.stats["connections"] += 1
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
        up.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(up, (ip, port)), 5.0)
            ur, uw = await asyncio.open_connection(sock=up)
        except (OSError, asyncio.TimeoutError):
            self.stats["failed_upstream"] += 1
            up.close()
            writer.close()
            return
        self.stats["open"] += 1
        try:
            pumps = [asyncio.ensure_future(self.pump(reader, uw, ip)), asyncio.ensure_future(self.pump(ur, writer, ip))]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for p in pumps:
                p.cancel()
        finally:
            self.stats["open"] -= 1
            writer.close()
            uw.close()

    async def pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, peer_ip: str) -> None:
        """Copy src to dst; each chunk leaves once its delay (set when it arrived) is over."""
        q: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()

        async def send() -> None:
            while True:
                due, data = await q.get()
                if data is None:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                d = self.delay_for(peer_ip)
                self.stats["bytes"] += len(data)
                if d:
                    self.stats["delayed_bytes"] += len(data)
                await q.put((loop.time() + d, data))
            await q.put((0.0, None))
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()


async def _main(args) -> None:
    proxy = Proxy(args.self_ip, args.control, args.stats)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    watcher = asyncio.ensure_future(proxy.watch_control())
    print(f"delay proxy for {args.self_ip} on 127.0.0.1:{args.port}", flush=True)
    await stop.wait()
    watcher.cancel()
    server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--self-ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--stats", required=True)
    asyncio.run(_main(ap.parse_args()))


if __name__ == "__main__":
    main()
