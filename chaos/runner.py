"""A chaos run: private network, cluster, workload, faults, final reads, verdict, report.

`run` (the outer process, in the root namespace) builds the network, proves
its partitions work, and runs `inner` inside the clients' namespace, from
where every node is reached at its own address. Whatever happens, the outer
process tears the network down, stops any node process left, and checks that
nothing it made remains.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional

from . import history as H
from .checker import MirrorVerdict
from .delay import DelayLinks
from .mirror import BACKLOG_MIRROR, BACKLOG_STREAM, MIRROR_STREAM, ORIGIN_STREAM, ORIGIN_SUBJECT, RUNNER_PARTITION
from .nemesis import FaultFailed, FaultUnavailable, Nemesis, expand

PROFILES = {
    "ci": dict(nodes=3, duration=100.0, faults=["kill", "pause", "partition", "power-cut"]),
    "long": dict(nodes=3, duration=660.0, faults=["kill", "pause", "partition", "loss", "power-cut", "wipe",
                                                   "membership", "clock", "corrupt", "delay"]),
}


@dataclass
class RunOptions:
    nodes: int = 3
    duration: float = 120.0
    faults: list[str] = field(default_factory=lambda: ["kill", "pause", "partition", "power-cut"])
    seed: int = 42
    out: str = "report"
    broken: str = ""                  # test-only: RAFTBROKER_TEST_BROKEN for every node
    hold_s: tuple[float, float] = (3.0, 6.0)
    quiet_s: tuple[float, float] = (2.0, 4.0)
    snapshot_entries: int = 2000     # often enough that wiped nodes rejoin through snapshots
    recover_s: float = 90.0
    workload: str = "default"        # "mirror": a second cluster mirrors the first (see chaos/mirror.py)
    mirror_backlog: int = 0          # mirror workload: a second origin stream of this many messages, mirrored too


WORKLOADS = ("default", "mirror")
# The mirror run's nemesis works one cluster at a time; delay proxies serve one cluster only.
MIRROR_FAULTS = ("kill", "pause", "partition", "power-cut", "wipe", "membership", "clock", "corrupt", "none")


def _log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# == outer: root namespace ==============================================================
def run(opts: RunOptions) -> int:
    from .net import Network, NetError, leftovers
    _check_options(opts)                      # bad options fail before anything is built
    os.makedirs(opts.out, exist_ok=True)
    run_id = f"{random.Random().randrange(16**4):04x}"
    clusters = cluster_names(opts)
    names = [n for ns in clusters.values() for n in ns]
    work = tempfile.mkdtemp(prefix=f"raftbroker-chaos-{run_id}-")
    rc = 2
    inner = None
    try:
        with Network(run_id, names) as net:
            _log(f"network rb-{run_id}: " + ", ".join(f"{n}={net.addr(n)}" for n in names) + f", clients={net.addr('c')}")
            report = net.self_test()
            with open(os.path.join(opts.out, "network-selftest.txt"), "w") as f:
                f.write(str(report) + "\n")
            _log("network self-test passed: partitions block exactly what they should")
            spec = {"opts": dataclasses.asdict(opts), "work": work, "run_id": run_id, "names": names,
                    "clusters": clusters, "hosts": {n: net.addr(n) for n in names},
                    "prefixes": {n: net.exec_prefix(n) for n in names}}
            inner = subprocess.Popen([*net.exec_prefix("c"), sys.executable, "-m", "chaos", "_inner", json.dumps(spec)],
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

            def forward(signum, _frame):
                if inner.poll() is None:
                    inner.send_signal(signal.SIGTERM)
            old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                rc = inner.wait()
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
    except NetError as e:
        _log(f"cannot build the test network: {e}")
        rc = 2
    finally:
        if inner is not None and inner.poll() is None:
            inner.kill()
            inner.wait()
        stray = _stray_processes(work)
        for pid in stray:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
        left = leftovers(f"rb-{run_id}")
        if stray or left:
            _log(f"LEFT BEHIND: processes {stray}, network {left}")
            rc = rc or 3
        else:
            _log("teardown complete: no process, namespace or rule left behind")
    return rc


def _check_options(opts: RunOptions) -> None:
    expand(opts.faults)                       # unknown names raise ValueError
    if opts.workload not in WORKLOADS:
        raise ValueError(f"unknown workload {opts.workload!r}; workloads: {', '.join(WORKLOADS)}")
    if opts.mirror_backlog and opts.workload != "mirror":
        raise ValueError("--mirror-backlog needs --workload mirror")
    if opts.workload == "mirror":
        allowed = set(expand(list(MIRROR_FAULTS)))
        bad = [f for f in opts.faults if not set(expand([f])) <= allowed]
        if bad:
            raise ValueError(f"the mirror workload cannot inject {', '.join(bad)}; faults: {', '.join(MIRROR_FAULTS)}")


def cluster_names(opts: RunOptions) -> dict[str, list[str]]:
    """Each cluster of the run and its nodes' names. Two clusters are named apart
    (o1.. and m1..) so reports and fault lines say which cluster a node is in."""
    if opts.workload == "mirror":
        return {"origin": [f"o{i + 1}" for i in range(opts.nodes)], "mirror": [f"m{i + 1}" for i in range(opts.nodes)]}
    return {"origin": [f"n{i + 1}" for i in range(opts.nodes)]}


def _stray_processes(marker: str) -> list[int]:
    """Our node processes still alive: their command line names the run's work dir."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            continue
    return out


# == inner: the clients' namespace =======================================================
def inner(spec: dict) -> int:
    opts = RunOptions(**{k: tuple(v) if k in ("hold_s", "quiet_s") else v for k, v in spec["opts"].items()})
    return asyncio.run(_inner(opts, spec))


@dataclass
class RunResult:
    """What a run found, for its report."""
    final: H.FinalState = field(default_factory=H.FinalState)
    final_read: bool = False
    problems: list[str] = field(default_factory=list)
    mirrors: list[MirrorVerdict] = field(default_factory=list)   # the mirror workload's comparisons
    copied_by_end: dict[str, int] = field(default_factory=dict)   # each mirror's last seq when the faults stopped


@dataclass
class Side:
    """Where a fault goes: a cluster's nemesis, or the mirror's runner partition."""
    inject: Callable[[str], Awaitable]
    variants: Callable[[str], list[str]] = lambda fam: expand([fam])


def _clusters(opts: RunOptions, spec: dict) -> dict[str, "Cluster"]:
    """One Cluster per group of names; each has its own --peers, so Raft stays inside it."""
    from .cluster import Cluster
    env = {"RAFTBROKER_TEST_POWER_CUT": "1"}
    if opts.broken:
        env["RAFTBROKER_TEST_BROKEN"] = opts.broken
    out = {}
    for label, names in spec["clusters"].items():
        c = Cluster(os.path.join(spec["work"], label), n=len(names), names=names,
                    hosts=[spec["hosts"][n] for n in names], exec_prefixes=[spec["prefixes"][n] for n in names],
                    extra=("--snapshot-entries", str(opts.snapshot_entries)), env=env)
        for node in c.nodes:
            node.env["RAFTBROKER_TEST_CLOCK_OFFSET_FILE"] = os.path.join(spec["work"], f"{node.name}.clock")
            with open(node.env["RAFTBROKER_TEST_CLOCK_OFFSET_FILE"], "w") as f:
                f.write("0")
        out[label] = c
    return out


def _schedule(opts: RunOptions, rng: random.Random, sides: dict[str, Side]) -> Callable[[], list[tuple[Side, str]]]:
    """One round of faults: every family once, in an order the seed shuffles. With two
    clusters the families alternate between them (the seed picks which starts), and
    the runner partition opens every round, so even a short run has it."""
    clusters = [sides[k] for k in ("origin", "mirror") if k in sides]

    def one_round() -> list[tuple[Side, str]]:
        order = list(opts.faults)
        rng.shuffle(order)
        if len(clusters) == 1:
            return [(clusters[0], fam) for fam in order]
        first = rng.randrange(len(clusters))
        return [(sides["runner"], RUNNER_PARTITION)] + [
            (clusters[(first + k) % len(clusters)], fam) for k, fam in enumerate(order)]
    return one_round


async def _inner(opts: RunOptions, spec: dict) -> int:
    from .mirror import MirrorSide, RunnerPartition
    from .workload import Workload, WorkloadConfig

    t0 = time.monotonic()
    now = lambda: time.monotonic() - t0  # noqa: E731
    ops: list[H.Op] = []
    clusters = _clusters(opts, spec)
    origin = clusters["origin"]
    mirror = (MirrorSide([n.client for n in clusters["mirror"].nodes], [n.client for n in origin.nodes],
                         [n.name for n in origin.nodes], backlog=opts.mirror_backlog)
              if "mirror" in clusters else None)
    clock_files = {n.name: n.env["RAFTBROKER_TEST_CLOCK_OFFSET_FILE"] for c in clusters.values() for n in c.nodes}
    rng = random.Random(opts.seed)
    res = RunResult()
    problems = res.problems
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):     # Ctrl-C reaches the whole process group
        loop.add_signal_handler(sig, stop.set)
    wl = None
    delay = DelayLinks(_network(spec), origin, spec["work"]) if "delay" in expand(opts.faults) else None
    cfg = WorkloadConfig(stream=ORIGIN_STREAM, subject=ORIGIN_SUBJECT) if mirror else WorkloadConfig()
    try:
        if delay is not None:
            try:
                await asyncio.to_thread(delay.start)
            except RuntimeError as e:       # NetError too
                raise FaultUnavailable(f"delay proxies: {e}") from e
        for c in clusters.values():
            await asyncio.to_thread(c.start)
            await asyncio.to_thread(c.leader, 60.0)
        _log(f"{' and '.join(f'{k} cluster ({opts.nodes} nodes)' for k in clusters)} up; workload "
             f"{opts.workload} starts; faults: {', '.join(opts.faults)}; seed {opts.seed}")
        wl = Workload([n.client for n in origin.nodes], cfg, t0, ops.append)
        await wl.setup()
        if mirror:
            await mirror.setup()
        await wl.start()
        net = _network(spec)
        sides = {k: Side(Nemesis(c, net, rng, clock_files, _log, delay).inject) for k, c in clusters.items()}
        if mirror:
            sides["runner"] = Side(RunnerPartition(mirror, net, _log).inject, lambda fam: [fam])
        await _fault_loop(opts, rng, _schedule(opts, rng, sides), clusters, now, ops, problems, stop)
        await wl.halt()
        if mirror:
            # Evidence that the copy ran under the faults, not only after them.
            res.copied_by_end = {name: await mirror.last_seq(name) for name in mirror.mirrors}
            _log(f"faults over: the mirrors hold up to {_seqs(res.copied_by_end)}")
        _log("faults over: healing everything and waiting for the clusters")
        await _heal_all(clusters, spec)
        if stop.is_set():
            raise _Interrupted()
        readable = True
        for label, c in clusters.items():
            try:
                await asyncio.to_thread(c.wait_healthy, None, opts.recover_s)
            except Exception as e:  # noqa: BLE001
                problems.append(f"{label} cluster did not recover after the faults: {e}")
                # A node that never came back is a failure of its own; the history can still
                # be checked against what a working majority holds (the lagging node's digest
                # then shows as divergent).
                readable = readable and await asyncio.to_thread(_has_leader, c)
        final = res.final
        if readable:
            try:
                final.consumers = await wl.drain(stall_s=max(60.0, 2 * cfg.ack_wait_s))
                if mirror:
                    res.mirrors = await _read_mirrors(opts, wl, mirror, clusters["mirror"], final, problems)
                else:
                    final.stream = await wl.read_stream()
                # Clients gone, nothing changes the state any more (no fetches waiting, no push
                # loops touching consumers): every node must then hold the same.
                await wl.close()
                wl = None
                final.digests = await _digests(origin)
                res.final_read = True
            except Exception as e:  # noqa: BLE001 - reported as the run's failure, with the logs
                problems.append(f"the final state could not be read: {type(e).__name__}: {e}")
    except (FaultUnavailable, FaultFailed) as e:
        problems.append(f"{type(e).__name__}: {e}")
    except _Interrupted:
        pass                        # "interrupted" is reported below
    finally:
        if wl is not None:
            await wl.close()
        for c in clusters.values():
            await asyncio.to_thread(c.stop)
        if delay is not None:
            await asyncio.to_thread(delay.stop)
    if stop.is_set():
        problems.append("interrupted")
    return _report(opts, clusters, ops, res)


def _seqs(by_stream: dict[str, int]) -> str:
    return ", ".join(f"{name} seq {seq}" for name, seq in by_stream.items())


async def _read_mirrors(opts, wl, mirror, mirror_cluster, final: H.FinalState, problems: list[str]):
    """Per mirror: the full origin stream (the workload's values also feed the ordinary
    checker), then, once the mirror has caught up (bounded), the full mirror; the
    comparison of the two."""
    from .checker import check_mirror
    from .mirror import stored_row
    verdicts = []
    for name, origin_name in mirror.mirrors.items():
        if origin_name == ORIGIN_STREAM:
            origin = await wl.read_stream(stored_row)
            final.stream = [(m.seq, m.data.decode()) for m in origin]
        else:
            origin = await mirror.read(origin_name, origin=True)
        last = origin[-1].seq if origin else 0
        if not await mirror.catch_up(name, last, opts.recover_s):
            problems.append(f"{name} did not reach origin seq {last} within {opts.recover_s:.0f}s")
        v = check_mirror(origin, await mirror.read(name), "mirror" if name == MIRROR_STREAM else f"mirror {name}")
        _log(v.line())
        verdicts.append(v)
    try:
        await asyncio.to_thread(mirror_cluster.wait_same_digest, None, 60.0)
    except AssertionError as e:
        problems.append(f"the mirror cluster's replicas differ: {str(e)[:500]}")
    return verdicts


def _report(opts, clusters, ops, res: RunResult) -> int:
    """Node logs, history, summary.txt (verdict first), timeline; the exit code."""
    from .checker import check
    from .report import timeline, write_summary
    final = res.final
    os.makedirs(os.path.join(opts.out, "nodes"), exist_ok=True)
    for c in clusters.values():
        for node in c.nodes:
            if os.path.exists(node.log_path):
                shutil.copy(node.log_path, os.path.join(opts.out, "nodes", f"{node.name}.log"))
    H.write(os.path.join(opts.out, "history.jsonl"), ops)
    # Push deliveries have no request to time: a redelivery sent just before an ack
    # was confirmed may arrive a moment after it.
    verdict = check(ops, final, deliver_slack_s=1.0)
    text = _verdict_text(verdict, res)
    header = [f"nodes {opts.nodes}, duration {opts.duration:.0f}s, seed {opts.seed}, faults {','.join(opts.faults)}"
              + (f", workload {opts.workload}" if opts.workload != "default" else "")
              + (f", DELIBERATELY BROKEN BUILD: {opts.broken}" if opts.broken else ""),
              f"operations {len(ops)}, acknowledged publishes {sum(1 for o in ops if o.kind == 'publish' and o.outcome == H.OK)}, "
              f"final stream {len(final.stream)} messages"]
    if len(clusters) > 1:
        header.append("clusters: " + "; ".join(f"{k} {','.join(n.name for n in c.nodes)}" for k, c in clusters.items())
                      + f"; {MIRROR_STREAM} on the mirror cluster mirrors {ORIGIN_STREAM} of the origin"
                      + (f", {BACKLOG_MIRROR} mirrors {BACKLOG_STREAM} ({opts.mirror_backlog} messages "
                         "published before the faults)" if opts.mirror_backlog else "")
                      + f"; when the faults stopped the mirrors held up to {_seqs(res.copied_by_end)}")
    path = write_summary(opts.out, text, header)
    try:
        timeline(ops, os.path.join(opts.out, "timeline.png"), header[0])
    except Exception as e:  # noqa: BLE001 - a missing plot must not hide the verdict
        _log(f"timeline not drawn: {e}")
    with open(path) as f:
        print(f.read(), flush=True)
    ok = verdict.ok and not res.problems and all(v.ok for v in res.mirrors)
    return 0 if ok else 1


def _verdict_text(verdict, res: RunResult) -> str:
    """The checker's summary, with the mirror comparison and the run's problems folded
    in: the first line is PASS only when all three are clean."""
    problems, final_read = res.problems, res.final_read
    first, _, rest = verdict.summary().partition("\n")
    counts = first[len("FAIL"):] if final_read and not verdict.ok else ""
    for mirror_verdict in reversed(res.mirrors):
        rest = mirror_verdict.line() + "\n" + "".join(
            f"  mirror-{k}: " + " ".join(f"{a}={b!r}" for a, b in ex.items()) + "\n"
            for k, exs in mirror_verdict.examples.items() for ex in exs) + rest
        if not mirror_verdict.ok:
            counts += " " + " ".join(f"mirror-{k}={n}" for k, n in mirror_verdict.counts.items() if n)
    if problems or not final_read:
        problems = problems or ["the final state was not read"]
        return (f"FAIL{counts} run-problems={len(problems)}\n" + "\n".join(f"run problem: {p}" for p in problems)
                + "\n" + (rest if final_read else "the final state was not read, so nothing is counted as lost"))
    if counts:
        return f"FAIL{counts}\n{rest}"
    return f"{first}\n{rest}"


async def _fault_loop(opts, rng, one_round, clusters, now, ops, problems, stop) -> None:
    """Faults one at a time until the duration is up, round after round (see `_schedule`),
    each time one variant of the family; after each, wait for every cluster to recover."""
    end = opts.duration - opts.hold_s[1]
    while now() < end and not stop.is_set():
        for side, fam in one_round():
            if now() >= end or stop.is_set():
                return
            await asyncio.sleep(rng.uniform(*opts.quiet_s))
            variant = rng.choice(side.variants(fam))
            op = H.Op("fault", "nemesis", now(), value=variant)
            injected = await side.inject(variant)
            op.value, op.node = injected.name, ",".join(injected.targets)
            _log(f"fault {injected.name} on {op.node}")
            await asyncio.sleep(rng.uniform(*opts.hold_s))
            await injected.heal()
            op.complete, op.outcome = now(), H.OK
            ops.append(op)
            for c in clusters.values():
                try:
                    await asyncio.to_thread(c.wait_healthy, None, opts.recover_s)
                except Exception as e:  # noqa: BLE001
                    problems.append(f"no recovery within {opts.recover_s}s after {injected.name}: {e}")
                    return


async def _heal_all(clusters, spec) -> None:
    await asyncio.to_thread(_network(spec).heal)
    for c in clusters.values():
        for i, node in enumerate(c.nodes):
            if node.alive:
                c.signal(i, signal.SIGCONT)
            else:
                await asyncio.to_thread(c.start, i, None, False)


async def _digests(c) -> dict:
    try:
        d = await asyncio.to_thread(c.wait_same_digest, None, 60.0)
        return {n.name: d["streams"] for n in c.nodes}
    except AssertionError:
        out = {}
        for n in c.nodes:
            try:
                out[n.name] = (await asyncio.to_thread(c.digest, n))["streams"]
            except OSError as e:
                out[n.name] = {"unreachable": str(e)}
        return out


class _Interrupted(Exception):
    pass


def _has_leader(c) -> bool:
    try:
        c.leader(30.0)
        return True
    except TimeoutError:
        return False


def _network(spec: dict):
    """The outer process's network, to apply faults from inside the clients'
    namespace (iptables runs in each node's namespace through `ip netns exec`)."""
    from .net import Network
    return Network(spec["run_id"], spec["names"])
