"""One client connection to the cluster: handshake, leader routing, failover and retries,
request/reply over the binary RPC, core publish and subscribe."""
from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from typing import Any, Awaitable, Callable, Optional

from jetstream.errors import ClusterUnavailableError, JSError, NotLeaderError
from .. import protocol as P
from ..wire import FrameWriter
from .coalesce import PublishCoalescer
from .errors import AuthorizationError, ConnectionClosedError, ConnectionLostError, TimeoutError
from .jetstream import JetStreamContext
from .msg import Msg, Subscription, js_msg

log = logging.getLogger("raftbroker.client")


class _Redirect(Exception):
    def __init__(self, addr: str, name: Optional[str]):
        super().__init__(addr)
        self.addr = addr
        self.name = name


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
                msg = js_msg(self, f.meta)
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
                if not e.leader_addr:
                    self._avoid = url   # it knows no leader: try the others first (it may be cut off)
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
