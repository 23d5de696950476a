"""Client-side publish coalescing (api/client/coalesce.py): publishes started in one
event-loop turn share a `pub.batch` request, and each still gets its own outcome."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from api.client.coalesce import PublishCoalescer
from jetstream.errors import JSError, WrongLastSequenceError


class FakeClient:
    """Answers `pub` and `pub.batch` like a server: a seq per message, or the
    error a message's `fail` header asks for."""

    def __init__(self, max_pub_batch=1000, max_payload=1 << 20, max_frame=16 << 20):
        self.info = SimpleNamespace(max_pub_batch=max_pub_batch, max_payload=max_payload, max_frame=max_frame)
        self.requests: list[tuple[str, int]] = []
        self.seq = 0
        self.down = False

    def _ack(self, body: dict) -> dict:
        if body["headers"].get("fail"):
            return {"error": WrongLastSequenceError("wrong last sequence: 7").to_wire()}
        self.seq += 1
        return {"stream": "S", "seq": self.seq}

    async def _request(self, op, body, timeout, idempotent=False):
        assert idempotent, "publishes carry msg ids: always safe to send again"
        if self.down:
            raise ConnectionError("connection lost")
        self.requests.append((op, len(body["msgs"]) if op == "pub.batch" else 1))
        if op == "pub":
            if len(body["data"]) > self.info.max_payload:
                raise JSError("message size exceeds maximum allowed", code=400, err_code=10054)
            r = self._ack(body)
            if "error" in r:
                raise JSError.from_wire(r["error"])
            return r
        return {"acks": [self._ack(b) for b in body["msgs"]]}


def _body(i: int, data: bytes = b"x", **headers) -> dict:
    return {"subject": "s.x", "data": data, "headers": {"Nats-Msg-Id": f"m{i}", **headers}}


async def test_publishes_started_together_share_one_request_and_keep_their_order():
    nc = FakeClient()
    pc = PublishCoalescer(nc)
    acks = await asyncio.gather(*(pc.submit(_body(i), 5.0) for i in range(50)))
    assert nc.requests == [("pub.batch", 50)]
    assert [a.seq for a in acks] == list(range(1, 51))


async def test_a_lone_publish_is_a_plain_pub():
    nc = FakeClient()
    ack = await PublishCoalescer(nc).submit(_body(1), 5.0)
    assert nc.requests == [("pub", 1)] and ack.seq == 1


async def test_batches_respect_the_servers_message_and_byte_bounds():
    nc = FakeClient(max_pub_batch=8)
    pc = PublishCoalescer(nc)
    await asyncio.gather(*(pc.submit(_body(i), 5.0) for i in range(20)))
    assert [n for _, n in nc.requests] == [8, 8, 4]

    nc = FakeClient(max_frame=8 * 1024)          # half of it per batch: 4 KiB
    pc = PublishCoalescer(nc)
    await asyncio.gather(*(pc.submit(_body(i, b"y" * 1000), 5.0) for i in range(10)))
    assert all(n <= 4 for _, n in nc.requests) and sum(n for _, n in nc.requests) == 10


async def test_one_refused_message_fails_alone():
    nc = FakeClient()
    pc = PublishCoalescer(nc)
    futs = [pc.submit(_body(i, fail="1") if i == 3 else _body(i), 5.0) for i in range(6)]
    out = await asyncio.gather(*futs, return_exceptions=True)
    assert isinstance(out[3], WrongLastSequenceError) and out[3].err_code == 10071
    assert [a.seq for i, a in enumerate(out) if i != 3] == [1, 2, 3, 4, 5]


async def test_an_oversized_message_travels_alone_so_the_batch_is_not_refused():
    nc = FakeClient(max_payload=100)
    pc = PublishCoalescer(nc)
    futs = [pc.submit(_body(i, b"z" * (500 if i == 2 else 10)), 5.0) for i in range(5)]
    out = await asyncio.gather(*futs, return_exceptions=True)
    assert isinstance(out[2], JSError) and out[2].err_code == 10054
    assert sorted(nc.requests) == [("pub", 1), ("pub.batch", 4)]
    assert all(not isinstance(a, Exception) for i, a in enumerate(out) if i != 2)


async def test_a_failed_request_fails_every_publish_in_it():
    nc = FakeClient()
    nc.down = True
    pc = PublishCoalescer(nc)
    out = await asyncio.gather(*(pc.submit(_body(i), 5.0) for i in range(4)), return_exceptions=True)
    assert all(isinstance(e, ConnectionError) for e in out)


async def test_a_cancelled_publish_does_not_disturb_the_others():
    nc = FakeClient()
    pc = PublishCoalescer(nc)
    futs = [pc.submit(_body(i), 5.0) for i in range(3)]
    futs[1].cancel()
    acks = await asyncio.gather(futs[0], futs[2])
    assert [a.seq for a in acks] == [1, 3]
    with pytest.raises(asyncio.CancelledError):
        await futs[1]
