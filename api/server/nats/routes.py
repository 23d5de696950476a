"""Routes: every node's NATS front joined to every other's, so core messages cross the cluster.

Core messages are at most once and must never cost a Raft entry, so they travel as
nats-server's do: over a full mesh of node-to-node connections. Each node dials every
other node's NATS port (found in the replicated node directory) and uses that
connection to send only:

- its clients' interest, one `RS+`/`RS-` per (pattern, queue) as it appears or goes;
- messages for the peer's subscribers (`RMSG`), at most one copy per matching interest;
- on a follower, its clients' JetStream publishes, acks and API requests, for the
  leader to handle as its own (`RPUB`). The answers come back as ordinary messages to
  the client's reply inbox, whose interest the follower has routed like any other.

What a node hears from a peer arrives on the peer's own connection to it. The peer's
interest becomes subscriptions in this node's router whose `conn` is the peer's `Link`,
so queue groups (one member cluster-wide), push consumers, pull requests and
no-responders see remote interest as they see local interest.

A route proves it holds the cluster secret: its CONNECT carries an HMAC of the nonce in
the INFO the dialled node sent. A message that arrived over a route is delivered to this
node's own subscribers only, never routed on, so one hop is the most a message makes.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
from collections import deque
from typing import Awaitable, Callable, Optional

from ..subs import Subscription
from . import codec as C

log = logging.getLogger("raftbroker.nats.routes")

MAX_ROUTE_PENDING = 64 * 1024 * 1024     # unsent bytes to one peer before the route is dropped
MAX_HELD_FRAMES = 4096                   # kept for a peer while its route is down (then dropped)
MAX_HELD_BYTES = 8 * 1024 * 1024
DIAL_TIMEOUT_S = 2.0
RECONCILE_S = 1.0


def route_proof(secret: Optional[str], nonce: str, name: str) -> str:
    key = hashlib.sha256(b"raftbroker route\x00" + (secret or "").encode()).digest()
    return hmac.new(key, f"{nonce}\x00{name}".encode(), hashlib.sha256).hexdigest()


class Link:
    """One peer: the interest it routed here, and this node's connection to it."""
    is_route = True
    closed = False          # a Subscriber's field: a link outlives its connections

    def __init__(self, name: str):
        self.name = name
        self.writer: Optional[asyncio.StreamWriter] = None
        self.subs: dict[tuple[str, Optional[str]], Subscription] = {}
        self.inbound = None             # the peer's connection to this node (a NatsConnection)
        self.sent = self.dropped = 0
        # What was sent while the connection was down (a node just started, a route being
        # redialled): sent first once it is up, so a request forwarded then, or its answer,
        # is late rather than lost. Bounded; past the bound frames are dropped (at most once).
        self.held: deque[bytes] = deque()
        self.held_bytes = 0

    @property
    def up(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    def can_take(self) -> bool:
        if not self.up:
            return len(self.held) < MAX_HELD_FRAMES
        return self.writer.transport.get_write_buffer_size() < MAX_ROUTE_PENDING // 2

    def connected(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        while self.held:
            writer.write(self.held.popleft())
        self.held_bytes = 0

    def send(self, frame: bytes) -> bool:
        if not self.up:
            if len(self.held) >= MAX_HELD_FRAMES or self.held_bytes + len(frame) > MAX_HELD_BYTES:
                self.dropped += 1
                return False
            self.held.append(frame)
            self.held_bytes += len(frame)
            return True
        self.writer.write(frame)
        self.sent += 1
        if self.writer.transport.get_write_buffer_size() > MAX_ROUTE_PENDING:
            # A peer that does not read is dropped rather than buffered for without
            # bound; the dialler reconnects and sends the interest again.
            log.warning("route to %s too slow: closed", self.name)
            self.writer.close()
        return True

    def deliver(self, sub: Subscription, subject: str, reply: Optional[str], headers: Optional[dict],
                data: bytes, meta) -> None:
        if meta is not None:
            subject, reply = meta.subject, C.ack_subject(meta)
        self.send(C.route_msg_frame(sub.subject, sub.queue, subject, reply, data, C.encode_headers(headers)))


class Routes:
    def __init__(self, name: str, secret: Optional[str], router, peers: Callable[[], Awaitable[dict[str, str]]],
                 subscribe: Callable[[Subscription], None]):
        self.name = name
        self.secret = secret
        self.router = router
        self.peers = peers              # () -> {node name: NATS address} of every node
        self.subscribe = subscribe      # adds a subscription the way the service does (push loops)
        self.links: dict[str, Link] = {}
        self.addresses: list[str] = []  # every node's NATS address, for INFO's connect_urls
        self._local: dict[tuple[str, Optional[str]], int] = {}
        self._dialers: dict[str, tuple[str, asyncio.Task]] = {}
        self._task: Optional[asyncio.Task] = None
        router.on_local = self._on_local

    # == lifecycle ===========================================================================
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._reconcile_loop())

    async def stop(self) -> None:
        tasks = [t for _, t in self._dialers.values()] + ([self._task] if self._task else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in self.links.values():
            if link.writer is not None:
                link.writer.close()

    def link(self, name: str) -> Link:
        if name not in self.links:
            self.links[name] = Link(name)
        return self.links[name]

    def status(self) -> list[dict]:
        return [{"name": n, "up": lk.up, "remote_subscriptions": len(lk.subs), "sent": lk.sent,
                 "dropped": lk.dropped} for n, lk in sorted(self.links.items())]

    # == dialling: one connection to every peer, kept up =======================================
    async def _reconcile_loop(self) -> None:
        while True:
            try:
                every = await self.peers()
                self.addresses = sorted(a for a in every.values() if a)
                wanted = {n: a for n, a in every.items() if n != self.name and a}
                for name, (addr, task) in list(self._dialers.items()):
                    if wanted.get(name) != addr or task.done():
                        task.cancel()
                        del self._dialers[name]
                for name, addr in wanted.items():
                    if name not in self._dialers:
                        self._dialers[name] = (addr, asyncio.get_running_loop().create_task(self._dial(name, addr)))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - no quorum to read the directory: next pass
                log.debug("route reconcile: %r", e)
            await asyncio.sleep(RECONCILE_S)

    async def _dial(self, name: str, addr: str) -> None:
        link = self.link(name)
        while True:
            writer = None
            try:
                host, _, port = addr.rpartition(":")
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port),
                                                                                limit=C.MAX_LINE + 8),
                                                        DIAL_TIMEOUT_S)
                line = await asyncio.wait_for(reader.readline(), DIAL_TIMEOUT_S)
                if not line.startswith(b"INFO "):
                    raise ConnectionError(f"{addr} is not a NATS port: {line[:60]!r}")
                nonce = json.loads(line[5:]).get("nonce", "")
                connect = {"route": self.name, "proof": route_proof(self.secret, nonce, self.name),
                           "verbose": False, "pedantic": False, "headers": True}
                writer.write(b"CONNECT " + json.dumps(connect).encode() + C.CRLF)
                for (pattern, queue), n in self._local.items():
                    if n > 0:
                        writer.write(C.route_sub_line(pattern, queue, True))
                link.connected(writer)
                log.info("route up", extra={"peer": name, "addr": addr})
                await self._read(reader, writer)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncio.TimeoutError, ValueError, ConnectionError) as e:
                log.debug("route to %s at %s: %r", name, addr, e)
            finally:
                if link.writer is writer:
                    link.writer = None
                if writer is not None:
                    writer.close()
            await asyncio.sleep(random.uniform(0.2, 1.0))

    @staticmethod
    async def _read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The dialled side only pings and refuses; anything else on this connection is noise."""
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"PING"):
                writer.write(C.PONG)
            elif line.startswith(b"-ERR"):
                raise ConnectionError(line.decode("utf-8", "replace").strip())

    # == interest: ours to the peers, theirs into our router ===================================
    def _on_local(self, sub: Subscription, delta: int) -> None:
        key = (sub.subject, sub.queue)
        n = self._local.get(key, 0) + delta
        if n > 0:
            self._local[key] = n
        else:
            self._local.pop(key, None)
        if (n > 0) != (n - delta > 0):
            line = C.route_sub_line(sub.subject, sub.queue, n > 0)
            for link in self.links.values():
                if link.up:
                    link.writer.write(line)

    def accept(self, name: str, nonce: str, proof) -> bool:
        return (isinstance(name, str) and name != self.name and isinstance(proof, str)
                and hmac.compare_digest(proof, route_proof(self.secret, nonce, name)))

    def attach(self, name: str, conn) -> None:
        """`conn` (the peer's connection here) now carries the peer's interest; an older one
        is closed and what it said forgotten: the peer sends all of it again."""
        link = self.link(name)
        if link.inbound is not None and link.inbound is not conn:
            link.inbound.close()
            self._forget(link)
        link.inbound = conn

    def detach(self, name: str, conn) -> None:
        link = self.links.get(name)
        if link is not None and link.inbound is conn:
            link.inbound = None
            self._forget(link)

    def _forget(self, link: Link) -> None:
        link.subs.clear()
        self.router.remove_conn(link)

    def remote_interest(self, name: str, op: C.RouteSub) -> None:
        link = self.link(name)
        key = (op.pattern, op.queue)
        if op.add and key not in link.subs:
            sub = Subscription(link, f"{op.pattern} {op.queue or ''}", op.pattern, op.queue)
            link.subs[key] = sub
            self.subscribe(sub)
        elif not op.add and key in link.subs:
            self.router.remove(link.subs.pop(key))

    def deliver_here(self, op: C.RouteMsg) -> None:
        """A message a peer routed for one interest of this node: to every plain subscriber
        on that pattern, or to one member of that queue (one that can take it, if any)."""
        subs = [s for s in self.router.local(op.pattern, op.queue) if not s.conn.closed]
        if op.queue and subs:
            ready = [s for s in subs if s.conn.can_take()] or subs
            subs = [random.choice(ready)]
        headers = C.decode_headers(op.headers) if op.headers else None
        for s in subs:
            if s.conn.can_take():
                s.conn.deliver(s, op.subject, op.reply, headers, op.payload, None)

    # == a follower's JetStream traffic, to the leader ==========================================
    def ready(self, leader: str) -> tuple[bool, str]:
        """A follower serves nats-py's JetStream once its routes both ways to the leader are up."""
        if not leader or leader == self.name:
            return True, "ok"
        link = self.links.get(leader)
        if link is None or not link.up:
            return False, f"no NATS route to the leader {leader} yet"
        if link.inbound is None:
            return False, f"the leader {leader} has no NATS route to this node yet"
        return True, "ok"

    def forward(self, leader: str, pub: C.Pub, no_responders: bool) -> bool:
        if not leader or leader == self.name:
            return False
        return self.link(leader).send(C.route_pub_frame(pub.subject, pub.reply, no_responders, pub.payload,
                                           pub.headers or b""))
