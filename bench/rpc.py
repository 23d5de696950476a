"""End-to-end RPC benchmark: the client library against a real single-node server process.

    python bench/rpc.py                  # full run (20k messages per phase)
    python bench/rpc.py --quick          # short run (2k messages per phase)
    python bench/rpc.py --messages 50000

Starts `raftbroker server` (file storage, fsync on: the default) on a free
loopback port with a fresh temporary data directory, then measures, for
128-byte messages:

  * sync publish: sequential js.publish, rate and p50/p99 latency
  * windowed publish: publish_async with at most W publishes in flight (W = 256, 1024)
  * publish_batch: batches of 100, a few batches in flight
  * pull: fetch(100) + msg.ack() per message, ack_sync for the last one
  * push: js.subscribe with a callback (auto-acked), deliveries per second

and the server's peak RSS (VmHWM). The server is always stopped, also on
Ctrl-C or an error. Progress bars go to stderr, results to stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from api.client import connect  # noqa: E402
from jetstream.config import StreamConfig  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSG = b"x" * 128
PUB_BATCH = 100
FETCH_BATCH = 100


# == the server child ====================================================================
def free_port() -> int:
    # The server is told its port (rather than 0) so the leader address it
    # announces to clients is a real one.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux: the kernel sends the server SIGTERM if this process dies without
    # stopping it (SIGKILL, a crash), so no server outlives the bench.
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:
        pass


def vm_hwm_mb(pid: int | None) -> float:
    """A process's peak resident memory (VmHWM) in MiB; NaN when it cannot be read."""
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class ServerChild:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="raftbroker-rpc-bench-")
        self.proc: subprocess.Popen | None = None
        self.addr: str | None = None
        self.output: list[str] = []

    def start(self, timeout_s: float = 30.0) -> "ServerChild":
        addr = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "server", "--data", os.path.join(self.dir, "node"),
             "--listen", addr, "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # our Ctrl-C is not its Ctrl-C: we stop it ourselves
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if "clients on" in line:
                self.addr = addr
                # Keep draining its output so a chatty server never blocks on a full pipe.
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        raise RuntimeError("server did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            del self.output[:-200]

    def peak_rss_mb(self) -> float:
        return vm_hwm_mb(self.proc.pid)

    def stop(self) -> None:
        try:
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# == phases ===============================================================================
def bar(desc: str, total: int) -> tqdm:
    return tqdm(total=total, desc=desc, unit="msg", file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.25)


def pct(sorted_vals: list[float], p: float) -> float:
    return sorted_vals[min(len(sorted_vals) - 1, int(len(sorted_vals) * p))]


async def sync_publish(js, n: int) -> dict:
    lat = []
    with bar("sync publish", n) as pb:
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            await js.publish("bench.sync", MSG)
            lat.append(time.perf_counter() - t)
            if i % 100 == 99:
                pb.update(100)
        el = time.perf_counter() - t0
    lat.sort()
    return {"rate": n / el, "p50_ms": pct(lat, 0.50) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


async def windowed_publish(js, n: int, window: int) -> float:
    # At most `window` publishes in flight: a slot is taken before each publish_async
    # and given back by its future's done callback (cheaper than asyncio.wait over the
    # whole pending set each time one completes).
    slots = asyncio.Semaphore(window)
    pending: set = set()
    errors: list = []
    with bar(f"publish_async w={window}", n) as pb:
        def done(f):
            pending.discard(f)
            slots.release()
            if f.cancelled() or f.exception() is not None:
                errors.append(f)
            pb.n += 1
        t0 = time.perf_counter()
        for i in range(n):
            await slots.acquire()
            f = await js.publish_async(f"bench.w{window}", MSG)
            pending.add(f)
            f.add_done_callback(done)
            if errors:
                errors[0].result()   # surface the first error
            if i % 500 == 0:
                pb.refresh() if pb.n else None
        if pending:
            await asyncio.wait(set(pending))
        el = time.perf_counter() - t0
        if errors:
            errors[0].result()
        pb.update(0)
    return n / el


async def batch_publish(js, n: int, subject: str, in_flight: int = 4, progress: str | None = "publish_batch"
                        ) -> float:
    batches = [[(subject, MSG)] * min(PUB_BATCH, n - i) for i in range(0, n, PUB_BATCH)]
    sem = asyncio.Semaphore(in_flight)
    pb = bar(progress, n) if progress else None

    async def one(b):
        async with sem:
            for r in await js.publish_batch(b):
                if isinstance(r, Exception):
                    raise r
            if pb:
                pb.update(len(b))

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in batches))
        return n / (time.perf_counter() - t0)
    finally:
        if pb:
            pb.close()


async def pull_fetch_ack(js, n: int) -> float:
    await js.add_stream(StreamConfig(name="PULL", subjects=["pull.>"]))
    await batch_publish(js, n, "pull.data", progress=None)
    psub = await js.pull_subscribe("pull.>", durable="bench", stream="PULL")
    got = 0
    with bar("fetch+ack", n) as pb:
        t0 = time.perf_counter()
        while got < n:
            msgs = await psub.fetch(FETCH_BATCH, timeout=5)
            if not msgs:
                raise RuntimeError(f"fetch returned nothing after {got} of {n} messages")
            for m in msgs:
                got += 1
                if got == n:
                    await m.ack_sync()   # every ack before it is applied once this one is
                else:
                    await m.ack()
            pb.update(len(msgs))
        el = time.perf_counter() - t0
    info = await js.consumer_info("PULL", "bench")
    if info.num_ack_pending or info.num_pending:
        raise RuntimeError(f"pull consumer not drained: {info.num_ack_pending} ack pending, "
                           f"{info.num_pending} pending")
    return n / el


async def push_deliver(js, n: int) -> float:
    await js.add_stream(StreamConfig(name="PUSH", subjects=["push.>"]))
    await batch_publish(js, n, "push.data", progress=None)
    count = 0
    done = asyncio.Event()
    pb = bar("push", n)

    async def cb(msg):
        nonlocal count
        count += 1
        if count % 100 == 0:
            pb.update(100)
        if count >= n:
            done.set()

    try:
        t0 = time.perf_counter()
        sub = await js.subscribe("push.>", stream="PUSH", durable="pushbench", cb=cb)
        await asyncio.wait_for(done.wait(), timeout=max(60.0, n / 500))
        el = time.perf_counter() - t0
        await sub.unsubscribe()
    finally:
        pb.close()
    return n / el


async def run(args, server: ServerChild) -> None:
    n = args.messages
    n_sync = min(n, args.sync_messages)
    nc = await connect([server.addr], timeout=30)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"]))
        for _ in range(200):      # warm-up: connections, route cache, code paths
            await js.publish("bench.warm", MSG)
        print(f"raftbroker RPC bench: {len(MSG)}-byte messages, {n} per phase ({n_sync} sync), "
              f"server {server.addr} (file storage, sync on), {os.cpu_count()} cpus, "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        r = await sync_publish(js, n_sync)
        print(f"sync publish          {r['rate']:>9,.0f} msgs/s   p50 {r['p50_ms']:.3f} ms   "
              f"p99 {r['p99_ms']:.3f} ms", flush=True)
        for w in (256, 1024):
            print(f"publish_async w={w:<5} {await windowed_publish(js, n, w):>9,.0f} msgs/s", flush=True)
        print(f"publish_batch 100x4   {await batch_publish(js, n, 'bench.batch'):>9,.0f} msgs/s", flush=True)
        print(f"pull fetch(100)+ack   {await pull_fetch_ack(js, n):>9,.0f} msgs/s", flush=True)
        print(f"push delivery+ack     {await push_deliver(js, n):>9,.0f} msgs/s", flush=True)
        print(f"server peak RSS       {server.peak_rss_mb():>9,.1f} MiB (VmHWM)", flush=True)
        # Other processes on the machine skew every figure above: say how busy it was.
        print(f"load average at end   {os.getloadavg()[0]:>9.2f}", flush=True)
    finally:
        await nc.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (2k messages per phase)")
    ap.add_argument("--messages", type=int, default=None, help="messages per phase (default 20000)")
    ap.add_argument("--sync-messages", type=int, default=5000, help="cap on sequential publishes (default 5000)")
    args = ap.parse_args(argv)
    if args.messages is None:
        args.messages = 2000 if args.quick else 20000
    if args.quick:
        args.sync_messages = min(args.sync_messages, 1000)
    def terminate(signum, frame):
        raise KeyboardInterrupt
    # Stop the server on SIGTERM as on Ctrl-C; and take Ctrl-C even when started with
    # SIGINT ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = ServerChild()
    try:
        server.start()
        asyncio.run(run(args, server))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
