"""What every front (the binary RPC, the NATS protocol) serves the same way: JetStream's
long-lived work on the node — pull requests that wait for messages, push delivery loops,
core subjects and their subscribers, the time-driven sweep, advisories.

A front translates its wire into calls here and hands over subscriptions whose `conn`
knows how to put a message on that front's wire (`Subscriber`); neither front goes
through the other's protocol. Every state change is a `node.propose`, every read a
`node.read`: the service keeps only what lives and dies with this process (waiting pulls,
delivery loops, subscriptions).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from jetstream.config import ConsumerConfig
from jetstream.errors import (
    BadRequestError, ConsumerNotFoundError, JSError, NoStreamForSubjectError, NotLeaderError, StreamNotFoundError,
)
from jetstream.results import ConsumerInfo, DeliveredMsg
from storage import Ack, NextMsgs, Publish, Sweep, Touch

from .metrics import NodeMetrics
from .nats.jsjson import rfc3339
from .subs import SubjectRouter, Subscription

log = logging.getLogger("raftbroker.server")

ADVISORY_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER"
MAX_HOT_FETCH = 256     # consumers per connection remembered as having a backlog (see fetch)
# Messages per NextMsgs entry of a push loop: one entry commits at a time per consumer,
# so this caps its rate (64 gave 5.8k msgs/s push+ack in bench/cluster.py, 256 gives 8k).
# A batch is bounded in bytes too, so one overshoots a connection's outbound limit by at
# most ~1 MiB (256 messages of up to max_payload would not be).
PUSH_BATCH_MSGS = 256
PUSH_BATCH_BYTES = 1024 * 1024
# Flow control (a push consumer with flow_control): a `100 FlowControl Request` after
# every FC_BYTES delivered; delivery stalls once FC_BYTES more went out while that
# request is still unanswered (so at most ~2 * FC_BYTES are unconfirmed).
FC_BYTES = 256 * 1024
FC_PREFIX = "$JS.FC."
MAX_FC_OUTSTANDING = 65536      # flow-control requests awaiting an answer, node-wide


class MaxWaitingError(JSError):
    code = 409
    err_code = 10912
    description = "Exceeded MaxWaiting"


class Subscriber(Protocol):
    """A front's connection as the service sees it."""
    closed: bool

    def can_take(self) -> bool: ...

    def deliver(self, sub: Subscription, subject: str, reply: Optional[str], headers: Optional[dict],
                data: bytes, meta: Optional[DeliveredMsg]) -> None: ...


@dataclass
class ServiceConfig:
    tick_s: float = 0.1                # how often waiting pulls and push loops re-check for work
    sweep_s: float = 1.0               # how often the time-driven Sweep command is proposed


def _sub_can_take(sub: Subscription) -> bool:
    return sub.conn.can_take()


class JetStreamService:
    def __init__(self, node, config: ServiceConfig | None = None):
        self.node = node
        self.config = config or ServiceConfig()
        self.router = SubjectRouter()
        self._changed = asyncio.Event()
        self._waiting: dict[tuple[str, str], int] = {}      # (stream, consumer) -> waiting pulls
        self._push_loops: dict[tuple[str, str], asyncio.Task] = {}
        self._fc: set[str] = set()              # flow-control reply subjects not answered yet
        self._fc_ids = 0
        self._tasks: set[asyncio.Task] = set()
        self._leadership_hooks: list[Callable[[bool], None]] = []
        node.add_listener(self._on_events)
        self.metrics = NodeMetrics()
        node.add_listener(self.metrics.on_events)
        node.on_entry = self._observe_entry
        journal = getattr(node, "journal", None)
        if journal is not None:
            journal.on_sync = self.metrics.fsync_seconds.observe

    def _observe_entry(self, commands: int, seconds: float) -> None:
        self.metrics.entry_commands.observe(commands)
        self.metrics.commit_seconds.observe(seconds)

    # == lifecycle =======================================================================
    async def start(self) -> None:
        self._spawn(self._ticker())
        await self.ensure_push_loops()

    async def stop(self) -> None:
        for t in list(self._tasks) + list(self._push_loops.values()):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._push_loops.values(), return_exceptions=True)

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def on_tick(self, hook: Callable[[bool], None]) -> None:
        """Call hook(is_leader) on every tick (a front's own housekeeping)."""
        self._leadership_hooks.append(hook)

    # == the node seam ====================================================================
    async def propose(self, cmd):
        return await self.node.propose_one(cmd)

    async def read(self, fn):
        return await self.node.read(fn)

    async def read_fresh(self, fn):
        """A read a client sees: on the leader, after a read barrier (see RaftNode.read)."""
        return await self.node.read(fn, fresh=True)

    def cluster_view(self, num_replicas: int) -> Optional[dict]:
        """The `cluster` block of a stream's (or its consumers') info; None on one node."""
        cluster = self.node.cluster_info()
        if cluster is None:
            return None
        d = cluster.asked(num_replicas).to_dict()
        if not d.get("replicas"):
            d.pop("replicas", None)     # omitted when empty, as nats-server sends it
        return d

    def with_cluster(self, d: dict, num_replicas: int) -> dict:
        cluster = self.cluster_view(num_replicas)
        if cluster is not None:
            d["cluster"] = cluster
        return d

    def with_waiting(self, info: ConsumerInfo) -> ConsumerInfo:
        info.num_waiting = self._waiting.get((info.stream_name, info.name), 0)
        if info.config.deliver_subject:
            info.push_bound = self.router.has_interest(info.config.deliver_subject)
        return info

    # == change notification ================================================================
    def wake(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def _wait_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # == core subjects ======================================================================
    def deliver_core(self, subject: str, data: bytes, headers=None, reply=None, exclude=None,
                     meta: Optional[DeliveredMsg] = None) -> None:
        """To every subscriber of `subject` (one per queue group) that can take it now:
        core messages are at most once, a slow reader misses them. `exclude` is a
        publisher that asked not to hear its own messages (NATS's echo: false); `meta`
        makes it a consumer's delivery (a pull answered on its reply subject)."""
        for sub in self.router.targets(subject, _sub_can_take):
            if sub.conn is not exclude and sub.conn.can_take():
                sub.conn.deliver(sub, subject, reply, headers, data, meta)

    async def store_core(self, subject: str, data: bytes, headers=None) -> None:
        """A core publish that a stream captures is stored too (as in NATS); it has no ack
        to carry an error, so a refusal is dropped."""
        if await self.read(lambda s: s.find_stream(subject)) is not None:
            try:
                await self.propose(Publish(subject, data, headers))
            except JSError:
                pass

    async def subscribe(self, sub: Subscription) -> None:
        """Add a subscriber; returns once a push consumer delivering to it has its loop."""
        self.router.add(sub)
        await self.ensure_push_loops()

    def subscribe_now(self, sub: Subscription) -> None:
        """Add a subscriber before the caller reads its next line (a NATS client's SUB is
        in force for the PUB right after it); push loops start in the background."""
        self.router.add(sub)
        self._spawn(self.ensure_push_loops())

    def flow_control_answered(self, subject: str) -> None:
        """A client answered a `100 FlowControl Request` (published to its `$JS.FC.` reply)."""
        if subject in self._fc:
            self._fc.discard(subject)
            self.wake()

    def unsubscribe(self, sub: Subscription) -> None:
        self.router.remove(sub)

    def drop_subscriber(self, conn) -> None:
        self.router.remove_conn(conn)

    # == pull ===============================================================================
    async def fetch(self, stream: str, consumer: str, batch, expires, no_wait: bool, max_bytes: int,
                    hot: set, conn: Subscriber) -> list[DeliveredMsg]:
        """Pull: up to `batch` messages; waits up to `expires` seconds for the first one
        unless `no_wait`; an empty list when nothing came. `hot` is the caller's
        connection's set of consumers whose last fetch came back full."""
        if not isinstance(batch, int) or batch < 1:
            raise BadRequestError("batch must be a positive integer")
        expires = float(expires or 0)
        if not math.isfinite(expires):
            # NaN never compares <= 0, so such a fetch would wait forever and leak a
            # NaN timer into the event loop's heap every tick (negative means no wait).
            raise BadRequestError("expires must be a finite number of seconds")
        deadline = time.monotonic() + max(expires, 0)
        key = (stream, consumer)
        waiting = False
        # The read below keeps fetches on an idle consumer from writing log entries.
        # When the previous fetch came back full there is most likely more, so the
        # first attempt skips it and proposes at once: then NextMsgs rides in the same
        # entry as the acks sent just before this fetch (one sync instead of a read,
        # a sync for the acks and another for NextMsgs). Errors are the same either way.
        was_hot = key in hot
        try:
            while True:
                # Nobody to hear the answer (connection closed, or for NATS the reply inbox
                # lost its subscriber): stop before marking messages delivered to no one.
                if conn.closed:
                    return []
                if was_hot:
                    was_hot, ready = False, True
                else:
                    ready, _ = await self.read(lambda s: s.consumer_work(stream, consumer, time.time_ns()))
                if ready:
                    msgs = await self.propose(NextMsgs(stream, consumer, batch, max_bytes))
                    if len(msgs) >= batch:
                        if len(hot) >= MAX_HOT_FETCH:
                            hot.clear()
                        hot.add(key)
                    else:
                        hot.discard(key)
                    if msgs:
                        return msgs
                remaining = deadline - time.monotonic()
                if no_wait or remaining <= 0:
                    return []
                if not waiting:
                    cfg = (await self.read(lambda s: s.consumer_info(stream, consumer))).config
                    if self._waiting.get(key, 0) >= (cfg.max_waiting or 0):
                        raise MaxWaitingError()
                    self._waiting[key] = self._waiting.get(key, 0) + 1
                    waiting = True
                await self._wait_change(min(remaining, self.config.tick_s))
        finally:
            if waiting:
                self._waiting[key] -= 1
                if not self._waiting[key]:
                    del self._waiting[key]

    def acked(self, cmd: Ack, seconds: float) -> None:
        """After an ack (`seconds` from its arrival): a nak or term may make a message
        deliverable again at once."""
        self.metrics.consumed[(cmd.stream, cmd.consumer, cmd.kind)] += 1
        self.metrics.ack_seconds.observe(seconds)
        if cmd.kind in ("nak", "term"):
            self.wake()

    # == push ===============================================================================
    async def consumer_changed(self, stream: str, info: ConsumerInfo) -> None:
        loop = self._push_loops.get((stream, info.name))
        if loop is not None and getattr(loop, "subject", None) != info.config.deliver_subject:
            loop.cancel()       # an update moved the deliver subject: deliver to the new one
            self._push_loops.pop((stream, info.name), None)
        await self.ensure_push_loops()

    async def ensure_push_loops(self) -> None:
        """Start a delivery loop for every push consumer whose deliver subject has a
        subscriber (on the leader: only it can hand out messages)."""
        if not self.node.is_leader:
            return

        def push_consumers(s):
            out = []
            for name in s.stream_names():
                for cname in s.consumer_names(name):
                    cfg = s.consumer_info(name, cname).config
                    if cfg.deliver_subject:
                        out.append((name, cname, cfg))
            return out

        for stream, cname, cfg in await self.read(push_consumers):
            key = (stream, cname)
            task = self._push_loops.get(key)
            if (task is None or task.done()) and self.router.has_interest(cfg.deliver_subject):
                task = asyncio.get_running_loop().create_task(self._push_loop(stream, cname, cfg))
                task.subject = cfg.deliver_subject
                self._push_loops[key] = task

    async def _push_loop(self, stream: str, cname: str, cfg: ConsumerConfig) -> None:
        subject = cfg.deliver_subject
        hb = cfg.idle_heartbeat or 0
        last_sent = time.monotonic()
        full = False      # the last NextMsgs handed out a whole batch
        fc_reply: Optional[str] = None      # the flow-control request awaiting its answer
        fc_bytes = 0                        # bytes delivered since the last request (or answer)
        batch_bytes = FC_BYTES if cfg.flow_control else PUSH_BATCH_BYTES
        try:
            info = await self.read(lambda s: s.consumer_info(stream, cname))
            # What idle heartbeats report: the last consumer and stream seqs delivered.
            last_cseq, last_sseq = info.delivered.consumer_seq, info.delivered.stream_seq
            while True:
                if not self.router.has_interest(subject):
                    return
                if fc_reply is not None and fc_reply not in self._fc:
                    fc_reply, fc_bytes = None, 0        # answered
                stalled = fc_reply is not None and fc_bytes >= FC_BYTES
                takers = [s for s in self.router.targets(subject, _sub_can_take) if s.conn.can_take()]
                if not takers or stalled:
                    # Back-pressure: nobody can take more (or flow control waits for its
                    # answer); deliver nothing (and drop nothing) until that changes.
                    if hb and time.monotonic() - last_sent >= hb:
                        self._heartbeat(subject, last_cseq, last_sseq, fc_reply)
                        last_sent = time.monotonic()
                    await self._wait_change(self.config.tick_s)
                    continue
                # The read keeps an idle consumer from writing log entries. After a full
                # batch there is most likely more, so propose at once: NextMsgs then
                # shares an entry with the acks that came in meanwhile (fetch does the same).
                if full:
                    full, ready = False, True
                else:
                    ready, _ = await self.read(lambda s: s.consumer_work(stream, cname, time.time_ns()))
                if ready:
                    try:
                        msgs = await self.propose(NextMsgs(stream, cname, PUSH_BATCH_MSGS, batch_bytes))
                    except (ConsumerNotFoundError, StreamNotFoundError, NotLeaderError):
                        raise
                    except JSError as e:
                        # A refused proposal (a busy node, say) only delays delivery.
                        log.warning("push delivery deferred: %s", e.description)
                        await asyncio.sleep(self.config.tick_s)
                        continue
                    # Each connection is judged once per batch, at its first message: one that
                    # crosses the limit mid-batch still gets the rest (no gap in what it sees);
                    # one already over it gets no copy, so a subscriber that stops reading does
                    # not buffer without bound while others keep this loop going (with acks,
                    # what it misses is redelivered).
                    open_conns: dict = {}
                    for m in msgs:
                        for sub in self.router.targets(subject, _sub_can_take):
                            if sub.conn not in open_conns:
                                open_conns[sub.conn] = sub.conn.can_take()
                            if open_conns[sub.conn]:
                                sub.conn.deliver(sub, subject, None, m.headers, m.data, m)
                        fc_bytes += len(m.data) + len(m.subject)
                        last_cseq, last_sseq = m.consumer_seq, m.stream_seq
                    full = len(msgs) >= PUSH_BATCH_MSGS
                    if msgs:
                        last_sent = time.monotonic()
                        if cfg.flow_control and fc_reply is None and fc_bytes >= FC_BYTES \
                                and len(self._fc) < MAX_FC_OUTSTANDING:
                            fc_reply = self._flow_control_request(stream, cname, subject)
                            fc_bytes = 0
                        continue
                if hb and time.monotonic() - last_sent >= hb:
                    self._heartbeat(subject, last_cseq, last_sseq, fc_reply)
                    last_sent = time.monotonic()
                await self._wait_change(self.config.tick_s)
        except (ConsumerNotFoundError, StreamNotFoundError, NotLeaderError):
            return      # a new leader starts its own loops (see _ticker)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("push delivery failed", extra={"stream": stream, "consumer": cname})
        finally:
            if fc_reply is not None:
                self._fc.discard(fc_reply)
            if self._push_loops.get((stream, cname)) is asyncio.current_task():
                self._push_loops.pop((stream, cname), None)

    def _heartbeat(self, subject: str, last_cseq: int, last_sseq: int, fc_reply: Optional[str]) -> None:
        """`100 Idle Heartbeat` as nats-server sends it: no reply, the last delivered consumer
        and stream seqs (nats-py checks them for gaps), and while a flow-control request is
        unanswered its reply subject as `Nats-Consumer-Stalled` (the client answers that)."""
        headers = {"Status": "100", "Description": "Idle Heartbeat",
                   "Nats-Last-Consumer": str(last_cseq), "Nats-Last-Stream": str(last_sseq)}
        if fc_reply is not None:
            headers["Nats-Consumer-Stalled"] = fc_reply
        for sub in self.router.targets(subject):
            if sub.conn.can_take():   # same bound as deliveries
                sub.conn.deliver(sub, subject, None, headers, b"", None)

    def _flow_control_request(self, stream: str, cname: str, subject: str) -> str:
        self._fc_ids += 1
        reply = f"{FC_PREFIX}{stream}.{cname}.{self._fc_ids}"
        self._fc.add(reply)
        for sub in self.router.targets(subject):
            if sub.conn.can_take():
                sub.conn.deliver(sub, subject, reply, {"Status": "100", "Description": "FlowControl Request"},
                                 b"", None)
        return reply

    # == time and events ==================================================================
    async def _ticker(self) -> None:
        last_sweep = time.monotonic()
        was_leader = self.node.is_leader
        while True:
            await asyncio.sleep(self.config.tick_s)
            self.wake()
            if self.node.is_leader != was_leader:
                # A new leader takes over push delivery; a deposed one has nothing to
                # deliver (its loops end on their next proposal) and its clients move on.
                was_leader = self.node.is_leader
                log.info("leadership changed", extra={"leader": was_leader})
                if was_leader:
                    try:
                        await self.ensure_push_loops()
                    except JSError:
                        pass
            for hook in self._leadership_hooks:
                hook(was_leader)
            if time.monotonic() - last_sweep >= self.config.sweep_s and self.node.is_leader:
                last_sweep = time.monotonic()
                try:
                    cmds = [Sweep()] + [Touch(s, c) for (s, c) in list(self._waiting) + list(self._push_loops)]
                    await self.node.propose(cmds)
                except JSError:
                    pass

    def _on_events(self, events) -> None:
        wake = False
        for ev in events:
            if ev.kind == "stored":
                wake = True
            elif ev.kind in ("max_deliveries", "terminated"):
                self._spawn(self._advisory(ev))
            elif ev.kind in ("consumer_deleted", "stream_deleted"):
                wake = True
            elif ev.kind == "republish" and self.node.is_leader:
                self.deliver_core(ev.subject, ev.data, {**ev.headers, "Nats-Time-Stamp": rfc3339(ev.time)})
        if wake:
            self.wake()

    async def _advisory(self, ev) -> None:
        if ev.kind == "max_deliveries":
            subject = f"{ADVISORY_PREFIX}.MAX_DELIVERIES.{ev.stream}.{ev.consumer}"
            body = {"type": "io.nats.jetstream.advisory.v1.max_deliver", "stream": ev.stream,
                    "consumer": ev.consumer, "stream_seq": ev.stream_seq, "deliveries": ev.deliveries}
        else:
            subject = f"{ADVISORY_PREFIX}.MSG_TERMINATED.{ev.stream}.{ev.consumer}"
            body = {"type": "io.nats.jetstream.advisory.v1.terminated", "stream": ev.stream,
                    "consumer": ev.consumer, "stream_seq": ev.stream_seq, "deliveries": ev.deliveries,
                    "reason": ev.reason or ""}
        data = json.dumps(body).encode()
        if self.node.is_leader:
            try:
                await self.propose(Publish(subject, data, None))
            except NoStreamForSubjectError:
                pass
            except JSError:
                log.warning("advisory not stored", extra={"subject": subject})
        self.deliver_core(subject, data)
