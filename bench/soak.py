"""Memory as a stream grows, and how cost grows with work, on a 3-node raftbroker cluster.

    python bench/soak.py soak                    # 2,000,000 messages into one stream
    python bench/soak.py soak --messages 500000  # a shorter soak
    python bench/soak.py scale                   # streams, consumers and message sizes
    python bench/soak.py scale --seconds 5

Both start the cluster as bench/cluster.py does (cluster secret on, fsync before ack,
num_replicas=3, the default duplicate window) and publish through raftbroker's own
client with 1000 publishes in flight (1000 coroutines each awaiting js.publish).

soak: 128-byte messages, every one with a Nats-Msg-Id (so the duplicate window holds
entries for all of them); at 250k, 500k, 1M and 2M messages each node's resident memory
now (VmRSS) and at its peak (VmHWM). PASS when every peak is <= 150 MiB and the last
VmRSS is within 10 % of the one at 500k (memory flat as the stream grows).

scale: windowed publish rate (1000 in flight, or 8 MiB of messages if that is fewer)
and each node's peak RSS for 1, 100 and 1,000 streams
(publishes spread round-robin over the streams), for 1 and 50 push consumers (explicit
ack, each acking what it gets) on one stream while publishing, and for 128 B, 4 KiB and
64 KiB messages. Each row is a fresh cluster.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BENCH]
sys.path.insert(0, REPO)
from chaos.cluster import Cluster  # noqa: E402

CHECKPOINTS = (250_000, 500_000, 1_000_000, 2_000_000)
PEAK_LIMIT_MIB = 150.0
WINDOW = 1000
WINDOW_BYTES = 8 << 20      # scale: fewer publishes in flight for big messages (64 KiB: 128)


def proc_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory(cluster: Cluster) -> dict[str, tuple[float, float]]:
    """Per node: (VmRSS, VmHWM) in MiB."""
    return {n.name: (proc_mib(n.proc.pid, "VmRSS"), proc_mib(n.proc.pid, "VmHWM")) for n in cluster.nodes}


class Up:
    """A fresh 3-node cluster in a temporary directory, and a client connected to it."""

    async def __aenter__(self):
        from api.client import connect
        self.root = tempfile.mkdtemp(prefix="raftbroker-soak-")
        self.cluster = Cluster(self.root)
        await asyncio.to_thread(self.cluster.start)
        await asyncio.to_thread(self.cluster.leader)
        await asyncio.to_thread(self.cluster.wait_healthy)
        self.nc = await connect(self.cluster.clients(), timeout=30)
        self.js = self.nc.jetstream(timeout=30)
        return self

    async def __aexit__(self, *exc):
        await self.nc.close()
        await asyncio.to_thread(self.cluster.stop)
        shutil.rmtree(self.root, ignore_errors=True)


async def publish_window(js, subjects: list[str], data: bytes, until, msg_ids: bool = False,
                         first_id: int = 0, window: int = WINDOW) -> tuple[int, float]:
    """`window` coroutines publish round-robin over `subjects` until until(sent) is true;
    (messages acknowledged, seconds)."""
    acked = 0
    sent = 0
    t0 = time.perf_counter()

    async def worker():
        nonlocal acked, sent
        while not until(sent):
            i = sent
            sent += 1
            await js.publish(subjects[i % len(subjects)], data, msg_id=f"m{first_id + i}" if msg_ids else None)
            acked += 1
    await asyncio.gather(*(worker() for _ in range(window)))
    return acked, time.perf_counter() - t0


async def soak(args) -> int:
    marks = [c for c in CHECKPOINTS if c <= args.messages]
    if not marks or marks[-1] != args.messages:
        marks.append(args.messages)
    rows = []
    async with Up() as up:
        await up.js.add_stream(name="SOAK", subjects=["soak.>"], num_replicas=3)
        done = 0
        t_all = time.perf_counter()
        for mark in marks:
            n, el = await publish_window(up.js, ["soak.x"], b"x" * 128, lambda sent, m=mark - done: sent >= m,
                                         msg_ids=True, first_id=done)
            done += n
            mem = memory(up.cluster)
            rows.append((mark, mem))
            print(f"{mark:>10,} messages  ({n / el:,.0f} msgs/s for the last {n:,})  " +
                  "  ".join(f"{k} rss {v[0]:.1f} peak {v[1]:.1f}" for k, v in mem.items()) + " MiB", flush=True)
        info = await up.js.stream_info("SOAK")
        print(f"stream SOAK holds {info.state.messages:,} messages ({info.state.bytes / 2**20:,.0f} MiB); "
              f"{time.perf_counter() - t_all:.0f} s in all")
    peak = max(v[1] for _, mem in rows for v in mem.values())
    ok = peak <= PEAK_LIMIT_MIB
    print(f"peak RSS of any node {peak:.1f} MiB (limit {PEAK_LIMIT_MIB:g}): {'PASS' if ok else 'MISS'}")
    second = dict(rows).get(500_000)
    if second is not None and len(rows) > 2:
        growth = max(rows[-1][1][k][0] / second[k][0] - 1 for k in second)
        flat = growth <= 0.10
        ok = ok and flat
        print(f"largest growth of a node's RSS from 500k to {rows[-1][0]:,}: {100 * growth:+.1f} % "
              f"(limit +10 %): {'PASS' if flat else 'MISS'}")
    return 0 if ok else 1


async def scale_row(label: str, streams: int, consumers: int, size: int, seconds: float) -> str:
    async with Up() as up:
        subjects = []
        for s in range(streams):
            await up.js.add_stream(name=f"S{s}", subjects=[f"s{s}.>"], num_replicas=3)
            subjects.append(f"s{s}.x")
        got = 0

        async def ack(m):
            nonlocal got
            await m.ack()
            got += 1
        # Each consumer is its own worker process's connection, as it would be in use.
        from api.client import connect
        workers = [await connect(up.cluster.clients(), timeout=30) for _ in range(consumers)]
        for c, nc in enumerate(workers):
            await nc.jetstream().subscribe(subjects[0], durable=f"c{c}", stream="S0", cb=ack, manual_ack=True)
        stop_at = time.perf_counter() + seconds
        window = max(16, min(WINDOW, WINDOW_BYTES // size))
        n, el = await publish_window(up.js, subjects, os.urandom(size), lambda _: time.perf_counter() >= stop_at,
                                     window=window)
        for nc in workers:
            await nc.close()
        peaks = {k: v[1] for k, v in memory(up.cluster).items()}
    extra = f"; {got:,} deliveries acked" if consumers else ""
    return (f"  {label:<28} w={window:<5} {n / el:>9,.0f} msgs/s {n * size / el / 2**20:>7.1f} MiB/s   peak RSS " +
            " ".join(f"{v:.0f}" for v in peaks.values()) + f" MiB{extra}")


async def scale(args) -> int:
    rows = [("1 stream, 128 B", 1, 0, 128), ("100 streams, 128 B", 100, 0, 128), ("1,000 streams, 128 B", 1000, 0, 128),
            ("1 stream, 1 consumer", 1, 1, 128), ("1 stream, 50 consumers", 1, 50, 128),
            ("1 stream, 4 KiB", 1, 0, 4096), ("1 stream, 64 KiB", 1, 0, 65536)]
    print(f"windowed publish (w={WINDOW}, at most {WINDOW_BYTES >> 20} MiB in flight; {args.seconds:g} s per row, "
          f"a fresh R3 cluster per row):")
    for label, streams, consumers, size in rows:
        if args.only and args.only not in label:
            continue
        print(await scale_row(label, streams, consumers, size, args.seconds), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("soak", help="memory at 250k/500k/1M/2M messages in one stream")
    s.add_argument("--messages", type=int, default=CHECKPOINTS[-1])
    c = sub.add_parser("scale", help="rate and memory for many streams, consumers and message sizes")
    c.add_argument("--seconds", type=float, default=10.0)
    c.add_argument("--only", default="", help="only rows whose label contains this")
    args = ap.parse_args()
    return asyncio.run(soak(args) if args.cmd == "soak" else scale(args))


if __name__ == "__main__":
    sys.exit(main())
