"""Pull requests as NATS clients send them (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`
with a reply inbox): messages go to the inbox, each showing its own subject with its ack
subject as reply, and the request ends with the status lines nats-server sends
(404 No Messages, 408 Request Timeout, 409 ...), which nats-py's fetch relies on."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Optional

from jetstream.errors import ConsumerNotFoundError, JSError, StreamNotFoundError

from ..service import JetStreamService, MaxWaitingError

NS = 1_000_000_000
# A request without `expires` waits "for ever" in NATS; here for at most this long (the
# client re-requests), so a forgotten request cannot hold a waiting slot for good.
MAX_WAIT_S = 3600.0


def parse_request(payload: bytes) -> dict:
    p = payload.strip()
    if not p:
        return {"batch": 1}
    if p.isdigit():
        return {"batch": int(p)}
    d = json.loads(p)
    if not isinstance(d, dict):
        raise ValueError("pull request must be a JSON object")
    return d


class _Requester:
    """The asker of one pull request, as the service's fetch sees it: gone once its
    connection closes or nobody is subscribed to the reply inbox any more (nats-server
    drops such a request rather than hand messages to no one)."""
    __slots__ = ("conn", "reply", "router")

    def __init__(self, conn, reply: str, router):
        self.conn, self.reply, self.router = conn, reply, router

    @property
    def closed(self) -> bool:
        return self.conn.closed or not self.router.has_interest(self.reply)

    @property
    def hot_fetch(self) -> set:
        return self.conn.hot_fetch


class PullRequests:
    def __init__(self, service: JetStreamService):
        self.service = service

    def _status(self, reply: str, code: str, description: str, extra: Optional[dict] = None) -> None:
        self.service.deliver_core(reply, b"", {"Status": code, "Description": description, **(extra or {})})

    def _deliver(self, reply: str, msgs) -> None:
        for m in msgs:
            self.service.deliver_core(reply, m.data, m.headers, meta=m)

    async def serve(self, conn, subject: str, reply: Optional[str], payload: bytes) -> None:
        tokens = subject.split(".")
        if not reply or len(tokens) != 7:
            return
        stream, consumer = tokens[5], tokens[6]
        try:
            req = parse_request(payload)
            batch = int(req.get("batch") or 1)
            expires_s = (req.get("expires") or 0) / NS
            heartbeat_s = (req.get("idle_heartbeat") or 0) / NS
            max_bytes = int(req.get("max_bytes") or 0)
            no_wait = bool(req.get("no_wait"))
        except (ValueError, TypeError):
            self._status(reply, "400", "Bad Request")
            return
        if batch < 1:
            self._status(reply, "400", "Bad Request - batch must be positive")
            return
        if heartbeat_s and expires_s and heartbeat_s * 2 > expires_s:
            self._status(reply, "400", "Bad Request - heartbeat value too large")
            return
        beat = asyncio.get_running_loop().create_task(self._heartbeats(reply, heartbeat_s)) if heartbeat_s else None
        try:
            await self._serve(_Requester(conn, reply, self.service.router), reply, stream, consumer, batch,
                              expires_s, max_bytes, no_wait)
        except MaxWaitingError:
            self._status(reply, "409", "Exceeded MaxWaiting")
        except (ConsumerNotFoundError, StreamNotFoundError):
            self._status(reply, "409", "Consumer Deleted")
        except JSError as e:
            self._status(reply, str(e.code), e.description)
        finally:
            if beat is not None:
                beat.cancel()

    async def _heartbeats(self, reply: str, every_s: float) -> None:
        """`100 Idle Heartbeat` while the request waits: it tells nats-py the request is
        alive (a fetch that saw one ends in FetchTimeoutError, not a bare timeout)."""
        while True:
            await asyncio.sleep(every_s)
            self._status(reply, "100", "Idle Heartbeat")

    async def _serve(self, conn, reply, stream, consumer, batch, expires_s, max_bytes, no_wait) -> None:
        fetch = self.service.fetch
        remaining = batch
        if no_wait:
            msgs = await fetch(stream, consumer, batch, 0, True, max_bytes, conn.hot_fetch, conn)
            self._deliver(reply, msgs)
            remaining -= len(msgs)
            if msgs or not expires_s:
                if remaining > 0:
                    self._status(reply, "404", "No Messages")
                return
        deadline = time.monotonic() + (expires_s or MAX_WAIT_S)
        while remaining > 0 and not conn.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msgs = await fetch(stream, consumer, remaining, left, False, max_bytes, conn.hot_fetch, conn)
            if not msgs:
                break
            self._deliver(reply, msgs)
            remaining -= len(msgs)
            if no_wait:
                # no_wait with expires waits for the first messages only, then ends as soon
                # as nothing more is there (nats-server's behaviour, which nats-py's fetch
                # relies on to return at once).
                more = await fetch(stream, consumer, remaining, 0, True, max_bytes, conn.hot_fetch, conn) \
                    if remaining else []
                self._deliver(reply, more)
                remaining -= len(more)
                if remaining:
                    self._status(reply, "404", "No Messages")
                return
        if remaining > 0 and not conn.closed:
            self._status(reply, "408", "Request Timeout",
                         {"Nats-Pending-Messages": str(remaining), "Nats-Pending-Bytes": "0"})
