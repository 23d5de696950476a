"""The binary RPC front: connections, the handshake, frames in and out, and one handler per
operation. What lasts longer than a request (waiting pulls, push delivery, core
subscribers, sweeps) is the shared `JetStreamService`'s; this module only turns frames
into its calls and its deliveries into frames.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from jetstream.config import ConsumerConfig, StreamConfig
from cluster.pipelines import proof_ok
from jetstream.errors import BadRequestError, JSError, NotLeaderError, js_error
from jetstream.results import DeliveredMsg
from jetstream.subjects import is_valid_subject
from storage import (
    Ack, AddConsumer, AddStream, DeleteConsumer, DeleteMsg, DeleteStream, Publish, PurgeStream, SourceCopy,
    UpdateStream,
)

from .. import protocol as P
from ..wire import FrameWriter
from .service import JetStreamService
from .stats import ConnRow, Traffic
from .subs import Subscription

_conn_ids = itertools.count(1)

log = logging.getLogger("raftbroker.server")

@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4222
    server_id: str = "n1"
    token: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = None
    max_frame: int = P.DEFAULT_MAX_FRAME
    max_payload: int = 8 * 1024 * 1024
    max_inflight: int = 1024           # requests in progress per connection
    max_subs: int = 1024               # subscriptions per connection
    max_outbound_bytes: int = 8 * 1024 * 1024  # unsent bytes per connection before pushes pause
    max_pub_batch: int = 1000
    handshake_timeout_s: float = 5.0
    cluster_secret: Optional[str] = None   # when set, source.copy must carry a proof made with it

    @property
    def auth_required(self) -> bool:
        return bool(self.token or self.user)


def _request_body(req: P.Request) -> dict:
    body = req.body if req.body is not None else {}
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a map")
    return body


class Connection:
    def __init__(self, server: "Server", reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        self.reader = reader
        self.decoder = P.Decoder(server.config.max_frame)
        self.subs: dict[int, Subscription] = {}
        self.redirected_at = 0.0        # when a follower last sent this connection to the leader
        self.inflight = 0
        self.closed = False
        self.name: Optional[str] = None
        self.out = FrameWriter(writer)
        self.cid = next(_conn_ids)
        self.peer = writer.get_extra_info("peername") or ("", 0)
        self.started = time.time()
        self.traffic = Traffic()
        # (stream, consumer) pairs whose last fetch here came back full: the next fetch
        # proposes NextMsgs at once (see JetStreamService.fetch).
        self.hot_fetch: set[tuple[str, str]] = set()

    def send(self, frame) -> None:
        if not self.closed:
            self.out.send(frame)

    def can_take(self) -> bool:
        return not self.closed and self.out.unsent_bytes < self.server.config.max_outbound_bytes

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.out.close()

    def deliver(self, sub: Subscription, subject: str, reply: Optional[str], headers: Optional[dict],
                data: bytes, meta: Optional[DeliveredMsg]) -> None:
        self.traffic.sent(len(data))
        self.send(P.Msg(sub.sid, subject, reply, headers, data, meta.to_dict() if meta is not None else None))

    def row(self) -> ConnRow:
        return ConnRow(self.cid, "rpc", str(self.peer[0]), int(self.peer[1]), self.started, self.traffic,
                       self.out.unsent_bytes, len(self.subs), self.name or "", "python", "")


class Server:
    def __init__(self, node, service: JetStreamService, config: ServerConfig | None = None):
        self.node = node
        self.service = service
        self.config = config or ServerConfig()
        self.conns: set[Connection] = set()
        self.total_connections = 0
        self.closed_traffic = Traffic()     # what connections that have gone moved
        self._tasks: set[asyncio.Task] = set()
        self._server: Optional[asyncio.AbstractServer] = None
        self._ops = {
            "stream.add": self.op_stream_add, "stream.update": self.op_stream_update,
            "stream.delete": self.op_stream_delete, "stream.info": self.op_stream_info,
            "stream.names": self.op_stream_names, "stream.list": self.op_stream_list,
            "stream.purge": self.op_stream_purge, "msg.get": self.op_msg_get, "msg.delete": self.op_msg_delete,
            "pub": self.op_pub, "pub.batch": self.op_pub_batch,
            "consumer.add": self.op_consumer_add, "consumer.delete": self.op_consumer_delete,
            "consumer.info": self.op_consumer_info, "consumer.names": self.op_consumer_names,
            "consumer.list": self.op_consumer_list, "fetch": self.op_fetch, "ack": self.op_ack,
            "ack.next": self.op_ack_next, "sub": self.op_sub, "unsub": self.op_unsub, "cpub": self.op_cpub,
            "source.copy": self.op_source_copy,
            "cluster.status": self.op_cluster_status, "cluster.add_peer": self.op_cluster_add_peer,
            "cluster.remove_peer": self.op_cluster_remove_peer, "cluster.step_down": self.op_cluster_step_down,
        }
        # Ops served without a task (see _serve_direct).
        self._direct = {"pub": (self._publish_cmd, self._pub_result), "ack": (self._ack_cmd, self._ack_result)}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        service.on_tick(self._on_tick)

    # == lifecycle =======================================================================
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._handle, self.config.host, self.config.port,
                                                  limit=self.config.max_frame + 8)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("rpc server listening", extra={"port": self.port})

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        for c in list(self.conns):
            c.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _info(self) -> P.Info:
        name, addr = self.node.leader
        c = self.config
        return P.Info(server_id=c.server_id, max_frame=c.max_frame, max_payload=c.max_payload,
                      max_inflight=c.max_inflight, max_subs=c.max_subs, auth_required=c.auth_required,
                      leader=name, leader_addr=addr, max_pub_batch=c.max_pub_batch)

    # == connections =====================================================================
    async def _handle(self, reader, writer) -> None:
        conn = Connection(self, reader, writer)
        self.conns.add(conn)
        self.total_connections += 1
        try:
            conn.send(self._info())
            if await self._handshake(conn):
                await self._read_loop(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            self.conns.discard(conn)
            self.closed_traffic.add(conn.traffic)
            self.service.drop_subscriber(conn)
            conn.close()

    async def _next_frame(self, conn: Connection, timeout: Optional[float] = None):
        while True:
            try:
                frame = conn.decoder.next()
            except P.ProtocolError as e:
                conn.send(P.Error(0, 400, e.err_code, e.description))
                if e.fatal:
                    await conn.out.drain()
                    return None
                continue
            if frame is not None:
                return frame
            data = await asyncio.wait_for(conn.reader.read(65536), timeout) if timeout else \
                await conn.reader.read(65536)
            if not data:
                return None
            conn.decoder.feed(data)

    async def _handshake(self, conn: Connection) -> bool:
        try:
            frame = await self._next_frame(conn, self.config.handshake_timeout_s)
        except asyncio.TimeoutError:
            return False
        if frame is None:
            # EOF, or a fatal frame error that was already reported: one error frame
            # per problem, not a second, misleading "must be CONNECT".
            return False
        if not isinstance(frame, P.Connect):
            conn.send(P.Error(0, 400, P.ERR_NOT_CONNECTED, "the first frame must be CONNECT"))
            return False
        c = self.config
        ok = True
        if c.token and not (isinstance(frame.token, str) and secrets.compare_digest(frame.token, c.token)):
            ok = False
        if c.user and not (frame.user == c.user and isinstance(frame.password, str)
                           and secrets.compare_digest(frame.password, c.password or "")):
            ok = False
        if not ok:
            conn.send(P.Error(0, 401, P.ERR_AUTH, "authorization violation"))
            await conn.out.drain()
            return False
        conn.name = frame.name
        conn.send(P.Response(0, {"ok": True}))
        return True

    async def _read_loop(self, conn: Connection) -> None:
        while True:
            frame = await self._next_frame(conn)
            if frame is None:
                return
            if isinstance(frame, P.Request):
                if conn.inflight >= self.config.max_inflight:
                    conn.send(P.Error(frame.id, 429, P.ERR_TOO_MANY_INFLIGHT,
                                      f"more than {self.config.max_inflight} requests in flight"))
                    continue
                conn.inflight += 1
                direct = self._direct.get(frame.op)
                if direct is not None:
                    # call_soon, not a call now: it runs where a task's first step would,
                    # so proposals keep the order in which requests arrived.
                    self._loop.call_soon(self._serve_direct, conn, frame, direct)
                else:
                    self._spawn(self._serve(conn, frame))
            elif isinstance(frame, P.Ping):
                conn.send(P.Pong())
            elif isinstance(frame, P.Pong):
                pass
            else:
                conn.send(P.Error(0, 400, P.ERR_UNKNOWN_FRAME, f"unexpected {type(frame).__name__} frame"))

    async def _serve(self, conn: Connection, req: P.Request) -> None:
        try:
            op = self._ops.get(req.op)
            if op is None:
                raise JSError(f"unknown operation {req.op!r}", code=400, err_code=P.ERR_UNKNOWN_OP)
            result = await op(conn, _request_body(req))
            if req.id:
                conn.send(P.Response(req.id, result))
        except Exception as e:
            self._reply_error(conn, req, e)
        finally:
            conn.inflight -= 1

    def _reply_error(self, conn: Connection, req: P.Request, e: Exception) -> None:
        """The error frame for a failed request; call from its except block."""
        if isinstance(e, JSError):
            if req.id:
                conn.send(P.Error(req.id, e.code, e.err_code, e.description, getattr(e, "leader_addr", None)))
        elif isinstance(e, (TypeError, ValueError, KeyError, OverflowError)):
            if req.id:
                conn.send(P.Error(req.id, 400, 10003, f"bad request: {e}"))
        else:
            log.exception("operation failed", extra={"op": req.op})
            if req.id:
                conn.send(P.Error(req.id, 500, 10999, f"internal error: {e!r}"))

    # Publishes and acks are most requests under load. They are one proposal each, so
    # they are served without a task: the command is built and queued by a callback,
    # and the reply is sent from the proposal future's done callback. Same checks,
    # same results and errors as _serve() with op_pub/op_ack (which share the helpers).
    def _serve_direct(self, conn: Connection, req: P.Request, direct) -> None:
        make, finish = direct
        try:
            cmd = make(_request_body(req))
            if isinstance(cmd, Publish):
                conn.traffic.got(len(cmd.data))
            fut = self.node.propose_future(cmd)
        except Exception as e:
            conn.inflight -= 1
            self._reply_error(conn, req, e)
            return
        t0 = time.perf_counter()
        fut.add_done_callback(lambda f: self._direct_done(conn, req, cmd, finish, f, t0))

    def _direct_done(self, conn: Connection, req: P.Request, cmd, finish, fut: asyncio.Future, t0: float) -> None:
        try:
            if fut.cancelled():
                return          # as a cancelled task: no reply
            r = fut.result()
            if isinstance(r, JSError):
                raise r
            result = finish(cmd, r, time.perf_counter() - t0)
            if req.id:
                conn.send(P.Response(req.id, result))
        except Exception as e:
            self._reply_error(conn, req, e)
        finally:
            conn.inflight -= 1

    # == helpers =========================================================================
    async def _propose(self, cmd):
        return await self.service.propose(cmd)

    @staticmethod
    def _name(body: dict, key: str = "name") -> str:
        v = body.get(key)
        if not isinstance(v, str) or not v:
            raise BadRequestError(f"{key} is required")
        return v

    # == streams =========================================================================
    async def op_stream_add(self, conn, body):
        return (await self._propose(AddStream(StreamConfig.from_dict(body)))).to_dict()

    async def op_stream_update(self, conn, body):
        # The store looks the stream up by name before validating the config: a
        # non-string name (list, map) crashed the command there (500) instead of a 400.
        self._name(body)
        return (await self._propose(UpdateStream(StreamConfig.from_dict(body)))).to_dict()

    async def op_stream_delete(self, conn, body):
        return {"success": await self._propose(DeleteStream(self._name(body)))}

    async def op_stream_info(self, conn, body):
        name = self._name(body)
        info = await self.service.read_fresh(lambda s: s.stream_info(name))
        return self.service.with_cluster(info.to_dict(), info.config.num_replicas)

    async def op_stream_names(self, conn, body):
        subject = body.get("subject")
        return {"streams": await self.service.read_fresh(lambda s: s.stream_names(subject))}

    async def op_stream_list(self, conn, body):
        subject = body.get("subject")
        return {"streams": await self.service.read_fresh(
            lambda s: [s.stream_info(n).to_dict() for n in s.stream_names(subject)])}

    async def op_stream_purge(self, conn, body):
        r = await self._propose(PurgeStream(self._name(body), body.get("filter"), body.get("seq"),
                                            body.get("keep")))
        self.service.wake()
        return r.to_dict()

    async def op_msg_get(self, conn, body):
        name = self._name(body)
        seq, last, nxt = body.get("seq"), body.get("last_by_subj"), body.get("next_by_subj")
        return (await self.service.read_fresh(lambda s: s.get_msg(name, seq, last, nxt))).to_dict()

    async def op_msg_delete(self, conn, body):
        return {"success": await self._propose(DeleteMsg(self._name(body), int(body.get("seq") or 0),
                                                         bool(body.get("no_erase", True))))}

    # == publish =========================================================================
    def _publish_cmd(self, body: dict) -> Publish:
        data = body.get("data", b"")
        headers = body.get("headers")
        if not isinstance(data, bytes):
            raise BadRequestError("data must be bytes")
        if len(data) > self.config.max_payload:
            raise JSError("message size exceeds maximum allowed", code=400, err_code=10054)
        return Publish(self._name(body, "subject"), data, headers)

    async def op_pub(self, conn, body):
        cmd = self._publish_cmd(body)
        t0 = time.perf_counter()
        return self._pub_result(cmd, await self._propose(cmd), time.perf_counter() - t0)

    def _pub_result(self, cmd: Publish, ack, seconds: float) -> dict:
        if not ack.duplicate:
            self.service.metrics.published(ack.stream, cmd.subject, seconds)
        return self._acked(cmd, ack)

    def _acked(self, cmd: Publish, ack) -> dict:
        """A stored publish's reply; core subscribers get it too, as in NATS."""
        self.service.deliver_core(cmd.subject, cmd.data, cmd.headers)
        return ack.to_dict()

    async def op_pub_batch(self, conn, body):
        msgs = body.get("msgs")
        if not isinstance(msgs, list) or not msgs or len(msgs) > self.config.max_pub_batch:
            raise BadRequestError(f"msgs must be a list of 1..{self.config.max_pub_batch} messages")
        cmds = [self._publish_cmd(m) for m in msgs]
        t0 = time.perf_counter()
        results = await self.node.propose(cmds)
        took = time.perf_counter() - t0
        out = []
        stored: Counter = Counter()     # (stream, subject) -> publishes stored, counted once per batch
        for cmd, r in zip(cmds, results):
            if isinstance(r, JSError):
                out.append({"error": r.to_wire()})
                continue
            if not r.duplicate:
                stored[r.stream, cmd.subject] += 1
            out.append(self._acked(cmd, r))
        for (stream, subject), n in stored.items():
            self.service.metrics.published(stream, subject, took, n)
        return {"acks": out}

    async def op_cpub(self, conn, body):
        """Core publish: live subscribers get it at most once; a stream that captures
        the subject stores it too (as in NATS)."""
        subject = self._name(body, "subject")
        data = body.get("data", b"")
        headers, reply = body.get("headers"), body.get("reply")
        if not isinstance(data, bytes):
            raise BadRequestError("data must be bytes")
        await self.service.store_core(subject, data, headers)
        self.service.deliver_core(subject, data, headers, reply)
        return {"ok": True}

    # == core subscriptions ==============================================================
    async def op_sub(self, conn: Connection, body):
        sid, subject, queue = body.get("sid"), self._name(body, "subject"), body.get("queue")
        if not isinstance(sid, int) or sid <= 0:
            raise BadRequestError("sid must be a positive integer")
        if not is_valid_subject(subject):
            raise BadRequestError(f"invalid subject {subject!r}")
        if sid not in conn.subs and len(conn.subs) >= self.config.max_subs:
            raise JSError(f"more than {self.config.max_subs} subscriptions", code=400, err_code=P.ERR_TOO_MANY_SUBS)
        old = conn.subs.pop(sid, None)
        if old:
            self.service.unsubscribe(old)
        sub = Subscription(conn, sid, subject, queue or None)
        conn.subs[sid] = sub
        await self.service.subscribe(sub)
        return {"ok": True}

    async def op_unsub(self, conn: Connection, body):
        sub = conn.subs.pop(body.get("sid"), None)
        if sub:
            self.service.unsubscribe(sub)
        return {"ok": True}

    # == consumers =======================================================================
    async def op_consumer_add(self, conn, body):
        stream = self._name(body, "stream")
        cfg = ConsumerConfig.from_dict(body.get("config") or {})
        info = await self._propose(AddConsumer(stream, cfg, body.get("action") or ""))
        await self.service.consumer_changed(stream, info)
        return self.service.with_waiting(info).to_dict()

    async def op_consumer_delete(self, conn, body):
        return {"success": await self._propose(DeleteConsumer(self._name(body, "stream"), self._name(body)))}

    async def op_consumer_info(self, conn, body):
        stream, name = self._name(body, "stream"), self._name(body)
        info, replicas = await self.service.read_fresh(
            lambda s: (s.consumer_info(stream, name), s.stream_info(stream).config.num_replicas))
        return self.service.with_cluster(self.service.with_waiting(info).to_dict(), replicas)

    async def op_consumer_names(self, conn, body):
        stream = self._name(body, "stream")
        return {"consumers": await self.service.read_fresh(lambda s: s.consumer_names(stream))}

    async def op_consumer_list(self, conn, body):
        stream = self._name(body, "stream")
        infos = await self.service.read_fresh(lambda s: [s.consumer_info(stream, n) for n in s.consumer_names(stream)])
        return {"consumers": [self.service.with_waiting(i).to_dict() for i in infos]}

    async def op_fetch(self, conn, body):
        msgs = await self.service.fetch(self._name(body, "stream"), self._name(body, "consumer"),
                                        body.get("batch", 1), body.get("expires"), bool(body.get("no_wait")),
                                        int(body.get("max_bytes") or 0), conn.hot_fetch, conn)
        return {"msgs": [m.to_dict() for m in msgs]}

    async def op_ack(self, conn, body):
        cmd = self._ack_cmd(body)
        t0 = time.perf_counter()
        return self._ack_result(cmd, await self._propose(cmd), time.perf_counter() - t0)

    def _ack_cmd(self, body: dict) -> Ack:
        stream, consumer = self._name(body, "stream"), self._name(body, "consumer")
        return Ack(stream, consumer, int(body["seq"]), body.get("kind", "ack"), float(body.get("delay") or 0),
                   body.get("reason"))

    def _ack_result(self, cmd: Ack, r, seconds: float) -> dict:
        self.service.acked(cmd, seconds)
        return r.to_dict()

    async def op_ack_next(self, conn, body):
        await self.op_ack(conn, body)
        return await self.op_fetch(conn, body)

    # == cluster administration =============================================================
    def _cluster_node(self):
        if not hasattr(self.node, "status"):
            raise BadRequestError("this node is not part of a cluster")
        return self.node

    async def op_source_copy(self, conn, body):
        """A mirror/source pipeline's copies and report (cluster/pipelines.py)."""
        if self.config.cluster_secret and not proof_ok(self.config.cluster_secret, body):
            raise js_error(10003, "source.copy is for this cluster's mirror and source pipelines only "
                                  "(no valid proof of the cluster secret)", 403)
        msgs = body.get("msgs") or []
        if not isinstance(msgs, list) or not all(
                isinstance(m, list) and len(m) == 5 and isinstance(m[0], int) and isinstance(m[1], str)
                and (m[2] is None or isinstance(m[2], dict)) and isinstance(m[3], bytes) and isinstance(m[4], int)
                for m in msgs):
            raise BadRequestError("msgs must be [origin_seq, subject, headers, data, ts] lists")
        ints = {k: body.get(k) or 0 for k in ("created", "skip_to", "lag")}
        if not all(isinstance(v, int) for v in ints.values()):
            raise BadRequestError("created, skip_to and lag must be integers")
        error = body.get("error")
        if error is not None and not isinstance(error, dict):
            raise BadRequestError("error must be a map")
        r = await self._propose(SourceCopy(self._name(body, "stream"), self._name(body, "origin"),
                                           self._name(body, "runner"), ints["created"], msgs, ints["skip_to"],
                                           ints["lag"], error))
        self.service.wake()
        return r

    async def op_cluster_status(self, conn, body):
        status = self._cluster_node().status()
        rows = await self.service.read(lambda s: s.origin_rows())
        status["pipelines"] = [{"stream": stream, "origin": origin, "kind": "mirror" if mirror else "source",
                                "runner": runner} for stream, origin, _src, mirror, runner in rows]
        return status

    async def op_cluster_add_peer(self, conn, body):
        await self._cluster_node().add_peer(self._name(body, "raft"))
        return {"ok": True}

    async def op_cluster_remove_peer(self, conn, body):
        await self._cluster_node().remove_peer(self._name(body, "raft"))
        return {"ok": True}

    async def op_cluster_step_down(self, conn, body):
        await self._cluster_node().step_down()
        return {"ok": True}

    # == housekeeping =======================================================================
    def _on_tick(self, is_leader: bool) -> None:
        if not is_leader:
            self._send_subscribers_to_leader()

    def _send_subscribers_to_leader(self) -> None:
        """Push delivery runs on the leader only, so a subscriber connected to a
        follower (it reconnected while no leader was known, say) would wait forever.
        Once a leader is known, tell such connections where it is and close them; the
        client reconnects there and subscribes again. Each is told at most every 5 s,
        in case the leader's address cannot be reached from the client."""
        name, addr = self.node.leader
        if not name:
            return
        now = time.monotonic()
        for conn in list(self.conns):
            if conn.subs and now - conn.redirected_at > 5.0:
                conn.redirected_at = now
                conn.send(P.Error(0, 500, NotLeaderError.err_code,
                                  f"not the leader; subscriptions are served by {name} at {addr}", addr))
                self._spawn(self._close_after_flush(conn))

    @staticmethod
    async def _close_after_flush(conn) -> None:
        try:
            await asyncio.wait_for(conn.out.drain(), 2.0)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        conn.close()
