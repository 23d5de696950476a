"""The mirror workload's second cluster: a stream there mirrors the origin cluster's
stream over `external.servers`, a fault cuts the mirror's pipeline runner off from
the origin, and after healing the mirror is read in full to be compared with the origin.

The origin cluster runs the ordinary workload (publishers, consumers, history) on
`ORIGIN_STREAM`; nothing here publishes. Faults on either cluster come from the
ordinary nemesis, one cluster at a time.
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

    async def _js(self):
        nc = await connect(self.servers, timeout=10, max_reconnect_attempts=-1)
        return nc, nc.jetstream(timeout=self.patience_s)

    async def setup(self) -> None:
        nc, js = await self._js()
        try:
            await js.add_stream(name=MIRROR_STREAM, num_replicas=3, mirror={
                "name": ORIGIN_STREAM, "external": {"servers": self.origin_servers}})
        finally:
            await nc.close()

    async def runner(self, timeout_s: float = 60.0) -> str:
        """The mirror cluster node that runs the pipeline now, as its cluster status says.
        Right after a fault the pipeline may be unassigned for a moment: wait for one."""
        nc, _ = await self._js()
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    status = await nc._request("cluster.status", {}, 5)
                except Exception:  # noqa: BLE001 - no leader yet
                    status = {}
                for p in status.get("pipelines", []):
                    if p["stream"] == MIRROR_STREAM and p.get("runner"):
                        return p["runner"]
                await asyncio.sleep(0.5)
        finally:
            await nc.close()
        raise FaultUnavailable(f"no runner for the {MIRROR_STREAM} pipeline within {timeout_s}s")

    async def last_seq(self) -> int:
        """The mirror's last seq; 0 while it cannot be asked (no leader for a moment)."""
        nc, js = await self._js()
        try:
            return (await asyncio.wait_for(js.stream_info(MIRROR_STREAM), 10)).state.last_seq
        except Exception:  # noqa: BLE001
            return 0
        finally:
            await nc.close()

    async def catch_up(self, last_seq: int, timeout_s: float) -> bool:
        """Wait until the mirror holds the origin's last seq; False if it did not in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.last_seq() >= last_seq:
                return True
            await asyncio.sleep(0.5)
        return False

    async def read(self) -> list[StoredMsg]:
        nc, js = await self._js()
        try:
            return await read_all(js, MIRROR_STREAM, stored_row, self.patience_s)
        finally:
            await nc.close()


class RunnerPartition:
    """The mirror's own fault: the node running the pipeline loses every origin node
    (its own cluster and the clients still reach it), so the copy stalls until the
    pipeline's reads time out and resume, or the heal lets them through again."""

    def __init__(self, side: MirrorSide, net):
        self.side = side
        self.net = net

    async def inject(self, fault: str) -> Injected:
        runner = await self.side.runner()
        await asyncio.to_thread(self.net.separate, [runner], self.side.origin_nodes)

        async def heal():
            await asyncio.to_thread(self.net.heal)
        return Injected(fault, [f"{runner} | {','.join(self.side.origin_nodes)}"], heal)
