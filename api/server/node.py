"""One raftbroker node, assembled in one place: the store, the Raft (or single) node that
applies to it, and every front that serves it (the binary RPC, HTTP, NATS, the
mirror/source pipelines), with one start and one ordered stop.

A front is anything with `async start()` and `async stop()` that serves the node through
its `propose`/`read` seam; it plugs in beside the others in `Broker._fronts`.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from typing import Optional, Protocol

from . import malloc
from .config import NodeConfig
from .logs import setup_logging

log = logging.getLogger("raftbroker.node")

# A node holds many long-lived objects (store records, consumer state, pysyncobj's
# own) while each message makes short-lived ones that refcounting frees anyway.
# CPython's default thresholds (700, 10, 10) then rescan the long-lived ones so often
# that the publish rate fell by a fifth as the stream grew.
GC_THRESHOLDS = (100_000, 50, 1000)
# An entry must stay well under pysyncobj's append batch, so a cluster takes smaller payloads.
SINGLE_MAX_PAYLOAD = 8 * 1024 * 1024
CLUSTER_MAX_PAYLOAD = 1024 * 1024


class Front(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def open_replication(cfg: NodeConfig):
    """The node the fronts serve: a Raft node with --raft, else a single LocalNode;
    and the largest payload it takes."""
    from cluster.commit import BatchBounds
    from storage import Store, StoreOptions
    bounds = BatchBounds(max_commands=cfg.batch_max_commands, max_bytes=cfg.batch_max_bytes)
    if not cfg.raft:
        from cluster.local import LocalNode
        store = Store.open(cfg.data, StoreOptions(sync=not cfg.no_sync))
        return LocalNode(store, bounds, name=cfg.name, client_addr=cfg.client_addr), SINGLE_MAX_PAYLOAD
    from cluster.clock import node_clock
    from cluster.raft import NodeIdentity, RaftNode
    from cluster.settings import RaftSettings
    members = sorted(set(cfg.peer_list) | {cfg.raft_addr})
    bounds.max_inflight = 4
    ident = NodeIdentity(name=cfg.name, raft=cfg.raft_addr, client=cfg.client_addr, http=cfg.http_addr,
                         nats=cfg.nats_addr,
                         raft_bind=cfg.raft, peers=members)
    settings = RaftSettings(election_min_s=cfg.election_min_s, election_max_s=cfg.election_max_s,
                            compaction_min_entries=cfg.snapshot_entries, sync=not cfg.no_sync)
    options = StoreOptions(sync=not cfg.no_sync, max_replicas=len(members), max_payload=CLUSTER_MAX_PAYLOAD)
    node = RaftNode(ident, cfg.data, cfg.cluster_secret or None, settings, bounds, options, cfg.bootstrap,
                    clock=node_clock())
    return node, CLUSTER_MAX_PAYLOAD


class HttpFront:
    """The node's HTTP endpoints on their own address."""

    def __init__(self, broker, addr: str):
        self.broker = broker
        self.host, self.port = _hostport(addr)
        self._runner = None

    async def start(self) -> None:
        from .http import start_http
        self._runner = await start_http(self.broker, self.host, self.port)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


class Broker:
    def __init__(self, cfg: NodeConfig):
        from .rpc import Server, ServerConfig
        from .service import JetStreamService
        self.cfg = cfg
        self.node, max_payload = open_replication(cfg)
        self.service = JetStreamService(self.node)
        host, port = _hostport(cfg.listen)
        self.rpc = Server(self.node, self.service,
                          ServerConfig(host=host, port=port, server_id=cfg.name, token=cfg.token or None,
                                       user=cfg.user or None, password=cfg.password or None,
                                       max_payload=max_payload, cluster_secret=cfg.cluster_secret or None))
        # In start order; stopped in reverse, before the node they serve. The service goes
        # first: the fronts hand it their subscriptions and pulls.
        self._fronts: list[Front] = [self.service, self.rpc]
        self.nats = None
        if cfg.nats_listen:
            from .nats.front import NatsConfig, NatsFront
            nhost, nport = _hostport(cfg.nats_listen)
            self.nats = NatsFront(self.node, self.service, NatsConfig(
                host=nhost, port=nport, server_name=cfg.name, token=cfg.token or None, user=cfg.user or None,
                password=cfg.password or None, max_payload=min(max_payload, CLUSTER_MAX_PAYLOAD),
                routes=bool(cfg.raft), cluster_secret=cfg.cluster_secret or None))
            self._fronts.append(self.nats)
        from cluster.pipelines import Pipelines
        self.pipelines = Pipelines(self.node, self._client_servers, {
            "token": cfg.token or None, "user": cfg.user or None, "password": cfg.password or None},
            cfg.cluster_secret or None)
        self._fronts.append(self.pipelines)
        if cfg.http:
            self._fronts.append(HttpFront(self, cfg.http))
        self._started: list[Front] = []
        self._node_started = False

    async def _client_servers(self) -> list[str]:
        """This cluster's client addresses, this node's first (a pipeline's way in)."""
        own = f"{self.rpc.config.host}:{self.rpc.port}"
        directory = await self.node.read(lambda s: s.nodes())
        return [own] + sorted({d["client"] for d in directory.values() if d.get("client")} - {own})

    async def start(self) -> None:
        self.node.start()
        self._node_started = True
        try:
            for front in self._fronts:
                await front.start()
                self._started.append(front)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop taking requests (fronts first, newest first), let proposals already queued
        finish or fail, then close the store."""
        while self._started:
            await self._started.pop().stop()
        if self._node_started:
            self._node_started = False
            await self.node.stop()

    def describe(self) -> str:
        cfg = self.cfg
        return (f"raftbroker {cfg.name}: clients on {self.rpc.config.host}:{self.rpc.port}"
                + (f", nats on {self.nats.config.host}:{self.nats.port}" if cfg.nats_listen else "")
                + (f", http on {cfg.http}" if cfg.http else "") + (f", raft on {cfg.raft}" if cfg.raft else "")
                + f", data in {cfg.data}")

    async def serve(self, stop: Optional[asyncio.Event] = None) -> None:
        """Start, run until SIGTERM or SIGINT (or `stop`), then stop in order."""
        stop = stop or asyncio.Event()
        await self.start()
        try:
            print(self.describe(), flush=True)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            if os.environ.get("RAFTBROKER_TEST_POWER_CUT") == "1" and hasattr(self.node, "power_cut"):
                # Test-only: on SIGUSR1, lose every write not yet synced and die at once.
                signal.signal(signal.SIGUSR1, lambda *_: self.node.power_cut())
            await stop.wait()
        finally:
            await self.stop()


def run_node(cfg: NodeConfig) -> int:
    """The node process: logging, GC tuning, serve; an exit code (3: refused corrupt state)."""
    from cluster.errors import CorruptStateError
    setup_logging(cfg.log_level, cfg.name)
    gc.set_threshold(*GC_THRESHOLDS)
    malloc.limit_arenas()
    malloc.start_trimmer()
    try:
        asyncio.run(_serve(cfg))
    except CorruptStateError as e:
        log.critical("corruption found: %s", e)
        print(f"raftbroker {cfg.name}: refusing to start: {e}", file=sys.stderr, flush=True)
        return 3
    return 0


async def _serve(cfg: NodeConfig) -> None:
    await Broker(cfg).serve()
