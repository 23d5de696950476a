"""The asyncio client library, shaped like nats-py.

    nc = await connect(["127.0.0.1:4222"])
    js = nc.jetstream()
    ack = await js.publish("orders.created", b"...", msg_id="ord-1")

Config and result types are the server's own dataclasses (`StreamConfig`,
`ConsumerConfig`, `PubAck`, `StreamInfo`, `ConsumerInfo`); errors are typed
and carry JetStream's codes.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from storage.config import ConsumerConfig, StreamConfig
from storage.errors import (  # noqa: F401 - re-exported for users
    ClusterUnavailableError, ConsumerNotFoundError, JSError, NoMessageFoundError, NotLeaderError,
    StreamNotFoundError, WrongLastMsgIDError, WrongLastSequenceError,
)
from storage.results import ConsumerInfo, PubAck, PurgeResponse, StreamInfo
from . import protocol as P
from .coalesce import PublishCoalescer
from .wire import FrameWriter

log = logging.getLogger("raftbroker.client")

APIError = JSError


class TimeoutError(asyncio.TimeoutError):  # noqa: A001 - nats-py's name
    """A request got no answer in time; its outcome is unknown."""


class ConnectionClosedError(Exception):
    """The connection is closed (by close(), or for good after failed reconnects)."""


class ConnectionLostError(Exception):
    """The connection dropped while the request was in flight; its outcome is unknown."""


class AuthorizationError(Exception):
    pass


class _Redirect(Exception):
    def __init__(self, addr: str, name: Optional[str]):
        super().__init__(addr)
        self.addr = addr
        self.name = name


@dataclass
class SequencePair:
    stream: int
    consumer: int


@dataclass
class MsgMetadata:
    sequence: SequencePair
    num_delivered: int
    num_pending: int
    stream: str
    consumer: str
    timestamp: int      # unix ns


@dataclass
class Msg:
    subject: str
    data: bytes = b""
    headers: Optional[dict] = None
    reply: Optional[str] = None
    metadata: Optional[MsgMetadata] = None
    _client: Any = field(default=None, repr=False)
    _acked: bool = field(default=False, repr=False)
    received: float = field(default=0.0, repr=False)   # time.monotonic() when the frame arrived

    async def respond(self, data: bytes) -> None:
        if not self.reply:
            raise ValueError("message has no reply subject")
        await self._client.publish(self.reply, data)

    def _ack_body(self, kind: str, **extra) -> dict:
        if self.metadata is None:
            raise ValueError("not a JetStream message")
        m = self.metadata
        return dict(stream=m.stream, consumer=m.consumer, seq=m.sequence.stream, kind=kind, **extra)

    async def _send_ack(self, kind: str, sync: bool, timeout: float | None = None, **extra):
        if self._acked and kind != "progress":
            raise ValueError("message was already acknowledged")
        body = self._ack_body(kind, **extra)
        if sync:
            # Not idempotent: an ack whose outcome is unknown raises, it is never retried
            # into a silent success.
            r = await self._client._request("ack", body, timeout)
        else:
            await self._client._send_noreply("ack", body)
            r = None
        if kind != "progress":
            self._acked = True
        return r

    async def ack(self) -> None:
        """Send the ack without waiting for it (as nats-py does)."""
        await self._send_ack("ack", False)

    async def ack_sync(self, timeout: float | None = None) -> None:
        """Return only once the ack is applied; raise if that cannot be confirmed."""
        await self._send_ack("ack", True, timeout)

    async def nak(self, delay: float | None = None) -> None:
        await self._send_ack("nak", False, delay=delay or 0)

    async def in_progress(self) -> None:
        await self._send_ack("progress", False)

    async def term(self, reason: str | None = None) -> None:
        await self._send_ack("term", False, reason=reason)

    async def ack_next(self, batch: int = 1, timeout: float = 5.0) -> list["Msg"]:
        """Ack this message and fetch the next batch in one round trip (JetStream's +NXT)."""
        if self._acked:
            raise ValueError("message was already acknowledged")
        body = self._ack_body("ack", batch=batch, expires=timeout, no_wait=timeout <= 0)
        r = await self._client._request("ack.next", body, timeout + self._client.timeout)
        self._acked = True
        return [_js_msg(self._client, d) for d in r["msgs"]]


def _js_msg(client, d: dict) -> Msg:
    return Msg(subject=d["subject"], data=d["data"], headers=d.get("headers"), _client=client,
               metadata=MsgMetadata(SequencePair(d["stream_seq"], d["consumer_seq"]), d["num_delivered"],
                                    d["num_pending"], d["stream"], d["consumer"], d["time"]))


class Subscription:
    def __init__(self, client: "Client", sid: int, subject: str, queue: Optional[str], cb, max_pending: int):
        self._client = client
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self._cb = cb
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=max_pending)
        self._task: Optional[asyncio.Task] = None
        self.dropped = 0
        if cb is not None:
            self._task = asyncio.get_running_loop().create_task(self._run_cb())

    def _deliver(self, msg: Msg) -> None:
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1   # slow consumer: bounded, like nats-py's pending limits

    async def _run_cb(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self._cb(msg)
            except Exception:
                log.exception("subscription callback failed")
            finally:
                self._queue.task_done()   # lets drain() wait for the callback in progress too

    async def next_msg(self, timeout: float = 1.0) -> Msg:
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no message on {self.subject} within {timeout}s") from None

    @property
    def pending_msgs(self) -> int:
        return self._queue.qsize()

    async def unsubscribe(self) -> None:
        self._client._subs.pop(self.sid, None)
        if self._task:
            self._task.cancel()
        if not self._client.is_closed:
            await self._client._request("unsub", {"sid": self.sid})

    async def drain(self) -> None:
        await self._client._request("unsub", {"sid": self.sid})
        self._client._subs.pop(self.sid, None)
        if self._cb is not None and self._task is not None and not self._task.done():
            # An empty queue is not enough: the last message may still be inside the callback.
            await self._queue.join()
        if self._task:
            self._task.cancel()


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


class Client:
    def __init__(self, servers: list[str], token, user, password, name, timeout: float,
                 max_reconnect_attempts: int, reconnect_time_wait: float, max_pending_msgs: int):
        self.servers = servers
        self._creds = dict(token=token, user=user, password=password, name=name)
        self.timeout = timeout
        self.max_reconnect_attempts = max_reconnect_attempts
        self.reconnect_time_wait = reconnect_time_wait
        self.max_pending_msgs = max_pending_msgs
        self._ids = itertools.count(1)
        self._publisher = PublishCoalescer(self)
        self._sids = itertools.count(1)
        # Made-up Nats-Msg-Ids: a random per-client prefix plus a counter is as unique
        # as a uuid4 per message, without an os.urandom call on every publish.
        self._msg_id_prefix = uuid.uuid4().hex + "-"
        self._msg_ids = itertools.count(1)
        self._out: Optional[FrameWriter] = None
        self._pending: dict[int, asyncio.Future] = {}
        self._subs: dict[int, Subscription] = {}
        self._reader = self._writer = None
        self._read_task: Optional[asyncio.Task] = None
        self._connected = asyncio.Event()
        self._closed = False
        self.info: Optional[P.Info] = None
        self.connected_url: Optional[str] = None
        self._leader_hint: Optional[str] = None    # a cluster's leader, as a node last told us
        self._avoid: Optional[str] = None          # a server that stopped answering: try it last
        # An idempotent request retried across a failover waits at most this long for
        # one answer before it moves to another server (a frozen leader keeps its socket).
        self.attempt_timeout = 3.0

    # -- connection -------------------------------------------------------------------
    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    async def _connect_once(self, url: str, follow_leader: bool = False, want: Optional[str] = None) -> None:
        """Connect and handshake. With follow_leader, a node that names another node
        as the cluster's leader is left for it (_Redirect)."""
        host, _, port = url.replace("nats://", "").rpartition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), self.timeout)
        try:
            decoder = P.Decoder()
            info = await self._read_frame(reader, decoder)
            if not isinstance(info, P.Info):
                raise ConnectionError(f"expected INFO from {url}, got {info!r}")
            writer.write(P.encode(P.Connect(name=self._creds["name"], token=self._creds["token"],
                                            user=self._creds["user"], password=self._creds["password"])))
            reply = await self._read_frame(reader, decoder)
            if isinstance(reply, P.Error):
                raise AuthorizationError(reply.description)
            if not isinstance(reply, P.Response):
                raise ConnectionError(f"unexpected handshake reply {reply!r}")
            if follow_leader and info.leader_addr and info.leader_addr != url:
                raise _Redirect(info.leader_addr, info.leader)
            if want is not None and info.server_id != want:
                raise ConnectionError(f"{url} is {info.server_id}, not {want}")
        except BaseException:
            writer.close()
            raise
        decoder.max_frame = info.max_frame
        self._reader, self._writer, self.info, self.connected_url = reader, writer, info, url
        self._out = FrameWriter(writer)
        self._decoder = decoder
        # Never exceed what the server accepts in flight on one connection.
        self._slots = asyncio.Semaphore(info.max_inflight)
        self._connected.set()
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())
        for sub in list(self._subs.values()):
            self._write(P.Request(0, "sub", {"sid": sub.sid, "subject": sub.subject, "queue": sub.queue}))

    async def _follow(self, r: "_Redirect", follower: str, seeds: list[str]) -> None:
        """A follower named the leader: go there. Its advertised address may not be
        reachable from here (a container name seen from the host), so then look for
        the leader by name among the seed addresses; failing that, stay on the
        follower (core messaging works there; requests are redirected)."""
        candidates = [(r.addr, None)] + [(u, r.name) for u in seeds if u not in (r.addr, follower)]
        for addr, want in candidates:
            try:
                await self._connect_once(addr, want=want)
                return
            except (OSError, ConnectionError, asyncio.TimeoutError):
                continue
        await self._connect_once(follower)

    async def _read_frame(self, reader, decoder):
        while True:
            f = decoder.next()
            if f is not None:
                return f
            data = await asyncio.wait_for(reader.read(65536), self.timeout)
            if not data:
                raise ConnectionError("connection closed during handshake")
            decoder.feed(data)

    async def _connect_any(self) -> None:
        attempt = 0
        last: Exception | None = None
        while not self._closed:
            order = list(self.servers)
            if self._avoid in order:
                order.remove(self._avoid)
                order.append(self._avoid)
            # Go to the leader first when a node told us who it is.
            hint = self._leader_hint or (self.info.leader_addr if self.info else None)
            if hint:
                if hint in order:
                    order.remove(hint)
                order.insert(0, hint)
            for url in order:
                try:
                    try:
                        await self._connect_once(url, follow_leader=True)
                    except _Redirect as r:
                        await self._follow(r, url, order)
                    self._leader_hint = None
                    return
                except AuthorizationError:
                    raise
                except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                    last = e
            attempt += 1
            if 0 <= self.max_reconnect_attempts < attempt:
                break
            await asyncio.sleep(min(self.reconnect_time_wait * (2 ** min(attempt, 5)), 5.0) * random.uniform(0.8, 1.2))
        raise ConnectionClosedError(f"could not connect to any of {self.servers}: {last}")

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                self._decoder.feed(data)
                while True:
                    try:
                        f = self._decoder.next()
                    except P.ProtocolError:
                        log.error("undecodable frame from server; reconnecting")
                        raise ConnectionError("protocol error")
                    if f is None:
                        break
                    self._dispatch(f)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            return
        self._on_disconnect()

    def _dispatch(self, f) -> None:
        if isinstance(f, P.Response):
            fut = self._pending.pop(f.id, None)
            if fut and not fut.done():
                fut.set_result(f.body)
        elif isinstance(f, P.Error):
            err = JSError.from_wire({"code": f.code, "err_code": f.err_code, "description": f.description})
            err.leader_addr = f.leader_addr
            fut = self._pending.pop(f.id, None)
            if fut and not fut.done():
                fut.set_exception(err)
            elif f.id == 0:
                if f.err_code == NotLeaderError.err_code:
                    self._leader_hint = f.leader_addr    # a follower is sending us to the leader
                    log.info("%s", f.description)
                else:
                    log.warning("server error: %s", f.description)
        elif isinstance(f, P.Msg):
            sub = self._subs.get(f.sid)
            if sub is None:
                return
            if f.meta:
                msg = _js_msg(self, f.meta)
            else:
                msg = Msg(subject=f.subject, data=f.data, headers=f.headers, reply=f.reply, _client=self)
            msg.received = time.monotonic()
            sub._deliver(msg)
        elif isinstance(f, P.Ping):
            self._write(P.Pong())

    def _on_disconnect(self) -> None:
        self._connected.clear()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLostError("connection lost; the request's outcome is unknown"))
        self._pending.clear()
        # Frames not yet sent belong to the lost connection (their requests were just
        # failed): never let them leak onto the next one.
        if self._out:
            self._out.discard()
            self._out.close()
        if not self._closed:
            asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            await self._connect_any()
        except Exception as e:
            log.error("giving up reconnecting: %s", e)
            self._closed = True

    def _write(self, frame) -> None:
        self._out.send(frame)

    async def _wait_connected(self, timeout: float) -> None:
        if self._closed:
            raise ConnectionClosedError("connection closed")
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError("not connected") from None

    async def _request(self, op: str, body: dict, timeout: float | None = None, idempotent: bool = False,
                       attempt: float | None = None) -> Any:
        """One request, carried across a cluster's failover: a follower's "not leader"
        moves the connection to the leader and the request is sent again (the follower
        proposed nothing). An idempotent request is also sent again when its outcome is
        unknown (connection lost, commit unconfirmed, no answer from a frozen node)."""
        timeout = timeout or self.timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = 0.05
        while True:
            remaining = deadline - loop.time()
            url = self.connected_url
            multi = idempotent and len(self.servers) > 1
            try:
                per = attempt or self.attempt_timeout
                return await self._request_once(op, body, min(remaining, per) if multi else remaining)
            except NotLeaderError as e:
                self._move(url, e.leader_addr)
                if loop.time() + pause >= deadline:
                    raise
            except (ConnectionLostError, ClusterUnavailableError):
                if not idempotent or loop.time() + pause >= deadline:
                    raise
            except TimeoutError:
                if not multi or loop.time() + pause >= deadline:
                    raise
                self._avoid = url
                self._move(url, None)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    def _move(self, url: Optional[str], leader: Optional[str]) -> None:
        """Leave the server at `url` (if still connected to it) for `leader`, or another."""
        if leader:
            self._leader_hint = leader
        if url is not None and url == self.connected_url and self._connected.is_set() and \
                (leader is None or leader != url):
            self._writer.close()    # the read loop ends, and reconnect picks the hint first

    async def _request_once(self, op: str, body: dict, timeout: float) -> Any:
        if self._closed or not self._connected.is_set():   # the common case needs no coroutine
            await self._wait_connected(timeout)
        slots = self._slots
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if slots.locked():
            try:
                await asyncio.wait_for(slots.acquire(), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"{op}: no request slot free within {timeout}s") from None
        else:
            await slots.acquire()   # a free slot is taken at once: no wait_for (a task) needed
        try:
            self._pending[rid] = fut
            self._write(P.Request(rid, op, body))
            # One timer instead of wait_for(): wait_for wraps the future in extra
            # futures and callbacks on every request; the outcome is the same.
            timer = loop.call_later(timeout, _expire, fut)
            try:
                return await fut
            finally:
                timer.cancel()
        except asyncio.TimeoutError:
            raise TimeoutError(f"{op} timed out after {timeout}s") from None
        finally:
            self._pending.pop(rid, None)
            slots.release()

    async def _send_noreply(self, op: str, body: dict) -> None:
        if self._closed or not self._connected.is_set():
            await self._wait_connected(self.timeout)
        self._write(P.Request(0, op, body))
        await self._writer.drain()

    # -- core messaging -------------------------------------------------------------------
    async def publish(self, subject: str, payload: bytes = b"", reply: str | None = None,
                      headers: dict | None = None) -> None:
        await self._send_noreply("cpub", {"subject": subject, "data": payload, "headers": headers, "reply": reply})

    async def subscribe(self, subject: str, queue: str = "", cb: Callable[[Msg], Awaitable] | None = None,
                        max_msgs_pending: int | None = None) -> Subscription:
        sid = next(self._sids)
        sub = Subscription(self, sid, subject, queue or None, cb, max_msgs_pending or self.max_pending_msgs)
        self._subs[sid] = sub
        await self._request("sub", {"sid": sid, "subject": subject, "queue": queue or None})
        return sub

    def new_inbox(self) -> str:
        return f"_INBOX.{uuid.uuid4().hex}"

    async def request(self, subject: str, payload: bytes = b"", timeout: float = 1.0,
                      headers: dict | None = None) -> Msg:
        inbox = self.new_inbox()
        sub = await self.subscribe(inbox)
        try:
            await self.publish(subject, payload, reply=inbox, headers=headers)
            return await sub.next_msg(timeout)
        finally:
            await sub.unsubscribe()

    def jetstream(self, timeout: float | None = None) -> "JetStreamContext":
        return JetStreamContext(self, timeout or self.timeout)

    async def flush(self, timeout: float = 5.0) -> None:
        await self._request("stream.names", {}, timeout)

    async def drain(self) -> None:
        """Stop subscriptions, let their callbacks finish what they have, then close."""
        for sub in list(self._subs.values()):
            try:
                await sub.drain()
            except (JSError, TimeoutError, ConnectionClosedError, ConnectionLostError):
                pass
        await self.close()

    async def close(self) -> None:
        self._closed = True
        for sub in self._subs.values():
            if sub._task:
                sub._task.cancel()
        if self._read_task:
            self._read_task.cancel()
        if self._out:
            self._out.close()   # acks and publishes written just before close() still go out
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionClosedError("connection closed"))


async def connect(servers: list[str] | str = "127.0.0.1:4222", token: str | None = None, user: str | None = None,
                  password: str | None = None, name: str | None = None, timeout: float = 5.0,
                  max_reconnect_attempts: int = 60, reconnect_time_wait: float = 0.1,
                  max_pending_msgs: int = 65536) -> Client:
    if isinstance(servers, str):
        servers = [servers]
    nc = Client(list(servers), token, user, password, name, timeout, max_reconnect_attempts, reconnect_time_wait,
                max_pending_msgs)
    await nc._connect_any()
    return nc


class PullSubscription:
    def __init__(self, js: "JetStreamContext", stream: str, consumer: str):
        self._js = js
        self.stream = stream
        self.consumer = consumer

    async def fetch(self, batch: int = 1, timeout: float | None = 5.0, max_bytes: int | None = None) -> list[Msg]:
        """Up to `batch` messages; an empty list when none came within `timeout`."""
        timeout = 5.0 if timeout is None else timeout
        body = {"stream": self.stream, "consumer": self.consumer, "batch": batch, "expires": timeout,
                "no_wait": timeout <= 0, "max_bytes": max_bytes or 0}
        nc = self._js._nc
        r = await nc._request("fetch", body, timeout + nc.timeout, idempotent=True,
                              attempt=timeout + nc.attempt_timeout)
        return [_js_msg(self._js._nc, d) for d in r["msgs"]]

    async def consumer_info(self) -> ConsumerInfo:
        return await self._js.consumer_info(self.stream, self.consumer)

    async def unsubscribe(self) -> None:
        """Pull subscriptions hold nothing on the server; the durable stays."""


class JetStreamContext:
    def __init__(self, nc: Client, timeout: float):
        self._nc = nc
        self.timeout = timeout

    async def _api(self, op: str, body: dict, timeout: float | None = None, idempotent: bool = False):
        return await self._nc._request(op, body, timeout or self.timeout, idempotent)

    # -- streams ------------------------------------------------------------------------
    async def add_stream(self, config: StreamConfig | None = None, **params) -> StreamInfo:
        cfg = (config or StreamConfig()).evolve(**params) if params else (config or StreamConfig())
        return StreamInfo.from_dict(await self._api("stream.add", cfg.to_dict(), idempotent=True))

    async def update_stream(self, config: StreamConfig | None = None, **params) -> StreamInfo:
        cfg = (config or StreamConfig()).evolve(**params) if params else config
        return StreamInfo.from_dict(await self._api("stream.update", cfg.to_dict()))

    async def delete_stream(self, name: str) -> bool:
        return (await self._api("stream.delete", {"name": name}))["success"]

    async def stream_info(self, name: str) -> StreamInfo:
        return StreamInfo.from_dict(await self._api("stream.info", {"name": name}, idempotent=True))

    async def streams_info(self) -> list[StreamInfo]:
        return [StreamInfo.from_dict(d) for d in (await self._api("stream.list", {}, idempotent=True))["streams"]]

    async def stream_names(self, subject: str | None = None) -> list[str]:
        return (await self._api("stream.names", {"subject": subject}, idempotent=True))["streams"]

    async def find_stream_name_by_subject(self, subject: str) -> str:
        names = await self.stream_names(subject)
        if not names:
            raise StreamNotFoundError()
        return names[0]

    async def purge_stream(self, name: str, subject: str | None = None, keep: int | None = None,
                           seq: int | None = None) -> bool:
        r = await self._api("stream.purge", {"name": name, "filter": subject, "keep": keep, "seq": seq})
        return PurgeResponse.from_dict(r).success

    async def get_msg(self, stream_name: str, seq: int | None = None, subject: str | None = None,
                      next: bool = False) -> Msg:  # noqa: A002 - nats-py's name
        body = {"name": stream_name, "seq": seq}
        if subject:
            body["next_by_subj" if next else "last_by_subj"] = subject
        d = await self._api("msg.get", body, idempotent=True)
        m = Msg(subject=d["subject"], data=d["data"], headers=d.get("headers"), _client=self._nc)
        m.seq, m.time = d["seq"], d["time"]
        return m

    async def get_last_msg(self, stream_name: str, subject: str) -> Msg:
        return await self.get_msg(stream_name, subject=subject)

    async def delete_msg(self, stream_name: str, seq: int) -> bool:
        return (await self._api("msg.delete", {"name": stream_name, "seq": seq}))["success"]

    # -- publish -------------------------------------------------------------------------
    def _pub_body(self, subject, payload, headers, msg_id, stream, expected) -> dict:
        h = dict(headers or {})
        h["Nats-Msg-Id"] = msg_id or h.get("Nats-Msg-Id") or \
            f"{self._nc._msg_id_prefix}{next(self._nc._msg_ids)}"
        if stream:
            h["Nats-Expected-Stream"] = stream
        for k, v in expected.items():
            if v is not None:
                h[k] = str(v)
        return {"subject": subject, "data": payload, "headers": h}

    def _start_publish(self, subject: str, payload: bytes = b"", timeout: float | None = None,
                       stream: str | None = None, headers: dict | None = None, msg_id: str | None = None,
                       expected_last_seq: int | None = None, expected_last_subject_seq: int | None = None,
                       expected_last_msg_id: str | None = None) -> asyncio.Future:
        body = self._pub_body(subject, payload, headers, msg_id, stream, {
            "Nats-Expected-Last-Sequence": expected_last_seq,
            "Nats-Expected-Last-Subject-Sequence": expected_last_subject_seq,
            "Nats-Expected-Last-Msg-Id": expected_last_msg_id})
        return self._nc._publisher.submit(body, timeout or self.timeout)

    async def publish(self, subject: str, payload: bytes = b"", timeout: float | None = None,
                      stream: str | None = None, headers: dict | None = None, msg_id: str | None = None,
                      expected_last_seq: int | None = None, expected_last_subject_seq: int | None = None,
                      expected_last_msg_id: str | None = None) -> PubAck:
        """Publish and wait for the PubAck. A msg_id is always sent (one is made up when
        none is given), so a retry after a lost connection is stored at most once.
        Publishes started together travel in one request (see coalesce.py)."""
        return await self._start_publish(subject, payload, timeout, stream, headers, msg_id, expected_last_seq,
                                         expected_last_subject_seq, expected_last_msg_id)

    async def publish_async(self, subject: str, payload: bytes = b"", **kw) -> asyncio.Future:
        """Start a publish; returns a future of its PubAck (await it, or gather many)."""
        return self._start_publish(subject, payload, **kw)

    async def publish_batch(self, msgs: list[tuple[str, bytes]], timeout: float | None = None) -> list:
        body = {"msgs": [self._pub_body(s, d, None, None, None, {}) for s, d in msgs]}
        r = await self._api("pub.batch", body, timeout, idempotent=True)
        return [JSError.from_wire(a["error"]) if "error" in a else PubAck.from_dict(a) for a in r["acks"]]

    # -- consumers -----------------------------------------------------------------------
    async def add_consumer(self, stream: str, config: ConsumerConfig | None = None, action: str = "",
                           **params) -> ConsumerInfo:
        cfg = (config or ConsumerConfig()).evolve(**params) if params else (config or ConsumerConfig())
        r = await self._api("consumer.add", {"stream": stream, "config": cfg.to_dict(), "action": action},
                            idempotent=True)
        return ConsumerInfo.from_dict(r)

    async def update_consumer(self, stream: str, config: ConsumerConfig | None = None, **params) -> ConsumerInfo:
        return await self.add_consumer(stream, config, action="update", **params)

    async def delete_consumer(self, stream: str, consumer: str) -> bool:
        return (await self._api("consumer.delete", {"stream": stream, "name": consumer}))["success"]

    async def consumer_info(self, stream: str, consumer: str) -> ConsumerInfo:
        return ConsumerInfo.from_dict(await self._api("consumer.info", {"stream": stream, "name": consumer}, idempotent=True))

    async def consumers_info(self, stream: str) -> list[ConsumerInfo]:
        return [ConsumerInfo.from_dict(d) for d in (await self._api("consumer.list", {"stream": stream}, idempotent=True))["consumers"]]

    async def pull_subscribe(self, subject: str, durable: str | None = None, stream: str | None = None,
                             config: ConsumerConfig | None = None) -> PullSubscription:
        stream = stream or await self.find_stream_name_by_subject(subject)
        cfg = (config or ConsumerConfig()).evolve(durable_name=durable or (config.durable_name if config else None))
        if cfg.filter_subject is None and not cfg.filter_subjects and subject:
            cfg.filter_subject = subject
        if durable:
            try:
                await self.consumer_info(stream, durable)
                return PullSubscription(self, stream, durable)
            except ConsumerNotFoundError:
                pass
        info = await self.add_consumer(stream, cfg)
        return PullSubscription(self, stream, info.name)

    async def subscribe(self, subject: str, queue: str | None = None, durable: str | None = None,
                        stream: str | None = None, cb: Callable[[Msg], Awaitable] | None = None,
                        manual_ack: bool = False, config: ConsumerConfig | None = None) -> Subscription:
        """Push subscription: create or bind the consumer, subscribe to its deliver subject.
        With a queue, the consumer's deliver_group is the queue and each message reaches one member."""
        stream = stream or await self.find_stream_name_by_subject(subject)
        name = durable or (queue if queue else None)
        info = None
        if name:
            try:
                info = await self.consumer_info(stream, name)
            except ConsumerNotFoundError:
                info = None
        if info is None:
            cfg = config or ConsumerConfig()
            cfg = cfg.evolve(durable_name=name, deliver_subject=cfg.deliver_subject or self._nc.new_inbox(),
                             deliver_group=queue or cfg.deliver_group,
                             filter_subject=cfg.filter_subject or (subject if not cfg.filter_subjects else None))
            info = await self.add_consumer(stream, cfg)
        user_cb = cb

        def is_status(msg: Msg) -> bool:
            # Idle heartbeats are for the library, not the application (as in nats-py);
            # auto-acking one would fail, since it carries no JetStream metadata.
            return msg.metadata is None and bool((msg.headers or {}).get("Status"))

        async def auto_ack(msg: Msg) -> None:
            if is_status(msg):
                return
            await user_cb(msg)
            if not msg._acked and info.config.ack_policy != "none":
                await msg.ack()

        async def manual(msg: Msg) -> None:
            if not is_status(msg):
                await user_cb(msg)

        run = None if cb is None else (manual if manual_ack else auto_ack)
        return await self._nc.subscribe(info.config.deliver_subject, queue=info.config.deliver_group or "", cb=run)
