"""The NATS-protocol front: nats-py (and any NATS client) talks to the node unchanged.

Core subjects, subscriptions, pulls and push delivery are the shared `JetStreamService`'s,
the same ones the binary RPC front serves; this module turns NATS lines into its calls and
its deliveries into MSG/HMSG lines. Publishes to a stream's subject are proposed in the
order they arrive on the connection (the proposal is queued before the next line is read).
Core messages are at most once and never enter the Raft log: which subjects a stream
captures is kept in a cache refreshed from the store (`StreamSubjects`).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Optional

from jetstream import subjects as subj
from jetstream.errors import JSError, NoStreamForSubjectError
from jetstream.results import DeliveredMsg
from storage import Ack, Publish

from ..service import JetStreamService
from ..stats import ConnRow, Traffic
from ..subs import Subscription
from . import codec as C
from .jsapi import API_PREFIX, JetStreamApi
from .jsjson import SERVER_VERSION
from .pull import PullRequests
from .routes import Routes

log = logging.getLogger("raftbroker.nats")

ACK_PREFIX = C.ACK_PREFIX
FC_PREFIX = "$JS.FC."
DIRECT_GET = API_PREFIX + "DIRECT.GET."
ROUTE_HEADER_ROOM = 64 * 1024
_client_ids = itertools.count(1)


@dataclass
class NatsConfig:
    host: str = "127.0.0.1"
    port: int = 4222
    server_name: str = "n1"
    token: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = None
    max_payload: int = 1024 * 1024
    max_pending_bytes: int = 64 * 1024 * 1024   # unsent bytes before a client is a slow consumer
    max_subs: int = 65536                       # subscriptions per connection
    max_inflight_js: int = 4096                 # JetStream publishes and API calls in progress per connection
    auth_timeout_s: float = 2.0
    ping_interval_s: float = 120.0
    max_pings_out: int = 2
    connect_urls: list = field(default_factory=list)    # fixed; else, in a cluster, every node's
    routes: bool = False                                # join the other nodes' NATS fronts (routes.py)
    cluster_secret: Optional[str] = None                # what routes prove they hold

    @property
    def auth_required(self) -> bool:
        return bool(self.token or self.user)


class StreamSubjects:
    """Which subjects some stream captures, for routing publishes without a store read.
    Refreshed when an applied entry creates, changes or deletes a stream (on every node, so
    it follows changes made through any front), on every service tick as a backstop, and
    before this front answers a stream change of its own."""

    def __init__(self, service: JetStreamService):
        self.service = service
        self.patterns: list[str] = []
        self.direct: frozenset[str] = frozenset()     # streams that answer DIRECT.GET (allow_direct)
        self._refreshing = False
        service.node.add_listener(self._on_events)

    def captures(self, subject: str) -> bool:
        return any(subj.matches(p, subject) for p in self.patterns)

    async def refresh(self) -> None:
        def read(s):
            configs = [s.stream_info(n).config for n in s.stream_names()]
            return ([p for c in configs for p in (c.subjects or [])],
                    frozenset(c.name for c in configs if c.allow_direct))
        try:
            self.patterns, self.direct = await self.service.read(read)
        except JSError:
            pass    # no quorum to read from: keep what we knew; the next tick tries again

    def _on_events(self, events) -> None:
        if any(ev.kind in ("stream_changed", "stream_deleted") for ev in events):
            self.refresh_soon()

    def refresh_soon(self, *_):
        if self._refreshing:
            return
        self._refreshing = True

        async def run():
            try:
                await self.refresh()
            finally:
                self._refreshing = False
        asyncio.get_running_loop().create_task(run())


class NatsConnection:
    def __init__(self, front: "NatsFront", reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.front = front
        self.reader = reader
        self.writer = writer
        self.client_id = next(_client_ids)
        peer = writer.get_extra_info("peername") or ("", 0)
        self.addr = f"{peer[0]}:{peer[1]}"
        self.parser = C.Parser(front.config.max_payload)
        self.subs: dict[str, Subscription] = {}
        self.max_msgs: dict[str, int] = {}       # sid -> messages still to deliver before auto-unsubscribe
        self.closed = False
        self.connected = False
        self.verbose = False
        self.echo = True
        self.headers = False
        self.no_responders = False
        self.name = ""
        self.inflight = 0
        self.pings_out = 0
        self.hot_fetch: set = set()
        self.traffic = Traffic()
        self.started = time.time()
        self.lang = self.version = ""
        self.nonce = secrets.token_urlsafe(12)
        self.route: Optional[str] = None        # the peer's name, once this is a proven route

    # == output ==============================================================================
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > self.front.config.max_pending_bytes:
            # Slow consumer: NATS closes the connection rather than buffer without bound.
            self.front.slow_consumers += 1
            log.warning("slow consumer closed", extra={"client": self.addr})
            self.close()

    def can_take(self) -> bool:
        return not self.closed and \
            self.writer.transport.get_write_buffer_size() < self.front.config.max_pending_bytes // 2

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()

    def deliver(self, sub: Subscription, subject: str, reply: Optional[str], headers: Optional[dict],
                data: bytes, meta: Optional[DeliveredMsg]) -> None:
        if meta is not None:
            # A consumer's message shows its stored subject, with the ack subject as reply.
            subject, reply = meta.subject, C.ack_subject(meta)
        block = C.encode_headers(headers) if headers and self.headers else b""
        self.write(C.msg_frame(subject, sub.sid, reply, data, block))
        self.traffic.sent(len(data))
        left = self.max_msgs.get(sub.sid)
        if left is not None:
            if left <= 1:
                self._unsubscribe(sub.sid)
            else:
                self.max_msgs[sub.sid] = left - 1

    def row(self) -> ConnRow:
        ip, _, port = self.addr.rpartition(":")
        return ConnRow(self.client_id, "nats", ip, int(port or 0), self.started, self.traffic,
                       self.writer.transport.get_write_buffer_size() if not self.closed else 0,
                       len(self.subs), self.name, self.lang, self.version)

    def _unsubscribe(self, sid: str) -> None:
        sub = self.subs.pop(sid, None)
        self.max_msgs.pop(sid, None)
        if sub is not None:
            self.front.service.unsubscribe(sub)

    # == input ===============================================================================
    async def run(self) -> None:
        self.write(C.info_line(self.front.info(self)))
        try:
            await asyncio.wait_for(self._read_connect(), self.front.config.auth_timeout_s)
        except asyncio.TimeoutError:
            self.write(C.err_line(C.ERR_AUTH_TIMEOUT))
            return
        while not self.closed:
            data = await self.reader.read(65536)
            if not data:
                return
            if not self._feed(data):
                return

    async def _read_connect(self) -> None:
        while not self.connected and not self.closed:
            data = await self.reader.read(65536)
            if not data:
                self.close()
                return
            if not self._feed(data):
                self.close()
                return

    def _feed(self, data: bytes) -> bool:
        try:
            while True:
                ops = self.parser.feed(data)
                data = b""
                for op in ops:
                    if not self._op(op):
                        return False
                if not ops or not isinstance(ops[-1], C.Connect):
                    break
        except C.NatsProtocolError as e:
            # The parser's verdict, or an HPUB header block that only decode_headers rejects.
            self.write(C.err_line(e.text))
            return False
        return True

    def _op(self, op) -> bool:
        if not self.connected:
            if not isinstance(op, C.Connect):
                self.write(C.err_line(C.ERR_AUTH if self.front.config.auth_required else C.ERR_UNKNOWN_OP))
                return False
            if "route" in op.options:
                return self._route_connect(op.options)
            return self._connect(op.options)
        if self.route is not None:
            return self._route_op(op)
        if isinstance(op, C.Pub):
            self.traffic.got(len(op.payload))
            self.front.publish(self, op)
        elif isinstance(op, C.Ping):
            self.write(C.PONG)
            return True         # no +OK for PING
        elif isinstance(op, C.Pong):
            self.pings_out = 0
            return True
        elif isinstance(op, C.Sub):
            if not subj.is_valid_subject(op.subject):
                self.write(C.err_line(C.ERR_INVALID_SUBJECT))
                return True
            if op.sid not in self.subs and len(self.subs) >= self.front.config.max_subs:
                self.write(C.err_line("Maximum Subscriptions Exceeded"))
                return True
            old = self.subs.pop(op.sid, None)
            if old is not None:
                self.front.service.unsubscribe(old)
            sub = Subscription(self, op.sid, op.subject, op.queue or None)
            self.subs[op.sid] = sub
            self.front.subscribe(sub)
        elif isinstance(op, C.Unsub):
            if op.max_msgs and op.sid in self.subs:
                self.max_msgs[op.sid] = op.max_msgs
            else:
                self._unsubscribe(op.sid)
        elif isinstance(op, C.Connect):
            pass
        if self.verbose:
            self.write(C.OK)
        return True

    def _route_connect(self, o: dict) -> bool:
        routes = self.front.routes
        if routes is None or not routes.accept(o.get("route"), self.nonce, o.get("proof")):
            self.write(C.err_line(C.ERR_AUTH))
            return False
        self.route = o["route"]
        self.connected = True
        self.parser.routes = True
        # A routed message carries its headers re-encoded by the sender, which may be a
        # little longer than the block the client sent within max_payload.
        self.parser.max_payload += ROUTE_HEADER_ROOM
        self.front.conns.discard(self)          # a route is no client: not in /connz, no lame duck
        routes.attach(self.route, self)
        return True

    def _route_op(self, op) -> bool:
        routes = self.front.routes
        if isinstance(op, C.RouteMsg):
            routes.deliver_here(op)
        elif isinstance(op, C.RouteSub):
            routes.remote_interest(self.route, op)
        elif isinstance(op, C.RoutePub):
            self.front.publish(Forwarded(self, op.no_responders), op.pub)
        elif isinstance(op, C.Ping):
            self.write(C.PONG)
        elif isinstance(op, C.Pong):
            self.pings_out = 0
        return True

    def _connect(self, o: dict) -> bool:
        c = self.front.config
        ok = True
        if c.token and not (isinstance(o.get("auth_token"), str) and secrets.compare_digest(o["auth_token"], c.token)):
            ok = False
        if c.user and not (o.get("user") == c.user and isinstance(o.get("pass"), str)
                           and secrets.compare_digest(o["pass"], c.password or "")):
            ok = False
        if not ok:
            self.write(C.err_line(C.ERR_AUTH))
            return False
        self.verbose = bool(o.get("verbose"))
        self.echo = o.get("echo", True) is not False
        self.headers = bool(o.get("headers"))
        self.no_responders = bool(o.get("no_responders")) and self.headers
        self.name = str(o.get("name") or "")
        self.lang, self.version = str(o.get("lang") or ""), str(o.get("version") or "")
        self.connected = True
        if self.verbose:
            self.write(C.OK)
        return True


class Forwarded:
    """A client of another node, as the leader's front sees the publish that node forwarded
    (the route's connection stands in for it: its bounds, its liveness)."""
    forwarded = True
    echo = True

    def __init__(self, route: NatsConnection, no_responders: bool):
        self.route = route
        self.no_responders = no_responders

    @property
    def closed(self) -> bool:
        return self.route.closed

    @property
    def hot_fetch(self) -> set:
        return self.route.hot_fetch

    @property
    def inflight(self) -> int:
        return self.route.inflight

    @inflight.setter
    def inflight(self, n: int) -> None:
        self.route.inflight = n


class NatsFront:
    def __init__(self, node, service: JetStreamService, config: NatsConfig | None = None):
        self.node = node
        self.service = service
        self.config = config or NatsConfig()
        self.conns: set[NatsConnection] = set()
        self.streams = StreamSubjects(service)
        self.api = JetStreamApi(service, self.streams.refresh)
        self.pulls = PullRequests(service)
        self.slow_consumers = 0
        self.total_connections = 0
        self.closed_traffic = Traffic()     # what connections that have gone moved
        self.server_id = secrets.token_hex(11).upper()
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: set[asyncio.Task] = set()
        self.port = self.config.port
        self.routes = Routes(self.config.server_name, self.config.cluster_secret, service.router,
                             self._nats_addresses, service.subscribe_now) if self.config.routes else None
        service.on_tick(self._on_tick)

    async def _nats_addresses(self) -> dict[str, str]:
        return {name: d.get("nats", "") for name, d in (await self.service.read(lambda s: s.nodes())).items()}

    # == lifecycle ===========================================================================
    async def start(self) -> None:
        await self.streams.refresh()
        self._server = await asyncio.start_server(self._handle, self.config.host, self.config.port,
                                                  limit=C.MAX_LINE + 8)
        self.port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._keepalive())
        if self.routes is not None:
            await self.routes.start()
        log.info("nats front listening", extra={"port": self.port})

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        # Lame duck: tell clients to move on before the connections close.
        ldm = C.info_line({**self.info(None), "ldm": True})
        for c in list(self.conns):
            c.write(ldm)
            c.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.routes is not None:
            await self.routes.stop()

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def info(self, conn: Optional[NatsConnection]) -> dict:
        c = self.config
        d = {"server_id": self.server_id, "server_name": c.server_name, "version": SERVER_VERSION, "proto": 1,
             "go": "python", "host": c.host, "port": self.port, "headers": True, "max_payload": c.max_payload,
             "jetstream": True}
        if conn is not None:
            d["client_id"] = conn.client_id
            d["client_ip"] = conn.addr.rpartition(":")[0]
            if self.routes is not None:
                d["nonce"] = conn.nonce         # what a route signs (nats-py signs it only with nkeys)
        if c.auth_required:
            d["auth_required"] = True
        urls = c.connect_urls or (self.routes.addresses if self.routes is not None else [])
        if urls:
            d["connect_urls"] = list(urls)
        return d

    async def _handle(self, reader, writer) -> None:
        conn = NatsConnection(self, reader, writer)
        self.conns.add(conn)
        self.total_connections += 1
        try:
            await conn.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("nats connection failed")
        finally:
            self.conns.discard(conn)
            self.closed_traffic.add(conn.traffic)
            self.service.drop_subscriber(conn)
            if conn.route is not None:
                self.routes.detach(conn.route, conn)
            conn.close()

    def _on_tick(self, is_leader: bool) -> None:
        self.streams.refresh_soon()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.config.ping_interval_s)
            for c in list(self.conns):
                if c.pings_out >= self.config.max_pings_out:
                    c.write(C.err_line(C.ERR_STALE))
                    c.close()
                else:
                    c.pings_out += 1
                    c.write(C.PING)

    # == routing =============================================================================
    def subscribe(self, sub: Subscription) -> None:
        self.service.subscribe_now(sub)

    def publish(self, conn: NatsConnection, op: C.Pub) -> None:
        if self._forwarded_to_leader(conn, op):
            return
        subject = op.subject
        if subject.startswith("$JS."):
            if subject.startswith(API_PREFIX):
                self._js_call(conn, op)
                # A request is a message like any other: a subscriber to `$JS.API.>` sees it.
                self._core(conn, subject, op.reply, C.decode_headers(op.headers) if op.headers else None,
                           op.payload)
                return
            if subject.startswith(ACK_PREFIX):
                self._ack(conn, op)
                return
            if subject.startswith(FC_PREFIX):
                self.service.flow_control_answered(subject)
                return
        headers = C.decode_headers(op.headers) if op.headers else None
        if self.streams.captures(subject):
            self._js_publish(conn, op, headers)
        elif op.reply and conn.no_responders and not self.service.router.has_interest(subject):
            self._reply(op.reply, b"", {"Status": "503"})
            return
        self._core(conn, subject, op.reply, headers, op.payload)

    def _forwarded_to_leader(self, conn, op: C.Pub) -> bool:
        """On a follower, JetStream's subjects (API requests, acks, publishes a stream
        captures, requests with no responder) go to the leader over the route; the answer comes
        back to the client's reply inbox. DIRECT.GET of an allow_direct stream is answered
        here, by this replica. A publish forwarded here is never forwarded again."""
        if self.routes is None or getattr(conn, "forwarded", False) or self.node.is_leader:
            return False
        s = op.subject
        if s.startswith(DIRECT_GET):
            if s[len(DIRECT_GET):].partition(".")[0] in self.streams.direct:
                return False
        elif not (s.startswith(API_PREFIX) or s.startswith(ACK_PREFIX) or s.startswith(FC_PREFIX)
                  or self.streams.captures(s)
                  or (op.reply and conn.no_responders and not self.service.router.has_interest(s))):
            # The last: a request nobody here would answer may be a publish to a stream
            # this follower has not applied yet; the leader knows, and answers either way.
            return False
        leader = self.node.leader[0]
        if not self.routes.forward(leader, op, conn.no_responders):
            self._reply_json(op.reply, {"error": {"code": 503, "err_code": 10008, "description":
                                                  "JetStream system temporarily unavailable (no leader reachable)"}})
        return True

    def _core(self, conn: NatsConnection, subject: str, reply, headers, data: bytes) -> None:
        self.service.deliver_core(subject, data, headers, reply, exclude=None if conn.echo else conn)

    def _reply(self, reply: Optional[str], data: bytes, headers: Optional[dict] = None) -> None:
        if reply:
            self.service.deliver_core(reply, data, headers)

    def _reply_json(self, reply: Optional[str], body: dict) -> None:
        self._reply(reply, json.dumps(body, separators=(",", ":")).encode())

    def _js_publish(self, conn: NatsConnection, op: C.Pub, headers: Optional[dict]) -> None:
        if conn.inflight >= self.config.max_inflight_js:
            self._reply_json(op.reply, {"error": {"code": 429, "err_code": 10999,
                                                  "description": "too many requests in flight"}})
            return
        cmd = Publish(op.subject, op.payload, headers)
        t0 = time.perf_counter()
        try:
            fut = self.node.propose_future(cmd)
        except JSError as e:
            self._reply_json(op.reply, {"error": e.to_wire()})
            return
        conn.inflight += 1

        def done(f: asyncio.Future) -> None:
            conn.inflight -= 1
            if f.cancelled():
                return
            err = f.exception()
            r = err if err is not None else f.result()
            if isinstance(r, NoStreamForSubjectError):
                if op.reply and conn.no_responders and not self.service.router.has_interest(op.subject):
                    self._reply(op.reply, b"", {"Status": "503"})
                return
            if isinstance(r, JSError):
                self._reply_json(op.reply, {"error": r.to_wire()})
            elif isinstance(r, BaseException):
                log.error("publish failed: %r", r)
                self._reply_json(op.reply, {"error": {"code": 500, "err_code": 10999,
                                                      "description": f"internal error: {r!r}"}})
            else:
                self.service.metrics.published(r.stream, op.subject, time.perf_counter() - t0)
                body = {"stream": r.stream, "seq": r.seq}
                if r.duplicate:
                    body["duplicate"] = True
                self._reply_json(op.reply, body)
        fut.add_done_callback(done)

    def _js_call(self, conn: NatsConnection, op: C.Pub) -> None:
        if op.subject.startswith(API_PREFIX + "CONSUMER.MSG.NEXT."):
            self._spawn(self.pulls.serve(conn, op.subject, op.reply, op.payload))
            return
        if op.subject.startswith(DIRECT_GET):
            self._direct_get(conn, op)
            return

        async def run():
            self._reply_json(op.reply, await self.api.handle(op.subject, op.payload))
        self._spawn(run())

    def _direct_get(self, conn: NatsConnection, op: C.Pub) -> None:
        """`DIRECT.GET.<stream>[.<subject>]`: answered by streams with allow_direct only;
        for any other name nobody listens, so the asker hears "no responders"."""
        stream, _, last_by_subject = op.subject[len(DIRECT_GET):].partition(".")
        if stream not in self.streams.direct:
            if op.reply and conn.no_responders:
                self._reply(op.reply, b"", {"Status": "503"})
            return

        async def run():
            headers, data = await self.api.direct_get(stream, last_by_subject, op.payload)
            self._reply(op.reply, data, headers)
        self._spawn(run())

    def _ack(self, conn: NatsConnection, op: C.Pub) -> None:
        tokens = op.subject.split(".")
        if len(tokens) < 9:
            return
        stream, consumer, seq = tokens[2], tokens[3], tokens[5]
        kind, delay, reason, nxt = _ack_kind(op.payload)
        if kind is None or not seq.isdigit():
            return
        cmd = Ack(stream, consumer, int(seq), kind, delay, reason)
        t0 = time.perf_counter()
        try:
            fut = self.node.propose_future(cmd)
        except JSError:
            return          # an ack that cannot be queued is redelivered after ack_wait
        reply = op.reply

        def done(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            self.service.acked(cmd, time.perf_counter() - t0)
            if nxt is not None and reply:
                self._spawn(self.pulls.serve(conn, f"{API_PREFIX}CONSUMER.MSG.NEXT.{stream}.{consumer}",
                                             reply, nxt))
            elif reply:
                self._reply(reply, b"")      # ack_sync: confirmed once applied
        fut.add_done_callback(done)


def _ack_kind(payload: bytes):
    """(kind, nak delay s, term reason, +NXT request) of an ack payload; kind None if unknown."""
    p = payload.strip()
    if p in (b"", b"+ACK", b"+OK"):
        return "ack", 0.0, None, None
    if p.startswith(b"-NAK"):
        rest = p[4:].strip()
        delay = 0.0
        if rest:
            try:
                d = json.loads(rest)
                delay = float(d.get("delay", 0)) / 1e9 if isinstance(d, dict) else 0.0
            except ValueError:
                delay = _go_duration_s(rest.decode("ascii", "replace"))
        return "nak", max(delay, 0.0), None, None
    if p == b"+WPI":
        return "progress", 0.0, None, None
    if p.startswith(b"+TERM"):
        return "term", 0.0, p[5:].strip().decode("utf-8", "replace") or None, None
    if p.startswith(b"+NXT"):
        return "ack", 0.0, None, p[4:].strip()
    return None, 0.0, None, None


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _go_duration_s(text: str) -> float:
    """'5s', '250ms', '1m30s' as seconds; 0 for anything else."""
    total, num = 0.0, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            num += ch
            i += 1
            continue
        unit = next((u for u in ("ns", "us", "µs", "ms", "s", "m", "h") if text.startswith(u, i)), None)
        if unit is None or not num:
            return 0.0
        total += float(num) * _UNITS[unit]
        num = ""
        i += len(unit)
    return total if not num else 0.0
