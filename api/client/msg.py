"""Messages as a subscriber or a pull consumer receives them, and core subscriptions."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from .errors import TimeoutError

if TYPE_CHECKING:
    from .connection import Client

log = logging.getLogger("raftbroker.client")


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
        return [js_msg(self._client, d) for d in r["msgs"]]


def js_msg(client, d: dict) -> Msg:
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
