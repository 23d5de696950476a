"""End to end: push consumers with a deliver group, core pub/sub and request/reply,
drain, token authentication and reconnecting across a server restart."""
import asyncio
import collections

import pytest

from api.client import AuthorizationError, ConsumerConfig, TimeoutError, connect
from conftest import ServerProcess
from e2e_util import nc, until  # noqa: F401 - nc is a fixture


async def test_push_consumer_deliver_group_each_message_reaches_exactly_one_of_three_workers(nc, server):
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    workers = [await connect([server.addr]) for _ in range(3)]
    got: dict[int, list[int]] = {w: [] for w in range(3)}
    try:
        def handler(w):
            async def cb(msg):
                got[w].append(msg.metadata.sequence.stream)
                assert msg.metadata.num_delivered == 1
                await msg.ack()
            return cb

        subs = [await c.jetstream().subscribe("orders.>", queue="workers", durable="workers", cb=handler(w),
                                              manual_ack=True) for w, c in enumerate(workers)]
        info = await js.consumer_info("ORDERS", "workers")
        assert info.config.deliver_group == "workers" and info.push_bound is True
        assert [s.queue for s in subs] == ["workers"] * 3

        n = 60
        acks = await js.publish_batch([(f"orders.{i % 4}", f"o{i}".encode()) for i in range(n)])
        assert [a.seq for a in acks] == list(range(1, n + 1))
        await until(lambda: sum(len(v) for v in got.values()) >= n, what="all messages delivered")
        info = await until(lambda: _acked_all(js, n), what="all acks applied")
        assert (info.num_pending, info.delivered.stream_seq, info.ack_floor.stream_seq) == (0, n, n)
        everything = [s for v in got.values() for s in v]
        assert sorted(everything) == list(range(1, n + 1))      # each exactly once, all of them
        assert all(got[w] for w in range(3)), {w: len(v) for w, v in got.items()}
        assert info.num_redelivered == 0
    finally:
        for c in workers:
            await c.close()


async def _acked_all(js, n):
    info = await js.consumer_info("ORDERS", "workers")
    return info if info.num_ack_pending == 0 and info.ack_floor.stream_seq == n else None


async def test_push_consumer_auto_ack_without_queue(nc):
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    for i in range(5):
        await js.publish("orders.x", f"o{i}".encode())
    seen = []

    async def cb(msg):
        seen.append((msg.metadata.sequence.stream, msg.data))

    await js.subscribe("orders.>", durable="auto", cb=cb)
    await until(lambda: len(seen) == 5, what="five deliveries")
    assert seen == [(i + 1, f"o{i}".encode()) for i in range(5)]
    await until(lambda: _ci_if(js, "auto", lambda i: i.num_ack_pending == 0 and i.ack_floor.stream_seq == 5),
                what="auto acks applied")


async def _ci_if(js, consumer, pred, stream="ORDERS"):
    info = await js.consumer_info(stream, consumer)
    return info if pred(info) else None


async def test_core_wildcards_and_queue_groups(nc, server):
    other = await connect([server.addr])
    try:
        got = collections.defaultdict(list)

        def rec(name):
            async def cb(msg):
                got[name].append(msg.subject + ":" + msg.data.decode())
            return cb

        await nc.subscribe("events.*", cb=rec("star"))
        await nc.subscribe("events.>", cb=rec("gt"))
        await nc.subscribe("events.a", cb=rec("exact"))
        for i in range(3):                       # one group "q", members on both connections
            await (nc if i < 2 else other).subscribe("events.*", queue="q", cb=rec(f"q{i}"))
        await other.subscribe("events.>", queue="r", cb=rec("r0"))

        sent = [f"events.{'ab'[i % 2]}:{i}" for i in range(30)] + ["events.a.deep:x"]
        for s in sent:
            subject, data = s.split(":")
            await other.publish(subject, data.encode())
        await until(lambda: len(got["gt"]) == 31 and len(got["r0"]) == 31 and len(got["star"]) == 30
                    and sum(len(got[f"q{i}"]) for i in range(3)) == 30, what="core deliveries")
        assert sorted(got["gt"]) == sorted(sent)
        assert sorted(got["r0"]) == sorted(sent)                   # a group of one gets everything
        assert sorted(got["star"]) == sorted(sent[:30])
        assert sorted(got["exact"]) == sorted(s for s in sent if s.startswith("events.a:"))
        group = [m for i in range(3) for m in got[f"q{i}"]]
        assert sorted(group) == sorted(sent[:30])                  # each to exactly one member
        assert all(got[f"q{i}"] for i in range(3))
    finally:
        await other.close()


async def test_request_reply_with_respond(nc, server):
    responder = await connect([server.addr])
    try:
        served = collections.Counter()

        def make(i):
            async def cb(msg):
                served[i] += 1
                await msg.respond(b"echo:" + msg.data)
            return cb

        for i in range(2):
            await responder.subscribe("svc.echo", queue="svc", cb=make(i))
        for k in range(10):
            reply = await nc.request("svc.echo", f"hi{k}".encode(), timeout=1)
            assert reply.data == f"echo:hi{k}".encode()
        assert sum(served.values()) == 10                      # one responder per request
        with pytest.raises(TimeoutError):
            await nc.request("svc.nobody", b"?", timeout=0.3)
        with pytest.raises(asyncio.TimeoutError):              # it is also asyncio's TimeoutError
            await nc.request("svc.nobody", b"?", timeout=0.1)
    finally:
        await responder.close()


async def test_core_publish_to_a_stream_subject_is_stored_and_reaches_live_subscribers(nc, server):
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    sub = await nc.subscribe("orders.*")
    publisher = await connect([server.addr])
    try:
        await publisher.publish("orders.created", b"core", headers={"X-From": "core"})
        msg = await sub.next_msg(timeout=2)
        assert (msg.subject, msg.data, msg.headers["X-From"]) == ("orders.created", b"core", "core")
        info = await until(lambda: _stream_has(js, 1), what="stored")
        assert (info.state.first_seq, info.state.last_seq) == (1, 1)
        stored = await js.get_msg("ORDERS", 1)
        assert (stored.subject, stored.data, stored.headers["X-From"]) == ("orders.created", b"core", "core")
        # A JetStream publish reaches the live core subscriber too.
        ack = await js.publish("orders.paid", b"js")
        msg = await sub.next_msg(timeout=2)
        assert (ack.seq, msg.subject, msg.data) == (2, "orders.paid", b"js")
    finally:
        await publisher.close()


async def _stream_has(js, n, stream="ORDERS"):
    info = await js.stream_info(stream)
    return info if info.state.messages == n else None


async def test_drain_lets_callbacks_finish_queued_messages_then_closes(nc, server):
    sub_conn = await connect([server.addr])
    entered, done = [], []

    async def slow(msg):
        entered.append(msg)
        await asyncio.sleep(0.03)              # a slow handler, so messages queue up behind it
        done.append(int(msg.data))

    sub = await sub_conn.subscribe("work.*", cb=slow)
    n = 20
    for i in range(n):
        await nc.publish("work.item", str(i).encode())
    await until(lambda: len(entered) + sub.pending_msgs == n, what="all messages received")
    assert len(done) < n                       # drain starts while work is still queued
    await sub_conn.drain()
    assert sorted(done) == list(range(n))
    assert sub_conn.is_closed
    # Drained: the server no longer routes to it, and the client refuses new work.
    await nc.publish("work.item", b"99")
    await nc.flush()
    assert sorted(done) == list(range(n))
    with pytest.raises(Exception):
        await sub_conn.publish("work.item", b"x")


async def test_token_auth_rejects_missing_or_wrong_token_and_accepts_the_right_one(tmp_path):
    s = ServerProcess(str(tmp_path / "node"), "--token", "secret").start()
    try:
        with pytest.raises(AuthorizationError):
            await connect([s.addr], max_reconnect_attempts=0)
        with pytest.raises(AuthorizationError):
            await connect([s.addr], token="wrong", max_reconnect_attempts=0)
        c = await connect([s.addr], token="secret")
        assert c.info.auth_required is True
        js = c.jetstream()
        await js.add_stream(name="S", subjects=["s.>"])
        assert (await js.publish("s.x", b"ok")).seq == 1
        await c.close()
    finally:
        s.stop()


async def test_client_reconnects_after_restart_and_restores_subscriptions(tmp_path):
    s = ServerProcess(str(tmp_path / "node")).start()
    try:
        c = await connect([s.addr], reconnect_time_wait=0.05)
        js = c.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        assert (await js.publish("orders.a", b"before")).seq == 1
        pull = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
        core = await c.subscribe("greet.*")
        pushed = []

        async def on_push(msg):
            pushed.append(msg.metadata.sequence.stream)

        await js.subscribe("orders.>", durable="push", cb=on_push, config=ConsumerConfig(deliver_policy="new"))

        s.stop()
        await until(lambda: not c.is_connected, what="the client to notice the restart")
        s.start()                              # same data dir, same address
        await until(lambda: c.is_connected, timeout=10, what="reconnect")
        ack = await js.publish("orders.a", b"after")
        assert (ack.stream, ack.seq, bool(ack.duplicate)) == ("ORDERS", 2, False)
        msgs = await pull.fetch(batch=5, timeout=1)
        assert [(m.metadata.sequence.stream, m.data) for m in msgs] == [(1, b"before"), (2, b"after")]

        # The core subscription was restored on the new connection.
        await c.flush()
        other = await connect([s.addr])
        await other.publish("greet.x", b"hello again")
        m = await core.next_msg(timeout=2)
        assert (m.subject, m.data) == ("greet.x", b"hello again")
        await other.close()
        # So was the push subscription: the durable push consumer delivers to it again.
        await until(lambda: pushed == [2], what="push delivery after the restart")
        assert (await js.publish("orders.b", b"more")).seq == 3
        await until(lambda: pushed == [2, 3], what="push delivery of a new message")
        await c.close()
    finally:
        s.stop()


async def test_idle_heartbeats_reach_the_deliver_subject_but_not_the_js_callback(nc):
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    raw = await nc.subscribe("hb.deliver")                  # sees what the server pushes, as is
    seen = []

    async def cb(msg):
        seen.append((msg.metadata and msg.metadata.sequence.stream, msg.data))

    await js.subscribe("orders.>", durable="hb", cb=cb,
                       config=ConsumerConfig(idle_heartbeat=0.1, deliver_subject="hb.deliver"))
    ack = await js.publish("orders.x", b"real")

    async def heartbeat():
        m = await raw.next_msg(timeout=2)
        return m if m.metadata is None else None

    hb = await until(heartbeat, what="an idle heartbeat")
    assert hb.headers["Status"] == "100" and hb.data == b""
    await until(lambda: _ci_if(js, "hb", lambda i: i.ack_floor.stream_seq == ack.seq and i.num_ack_pending == 0),
                what="the real message auto-acked")
    await until(heartbeat, what="another idle heartbeat")   # heartbeats keep coming while idle
    assert seen == [(1, b"real")]                           # the callback saw only the message
