"""Mirror bench (issue 10): how fast a mirror copies its origin, how far it lags behind a
fixed publish rate, and what the copying costs the leader.

    python bench/mirror.py                  # 20,000-message backlog, 2,000 msgs/s for 10 s
    python bench/mirror.py --quick          # 5,000-message backlog, 1,000 msgs/s for 3 s (~30 s)
    python bench/mirror.py --msgs 50000 --rate 3000 --seconds 20 --json

One 3-node raftbroker cluster of real processes (chaos/cluster.py's Cluster, as
bench/cluster.py starts it: cluster secret on, fsync before ack), 128-byte messages to a
stream ORDERS (orders.>), and a same-cluster mirror ORDERS_MIRROR of it, as in the seeds:

  1. windowed publish: --msgs messages with at most --window publish_async in flight;
     acknowledged publishes per second (the cluster's own publish rate).
  2. CPU without a pipeline: --rate msgs/s, paced, for --seconds; each node's CPU.
  3. backlog copy: the mirror is created and the time until it holds everything ORDERS
     holds is measured: copy throughput in msgs/s, and its ratio to (1).
  4. steady state: --rate msgs/s, paced, for --seconds while the mirror copies; every
     --sample s the lag (origin last_seq - mirror last_seq, and the mirror's own `lag`);
     after the last ack, the time until the mirror holds the origin's last sequence.
     Each node's CPU over the same span as (2), naming the leader and the node that runs
     the pipeline (the leader hands pipelines to a follower, so the leader should pay
     little for one: the comparison of (2) and (4) is the point).

Goals (issue 10): copy throughput >= the windowed publish rate; lag back to 0 within 2 s
after publishing stops. Both are printed as PASS/MISS. The machines are shared, so each
CPU span also shows what other processes used ("foreign"). Exit status 1 when the mirror
did not end with every message of its origin.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
# bench/cluster.py would shadow the `cluster` package: keep bench/ off the import path
# (Python puts a script's directory first) and load the bench helpers by their path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BENCH]
sys.path.insert(0, REPO)
sys.path.insert(1, os.path.join(REPO, "tests"))


def _load(name: str, filename: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, filename))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_bc = _load("bench_cluster", "cluster.py")        # the cluster bench: CPU meter, windowed publish
CpuMeter, windowed_async, wait_quiet, say, short = (_bc.CpuMeter, _bc.windowed_async, _bc.wait_quiet,
                                                     _bc.say, _bc.short)
MSG = _bc.MSG
from cluster_util import Cluster  # noqa: E402  (tests/cluster_util.py -> chaos/cluster.py)

ORIGIN, MIRROR, SUBJECT = "ORDERS", "ORDERS_MIRROR", "orders.x"
GOAL_LAG_ZERO_S = 2.0


# == results ================================================================================
@dataclass
class Publish:
    acked: int
    seconds: float
    rate: float
    errors: list[str] = field(default_factory=list)


@dataclass
class NodeCpu:
    name: str
    role: str            # "leader", "pipeline" (runs it), "follower"
    pct: float           # % of one core over the span


@dataclass
class CpuSpan:
    seconds: float
    nodes: list[NodeCpu]
    client_pct: float
    foreign_pct: float

    def of(self, role: str) -> float:
        return next((n.pct for n in self.nodes if n.role == role), float("nan"))


@dataclass
class Backlog:
    messages: int            # what the origin held when the mirror was created
    first_copy_s: float      # creation -> first message in the mirror (pipeline start-up)
    total_s: float           # creation -> every message in the mirror
    rate: float              # messages / (total_s - first_copy_s): the copying itself
    rate_incl_startup: float  # messages / total_s
    runner: str
    cpu: CpuSpan | None = None


@dataclass
class Sample:
    t: float                 # s since publishing started
    origin_last: int
    mirror_last: int
    reported_lag: int | None  # the mirror's own `lag` (its pipeline's last num_pending)

    @property
    def seq_lag(self) -> int:
        return self.origin_last - self.mirror_last


@dataclass
class Steady:
    publish: Publish
    samples: list[Sample]
    lag_zero_s: float | None          # last ack -> mirror holds the origin's last sequence
    reported_lag_zero_s: float | None  # last ack -> the mirror also reports lag 0
    max_seq_lag: int
    cpu: CpuSpan | None = None


@dataclass
class Result:
    windowed: Publish
    cpu_without: CpuSpan
    backlog: Backlog
    steady: Steady
    origin_messages: int
    mirror_messages: int
    leader: str
    runner: str


# == measuring ==============================================================================
async def paced_publish(js, rate: float, seconds: float, window: int) -> Publish:
    """publish_async at `rate` msgs/s for `seconds` (at most `window` in flight): each tick
    sends what is due by the clock, so a slow tick is made up and the mean rate holds."""
    slots = asyncio.Semaphore(window)
    pending: set = set()
    errors: list[str] = []
    acked = sent = 0
    total = int(rate * seconds)

    def done(f):
        nonlocal acked
        pending.discard(f)
        slots.release()
        if f.cancelled() or f.exception() is not None:
            errors.append("cancelled" if f.cancelled() else short(f.exception()))
        else:
            acked += 1

    t0 = time.perf_counter()
    while sent < total:
        due = min(total, int(rate * (time.perf_counter() - t0)) + 1)
        while sent < due:
            await slots.acquire()
            f = await js.publish_async(SUBJECT, MSG)
            pending.add(f)
            f.add_done_callback(done)
            sent += 1
        await asyncio.sleep(0.005)
    if pending:
        await asyncio.wait(set(pending), timeout=30)
    el = time.perf_counter() - t0
    return Publish(acked, el, acked / el, errors)


async def windowed_n(js, n: int, window: int) -> Publish:
    """Exactly n publishes, at most `window` in flight (bench/cluster.py's windowed_async)."""
    r = await windowed_async(lambda: js.publish_async(SUBJECT, MSG), 1e9, window,
                             f"windowed publish w={window}", count=n)
    return Publish(r["acked"], r["seconds"], r["rate"], r["errors"])


async def last_seq(js, stream: str) -> tuple[int, int, int | None]:
    """(last_seq, messages, the mirror's reported lag or None)."""
    si = await js.stream_info(stream)
    lag = si.mirror.lag if getattr(si, "mirror", None) else None
    return si.state.last_seq, si.state.messages, lag


async def sample_lag(js, t0: float, every: float, stop: asyncio.Event, out: list[Sample]) -> None:
    while not stop.is_set():
        (o, _, _), (m, _, lag) = await asyncio.gather(last_seq(js, ORIGIN), last_seq(js, MIRROR))
        out.append(Sample(time.perf_counter() - t0, o, m, lag))
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass


async def until_caught_up(js, target: int, t_from: float, give_up_s: float, out: list[Sample],
                          t0: float) -> tuple[float | None, float | None]:
    """Poll every 50 ms until the mirror holds sequence `target` (and then until it reports
    lag 0); seconds from t_from, or None on giving up."""
    seq_at = lag_at = None
    deadline = time.perf_counter() + give_up_s
    while time.perf_counter() < deadline:
        m, _, lag = await last_seq(js, MIRROR)
        now = time.perf_counter()
        if seq_at is None and m >= target:
            seq_at = now - t_from
            out.append(Sample(now - t0, target, m, lag))
        if seq_at is not None and lag == 0:
            lag_at = now - t_from
            return seq_at, lag_at
        await asyncio.sleep(0.05)
    return seq_at, lag_at


class NodeCpuMeter:
    """bench/cluster.py's CpuMeter over the cluster's nodes, split per node and labelled
    with the role each node has (it keeps each pid's start and last value)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.meter = CpuMeter()

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.cluster.nodes if n.alive]

    def start(self) -> None:
        self.meter.start(self.pids())

    def stop(self, roles: dict[str, str]) -> CpuSpan:
        totals = self.meter.stop(self.pids())
        wall = time.perf_counter() - self.meter.t0
        nodes = [NodeCpu(n.name, roles.get(n.name, "follower"),
                         100 * (self.meter.last.get(n.proc.pid, 0.0) - self.meter.base.get(n.proc.pid, 0.0)) / wall)
                 for n in self.cluster.nodes]
        return CpuSpan(wall, nodes, totals["client_pct"], totals["foreign_pct"])


async def cluster_status(nc) -> dict:
    return await nc._request("cluster.status", {}, 5)


async def mirror_runner(nc, give_up_s: float = 30.0) -> str:
    """The node that runs the mirror's pipeline, once the leader has chosen one."""
    deadline = time.monotonic() + give_up_s
    while time.monotonic() < deadline:
        for p in (await cluster_status(nc))["pipelines"]:
            if p["stream"] == MIRROR and p.get("runner"):
                return p["runner"]
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no runner for {MIRROR} within {give_up_s} s")


def roles(leader: str, runner: str = "") -> dict[str, str]:
    r = {leader: "leader"}
    if runner:
        r[runner] = "leader+pipeline" if runner == leader else "pipeline"
    return r


# == phases ================================================================================
async def copy_backlog(js, nc, meter: NodeCpuMeter, leader: str, give_up_s: float) -> Backlog:
    _, backlog, _ = await last_seq(js, ORIGIN)
    meter.start()
    t0 = time.perf_counter()
    await js.add_stream(name=MIRROR, mirror={"name": ORIGIN})
    runner = await mirror_runner(nc)
    first = None
    while True:
        _, held, _ = await last_seq(js, MIRROR)
        now = time.perf_counter()
        if held and first is None:
            first = now - t0
        if held >= backlog:
            break
        if now - t0 > give_up_s:
            raise TimeoutError(f"the mirror held {held} of {backlog} after {give_up_s} s")
        await asyncio.sleep(0.05)
    total = time.perf_counter() - t0
    cpu = meter.stop(roles(leader, runner))
    first = first if first is not None else total
    copying = max(total - first, 1e-3)
    return Backlog(backlog, first, total, backlog / copying, backlog / total, runner, cpu)


async def steady_state(js, js_sample, meter: NodeCpuMeter, args, leader: str, runner: str) -> Steady:
    samples: list[Sample] = []
    stop = asyncio.Event()
    meter.start()
    t0 = time.perf_counter()
    sampler = asyncio.get_running_loop().create_task(sample_lag(js_sample, t0, args.sample, stop, samples))
    pub = await paced_publish(js, args.rate, args.seconds, args.window)
    cpu = meter.stop(roles(leader, runner))
    t_last_ack = time.perf_counter()
    stop.set()
    await sampler
    target, _, _ = await last_seq(js, ORIGIN)
    seq_zero, lag_zero = await until_caught_up(js_sample, target, t_last_ack, args.give_up, samples, t0)
    max_lag = max((s.seq_lag for s in samples), default=0)
    return Steady(pub, samples, seq_zero, lag_zero, max_lag, cpu)


async def run(args, cluster: Cluster) -> Result:
    from api.client import connect
    nc = await connect(cluster.clients(), timeout=30)
    nc_sample = await connect(cluster.clients(), timeout=30)   # lag probes beside the publisher
    try:
        js, js_sample = nc.jetstream(), nc_sample.jetstream()
        await js.add_stream(name=ORIGIN, subjects=["orders.>"])
        leader = (await cluster_status(nc))["leader"]
        meter = NodeCpuMeter(cluster)
        say(f"cluster up: leader {leader}; {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")

        windowed = await windowed_n(js, args.msgs, args.window)
        say(f"[1] windowed publish: {windowed.acked:,} acked in {windowed.seconds:.2f} s = {windowed.rate:,.0f} msgs/s")

        await quiet(args, meter)
        meter.start()
        base = await paced_publish(js, args.rate, args.seconds, args.window)
        cpu_without = meter.stop(roles(leader))
        say(f"[2] no mirror: {base.acked:,} acked at {base.rate:,.0f} msgs/s (asked {args.rate:g}); "
            + cpu_line(cpu_without))

        backlog = await copy_backlog(js, nc, meter, leader, args.give_up)
        say(f"[3] backlog copy: {backlog.messages:,} msgs in {backlog.total_s:.2f} s (first copy after "
            f"{backlog.first_copy_s:.2f} s) = {backlog.rate:,.0f} msgs/s copying, runner {backlog.runner}")

        await quiet(args, meter)
        steady = await steady_state(js, js_sample, meter, args, leader, backlog.runner)
        say(f"[4] steady state: {steady.publish.acked:,} acked at {steady.publish.rate:,.0f} msgs/s; "
            + cpu_line(steady.cpu))

        leader_end = (await cluster_status(nc))["leader"]
        if leader_end != leader:
            say(f"!! the leader changed during the bench: {leader} -> {leader_end}")
        _, origin_n, _ = await last_seq(js, ORIGIN)
        _, mirror_n, _ = await last_seq(js, MIRROR)
        return Result(windowed, cpu_without, backlog, steady, origin_n, mirror_n, leader, backlog.runner)
    finally:
        await nc_sample.close()
        await nc.close()


async def quiet(args, meter: NodeCpuMeter) -> None:
    """The CPU spans are compared with each other: start each when other processes on this
    shared machine are quiet, if they get quiet within --quiet-wait s."""
    if args.quiet_wait > 0:
        waited, foreign = await asyncio.to_thread(wait_quiet, meter.pids(), args.quiet_wait, args.quiet_pct)
        if waited > 1.5:
            say(f"    (waited {waited:.0f} s for other processes to quieten; {foreign:.0f}% of a core then)")


# == printing ==============================================================================
def cpu_line(c: CpuSpan) -> str:
    nodes = ", ".join(f"{n.name} ({n.role}) {n.pct:.0f}%" for n in c.nodes)
    return f"CPU over {c.seconds:.1f} s: {nodes}; client {c.client_pct:.0f}%, foreign {c.foreign_pct:.0f}%"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_samples(samples: list[Sample]) -> None:
    say("lag over time (t from the start of the steady-state publishing):")
    say(f"  {'t (s)':>6}  {'origin last':>11}  {'mirror last':>11}  {'seq lag':>7}  {'reported lag':>12}")
    for s in samples:
        rl = "-" if s.reported_lag is None else f"{s.reported_lag:,}"
        say(f"  {s.t:6.2f}  {s.origin_last:11,}  {s.mirror_last:11,}  {s.seq_lag:7,}  {rl:>12}")


def print_cpu_table(without: CpuSpan, with_: CpuSpan, backlog: CpuSpan | None) -> None:
    say("CPU, % of one core (same paced publishing in both columns):")
    cols = [("no mirror", without), ("mirror running", with_)] + ([("backlog copy", backlog)] if backlog else [])
    say(f"  {'node':<6} {'role with mirror':<17}" + "".join(f"{h:>16}" for h, _ in cols))
    for i, n in enumerate(with_.nodes):
        say(f"  {n.name:<6} {n.role:<17}" + "".join(f"{c.nodes[i].pct:>15.0f}%" for _, c in cols))
    say(f"  {'client':<24}" + "".join(f"{c.client_pct:>15.0f}%" for _, c in cols))
    say(f"  {'foreign':<24}" + "".join(f"{c.foreign_pct:>15.0f}%" for _, c in cols))


def report(r: Result, args) -> None:
    s, b, w = r.steady, r.backlog, r.windowed
    say()
    print_samples(s.samples)
    say()
    print_cpu_table(r.cpu_without, s.cpu, b.cpu)
    ratio = b.rate / w.rate if w.rate else float("nan")
    lz = f"{s.lag_zero_s:.2f} s" if s.lag_zero_s is not None else f"not within {args.give_up:g} s"
    rz = f"{s.reported_lag_zero_s:.2f} s" if s.reported_lag_zero_s is not None else "never"
    lead_wo, lead_w = r.cpu_without.of("leader"), s.cpu.of("leader")
    say()
    say(f"== mirror bench: {len(MSG)}-byte messages, leader {r.leader}, pipeline on {r.runner} ==")
    say(f"  windowed publish (w={args.window})   {w.rate:>9,.0f} msgs/s  ({w.acked:,} msgs)")
    say(f"  backlog copy throughput       {b.rate:>9,.0f} msgs/s  ({b.messages:,} msgs in {b.total_s - b.first_copy_s:.2f} s"
        f" after a {b.first_copy_s:.2f} s start; {b.rate_incl_startup:,.0f} msgs/s with it)")
    say(f"  copy / windowed publish       {ratio:>9.2f}x        goal >= 1x: {verdict(ratio >= 1)}")
    say(f"  steady publish (paced)        {s.publish.rate:>9,.0f} msgs/s  (asked {args.rate:g} for {args.seconds:g} s;"
        f" {len(s.publish.errors)} errors)")
    say(f"  max lag while publishing      {s.max_seq_lag:>9,} msgs")
    say(f"  lag 0 after the last ack      {lz:>12}     goal <= {GOAL_LAG_ZERO_S:g} s: "
        f"{verdict(s.lag_zero_s is not None and s.lag_zero_s <= GOAL_LAG_ZERO_S)}  (reported lag 0 after {rz})")
    say(f"  leader CPU                    {lead_wo:>8.0f}% without, {lead_w:.0f}% with the mirror "
        f"(pipeline node {r.cpu_without.nodes[_index(r, r.runner)].pct:.0f}% -> {s.cpu.of('pipeline'):.0f}%)")
    say(f"  origin {r.origin_messages:,} msgs, mirror {r.mirror_messages:,} msgs: "
        f"{'complete' if r.mirror_messages == r.origin_messages else 'INCOMPLETE'}")


def _index(r: Result, name: str) -> int:
    return next(i for i, n in enumerate(r.cpu_without.nodes) if n.name == name)


# == main ==================================================================================
def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5,000-message backlog, 1,000 msgs/s for 3 s")
    ap.add_argument("--msgs", type=int, default=None, help="windowed publishes before the mirror (default 20000)")
    ap.add_argument("--rate", type=float, default=None, help="paced publish rate, msgs/s (default 2000)")
    ap.add_argument("--seconds", type=float, default=None, help="paced publishing per span (default 10)")
    ap.add_argument("--window", type=int, default=1000, help="publishes in flight at most (default 1000)")
    ap.add_argument("--sample", type=float, default=0.5, help="lag sample period, s (default 0.5)")
    ap.add_argument("--give-up", type=float, default=60.0, help="a copy that takes longer fails (s)")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="before each CPU span, wait up to this many s for other processes to quieten "
                         "(default 10; 0 with --quick)")
    ap.add_argument("--quiet-pct", type=float, default=25.0, help="'quiet': under this %% of one core")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON line at the end")
    ap.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = ap.parse_args(argv)
    q = args.quick
    args.msgs = args.msgs if args.msgs is not None else (5000 if q else 20000)
    args.rate = args.rate if args.rate is not None else (1000.0 if q else 2000.0)
    args.seconds = args.seconds if args.seconds is not None else (3.0 if q else 10.0)
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if q else 10.0)
    return args


def main(argv=None) -> int:
    args = parse(argv)

    def terminate(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
    root = tempfile.mkdtemp(prefix="raftbroker-mirror-bench-")
    cluster = Cluster(os.path.join(root, "c"))
    say(f"mirror bench: {args.msgs:,}-message backlog (w={args.window}), {args.rate:g} msgs/s paced for "
        f"{args.seconds:g} s, lag sampled every {args.sample:g} s; data in {root}")
    try:
        t = time.perf_counter()
        cluster.start()
        cluster.wait_named()
        say(f"3 nodes started in {time.perf_counter() - t:.1f} s")
        r = asyncio.run(run(args, cluster))
        report(r, args)
        if args.json:
            print(json.dumps(asdict(r)), flush=True)
        return 0 if r.mirror_messages == r.origin_messages else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        cluster.stop()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
