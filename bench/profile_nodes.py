"""Profile a 3-node raftbroker cluster's nodes under load with py-spy.

    python bench/profile_nodes.py                      # windowed publish, 15 s
    python bench/profile_nodes.py --workload sync      # one publish at a time
    python bench/profile_nodes.py --workload fetch     # fetch(100)+ack of a prefilled stream
    python bench/profile_nodes.py --out docs/bench/issue13/profiles

Starts the cluster as bench/cluster.py does (cluster secret on, fsync before ack), drives
one workload through raftbroker's own client, and samples the leader and one follower
with `py-spy record` (all threads, idle frames left out) while it runs. Writes, per node,
the collapsed stacks (`<node>-<workload>.txt`, flame graph input: one line per stack and
its sample count) and a flame graph (`.svg`), and prints the functions that hold the most
samples, by their own time and with what they call, per thread.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BENCH]
sys.path.insert(0, REPO)
from chaos.cluster import Cluster  # noqa: E402

MSG = b"x" * 128
STREAM, SUBJECT = "P", "p.x"


async def drive(cluster: Cluster, workload: str, seconds: float, window: int, ready: asyncio.Event) -> int:
    """Set `ready` once the measured part starts; the messages it handled."""
    from api.client import connect
    nc = await connect(cluster.clients(), timeout=30)
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=["p.>"], num_replicas=3)
    done = 0
    try:
        if workload == "fetch":
            sem = asyncio.Semaphore(1000)

            async def one():
                async with sem:
                    await js.publish(SUBJECT, MSG)
            await asyncio.gather(*(one() for _ in range(int(seconds * 8000))))
        ready.set()
        stop_at = time.perf_counter() + seconds
        if workload == "windowed":
            async def worker():
                nonlocal done
                while time.perf_counter() < stop_at:
                    await js.publish(SUBJECT, MSG)
                    done += 1
            await asyncio.gather(*(worker() for _ in range(window)))
        elif workload == "sync":
            while time.perf_counter() < stop_at:
                await js.publish(SUBJECT, MSG)
                done += 1
        else:
            psub = await js.pull_subscribe(SUBJECT, durable="prof", stream=STREAM)
            while time.perf_counter() < stop_at:
                msgs = await psub.fetch(100, timeout=2)
                if not msgs:
                    break
                for m in msgs:
                    await m.ack()
                done += len(msgs)
    finally:
        await nc.close()
    return done



def py_spy(pid: int, seconds: float, path: str, fmt: str) -> subprocess.Popen:
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                             "--threads", "--nonblocking", "--format", fmt, "-o", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def top(path: str, n: int) -> list[str]:
    """Per thread: the frames with the most samples on their own (self) and the calls
    with the most samples under them (inclusive, counted once per stack)."""
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    incl: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total: collections.Counter = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            thread, frames = frames[0], frames[1:]
            thread = thread.split("\"")[1] if "\"" in thread else thread
            c = int(count)
            total[thread] += c
            if frames:
                own[thread][frames[-1]] += c
                for fr in set(frames):
                    incl[thread][fr] += c
    out = []
    for thread, t in total.most_common():
        if t < total.total() * 0.02:
            continue
        out.append(f"  thread {thread}: {t} samples ({100 * t / total.total():.0f}% of the node's)")
        out.append("    self:")
        out += [f"      {100 * c / t:5.1f}%  {fr}" for fr, c in own[thread].most_common(n)]
        out.append("    inclusive:")
        out += [f"      {100 * c / t:5.1f}%  {fr}" for fr, c in incl[thread].most_common(n)]
    return out


async def amain(args) -> int:
    ready = asyncio.Event()
    os.makedirs(args.out, exist_ok=True)
    root = tempfile.mkdtemp(prefix="raftbroker-profile-")
    cluster = Cluster(root)
    try:
        await asyncio.to_thread(cluster.start)
        li = await asyncio.to_thread(cluster.leader)
        await asyncio.to_thread(cluster.wait_healthy)
        fi = next(i for i in range(3) if i != li)
        task = asyncio.create_task(drive(cluster, args.workload, args.seconds, args.window, ready))
        await ready.wait()
        await asyncio.sleep(0.5)
        spies = []
        for role, i in (("leader", li), ("follower", fi)):
            pid = cluster.nodes[i].proc.pid
            base = os.path.join(args.out, f"{role}-{args.workload}")
            spies.append((role, base + ".txt", py_spy(pid, args.seconds - 1, base + ".txt", "raw")))
            spies.append((role, base + ".svg", py_spy(pid, args.seconds - 1, base + ".svg", "flamegraph")))
        done = await task
        for role, path, p in spies:
            _, err = await asyncio.to_thread(p.communicate)
            if p.returncode != 0:
                print(f"py-spy on the {role} failed: {err.decode()[-500:]}", file=sys.stderr)
        print(f"{args.workload}: {done:,} messages in {args.seconds:g} s ({done / args.seconds:,.0f}/s) "
              f"with py-spy sampling the leader and a follower")
        for role, path, _ in spies:
            if path.endswith(".txt") and os.path.exists(path):
                print(f"== {role} ({path}) ==")
                print("\n".join(top(path, args.top)))
    finally:
        await asyncio.to_thread(cluster.stop)
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["windowed", "sync", "fetch"], default="windowed")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "bench", "issue13", "profiles"))
    return asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
