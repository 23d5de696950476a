"""Mirror and source pipelines: who copies each origin, and the copying.

Every origin of every mirror or sourcing stream has one pipeline, run by one node:
the node named in the stream's replicated state (`OriginState.runner`). The leader
chooses it (`choose_runner`: the current runner while it stays healthy, else a
healthy follower by rendezvous hash, the leader itself only when no follower is
healthy) and records changes with `AssignSource`. Every node, leader or not,
reconciles on a short period: it compares the pipelines assigned to it with those
it runs and starts or stops them. Nothing is driven by one-shot signals, so a lost
wake-up cannot wedge a pipeline; a change of leadership, membership or health is
seen on the next pass.

A pipeline reads its origin through the client library with an ack-none pull
consumer that starts right after the last origin sequence the stream holds, and
proposes what it read as a `SourceCopy` through the client library too (a follower
reaches the leader like any client). The store drops what it already holds and
refuses copies from a node that is no longer the runner, so a pipeline that moves,
restarts or replays a batch stores nothing twice and skips nothing. One fetch is
in flight per pipeline: at most `batch` messages and `batch_bytes` bytes.

`source.copy` writes into a stream that takes no publishes, so a client must not be
able to send one: each request carries `proof`, an HMAC of its fields under a key
derived from the cluster secret, which only the cluster's nodes hold.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from jetstream.config import ConsumerConfig, StreamSource
from jetstream.errors import StreamNotFoundError, js_error
from storage.commands import AssignSource

import msgpack

log = logging.getLogger("raftbroker.pipelines")


@dataclass
class PipelineSettings:
    batch: int = 500                 # messages per fetch: the most a pipeline holds in flight
    batch_bytes: int = 256 * 1024    # bytes per fetch (one message larger than this comes alone)
    fetch_wait_s: float = 1.0        # how long one fetch waits for new messages
    # An idle pipeline reports (lag, skips, the origin's identity) this often, not after
    # every empty fetch: each report is a Raft entry here and two fresh reads there.
    idle_report_s: float = 5.0
    reconcile_s: float = 0.5         # how often every node compares wanted with running
    max_follower_lag: int = 5000     # entries behind the leader a follower may be and still run one
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    consumer_inactive_s: float = 30.0   # the origin drops a consumer its pipeline left behind


@dataclass(frozen=True)
class Pipeline:
    stream: str
    origin: str                      # origin key
    source: StreamSource
    mirror: bool
    runner: str


def choose_runner(origin: str, current: str, healthy: list[str], leader: str) -> str:
    """The node that should run a pipeline: keep a healthy runner; else spread the
    pipelines over healthy followers by rendezvous hash; else the leader."""
    if current in healthy or (current == leader and not healthy):
        return current
    if not healthy:
        return leader
    return max(healthy, key=lambda n: hashlib.sha256(f"{origin}\x00{n}".encode()).digest())


class Backoff:
    """Bounded, jittered exponential backoff; `reset` after progress."""

    def __init__(self, low: float, high: float):
        self.low, self.high, self.fails = low, high, 0

    def next(self) -> float:
        self.fails += 1
        return random.uniform(0.5, 1.0) * min(self.high, self.low * 2 ** (self.fails - 1))

    def reset(self) -> None:
        self.fails = 0


class _Stall(Exception):
    """The pipeline cannot go on for now; `error` is what stream info shows."""

    def __init__(self, error: dict):
        super().__init__(error["description"])
        self.error = error


class Pipelines:
    """The node's front for mirror and source pipelines (start/stop with the broker)."""

    def __init__(self, node, servers: Callable[[], Awaitable[list[str]]], credentials: dict,
                 secret: Optional[str], settings: PipelineSettings | None = None):
        self.node = node
        self.servers = servers              # this cluster's client addresses
        self.credentials = credentials      # token / user / password for this cluster
        self.secret = secret                # the cluster secret: signs source.copy
        self.settings = settings or PipelineSettings()
        self._running: dict[tuple[str, str], tuple[Pipeline, asyncio.Task]] = {}
        self._task: Optional[asyncio.Task] = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        tasks = [t for _, t in self._running.values()] + ([self._task] if self._task else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()

    def running(self) -> list[tuple[str, str]]:
        return sorted(self._running)

    # == reconciling ======================================================================
    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_s)
            try:
                wanted = [Pipeline(*row) for row in await self.node.read(lambda s: s.origin_rows())]
                if wanted and self.node.is_leader:
                    await self._assign(wanted)
                self._reconcile(wanted)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("pipeline reconcile failed")

    def _healthy_followers(self) -> list[str]:
        info = self.node.cluster_info()
        if info is None:
            return []
        return sorted(p.name for p in info.replicas
                      if not p.offline and p.lag <= self.settings.max_follower_lag)

    async def _assign(self, wanted: list[Pipeline]) -> None:
        healthy, leader = self._healthy_followers(), self.node.name
        for p in wanted:
            runner = choose_runner(p.origin, p.runner, healthy, leader)
            if runner != p.runner:
                log.info("pipeline assigned", extra={"stream": p.stream, "origin": p.origin, "runner": runner,
                                                     "was": p.runner})
                await self.node.propose_one(AssignSource(p.stream, p.origin, runner))

    def _reconcile(self, wanted: list[Pipeline]) -> None:
        mine = {(p.stream, p.origin): p for p in wanted if p.runner == self.node.name}
        for key, (p, task) in list(self._running.items()):
            if mine.get(key) != p or task.done():
                task.cancel()
                del self._running[key]
        for key, p in mine.items():
            if key not in self._running:
                log.info("pipeline started", extra={"stream": p.stream, "origin": p.origin})
                task = asyncio.get_running_loop().create_task(self._run(p))
                self._running[key] = (p, task)

    # == one pipeline ======================================================================
    async def _run(self, p: Pipeline) -> None:
        backoff = Backoff(self.settings.backoff_min_s, self.settings.backoff_max_s)
        err_code = 10029 if p.mirror else 10045
        while True:
            dest = origin = None
            try:
                dest = await self._connect(await self.servers(), self.credentials)
                ext = p.source.external
                if ext and ext.servers:
                    try:
                        origin = await self._connect(ext.servers, {"token": ext.token, "user": ext.user,
                                                                    "password": ext.password})
                    except Exception as e:  # noqa: BLE001
                        raise _Stall(_error(503, err_code, f"origin cluster {', '.join(ext.servers)} "
                                                           f"unreachable: {e}")) from e
                else:
                    origin = dest
                await self._copy(p, dest.jetstream(), origin.jetstream(), err_code, backoff)
            except asyncio.CancelledError:
                raise
            except _Stall as s:
                await self._report(dest, p, error=s.error)
            except Exception as e:  # noqa: BLE001 - reported, then retried
                log.warning("pipeline interrupted", extra={"stream": p.stream, "origin": p.origin, "error": repr(e)})
                await self._report(dest, p, error=_error(503, err_code, f"pipeline interrupted: {e}"))
            finally:
                for nc in {id(c): c for c in (dest, origin) if c is not None}.values():
                    await _close(nc)
            await asyncio.sleep(backoff.next())

    async def _connect(self, servers: list[str], creds: dict):
        from api.client import connect
        return await connect(servers, token=creds.get("token"), user=creds.get("user"),
                             password=creds.get("password"), name=f"pipeline@{self.node.name}",
                             max_reconnect_attempts=3)

    async def _propose(self, js_dest, p: Pipeline, **fields) -> dict:
        body = {"stream": p.stream, "origin": p.origin, "runner": self.node.name, **fields}
        if self.secret:
            body["proof"] = copy_proof(self.secret, body)
        return await js_dest._api("source.copy", body)

    async def _report(self, dest, p: Pipeline, error: dict) -> None:
        if dest is None:
            return
        try:
            await self._propose(dest.jetstream(), p, error=error)
        except Exception as e:  # noqa: BLE001 - best effort; the next attempt reports again
            log.info("pipeline report failed", extra={"stream": p.stream, "error": repr(e)})

    async def _copy(self, p: Pipeline, js_dest, js_origin, err_code: int, backoff: Backoff) -> None:
        s = self.settings
        src = p.source
        state = await self._propose(js_dest, p)           # where the stream is, from the leader
        info = await _from_origin(js_origin.stream_info(src.name), src.name, err_code)
        if state.get("created") and info.created != state["created"]:
            state = await self._propose(js_dest, p, created=info.created)   # the store records the error
            raise _Stall(state["error"])
        acking = info.config.retention != "limits"
        ci = await js_origin.add_consumer(src.name, self._consumer_config(src, state["last"],
                                                                          info.config.retention))
        from api.client.jetstream import PullSubscription
        sub = PullSubscription(js_origin, src.name, ci.name)
        try:
            expect = 1
            reported = 0.0              # monotonic time of the last idle report; 0: none yet
            while True:
                msgs = await _from_origin(sub.fetch(s.batch, timeout=s.fetch_wait_s, max_bytes=s.batch_bytes),
                                          src.name, err_code)
                if msgs:
                    if msgs[0].metadata.sequence.consumer != expect:
                        # A fetch whose reply was lost moved the consumer past messages we
                        # never saw: start again after what the stream holds.
                        raise ConnectionError("origin consumer skipped deliveries; starting it again")
                    expect = msgs[-1].metadata.sequence.consumer + 1
                    batch = [[m.metadata.sequence.stream, m.subject, m.headers, m.data, m.metadata.timestamp]
                             for m in msgs]
                    state = await self._propose(js_dest, p, created=info.created, msgs=batch,
                                                lag=msgs[-1].metadata.num_pending)
                    if acking:
                        await _ack_copied(msgs, state["last"])
                elif time.monotonic() - reported >= s.idle_report_s:
                    state = await self._idle_report(p, js_dest, js_origin, sub, info.created, err_code)
                    reported = time.monotonic()
                else:
                    continue
                if state.get("error"):
                    raise _Stall(state["error"])
                backoff.reset()
        finally:
            try:
                await js_origin.delete_consumer(src.name, ci.name)
            except Exception:  # noqa: BLE001 - the origin drops it when inactive
                pass

    async def _idle_report(self, p: Pipeline, js_dest, js_origin, sub, created: int, err_code: int) -> dict:
        """Nothing new: report the lag and, for a mirror, skip origin sequences that are
        gone (the origin's last sequence is read first, so a message published after it
        shows as pending and is never skipped)."""
        oinfo = await _from_origin(js_origin.stream_info(p.source.name), p.source.name, err_code)
        if oinfo.created != created:
            return await self._propose(js_dest, p, created=oinfo.created)
        cinfo = await sub.consumer_info()
        skip_to = oinfo.state.last_seq if (p.mirror and not p.source.filters and cinfo.num_pending == 0) else 0
        return await self._propose(js_dest, p, created=created, skip_to=skip_to, lag=cinfo.num_pending)

    def _consumer_config(self, src: StreamSource, last: int, retention: str) -> ConsumerConfig:
        """Ack-none on a limits origin: its messages stay, so a copy lost on the way is read
        again. A work-queue or interest origin removes what its consumers ack, so there the
        pipeline acks only what the destination has committed (ADR-58's durable sourcing
        rather than the ack-none consumer that loses such messages in transit)."""
        filters = src.filters
        cfg = ConsumerConfig(ack_policy="none" if retention == "limits" else "explicit",
                             inactive_threshold=self.settings.consumer_inactive_s,
                             filter_subject=filters[0] if len(filters) == 1 else None,
                             filter_subjects=filters if len(filters) > 1 else None)
        if retention == "workqueue":
            # Deliver-all is the only policy a work queue takes; what was copied and acked is
            # gone, and what was copied but not acked comes again and is dropped as a duplicate.
            return cfg
        if last:
            return cfg.evolve(deliver_policy="by_start_sequence", opt_start_seq=last + 1)
        if src.opt_start_seq:
            return cfg.evolve(deliver_policy="by_start_sequence", opt_start_seq=src.opt_start_seq)
        if src.opt_start_time:
            return cfg.evolve(deliver_policy="by_start_time", opt_start_time=src.opt_start_time)
        return cfg


COPY_FIELDS = ("stream", "origin", "runner", "created", "msgs", "skip_to", "lag", "error")


def copy_proof(secret: str, body: dict) -> str:
    """HMAC-SHA256 of a source.copy request's fields, keyed by the cluster secret."""
    key = hashlib.sha256(b"raftbroker source.copy\x00" + secret.encode()).digest()
    blob = msgpack.packb([body.get(k) for k in COPY_FIELDS], use_bin_type=True)
    return hmac.new(key, blob, hashlib.sha256).hexdigest()


def proof_ok(secret: str, body: dict) -> bool:
    proof = body.get("proof")
    return isinstance(proof, str) and hmac.compare_digest(proof, copy_proof(secret, body))


async def _ack_copied(msgs: list, last: int) -> None:
    """Ack the messages the destination now holds (a copy stopped by a limit holds fewer);
    waiting for the last one's confirmation keeps unconfirmed acks to one batch."""
    copied = [m for m in msgs if m.metadata.sequence.stream <= last]
    for m in copied[:-1]:
        await m.ack()
    if copied:
        await copied[-1].ack_sync()


async def _from_origin(call: Awaitable, name: str, err_code: int):
    """Await a read of the origin; the origin stream gone is a stall that says so."""
    try:
        return await call
    except StreamNotFoundError:
        raise _Stall(_error(404, err_code, f"origin stream {name} not found")) from None


def _error(code: int, err_code: int, description: str) -> dict:
    return js_error(err_code, description, code).to_wire()


async def _close(nc) -> None:
    try:
        await nc.close()
    except Exception:  # noqa: BLE001
        pass
