"""The mirror workload's second cluster: a stream there mirrors the origin cluster's
stream over `external.servers`, a fault cuts the mirror's pipeline runner off from
the origin, and after healing the mirror is read in full to be compared with the origin.

The origin cluster runs the ordinary workload (publishers, consumers, history) on
`ORIGIN_STREAM`. Faults on either cluster come from the ordinary nemesis, one cluster
at a time. With a backlog (`--mirror-backlog N`), N messages are first published to
a second origin stream, `BACKLOG_STREAM`, and a second mirror copies them while the
faults run: a large copy under faults, compared in full like the first.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from api.client import connect

from .checker import StoredMsg
from .nemesis import FaultUnavailable, Injected
from .workload import read_all

ORIGIN_STREAM = "ORDERS"
ORIGIN_SUBJECT = "orders.v"
MIRROR_STREAM = "ORDERS_DR"
RUNNER_PARTITION = "partition-runner"      # the fault only a mirror run has
BACKLOG_STREAM = "BACKLOG"
BACKLOG_MIRROR = "BACKLOG_DR"
BACKLOG_WINDOW = 1000                       # publishes in flight while the backlog is written


async def publish_backlog(js, n: int, prefix: str, window: int = BACKLOG_WINDOW) -> None:
    """`n` acknowledged messages on `prefix`.0-3, every tenth with headers (a msg id too),
    `window` in flight: a backlog for a mirror to copy."""
    for start in range(0, n, window):
        futs = []
        for i in range(start, min(n, start + window)):
            headers = {"k": str(i), "Nats-Msg-Id": f"{prefix}-{i}"} if i % 10 == 0 else None
            futs.append(await js.publish_async(f"{prefix}.{i % 4}", f"{prefix}-{i}".encode(), headers=headers))
        for f in futs:
            await f


def stored_row(m) -> StoredMsg:
    """A message as the mirror comparison sees it: everything a mirror must copy."""
    headers = tuple(sorted((m.headers or {}).items()))
    return StoredMsg(m.metadata.sequence.stream, m.subject, headers, m.data, str(m.metadata.timestamp))


@dataclass
class MirrorSide:
    servers: list[str]              # the mirror cluster's client addresses
    origin_servers: list[str]       # the origin cluster's, which the mirror reads through
    origin_nodes: list[str]         # the origin cluster's node names, for the runner partition
    patience_s: float = 60.0        # how long one request rides out a cluster without a leader
    backlog: int = 0                # messages of BACKLOG_STREAM, published before the faults

    @property
    def mirrors(self) -> dict[str, str]:
        """Each mirror stream of the run and the origin stream it copies."""
        return {MIRROR_STREAM: ORIGIN_STREAM, **({BACKLOG_MIRROR: BACKLOG_STREAM} if self.backlog else {})}

    async def _js(self, servers=None):
        nc = await connect(servers or self.servers, timeout=10, max_reconnect_attempts=-1)
        return nc, nc.jetstream(timeout=self.patience_s)

    async def setup(self) -> None:
        if self.backlog:
            await self._publish_backlog()
        nc, js = await self._js()
        try:
            for name, origin in self.mirrors.items():
                await js.add_stream(name=name, num_replicas=3, mirror={
                    "name": origin, "external": {"servers": self.origin_servers}})
        finally:
            await nc.close()

    async def _publish_backlog(self) -> None:
        nc, js = await self._js(self.origin_servers)
        try:
            await js.add_stream(name=BACKLOG_STREAM, subjects=["backlog.>"], num_replicas=3)
            await publish_backlog(js, self.backlog, "backlog")
        finally:
            await nc.close()

    async def runners(self, timeout_s: float = 60.0) -> list[str]:
        """The mirror cluster nodes that run the pipelines now, as its cluster status says.
        Right after a fault a pipeline may be unassigned for a moment: wait for each."""
        nc, _ = await self._js()
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    status = await nc._request("cluster.status", {}, 5)
                except Exception:  # noqa: BLE001 - no leader yet
                    status = {}
                found = {p["stream"]: p["runner"] for p in status.get("pipelines", [])
                         if p["stream"] in self.mirrors and p.get("runner")}
                if len(found) == len(self.mirrors):
                    return sorted(set(found.values()))
                await asyncio.sleep(0.5)
        finally:
            await nc.close()
        raise FaultUnavailable(f"no runner for every pipeline ({', '.join(self.mirrors)}) within {timeout_s}s")

    async def last_seq(self, stream: str = MIRROR_STREAM) -> int:
        """A mirror's last seq; 0 while it cannot be asked (no leader for a moment)."""
        nc, js = await self._js()
        try:
            return (await asyncio.wait_for(js.stream_info(stream), 10)).state.last_seq
        except Exception:  # noqa: BLE001
            return 0
        finally:
            await nc.close()

    async def catch_up(self, stream: str, last_seq: int, timeout_s: float) -> bool:
        """Wait until a mirror holds its origin's last seq; False if it did not in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.last_seq(stream) >= last_seq:
                return True
            await asyncio.sleep(0.5)
        return False

    async def read(self, stream: str = MIRROR_STREAM, origin: bool = False) -> list[StoredMsg]:
        """A mirror stream in full, or (origin) a stream of the origin cluster."""
        nc, js = await self._js(self.origin_servers if origin else None)
        try:
            return await read_all(js, stream, stored_row, self.patience_s)
        finally:
            await nc.close()


class RunnerPartition:
    """The mirror's own fault: the nodes running the pipelines lose every origin node
    (their own cluster and the clients still reach them), so the copies stall until the
    pipelines' reads time out and resume, or the heal lets them through again."""

    def __init__(self, side: MirrorSide, net, log=None):
        self.side = side
        self.net = net
        self.log = log

    async def inject(self, fault: str) -> Injected:
        runners = await self.side.runners()
        if self.log:
            # Where each copy stood when it was cut off: the evidence that a fault hit a copy in progress.
            held = ", ".join([f"{name} seq {await self.side.last_seq(name)}" for name in self.side.mirrors])
            self.log(f"{fault}: cutting {','.join(runners)} off the origin; the mirrors hold {held}")
        await asyncio.to_thread(self.net.separate, runners, self.side.origin_nodes)

        async def heal():
            await asyncio.to_thread(self.net.heal)
        return Injected(fault, [f"{','.join(runners)} | {','.join(self.side.origin_nodes)}"], heal)
