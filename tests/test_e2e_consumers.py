"""End to end: consumers, pull fetch, acknowledgements, redelivery, max_deliver and
dead-letter queues, deliver policies, workqueue and interest retention."""
import asyncio
import time

import pytest

from api.client import ConsumerConfig, connect
from jetstream.errors import ConsumerNotFoundError, JSError
from e2e_util import advisories, nc, stream_msgs, until  # noqa: F401 - nc is a fixture


async def _orders(js, n=0, subject="orders.created", **cfg):
    await js.add_stream(name="ORDERS", subjects=["orders.>"], **cfg)
    for i in range(n):
        await js.publish(subject, f"order {i + 1}".encode())


async def test_consumer_add_update_info_list_delete(nc):
    js = nc.jetstream()
    await _orders(js, 3)
    info = await js.add_consumer("ORDERS", durable_name="proc", ack_policy="explicit", ack_wait=30, max_deliver=5,
                                 filter_subject="orders.>", max_ack_pending=1000, backoff=[1, 5, 30])
    assert (info.stream_name, info.name) == ("ORDERS", "proc")
    assert info.config.backoff == [1, 5, 30] and info.config.ack_wait == 1 and info.config.max_deliver == 5
    assert (info.num_pending, info.num_ack_pending, info.delivered.stream_seq) == (3, 0, 0)
    await js.add_consumer("ORDERS", ConsumerConfig(durable_name="audit", filter_subject="orders.created"))

    info = await js.update_consumer("ORDERS", durable_name="proc", ack_policy="explicit", max_deliver=7,
                                    filter_subject="orders.>", max_ack_pending=500, backoff=[1, 5, 30])
    assert (info.config.max_deliver, info.config.max_ack_pending) == (7, 500)
    with pytest.raises(JSError) as e:                       # deliver policy is immutable
        await js.update_consumer("ORDERS", durable_name="proc", deliver_policy="new", filter_subject="orders.>")
    assert e.value.err_code == 10012
    with pytest.raises(JSError) as e:                       # update of a consumer that does not exist
        await js.update_consumer("ORDERS", durable_name="ghost")
    assert e.value.err_code == 10149
    with pytest.raises(JSError) as e:                       # create of one that exists, differently
        await js.add_consumer("ORDERS", durable_name="audit", filter_subject="orders.paid", action="create")
    assert e.value.err_code == 10148

    assert (await js.stream_info("ORDERS")).state.consumer_count == 2
    listed = {c.name: c for c in await js.consumers_info("ORDERS")}
    assert set(listed) == {"audit", "proc"}
    assert listed["audit"].config.filter_subject == "orders.created" and listed["audit"].num_pending == 3

    assert await js.delete_consumer("ORDERS", "audit") is True
    with pytest.raises(ConsumerNotFoundError) as e:
        await js.consumer_info("ORDERS", "audit")
    assert (e.value.code, e.value.err_code) == (404, 10014)
    with pytest.raises(ConsumerNotFoundError):
        await js.delete_consumer("ORDERS", "audit")
    assert [c.name for c in await js.consumers_info("ORDERS")] == ["proc"]


async def test_fetch_returns_batches_with_metadata(nc):
    js = nc.jetstream()
    await _orders(js)
    await js.publish("orders.created", b"o1", headers={"X-Source": "checkout"})
    for i in range(2, 8):
        await js.publish("orders.created", f"o{i}".encode())
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    first = await sub.fetch(batch=5, timeout=1)
    assert [m.metadata.sequence.stream for m in first] == [1, 2, 3, 4, 5]
    assert [m.metadata.sequence.consumer for m in first] == [1, 2, 3, 4, 5]
    m = first[0]
    assert (m.subject, m.data, m.headers["X-Source"]) == ("orders.created", b"o1", "checkout")
    assert (m.metadata.stream, m.metadata.consumer, m.metadata.num_delivered) == ("ORDERS", "proc", 1)
    assert [x.metadata.num_pending for x in first] == [6, 5, 4, 3, 2]
    rest = await sub.fetch(batch=5, timeout=1)
    assert [x.metadata.sequence.stream for x in rest] == [6, 7]
    info = await js.consumer_info("ORDERS", "proc")
    assert (info.num_pending, info.num_ack_pending, info.delivered.stream_seq) == (0, 7, 7)
    for x in first + rest:
        await x.ack_sync()
    info = await js.consumer_info("ORDERS", "proc")
    assert (info.num_ack_pending, info.ack_floor.stream_seq, info.ack_floor.consumer_seq) == (0, 7, 7)
    # pull_subscribe binds to the existing durable.
    again = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    assert await again.fetch(batch=1, timeout=0) == []


async def test_fetch_with_nothing_returns_empty_list_after_timeout(nc):
    js = nc.jetstream()
    await _orders(js)
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    t0 = time.monotonic()
    assert await sub.fetch(batch=3, timeout=0.5) == []
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 2.0


async def test_fetch_no_wait_returns_at_once(nc):
    js = nc.jetstream()
    await _orders(js, 2)
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    got = await sub.fetch(batch=10, timeout=0)          # no_wait: what is there, now
    assert [m.metadata.sequence.stream for m in got] == [1, 2]
    t0 = time.monotonic()
    assert await sub.fetch(batch=10, timeout=0) == []
    assert time.monotonic() - t0 < 0.5
    r = await nc._request("fetch", {"stream": "ORDERS", "consumer": "proc", "batch": 1, "expires": 5,
                                    "no_wait": True})
    assert r == {"msgs": []}


async def test_long_poll_fetch_is_answered_as_soon_as_a_message_arrives(nc):
    js = nc.jetstream()
    await _orders(js)
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    t0 = time.monotonic()
    waiter = asyncio.create_task(sub.fetch(batch=5, timeout=3))
    await until(lambda: _num_waiting(js, "proc", 1), what="fetch to be waiting")
    assert not waiter.done()
    ack = await js.publish("orders.created", b"wake up")
    got = await waiter
    elapsed = time.monotonic() - t0
    assert [(m.metadata.sequence.stream, m.data) for m in got] == [(ack.seq, b"wake up")]
    assert elapsed <= 2.0
    assert (await js.consumer_info("ORDERS", "proc")).num_waiting == 0


async def _num_waiting(js, consumer, n):
    return (await js.consumer_info("ORDERS", consumer)).num_waiting == n


async def test_fetch_beyond_max_waiting_is_refused_with_409(nc):
    js = nc.jetstream()
    await _orders(js)
    await js.add_consumer("ORDERS", durable_name="proc", max_waiting=1)
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    waiter = asyncio.create_task(sub.fetch(batch=1, timeout=3))
    await until(lambda: _num_waiting(js, "proc", 1), what="fetch to be waiting")
    with pytest.raises(JSError) as e:
        await sub.fetch(batch=1, timeout=1)
    assert e.value.code == 409 and "MaxWaiting" in e.value.description
    # The waiting fetch is unaffected and still gets the next message.
    await js.publish("orders.created", b"x")
    got = await waiter
    assert [m.metadata.sequence.stream for m in got] == [1]


async def test_ack_nak_delay_term_in_progress_and_ack_sync(nc):
    js = nc.jetstream()
    await _orders(js, 4)
    await js.add_consumer("ORDERS", durable_name="proc", ack_wait=0.6, max_deliver=10)
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    m1, m2, m3, m4 = await sub.fetch(batch=4, timeout=1)

    await m1.ack_sync()
    with pytest.raises(ValueError):
        await m1.ack()                                   # acked once only
    t_nak = time.monotonic()
    await m2.nak(delay=0.4)
    await m3.term(reason="bad order")
    info = await until(lambda: _ci_if(js, "proc", lambda i: i.num_ack_pending == 2), what="nak and term applied")
    assert info.ack_floor.stream_seq == 1

    # m4 is kept alive by in_progress past its 0.6 s ack_wait; m2 comes back after its delay.
    got, arrived = [], None
    t_end = time.monotonic() + 1.2
    while time.monotonic() < t_end:
        await m4.in_progress()
        for m in await sub.fetch(batch=4, timeout=0.2):
            arrived = arrived or time.monotonic()
            got.append(m)
            await m.ack_sync()
    assert [(m.metadata.sequence.stream, m.metadata.num_delivered) for m in got] == [(2, 2)]
    assert arrived - t_nak >= 0.4                        # the nak'd message was not back before its delay
    info = await js.consumer_info("ORDERS", "proc")
    assert (info.num_ack_pending, info.num_redelivered) == (1, 0)

    # Once in_progress stops, m4 is redelivered after ack_wait; term'd m3 never is.
    again = await sub.fetch(batch=4, timeout=2)
    assert [(m.metadata.sequence.stream, m.metadata.num_delivered) for m in again] == [(4, 2)]
    await again[0].ack_sync()
    info = await js.consumer_info("ORDERS", "proc")
    assert (info.num_ack_pending, info.ack_floor.stream_seq, info.num_pending) == (0, 4, 0)
    assert await sub.fetch(batch=4, timeout=0.8) == []


async def test_nak_delay_is_honoured(nc):
    js = nc.jetstream()
    await _orders(js, 1)
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    (m,) = await sub.fetch(1, timeout=1)
    t0 = time.monotonic()
    await m.nak(delay=0.5)
    (again,) = await sub.fetch(1, timeout=2)
    elapsed = time.monotonic() - t0
    assert (again.metadata.sequence.stream, again.metadata.num_delivered) == (1, 2)
    assert 0.5 <= elapsed <= 1.5
    await again.nak()                                   # no delay: straight back
    (third,) = await sub.fetch(1, timeout=1)
    assert third.metadata.num_delivered == 3


async def _ci_if(js, consumer, pred, stream="ORDERS"):
    info = await js.consumer_info(stream, consumer)
    return info if pred(info) else None


async def test_backoff_schedules_redeliveries(nc):
    js = nc.jetstream()
    await _orders(js, 1)
    await js.add_consumer("ORDERS", durable_name="proc", backoff=[0.2, 0.5], max_deliver=4)
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    t0 = time.monotonic()
    (m,) = await sub.fetch(1, timeout=1)
    assert m.metadata.num_delivered == 1
    # Each redelivery is made during the fetch that returns it, so its deadline is
    # measured from that fetch's start (a lower bound on when the server delivered).
    t1 = time.monotonic()
    (r1,) = await sub.fetch(1, timeout=2)                # not acked: back after backoff[0]
    assert r1.metadata.num_delivered == 2 and time.monotonic() - t0 >= 0.2
    (r2,) = await sub.fetch(1, timeout=2)                # then after backoff[1]
    t2 = time.monotonic()
    assert r2.metadata.num_delivered == 3 and t2 - t1 >= 0.5
    assert t2 - t0 <= 3.0
    info = await js.consumer_info("ORDERS", "proc")
    assert (info.num_redelivered, info.num_ack_pending) == (1, 1)
    await r2.ack_sync()
    assert await sub.fetch(1, timeout=0.7) == []


ADV_MAX = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"
ADV_TERM = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>"


async def test_max_deliver_publishes_an_advisory_into_a_dlq_stream(nc):
    js = nc.jetstream()
    await _orders(js, 2)
    await js.add_stream(name="DLQ", subjects=[ADV_MAX])
    await js.add_consumer("ORDERS", durable_name="proc", max_deliver=3, ack_wait=30)
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    for attempt in range(1, 4):
        msgs = await sub.fetch(batch=2, timeout=1)
        by_seq = {m.metadata.sequence.stream: m for m in msgs}
        assert sorted(by_seq) == ([1, 2] if attempt == 1 else [1])
        assert by_seq[1].metadata.num_delivered == attempt
        if attempt == 1:
            await by_seq[2].ack_sync()
        await by_seq[1].nak()
    # Delivered max_deliver times: no more redeliveries, and an advisory lands in DLQ.
    assert await sub.fetch(batch=2, timeout=0.3) == []
    adv = await until(lambda: _nonempty(advisories(js, "DLQ")), what="max deliveries advisory")
    assert len(adv) == 1
    a = adv[0]
    assert (a["stream"], a["consumer"], a["stream_seq"], a["deliveries"]) == ("ORDERS", "proc", 1, 3)
    assert a["type"] == "io.nats.jetstream.advisory.v1.max_deliver"
    stored = (await stream_msgs(js, "DLQ"))[0]
    assert stored.subject == "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.proc"
    # The original message can be looked up from the advisory.
    assert (await js.get_msg("ORDERS", a["stream_seq"])).data == b"order 1"
    info = await js.consumer_info("ORDERS", "proc")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def _nonempty(coro):
    v = await coro
    return v if v else None


async def test_seed_dlq_pattern_republish_with_headers_then_term(nc):
    js = nc.jetstream()
    await _orders(js)
    await js.add_stream(name="ORDERS_DLQ", subjects=["dlq.orders.>"])
    await js.add_stream(name="ADVISORIES", subjects=[ADV_TERM])
    for i, ok in enumerate([True, False, True]):
        await js.publish("orders.created", b"ok" if ok else b"poison", msg_id=f"o{i}")
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    for m in await sub.fetch(batch=3, timeout=1):
        if m.data == b"poison":
            await js.publish("dlq.orders.x", m.data, headers={
                "X-DLQ-Reason": "validation failed", "X-DLQ-Original-Subject": m.subject,
                "X-DLQ-Original-Stream": m.metadata.stream,
                "X-DLQ-Original-Seq": str(m.metadata.sequence.stream),
                "X-DLQ-Deliveries": str(m.metadata.num_delivered)})
            await m.term(reason="sent to DLQ")
        else:
            await m.ack()
    (d,) = await stream_msgs(js, "ORDERS_DLQ")
    assert (d.subject, d.data) == ("dlq.orders.x", b"poison")
    assert {k: v for k, v in d.headers.items() if k.startswith("X-DLQ-")} == {
        "X-DLQ-Reason": "validation failed", "X-DLQ-Original-Subject": "orders.created",
        "X-DLQ-Original-Stream": "ORDERS", "X-DLQ-Original-Seq": "2", "X-DLQ-Deliveries": "1"}

    adv = await until(lambda: _nonempty(advisories(js, "ADVISORIES")), what="terminated advisory")
    assert [(a["type"], a["stream"], a["consumer"], a["stream_seq"], a["deliveries"], a["reason"]) for a in adv] == [
        ("io.nats.jetstream.advisory.v1.terminated", "ORDERS", "proc", 2, 1, "sent to DLQ")]
    info = await until(lambda: _ci_if(js, "proc", lambda i: i.num_ack_pending == 0), what="acks applied")
    assert info.ack_floor.stream_seq == 3
    assert await sub.fetch(batch=3, timeout=0.3) == []   # the term'd message is not redelivered


async def test_all_six_deliver_policies(nc):
    js = nc.jetstream()
    await _orders(js)
    for subject in ["orders.a", "orders.b", "orders.a", "orders.c", "orders.b"]:   # seqs 1..5
        await js.publish(subject, subject.encode())
    t3 = (await js.get_msg("ORDERS", 3)).time

    async def first_delivery(name, **cfg):
        sub = await js.pull_subscribe("orders.>", durable=name, stream="ORDERS",
                                      config=ConsumerConfig(**cfg))
        return sub, [m.metadata.sequence.stream for m in await sub.fetch(batch=10, timeout=0.3)]

    assert (await first_delivery("all", deliver_policy="all"))[1] == [1, 2, 3, 4, 5]
    assert (await first_delivery("last", deliver_policy="last"))[1] == [5]
    sub_new, got = await first_delivery("new", deliver_policy="new")
    assert got == []
    assert (await first_delivery("seq", deliver_policy="by_start_sequence", opt_start_seq=4))[1] == [4, 5]
    assert (await first_delivery("time", deliver_policy="by_start_time", opt_start_time=t3))[1] == [3, 4, 5]
    _, got = await first_delivery("lps", deliver_policy="last_per_subject", filter_subject="orders.>")
    assert got == [3, 4, 5]
    info = await js.consumer_info("ORDERS", "last")
    assert (info.delivered.stream_seq, info.num_pending) == (5, 0)

    await js.publish("orders.d", b"d")                                              # seq 6
    assert [m.metadata.sequence.stream for m in await sub_new.fetch(batch=10, timeout=1)] == [6]
    with pytest.raises(JSError) as e:
        await js.add_consumer("ORDERS", durable_name="bad", deliver_policy="by_start_sequence")
    assert e.value.err_code == 10094


async def test_workqueue_with_two_filtered_consumers_and_a_consumer_group(nc, server):
    js = nc.jetstream()
    await js.add_stream(name="JOBS", subjects=["jobs.>"], retention="workqueue")
    await js.add_consumer("JOBS", durable_name="a", filter_subject="jobs.a.>", ack_wait=30)
    await js.add_consumer("JOBS", durable_name="b", filter_subject="jobs.b.>", ack_wait=30)
    with pytest.raises(JSError) as e:
        await js.add_consumer("JOBS", durable_name="c", filter_subject="jobs.>")
    assert e.value.err_code == 10100
    a_seqs = [(await js.publish("jobs.a.x", f"a{i}".encode())).seq for i in range(30)]
    b_seqs = [(await js.publish("jobs.b.y", f"b{i}".encode())).seq for i in range(5)]
    assert (a_seqs, b_seqs) == (list(range(1, 31)), list(range(31, 36)))

    # Three fetchers (two connections) share durable "a": each message reaches one of them.
    nc2 = await connect([server.addr])
    try:
        subs = [await js.pull_subscribe("jobs.a.>", durable="a", stream="JOBS"),
                await js.pull_subscribe("jobs.a.>", durable="a", stream="JOBS"),
                await nc2.jetstream().pull_subscribe("jobs.a.>", durable="a", stream="JOBS")]

        async def worker(sub):
            seen = []
            while True:
                msgs = await sub.fetch(batch=4, timeout=0.3)
                if not msgs:
                    return seen
                for m in msgs:
                    assert m.subject == "jobs.a.x"
                    seen.append(m.metadata.sequence.stream)
                    await m.ack_sync()

        results = await asyncio.gather(*(worker(s) for s in subs))
    finally:
        await nc2.close()
    everything = [s for r in results for s in r]
    assert sorted(everything) == sorted(a_seqs)          # all of them, none twice
    assert len(set(everything)) == len(everything)

    # Acked work leaves the stream; b's work is still there.
    info = await js.stream_info("JOBS")
    assert info.state.messages == 5
    sub_b = await js.pull_subscribe("jobs.b.>", durable="b", stream="JOBS")
    msgs = await sub_b.fetch(batch=10, timeout=1)
    assert [m.metadata.sequence.stream for m in msgs] == b_seqs
    for m in msgs[:3]:
        await m.ack_sync()
    info = await js.stream_info("JOBS")
    assert (info.state.messages, info.state.first_seq) == (2, b_seqs[3])
    for m in msgs[3:]:
        await m.ack_sync()
    assert (await js.stream_info("JOBS")).state.messages == 0


async def test_interest_retention_keeps_a_message_until_every_consumer_acked(nc):
    js = nc.jetstream()
    await js.add_stream(name="EV", subjects=["ev.>"], retention="interest")
    assert (await js.publish("ev.x", b"nobody")).seq == 1   # no consumer yet: not kept
    assert (await js.stream_info("EV")).state.messages == 0
    s1 = await js.pull_subscribe("ev.>", durable="billing", stream="EV")
    s2 = await js.pull_subscribe("ev.>", durable="shipping", stream="EV")
    for i in range(3):
        await js.publish("ev.x", f"e{i}".encode())          # seqs 2, 3, 4
    assert (await js.stream_info("EV")).state.messages == 3

    m1 = await s1.fetch(batch=3, timeout=1)
    m2 = await s2.fetch(batch=3, timeout=1)
    assert [m.metadata.sequence.stream for m in m1] == [m.metadata.sequence.stream for m in m2] == [2, 3, 4]
    for m in m1:
        await m.ack_sync()
    info = await js.stream_info("EV")
    assert (info.state.messages, info.state.first_seq) == (3, 2)   # shipping has not acked
    await m2[0].ack_sync()
    info = await js.stream_info("EV")
    assert (info.state.messages, info.state.first_seq) == (2, 3)
    await m2[2].ack_sync()
    info = await js.stream_info("EV")
    assert info.state.messages == 1 and (await js.get_msg("EV", 3)).data == b"e1"
    # Deleting the lagging consumer removes the interest it held.
    await js.delete_consumer("EV", "shipping")
    assert (await js.stream_info("EV")).state.messages == 0


async def test_ack_sync_and_fetch_raise_when_the_consumer_is_gone(nc):
    js = nc.jetstream()
    await _orders(js, 1)
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    (m,) = await sub.fetch(1, timeout=1)
    assert await js.delete_consumer("ORDERS", "proc") is True
    with pytest.raises(ConsumerNotFoundError) as e:
        await m.ack_sync()
    assert e.value.err_code == 10014
    with pytest.raises(ConsumerNotFoundError):
        await sub.fetch(1, timeout=0.5)
    with pytest.raises(JSError) as e:
        await js.pull_subscribe("x.>", durable="proc", stream="NOPE")
    assert e.value.err_code == 10059
