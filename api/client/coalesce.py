"""Client-side publish coalescing: publishes started in the same event-loop turn
travel together in one `pub.batch` request.

Many publishes in flight (`publish_async`, or many tasks each awaiting
`publish`) would otherwise cost a frame, a request id and a reply each, on both
ends. Each publish still gets its own PubAck or error: `pub.batch` answers per
message. Every publish carries a msg_id, so a batch is as safe to send again as
a single publish. A message the server could refuse for the whole batch (not
bytes, no subject, over `max_payload`) goes alone, so its error is its own.
"""
from __future__ import annotations

import asyncio
from typing import Any, Protocol

from jetstream.errors import JSError
from jetstream.results import PubAck


class Requester(Protocol):
    """What the coalescer needs of a connection (the Client, or a test's stand-in)."""
    info: Any

    async def _request(self, op: str, body: dict, timeout: float | None = None,
                       idempotent: bool = False) -> Any: ...


# Keep a batch's frame well below any max_frame a server would set.
MAX_BATCH_BYTES = 1024 * 1024
_OVERHEAD = 96          # per message: msgpack framing and the msg_id header


def _weight(body: dict) -> int:
    return len(body["data"]) + len(body["subject"]) + _OVERHEAD + \
        sum(len(k) + len(v) for k, v in body["headers"].items())


class PublishCoalescer:
    def __init__(self, nc: Requester):
        self._nc = nc
        self._pending: dict[float, list[tuple[dict, asyncio.Future]]] = {}
        self._scheduled = False

    def submit(self, body: dict, timeout: float) -> asyncio.Future:
        """Queue one `pub` body; a future of its PubAck (or its error)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.setdefault(timeout, []).append((body, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        loop = asyncio.get_running_loop()
        for timeout, items in pending.items():
            for chunk in self._chunks(items):
                loop.create_task(self._send(chunk, timeout))

    def _chunks(self, items: list[tuple[dict, asyncio.Future]]):
        info = self._nc.info
        max_msgs = getattr(info, "max_pub_batch", 1) or 1
        max_payload = getattr(info, "max_payload", 0)
        max_bytes = min(MAX_BATCH_BYTES, getattr(info, "max_frame", MAX_BATCH_BYTES) // 2)
        chunk: list = []
        size = 0
        for body, fut in items:
            data, subject = body["data"], body["subject"]
            if not (isinstance(data, bytes) and isinstance(subject, str) and subject
                    and len(data) <= max_payload):
                yield [(body, fut)]
                continue
            w = _weight(body)
            if chunk and (len(chunk) >= max_msgs or size + w > max_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append((body, fut))
            size += w
        if chunk:
            yield chunk

    async def _send(self, chunk: list[tuple[dict, asyncio.Future]], timeout: float) -> None:
        nc = self._nc
        try:
            if len(chunk) == 1:
                replies = [await nc._request("pub", chunk[0][0], timeout, idempotent=True)]
            else:
                r = await nc._request("pub.batch", {"msgs": [b for b, _ in chunk]}, timeout, idempotent=True)
                replies = r["acks"]
        except Exception as e:  # noqa: BLE001 - the outcome of every publish in the chunk
            for _, fut in chunk:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), reply in zip(chunk, replies):
            if fut.done():
                continue        # its caller gave up (cancelled)
            if "error" in reply:
                fut.set_exception(JSError.from_wire(reply["error"]))
            else:
                fut.set_result(PubAck.from_dict(reply))
