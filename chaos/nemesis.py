"""Faults (nemeses): each one is injected, held for a while, then healed.

A fault family named on the command line (`kill`, `pause`, `partition`, …)
stands for its variants; the run's seed picks variants, targets and timings,
so the same seed replays the same schedule. A fault that cannot be injected
raises `FaultUnavailable`, which fails the run: nothing asked for is skipped.
"""
from __future__ import annotations

import asyncio
import glob
import os
import random
import shutil
import signal
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

FAMILIES = {
    "none": ["none"],           # a baseline: the same schedule with nothing injected
    "kill": ["kill", "kill-leader", "kill-majority", "kill-all"],
    "pause": ["pause", "pause-leader"],
    "partition": ["partition-leader", "partition-half", "partition-bridge"],
    "loss": ["loss"],
    "power-cut": ["power-cut", "power-cut-minority", "power-cut-all"],
    "wipe": ["wipe"],
    "membership": ["membership"],
    "clock": ["clock"],
    "corrupt": ["corrupt"],
    "delay": ["delay"],
}


class FaultUnavailable(RuntimeError):
    pass


class FaultFailed(RuntimeError):
    """The system did something a fault forbids (a corrupted node started)."""


@dataclass
class Injected:
    name: str
    targets: list[str]
    heal: Callable[[], Awaitable[None]]


VARIANTS = {v for vs in FAMILIES.values() for v in vs}


def expand(families: list[str]) -> list[str]:
    """Fault names to variants: a family stands for all of its variants; a variant
    (`power-cut-all`) for itself."""
    out = []
    for f in families:
        if f in FAMILIES:
            out += FAMILIES[f]
        elif f in VARIANTS:
            out.append(f)
        else:
            raise ValueError(f"unknown fault {f!r}; families: {', '.join(FAMILIES)}; "
                             f"variants: {', '.join(sorted(VARIANTS))}")
    return out


class Nemesis:
    def __init__(self, cluster, net, rng: random.Random, clock_files: dict[str, str], log: Callable[[str], None],
                 delay=None):
        self.c = cluster
        self.net = net
        self.delay = delay          # DelayLinks, when the run asked for `delay`
        self.rng = rng
        self.clock_files = clock_files
        self.log = log
        self.n = len(cluster.nodes)

    # -- helpers ------------------------------------------------------------------------------
    async def _io(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    async def leader(self) -> int:
        return await self._io(self.c.leader, 60.0)

    def _pick(self, k: int, include: Optional[int] = None) -> list[int]:
        others = [i for i in range(self.n) if i != include]
        chosen = self.rng.sample(others, k - (include is not None))
        return sorted(chosen + ([include] if include is not None else []))

    def _names(self, idx: list[int]) -> list[str]:
        return [self.c.nodes[i].name for i in idx]

    async def _restart(self, idx: list[int]) -> None:
        for i in idx:
            await self._io(self.c.start, i, None, False)

    async def _kill(self, name: str, idx: list[int]) -> Injected:
        for i in idx:
            await self._io(self.c.kill, i)

        async def heal():
            await self._restart(idx)
        return Injected(name, self._names(idx), heal)

    async def _power_cut(self, name: str, idx: list[int]) -> Injected:
        for i in idx:
            self.c.signal(i, signal.SIGUSR1)
        for i in idx:
            code = await self._io(self.c.wait_exit, i, 30.0)
            if code != 137:
                raise FaultUnavailable(f"{self.c.nodes[i].name} did not take the power cut (exit {code}); "
                                       "is RAFTBROKER_TEST_POWER_CUT set?")

        async def heal():
            await self._restart(idx)
        return Injected(name, self._names(idx), heal)

    async def _pause(self, name: str, idx: list[int]) -> Injected:
        for i in idx:
            self.c.signal(i, signal.SIGSTOP)

        async def heal():
            for i in idx:
                self.c.signal(i, signal.SIGCONT)
        return Injected(name, self._names(idx), heal)

    async def _partition(self, name: str, groups: list[list[int]], bridge: Optional[int] = None) -> Injected:
        named = [self._names(g) for g in groups]
        # Within this cluster only: the network may hold another cluster (a mirror run).
        among = self._names(list(range(self.n)))
        if bridge is None:
            await self._io(self.net.partition, named, among)
        else:
            await self._io(self.net.bridge, named[0], named[1], self.c.nodes[bridge].name, among)

        async def heal():
            await self._io(self.net.heal)
        return Injected(name, [" | ".join(",".join(g) for g in named)], heal)

    # -- the faults ---------------------------------------------------------------------------
    async def inject(self, fault: str) -> Injected:
        majority = self.n // 2 + 1
        if fault == "none":
            async def nothing():
                return None
            return Injected(fault, [], nothing)
        if fault == "kill":
            return await self._kill(fault, self._pick(1))
        if fault == "kill-leader":
            return await self._kill(fault, [await self.leader()])
        if fault == "kill-majority":
            return await self._kill(fault, self._pick(majority, await self.leader()))
        if fault == "kill-all":
            return await self._kill(fault, list(range(self.n)))
        if fault == "pause":
            return await self._pause(fault, self._pick(1))
        if fault == "pause-leader":
            return await self._pause(fault, [await self.leader()])
        if fault == "partition-leader":
            li = await self.leader()
            return await self._partition(fault, [[li], [i for i in range(self.n) if i != li]])
        if fault == "partition-half":
            minority = self._pick(self.n - majority)
            return await self._partition(fault, [minority, [i for i in range(self.n) if i not in minority]])
        if fault == "partition-bridge":
            order = self.rng.sample(range(self.n), self.n)
            half = (self.n - 1) // 2
            return await self._partition(fault, [order[:half], order[half:-1]], bridge=order[-1])
        if fault == "loss":
            await self._io(self.net.loss, self._names(list(range(self.n))), 0.2)

            async def heal():
                await self._io(self.net.heal)
            return Injected(fault, ["20% between all nodes"], heal)
        if fault == "power-cut":
            return await self._power_cut(fault, self._pick(1))
        if fault == "power-cut-minority":
            return await self._power_cut(fault, self._pick(self.n - majority))
        if fault == "power-cut-all":
            return await self._power_cut(fault, list(range(self.n)))
        if fault == "wipe":
            return await self._wipe(fault)
        if fault == "membership":
            return await self._membership(fault)
        if fault == "clock":
            return await self._clock(fault)
        if fault == "corrupt":
            return await self._corrupt(fault)
        if fault == "delay":
            return await self._delay(fault)
        raise ValueError(fault)

    async def _delay(self, name: str) -> Injected:
        if self.delay is None:
            raise FaultUnavailable("delay needs the run's delay proxies, started only when `delay` is asked for")
        target = await self.leader() if self.rng.random() < 0.5 else self.rng.randrange(self.n)
        ms = self.rng.randrange(50, 500)
        try:
            await self._io(self.delay.set, self._names([target]), ms)
        except RuntimeError as e:
            raise FaultUnavailable(str(e)) from e

        async def heal():
            await self._io(self.delay.clear)
        return Injected(name, [f"{self.c.nodes[target].name} +{ms}ms"], heal)

    async def _follower(self) -> int:
        li = await self.leader()
        return self.rng.choice([i for i in range(self.n) if i != li])

    async def _wipe(self, name: str) -> Injected:
        f = await self._follower()
        await self._io(self.c.kill, f)
        await self._io(shutil.rmtree, self.c.nodes[f].data, True)

        async def heal():
            await self._restart([f])
        return Injected(name, self._names([f]), heal)

    async def _membership(self, name: str) -> Injected:
        from api.client import connect
        f = await self._follower()
        node = self.c.nodes[f]
        nc = await connect([n.client for i, n in enumerate(self.c.nodes) if i != f], max_reconnect_attempts=5)
        try:
            await nc._request("cluster.remove_peer", {"raft": node.raft}, timeout=20)
        finally:
            await nc.close()
        await self._io(self.c.stop, f)
        await self._io(shutil.rmtree, node.data, True)

        async def heal():
            nc = await connect([n.client for i, n in enumerate(self.c.nodes) if i != f], max_reconnect_attempts=5)
            try:
                await nc._request("cluster.add_peer", {"raft": node.raft}, timeout=20)
            finally:
                await nc.close()
            await self._restart([f])
        return Injected(name, [node.name], heal)

    async def _clock(self, name: str) -> Injected:
        li = await self.leader()
        node = self.c.nodes[li]
        offset = self.rng.choice([-1, 1]) * self.rng.uniform(5, 30)
        with open(self.clock_files[node.name], "w") as f:
            f.write(f"{offset:.3f}")

        async def heal():
            with open(self.clock_files[node.name], "w") as f:
                f.write("0")
        return Injected(f"{name} {offset:+.1f}s", [node.name], heal)

    def _live_offset(self, what: str, path: str) -> int:
        """A byte the node must read and check: records of the journal, all of the
        meta, a data block of an SST (they come first in the file), the content of a
        snapshot's members (not tar padding or the end-of-archive blocks)."""
        size = os.path.getsize(path)
        if what == "snapshot":
            import tarfile
            with tarfile.open(path) as tar:
                members = [m for m in tar.getmembers() if m.isfile() and m.size]
            m = self.rng.choice(members)
            return m.offset_data + self.rng.randrange(m.size)
        if what == "rocksdb":
            return self.rng.randrange(0, max(1, size // 3))
        if what == "journal":
            return self.rng.randrange(min(16, size - 1), size)
        return self.rng.randrange(size)

    async def _corrupt(self, name: str) -> Injected:
        f = await self._follower()
        node = self.c.nodes[f]
        await self._io(self.c.stop, f)
        raft = os.path.join(node.data, "raft")
        candidates = [("journal", os.path.join(raft, "raft.log")), ("meta", os.path.join(raft, "raft.meta"))]
        if os.path.exists(os.path.join(raft, "snapshot")):
            candidates.append(("snapshot", os.path.join(raft, "snapshot")))
        ssts = glob.glob(os.path.join(node.data, "store", "rocks", "*.sst"))
        if ssts:
            candidates.append(("rocksdb", max(ssts, key=os.path.getsize)))
        what, path = self.rng.choice(candidates)
        offset = self._live_offset(what, path)
        with open(path, "r+b") as fh:
            fh.seek(offset)
            b = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([b[0] ^ (1 << self.rng.randrange(8))]))
        self.log(f"flipped a bit of {what} {path} at offset {offset}")
        await self._io(self.c.start, f, None, False)
        try:
            code = await self._io(self.c.wait_exit, f, 60.0)
        except Exception:  # noqa: BLE001 - still running a minute later
            code = None
        if code != 3:
            raise FaultFailed(f"{node.name} started (or died with {code}) with a flipped bit in its {what}: "
                              "corruption was not detected")

        async def heal():
            await self._io(shutil.rmtree, node.data, True)
            await self._restart([f])
        return Injected(f"{name} {what}", [node.name], heal)
