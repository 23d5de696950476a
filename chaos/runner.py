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

from . import history as H
from .delay import DelayLinks
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


def _log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# == outer: root namespace ==============================================================
def run(opts: RunOptions) -> int:
    from .net import Network, NetError, leftovers
    expand(opts.faults)                       # unknown names fail before anything is built
    os.makedirs(opts.out, exist_ok=True)
    run_id = f"{random.Random().randrange(16**4):04x}"
    names = [f"n{i + 1}" for i in range(opts.nodes)]
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
                    "hosts": [net.addr(n) for n in names], "prefixes": [net.exec_prefix(n) for n in names]}
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


async def _inner(opts: RunOptions, spec: dict) -> int:
    from .checker import check
    from .cluster import Cluster
    from .report import timeline, write_summary
    from .workload import Workload, WorkloadConfig

    work = spec["work"]
    t0 = time.monotonic()
    now = lambda: time.monotonic() - t0  # noqa: E731
    ops: list[H.Op] = []
    env = {"RAFTBROKER_TEST_POWER_CUT": "1"}
    if opts.broken:
        env["RAFTBROKER_TEST_BROKEN"] = opts.broken
    c = Cluster(os.path.join(work, "nodes"), n=opts.nodes, hosts=spec["hosts"], exec_prefixes=spec["prefixes"],
                extra=("--snapshot-entries", str(opts.snapshot_entries)), env=env)
    clock_files = {}
    for node in c.nodes:
        clock_files[node.name] = os.path.join(work, f"{node.name}.clock")
        with open(clock_files[node.name], "w") as f:
            f.write("0")
        node.env["RAFTBROKER_TEST_CLOCK_OFFSET_FILE"] = clock_files[node.name]
    rng = random.Random(opts.seed)
    problems: list[str] = []
    final_read = False
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):     # Ctrl-C reaches the whole process group
        loop.add_signal_handler(sig, stop.set)
    wl = None
    delay = DelayLinks(_network(spec), c, work) if "delay" in expand(opts.faults) else None
    try:
        if delay is not None:
            try:
                await asyncio.to_thread(delay.start)
            except RuntimeError as e:       # NetError too
                raise FaultUnavailable(f"delay proxies: {e}") from e
        await asyncio.to_thread(c.start)
        await asyncio.to_thread(c.leader, 60.0)
        _log(f"cluster of {opts.nodes} up; workload starts; faults: {', '.join(opts.faults)}; seed {opts.seed}")
        wl = Workload([n.client for n in c.nodes], WorkloadConfig(), t0, ops.append)
        await wl.setup()
        await wl.start()
        nem = Nemesis(c, _network(spec), rng, clock_files, _log, delay)
        await _fault_loop(opts, rng, nem, c, now, ops, problems, stop)
        await wl.halt()
        _log("faults over: healing everything and waiting for the cluster")
        await _heal_all(c, spec)
        if stop.is_set():
            raise _Interrupted()
        readable = True
        try:
            await asyncio.to_thread(c.wait_healthy, None, opts.recover_s)
        except Exception as e:  # noqa: BLE001
            problems.append(f"cluster did not recover after the faults: {e}")
            # A node that never came back is a failure of its own; the history can still
            # be checked against what a working majority holds (the lagging node's digest
            # then shows as divergent).
            readable = await asyncio.to_thread(_has_leader, c)
        final = H.FinalState()
        if readable:
            try:
                final.consumers = await wl.drain(stall_s=max(60.0, 2 * WorkloadConfig().ack_wait_s))
                final.stream = await wl.read_stream()
                # Clients gone, nothing changes the state any more (no fetches waiting, no push
                # loops touching consumers): every node must then hold the same.
                await wl.close()
                wl = None
                final.digests = await _digests(c)
                final_read = True
            except Exception as e:  # noqa: BLE001 - reported as the run's failure, with the logs
                problems.append(f"the final state could not be read: {type(e).__name__}: {e}")
    except (FaultUnavailable, FaultFailed) as e:
        problems.append(f"{type(e).__name__}: {e}")
        final = H.FinalState()
    except _Interrupted:
        final = H.FinalState()      # "interrupted" is reported below
    finally:
        if wl is not None:
            await wl.close()
        await asyncio.to_thread(c.stop)
        if delay is not None:
            await asyncio.to_thread(delay.stop)
    os.makedirs(os.path.join(opts.out, "nodes"), exist_ok=True)
    for node in c.nodes:
        if os.path.exists(node.log_path):
            shutil.copy(node.log_path, os.path.join(opts.out, "nodes", f"{node.name}.log"))
    H.write(os.path.join(opts.out, "history.jsonl"), ops)
    if stop.is_set():
        problems.append("interrupted")
    # Push deliveries have no request to time: a redelivery sent just before an ack
    # was confirmed may arrive a moment after it.
    verdict = check(ops, final, deliver_slack_s=1.0)
    text = verdict.summary()
    if problems or not final_read:
        first, _, rest = text.partition("\n")
        counts = first[len("FAIL"):] if final_read and not verdict.ok else ""
        problems = problems or ["the final state was not read"]
        text = (f"FAIL{counts} run-problems={len(problems)}\n" + "\n".join(f"run problem: {p}" for p in problems)
                + "\n" + (rest if final_read else "the final state was not read, so nothing is counted as lost"))
    header = [f"nodes {opts.nodes}, duration {opts.duration:.0f}s, seed {opts.seed}, faults {','.join(opts.faults)}"
              + (f", DELIBERATELY BROKEN BUILD: {opts.broken}" if opts.broken else ""),
              f"operations {len(ops)}, acknowledged publishes {sum(1 for o in ops if o.kind == 'publish' and o.outcome == H.OK)}, "
              f"final stream {len(final.stream)} messages"]
    path = write_summary(opts.out, text, header)
    try:
        timeline(ops, os.path.join(opts.out, "timeline.png"), header[0])
    except Exception as e:  # noqa: BLE001 - a missing plot must not hide the verdict
        _log(f"timeline not drawn: {e}")
    with open(path) as f:
        print(f.read(), flush=True)
    return 0 if (verdict.ok and not problems) else 1


async def _fault_loop(opts, rng, nem, c, now, ops, problems, stop) -> None:
    """Faults one at a time until the duration is up: each family in turn (in an order
    the seed shuffles), each time one of its variants; after each, wait for recovery."""
    families = list(opts.faults)
    end = opts.duration - opts.hold_s[1]
    rnd = 0
    while now() < end and not stop.is_set():
        order = families[:]
        rng.shuffle(order)
        for fam in order:
            if now() >= end or stop.is_set():
                return
            await asyncio.sleep(rng.uniform(*opts.quiet_s))
            variant = rng.choice(expand([fam]))
            op = H.Op("fault", "nemesis", now(), value=variant)
            injected = await nem.inject(variant)
            op.value, op.node = injected.name, ",".join(injected.targets)
            _log(f"fault {injected.name} on {op.node}")
            await asyncio.sleep(rng.uniform(*opts.hold_s))
            await injected.heal()
            op.complete, op.outcome = now(), H.OK
            ops.append(op)
            try:
                await asyncio.to_thread(c.wait_healthy, None, opts.recover_s)
            except Exception as e:  # noqa: BLE001
                problems.append(f"no recovery within {opts.recover_s}s after {injected.name}: {e}")
                return
        rnd += 1


async def _heal_all(c, spec) -> None:
    await asyncio.to_thread(_network(spec).heal)
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
