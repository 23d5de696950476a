"""The seed articles' Go programs, as the same programs in nats-py, against a 3-node
cluster of real processes, every client connected to a follower (issue 12): a push
consumer with a deliver group, a DLQ on max deliveries, replay by start time and by start
sequence, dedupe, and the mirror and aggregate. (The Python worker of the third seed runs
verbatim in tests/test_nats_cluster.py.)"""
from __future__ import annotations

import datetime
import json

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamSource

from e2e_util import until
from test_nats_cluster import cluster, nats_to, until_js_through  # noqa: F401 - cluster: the same 3-node fixture

pytestmark = pytest.mark.slow


@pytest.fixture
async def followers(cluster):
    """One nats-py connection to each follower."""
    leader = cluster.leader()
    conns = []
    for i, node in enumerate(cluster.nodes):
        if i != leader:
            await until_js_through(node)
            conns.append(await nats_to(node))
    yield conns
    for nc in conns:
        await nc.close()


async def test_push_consumer_with_a_deliver_group_shares_the_work_across_nodes(followers):
    a, b = followers
    js = a.jetstream()
    await js.add_stream(name="PUSHQ", subjects=["pushq.>"], num_replicas=3)
    done: list[tuple[str, str]] = []

    def worker(name):
        async def handle(msg):
            order = json.loads(msg.data)
            done.append((name, order["id"]))
            await msg.ack()
        return handle
    # js.QueueSubscribe("orders.>", "order-workers", ..., Durable("order-workers"), ManualAck(), AckWait(30s))
    for name, nc in (("w1", a), ("w2", b)):
        await nc.jetstream().subscribe("pushq.>", queue="order-workers", durable="order-workers",
                                       cb=worker(name), manual_ack=True,
                                       config=ConsumerConfig(ack_wait=30))
    for i in range(60):
        await js.publish("pushq.new", json.dumps({"id": f"o{i}"}).encode())
    await until(lambda: len(done) >= 60, timeout=60, what="the group to process every order")
    info = await js.consumer_info("PUSHQ", "order-workers")
    await until(lambda: _acked(js, "PUSHQ", "order-workers", 60), timeout=30, what="every ack applied")
    assert sorted(i for _, i in done) == sorted(f"o{i}" for i in range(60)), "an order went to two workers"
    assert {w for w, _ in done} == {"w1", "w2"}, "both members, on two nodes, take orders"
    assert info.config.deliver_group == "order-workers"


async def _acked(js, stream: str, consumer: str, n: int) -> bool:
    info = await js.consumer_info(stream, consumer)
    return info.ack_floor.stream_seq == n and info.num_ack_pending == 0


async def test_dead_letter_queue_after_max_deliveries(followers):
    nc = followers[0]
    js = nc.jetstream()
    max_retries = 3
    await js.add_stream(name="DLQ_ORDERS", subjects=["dlqorders.>"], num_replicas=3)
    await js.add_stream(name="DLQ_ORDERS_DLQ", subjects=["dlq.dlqorders.>"], num_replicas=3)

    async def handle(msg):
        meta = msg.metadata
        # processOrder always fails here: retried until max_retries, then dead-lettered
        if meta.num_delivered >= max_retries:
            headers = dict(msg.headers or {})
            headers.update({"X-DLQ-Reason": "max_retries_exceeded", "X-DLQ-Error": "boom",
                            "X-DLQ-Original-Subject": msg.subject, "X-DLQ-Original-Stream": meta.stream,
                            "X-DLQ-Original-Sequence": str(meta.sequence.stream),
                            "X-DLQ-Delivery-Count": str(meta.num_delivered),
                            "X-DLQ-Timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat()})
            await js.publish("dlq." + msg.subject, msg.data, headers=headers)
            await msg.ack()
            return
        await msg.nak(delay=0.05 * meta.num_delivered ** 2)
    await js.subscribe("dlqorders.>", durable="order-processor", cb=handle, manual_ack=True,
                       config=ConsumerConfig(max_deliver=max_retries + 1))
    await js.publish("dlqorders.new", b'{"id": "bad"}', headers={"Trace": "t1"})
    await until(lambda: _count(js, "DLQ_ORDERS_DLQ", 1), timeout=60, what="the order in the DLQ")
    dead = await js.get_msg("DLQ_ORDERS_DLQ", 1)
    assert dead.subject == "dlq.dlqorders.new" and dead.data == b'{"id": "bad"}'
    assert dead.headers["X-DLQ-Delivery-Count"] == str(max_retries)
    assert dead.headers["X-DLQ-Original-Sequence"] == "1" and dead.headers["Trace"] == "t1"
    await until(lambda: _acked(js, "DLQ_ORDERS", "order-processor", 1), timeout=30, what="the original acked")


async def _count(js, stream: str, n: int) -> bool:
    return (await js.stream_info(stream)).state.messages >= n


async def test_replay_by_start_time_and_by_start_sequence(followers):
    nc = followers[1]
    js = nc.jetstream()
    await js.add_stream(name="REPLAY", subjects=["replay.>"], num_replicas=3)
    for i in range(5):
        await js.publish("replay.old", f"old-{i}".encode())
    last_old = await js.get_msg("REPLAY", 5)
    start = last_old.time + datetime.timedelta(microseconds=1)     # just after the last old message
    for i in range(5):
        await js.publish("replay.new", f"new-{i}".encode())

    by_time, by_seq = [], []

    def collect(into):
        async def handle(msg):
            into.append((msg.metadata.sequence.stream, msg.data))
            await msg.ack()
        return handle
    await js.subscribe("replay.>", durable="replay-consumer", cb=collect(by_time), manual_ack=True,
                       config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                             opt_start_time=start.isoformat().replace("+00:00", "Z")))
    await js.subscribe("replay.>", durable="sequence-replay", cb=collect(by_seq), manual_ack=True,
                       config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=3))
    await until(lambda: len(by_time) >= 5 and len(by_seq) >= 8, timeout=30, what="both replays")
    assert by_time == [(6 + i, f"new-{i}".encode()) for i in range(5)]
    assert [s for s, _ in by_seq] == list(range(3, 11))


async def test_dedupe_by_message_id(followers):
    js = followers[0].jetstream()
    await js.add_stream(name="DEDUPE", subjects=["dedupe.>"], num_replicas=3, duplicate_window=120)
    first = await js.publish("dedupe.order", b'{"id": "ord-1"}', headers={"Nats-Msg-Id": "ord-1"})
    again = await js.publish("dedupe.order", b'{"id": "ord-1"}', headers={"Nats-Msg-Id": "ord-1"})
    other = await js.publish("dedupe.order", b'{"id": "ord-2"}', headers={"Nats-Msg-Id": "ord-2"})
    assert (first.seq, bool(first.duplicate)) == (1, False)
    assert (again.seq, again.duplicate) == (1, True)
    assert other.seq == 2 and (await js.stream_info("DEDUPE")).state.messages == 2


async def test_mirror_and_aggregate_through_nats_py(followers):
    js = followers[1].jetstream()
    await js.add_stream(name="S_ORDERS", subjects=["s.orders.>"], num_replicas=3)
    await js.add_stream(name="S_INVENTORY", subjects=["s.inv.>"], num_replicas=3)
    for i in range(10):
        await js.publish("s.orders.new", f"o{i}".encode())
        await js.publish("s.inv.widget", f"i{i}".encode())
    await js.add_stream(name="S_ORDERS_MIRROR", mirror=StreamSource(name="S_ORDERS"), num_replicas=3)
    await js.add_stream(name="S_ALL", num_replicas=3, sources=[StreamSource(name="S_ORDERS"),
                                                               StreamSource(name="S_INVENTORY")])
    await until(lambda: _count(js, "S_ORDERS_MIRROR", 10), timeout=60, what="the mirror")
    await until(lambda: _count(js, "S_ALL", 20), timeout=60, what="the aggregate")
    assert [(await js.get_msg("S_ORDERS_MIRROR", s)).data for s in range(1, 11)] == \
        [f"o{i}".encode() for i in range(10)]
    info = await js.stream_info("S_ALL")
    assert info.state.messages == 20 and {s.name for s in info.sources} == {"S_ORDERS", "S_INVENTORY"}
