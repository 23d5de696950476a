"""End to end: stream management, get/delete/purge and publishing, through the client
library against a real `raftbroker server` process."""
import asyncio

import pytest

from api.client import StreamConfig
from jetstream.errors import (
    JSError, NoMessageFoundError, ReplicasNotSupportedError, StreamNotFoundError, StreamSubjectOverlapError,
    WrongLastMsgIDError, WrongLastSequenceError,
)
from e2e_util import nc  # noqa: F401 - fixture


async def test_stream_add_info_update_names_list_delete(nc):
    js = nc.jetstream()
    info = await js.add_stream(name="ORDERS", subjects=["orders.>"], storage="file", retention="limits",
                               max_age=7 * 24 * 3600, num_replicas=1, duplicate_window=120)
    assert info.config.name == "ORDERS" and info.config.subjects == ["orders.>"]
    assert info.config.duplicate_window == 120 and info.config.max_age == 7 * 24 * 3600
    assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (0, 0, 0)
    # A config object works as well as keyword arguments.
    await js.add_stream(StreamConfig(name="EVENTS", subjects=["events.*"], storage="memory"))

    for i in range(3):
        await js.publish("orders.created", f"o{i}".encode())
    info = await js.stream_info("ORDERS")
    assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (3, 1, 3)
    assert info.state.bytes > 0 and info.state.consumer_count == 0

    assert await js.stream_names() == ["EVENTS", "ORDERS"]
    assert await js.stream_names("orders.created") == ["ORDERS"]
    assert await js.find_stream_name_by_subject("events.x") == "EVENTS"
    listed = {i.config.name: i for i in await js.streams_info()}
    assert set(listed) == {"EVENTS", "ORDERS"}
    assert listed["ORDERS"].state.messages == 3 and listed["EVENTS"].config.storage == "memory"

    info = await js.update_stream(name="ORDERS", subjects=["orders.>", "returns.>"], max_msgs=2,
                                  max_age=7 * 24 * 3600, duplicate_window=120)
    assert info.config.subjects == ["orders.>", "returns.>"] and info.config.max_msgs == 2
    assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (2, 2, 3)
    ack = await js.publish("returns.r1", b"r")
    assert (ack.stream, ack.seq) == ("ORDERS", 4)

    # An update can not change the storage type (10052).
    with pytest.raises(JSError) as e:
        await js.update_stream(name="EVENTS", subjects=["events.*"], storage="file")
    assert e.value.err_code == 10052

    assert await js.delete_stream("EVENTS") is True
    assert await js.stream_names() == ["ORDERS"]
    with pytest.raises(StreamNotFoundError) as e:
        await js.stream_info("EVENTS")
    assert (e.value.code, e.value.err_code) == (404, 10059)
    with pytest.raises(StreamNotFoundError):
        await js.delete_stream("EVENTS")


async def test_num_replicas_above_one_is_rejected_on_a_single_node(nc):
    js = nc.jetstream()
    with pytest.raises(ReplicasNotSupportedError) as e:
        await js.add_stream(name="R3", subjects=["r3.>"], num_replicas=3)
    assert e.value.err_code == 10074
    assert await js.stream_names() == []


async def test_seed_dlq_on_orders_dlq_overlaps_orders_and_is_rejected(nc):
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    with pytest.raises(StreamSubjectOverlapError) as e:
        await js.add_stream(name="ORDERS_DLQ", subjects=["orders.dlq.>"])
    assert e.value.err_code == 10065
    # The non-overlapping subject seed 000 uses is fine.
    info = await js.add_stream(name="ORDERS_DLQ", subjects=["dlq.orders.>"])
    assert info.config.subjects == ["dlq.orders.>"]
    assert await js.stream_names() == ["ORDERS", "ORDERS_DLQ"]


async def _fill(js, subjects):
    return [(await js.publish(s, f"{s}#{i}".encode())).seq for i, s in enumerate(subjects)]


async def test_purge_all_by_subject_keep_and_seq(nc):
    js = nc.jetstream()
    await js.add_stream(name="P", subjects=["p.>"])
    await _fill(js, ["p.a", "p.b"] * 5)               # seqs 1..10: odd p.a, even p.b

    assert await js.purge_stream("P", subject="p.a") is True
    info = await js.stream_info("P")
    assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (5, 2, 10)
    assert info.state.num_subjects == 1

    await js.purge_stream("P", keep=2)                 # keeps seqs 8 and 10
    info = await js.stream_info("P")
    assert (info.state.messages, info.state.first_seq) == (2, 8)

    await _fill(js, ["p.c"] * 3)                       # 11, 12, 13
    await js.purge_stream("P", seq=12)                 # everything below 12
    info = await js.stream_info("P")
    assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (2, 12, 13)
    assert [m.seq for m in [await js.get_msg("P", 12), await js.get_msg("P", 13)]] == [12, 13]

    await js.purge_stream("P", subject="p.c", keep=1)  # filter and keep together
    info = await js.stream_info("P")
    assert (info.state.messages, info.state.first_seq) == (1, 13)

    await js.purge_stream("P")
    info = await js.stream_info("P")
    assert (info.state.messages, info.state.bytes, info.state.first_seq, info.state.last_seq) == (0, 0, 14, 13)
    # Sequences continue after a purge.
    assert (await js.publish("p.a", b"x")).seq == 14


async def test_get_msg_by_seq_last_by_subject_and_delete_msg(nc):
    js = nc.jetstream()
    await js.add_stream(name="G", subjects=["g.>"])
    await js.publish("g.a", b"a1", headers={"X-N": "1"})
    await js.publish("g.b", b"b1")
    await js.publish("g.a", b"a2")

    m = await js.get_msg("G", seq=1)
    assert (m.seq, m.subject, m.data, m.headers["X-N"]) == (1, "g.a", b"a1", "1")
    assert m.time > 0
    last = await js.get_last_msg("G", "g.a")
    assert (last.seq, last.data) == (3, b"a2")
    assert (await js.get_last_msg("G", "g.b")).seq == 2
    assert (await js.get_msg("G", subject="g.*")).seq == 3          # last over a wildcard
    assert (await js.get_msg("G", seq=2, subject="g.a", next=True)).seq == 3

    assert await js.delete_msg("G", 3) is True
    with pytest.raises(NoMessageFoundError) as e:
        await js.get_msg("G", seq=3)
    assert e.value.err_code == 10037
    assert (await js.get_last_msg("G", "g.a")).seq == 1
    info = await js.stream_info("G")
    assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (2, 1, 3)
    with pytest.raises(NoMessageFoundError):
        await js.get_last_msg("G", "g.none")
    with pytest.raises(JSError) as e:
        await js.delete_msg("G", 3)                                  # already gone
    assert e.value.err_code == 10043

    assert await js.delete_msg("G", 1) is True
    info = await js.stream_info("G")
    assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (1, 2, 3)


async def test_sync_publish_with_headers_and_msg_id_dedupe(nc):
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"], duplicate_window=120)
    ack = await js.publish("orders.created", b"one", headers={"X-Source": "checkout"}, msg_id="ord-1")
    assert (ack.stream, ack.seq, bool(ack.duplicate)) == ("ORDERS", 1, False)
    ack2 = await js.publish("orders.created", b"two", msg_id="ord-2")
    assert (ack2.seq, bool(ack2.duplicate)) == (2, False)

    dup = await js.publish("orders.created", b"one again", msg_id="ord-1")
    assert (dup.stream, dup.seq, dup.duplicate) == ("ORDERS", 1, True)
    info = await js.stream_info("ORDERS")
    assert (info.state.messages, info.state.last_seq) == (2, 2)

    m = await js.get_msg("ORDERS", 1)
    assert m.data == b"one"
    assert m.headers["X-Source"] == "checkout" and m.headers["Nats-Msg-Id"] == "ord-1"
    # No msg_id given: each publish is distinct.
    a, b = await js.publish("orders.x", b"same"), await js.publish("orders.x", b"same")
    assert (a.seq, b.seq, bool(a.duplicate), bool(b.duplicate)) == (3, 4, False, False)


async def test_publish_async_with_headers_and_dedupe(nc):
    js = nc.jetstream()
    await js.add_stream(name="ASYNC", subjects=["async.>"])
    futs = [await js.publish_async("async.created", f"m{i}".encode(), headers={"X-I": str(i)},
                                   msg_id=f"id-{i}") for i in range(200)]
    acks = await asyncio.gather(*futs)
    assert sorted(a.seq for a in acks) == list(range(1, 201))
    assert not any(a.duplicate for a in acks)
    by_id = {f"id-{i}": a.seq for i, a in enumerate(acks)}

    # Re-publishing half of them is deduplicated to the original sequences.
    futs = [await js.publish_async("async.created", b"again", msg_id=f"id-{i}") for i in range(0, 200, 2)]
    dups = await asyncio.gather(*futs)
    assert all(d.duplicate for d in dups)
    assert [d.seq for d in dups] == [by_id[f"id-{i}"] for i in range(0, 200, 2)]
    info = await js.stream_info("ASYNC")
    assert (info.state.messages, info.state.last_seq) == (200, 200)

    for i in (0, 77, 199):
        m = await js.get_msg("ASYNC", by_id[f"id-{i}"])
        assert (m.data, m.headers["X-I"], m.headers["Nats-Msg-Id"]) == (f"m{i}".encode(), str(i), f"id-{i}")


async def test_publish_expectations(nc):
    js = nc.jetstream()
    await js.add_stream(name="E", subjects=["e.>"])
    assert (await js.publish("e.a", b"1", expected_last_seq=0)).seq == 1
    assert (await js.publish("e.b", b"2", expected_last_seq=1, msg_id="m2")).seq == 2

    with pytest.raises(WrongLastSequenceError) as e:
        await js.publish("e.a", b"x", expected_last_seq=1)
    assert (e.value.code, e.value.err_code) == (400, 10071)
    with pytest.raises(WrongLastSequenceError) as e:
        await js.publish("e.a", b"x", expected_last_subject_seq=2)   # last e.a is 1
    assert e.value.err_code == 10071
    assert (await js.publish("e.a", b"3", expected_last_subject_seq=1)).seq == 3

    with pytest.raises(WrongLastMsgIDError) as e:
        await js.publish("e.a", b"x", expected_last_msg_id="m2")    # last msg had a generated id
    assert e.value.err_code == 10070
    with pytest.raises(JSError) as e:
        await js.publish("e.a", b"x", stream="OTHER")
    assert e.value.err_code == 10060
    # None of the refused publishes was stored.
    info = await js.stream_info("E")
    assert (info.state.messages, info.state.last_seq) == (3, 3)


async def test_publish_batch_in_one_request(nc):
    js = nc.jetstream()
    await js.add_stream(name="B", subjects=["b.>"])
    acks = await js.publish_batch([(f"b.{i % 3}", f"d{i}".encode()) for i in range(10)])
    assert [(a.stream, a.seq) for a in acks] == [("B", i) for i in range(1, 11)]
    # A message no stream captures fails on its own; the rest are stored.
    res = await js.publish_batch([("b.x", b"ok"), ("nowhere.x", b"lost"), ("b.y", b"ok2")])
    assert res[0].seq == 11 and res[2].seq == 12
    assert isinstance(res[1], JSError) and res[1].err_code == 10161
    info = await js.stream_info("B")
    assert (info.state.messages, info.state.last_seq, info.state.num_subjects) == (12, 12, 5)
    assert (await js.get_msg("B", 12)).data == b"ok2"


async def test_publish_to_a_subject_no_stream_captures_fails(nc):
    js = nc.jetstream()
    with pytest.raises(JSError) as e:
        await js.publish("nobody.home", b"x")
    assert (e.value.code, e.value.err_code) == (503, 10161)
