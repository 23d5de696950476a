"""nats-py, unchanged, against a raftbroker node's NATS port (one real server process)."""
import asyncio

import nats
import pytest
from nats.errors import MaxPayloadError, NoRespondersError, TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig, StreamSource
from nats.js.errors import BadRequestError, NotFoundError

from api.client import connect as rb_connect
from conftest import ServerProcess
from e2e_util import until


@pytest.fixture
def nserver(tmp_path):
    s = ServerProcess(str(tmp_path / "node"), "--nats-listen", "127.0.0.1:0").start()
    assert s.nats_url, "the server did not print its nats address"
    yield s
    s.stop()


@pytest.fixture
async def nc(nserver):
    c = await nats.connect(nserver.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    yield c
    await c.close()


async def test_core_pub_sub_headers_and_queue_groups(nc, nserver):
    got, grouped = [], []

    async def on_order(m):
        got.append((m.subject, m.data, m.headers))

    def member(name):
        async def on_work(m):
            grouped.append(name)
        return on_work
    await nc.subscribe("orders.*", cb=on_order)
    for name in ("a", "b"):
        await nc.subscribe("work", queue="workers", cb=member(name))
    await nc.publish("orders.new", b"one", headers={"K": "v"})
    await nc.publish("orders.new.deep", b"not matched")
    for _ in range(20):
        await nc.publish("work", b"x")
    await nc.flush()
    await until(lambda: len(got) == 1 and len(grouped) == 20, what="core deliveries")
    assert got == [("orders.new", b"one", {"K": "v"})]
    assert len(grouped) == 20    # each queued message went to exactly one member


async def test_request_reply_and_no_responders(nc):
    async def echo(m):
        await m.respond(m.data.upper())
    await nc.subscribe("svc.echo", cb=echo)
    assert (await nc.request("svc.echo", b"hi", timeout=2)).data == b"HI"
    with pytest.raises(NoRespondersError):
        await nc.request("svc.nobody", b"?", timeout=2)


async def test_max_payload_is_enforced_by_the_client_from_info(nc):
    assert nc.max_payload == 1024 * 1024
    with pytest.raises(MaxPayloadError):
        await nc.publish("big", b"x" * (nc.max_payload + 1))


async def test_stream_publish_dedupe_and_one_engine_two_fronts(nc, nserver):
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    a1 = await js.publish("orders.1", b"a", headers={"Nats-Msg-Id": "m1"})
    a2 = await js.publish("orders.1", b"a", headers={"Nats-Msg-Id": "m1"})
    a3 = await js.publish("orders.2", b"b")
    assert (a1.stream, a1.seq, a1.duplicate) == ("ORDERS", 1, None)
    assert (a2.seq, a2.duplicate) == (1, True)
    assert a3.seq == 2
    # The same stream, seen through raftbroker's own client: same engine, not a translation.
    rb = await rb_connect([nserver.addr], timeout=5)
    try:
        info = await rb.jetstream().stream_info("ORDERS")
        assert info.state.messages == 2 and info.config.subjects == ["orders.>"]
        await rb.jetstream().add_stream(name="FROM_RB", subjects=["rb.>"])
    finally:
        await rb.close()
    assert (await js.stream_info("FROM_RB")).config.subjects == ["rb.>"]
    names = sorted(s.config.name for s in await js.streams_info())
    assert names == ["FROM_RB", "ORDERS"]


async def test_publish_expectations_and_errors(nc):
    js = nc.jetstream()
    await js.add_stream(name="S", subjects=["s.>"])
    await js.publish("s.1", b"x")
    with pytest.raises(BadRequestError) as e:
        await js.publish("s.1", b"y", headers={"Nats-Expected-Last-Sequence": "7"})
    assert e.value.err_code == 10071
    with pytest.raises(NotFoundError) as e:
        await js.stream_info("MISSING")
    assert e.value.err_code == 10059


async def test_pull_fetch_ack_nak_and_consumer_numbers(nc):
    js = nc.jetstream()
    await js.add_stream(name="P", subjects=["p.>"])
    for i in range(10):
        await js.publish(f"p.{i}", str(i).encode())
    sub = await js.pull_subscribe("p.>", durable="worker")
    msgs = await sub.fetch(6, timeout=2)
    assert [m.data for m in msgs] == [str(i).encode() for i in range(6)]
    for m in msgs[:4]:
        await m.ack_sync()
    await msgs[4].nak()
    info = await js.consumer_info("P", "worker")
    assert info.num_pending == 4
    assert info.num_ack_pending == 2
    again = await sub.fetch(1, timeout=2)
    assert again[0].data == b"4" and again[0].metadata.num_delivered == 2
    await again[0].term()


async def test_pull_timeout_on_an_empty_consumer(nc):
    js = nc.jetstream()
    await js.add_stream(name="E", subjects=["e"])
    sub = await js.pull_subscribe("e", durable="d")
    with pytest.raises(NatsTimeout):
        await sub.fetch(1, timeout=0.5)
    await js.publish("e", b"late")
    assert [m.data for m in await sub.fetch(1, timeout=2)] == [b"late"]


async def test_push_consumer_with_deliver_group_shares_the_work(nc):
    js = nc.jetstream()
    await js.add_stream(name="Q", subjects=["q.>"])
    seen = []

    async def worker(m):
        seen.append(m.metadata.sequence.stream)
        await m.ack()
    await js.subscribe("q.>", queue="grp", durable="grp", cb=worker, manual_ack=True)
    await js.subscribe("q.>", queue="grp", durable="grp", cb=worker, manual_ack=True)
    for i in range(30):
        await js.publish(f"q.{i}", b"job")
    await until(lambda: len(seen) >= 30, what="30 deliveries")
    assert sorted(seen) == list(range(1, 31))
    info = await js.consumer_info("Q", "grp")
    assert info.config.deliver_group == "grp"


async def test_replay_by_start_time(nc):
    js = nc.jetstream()
    await js.add_stream(name="R", subjects=["r"])
    await js.publish("r", b"old")
    first = await js.get_msg("R", 1)
    await asyncio.sleep(0.01)   # timestamps have ns resolution; make the second strictly later
    await js.publish("r", b"new")
    second = await js.get_msg("R", 2)
    assert second.data == b"new" and first.data == b"old"
    sub = await js.pull_subscribe("r", durable="replay", config=ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=2, ack_policy=AckPolicy.EXPLICIT))
    assert [m.data for m in await sub.fetch(1, timeout=2)] == [b"new"]


async def test_stream_config_round_trips_in_nats_shape(nc):
    js = nc.jetstream()
    cfg = StreamConfig(name="KVLIKE", subjects=["kv.>"], max_msgs_per_subject=1, max_age=60.0,
                       duplicate_window=30.0, allow_rollup_hdrs=True, deny_delete=True)
    info = await js.add_stream(cfg)
    assert info.config.max_age == 60.0 and info.config.duplicate_window == 30.0
    assert info.config.max_msgs_per_subject == 1 and info.config.allow_rollup_hdrs
    await js.publish("kv.a", b"1")
    await js.publish("kv.a", b"2")
    assert (await js.stream_info("KVLIKE")).state.messages == 1
    await js.delete_stream("KVLIKE")
    with pytest.raises(NotFoundError):
        await js.stream_info("KVLIKE")


async def test_token_auth_is_required_when_configured(tmp_path):
    s = ServerProcess(str(tmp_path / "node"), "--nats-listen", "127.0.0.1:0", "--token", "s3cret").start()
    try:
        with pytest.raises(Exception):
            await nats.connect(s.nats_url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
        c = await nats.connect(s.nats_url, token="s3cret", connect_timeout=2, max_reconnect_attempts=0)
        assert (await c.jetstream().account_info()).streams == 0
        await c.close()
    finally:
        s.stop()


async def test_direct_get_answers_for_allow_direct_streams_and_no_one_else(nc):
    js, jsm = nc.jetstream(), nc.jsm()
    await jsm.add_stream(name="D", subjects=["d.>"], allow_direct=True)
    await jsm.add_stream(name="PLAIN", subjects=["p.>"])
    for i in range(3):
        await js.publish(f"d.{i % 2}", f"m{i}".encode(), headers={"K": str(i)})
    by_seq = await jsm.get_msg("D", seq=2, direct=True)
    assert (by_seq.subject, by_seq.seq, by_seq.data, by_seq.headers["K"]) == ("d.1", 2, b"m1", "1")
    assert by_seq.time is not None
    last = await jsm.get_msg("D", subject="d.0", direct=True)
    assert (last.seq, last.data) == (3, b"m2")
    nxt = await jsm.get_msg("D", seq=2, subject="d.0", next=True, direct=True)
    assert nxt.seq == 3
    with pytest.raises(NotFoundError):
        await jsm.get_msg("D", seq=99, direct=True)
    for stream in ("NONE", "PLAIN"):      # nobody serves DIRECT.GET for these
        with pytest.raises(NoRespondersError):
            await jsm.get_msg(stream, seq=1, direct=True)


async def test_stream_info_lists_subject_counts_only_when_asked(nc):
    js, jsm = nc.jetstream(), nc.jsm()
    await jsm.add_stream(name="S", subjects=["s.>"])
    for i in range(5):
        await js.publish(f"s.{i % 3}", b"x")
    assert (await jsm.stream_info("S", subjects_filter=">")).state.subjects == {"s.0": 2, "s.1": 2, "s.2": 1}
    assert (await jsm.stream_info("S", subjects_filter="s.1")).state.subjects == {"s.1": 2}
    assert (await jsm.stream_info("S", subjects_filter="nope")).state.subjects is None
    assert (await jsm.stream_info("S")).state.subjects is None


async def test_api_requests_are_seen_by_core_subscribers(nc):
    jsm = nc.jsm()
    watch = await nc.subscribe("$JS.API.CONSUMER.>")
    await jsm.add_stream(name="W", subjects=["w"])
    await jsm.add_consumer("W", name="c1", ack_policy="explicit")
    seen = await watch.next_msg(timeout=2)
    assert seen.subject == "$JS.API.CONSUMER.CREATE.W.c1"


async def test_a_pull_whose_inbox_lost_its_subscriber_takes_nothing(nc):
    js = nc.jetstream()
    await js.add_stream(name="U", subjects=["u"])
    sub = await js.pull_subscribe("u", "dur")
    await js.publish("u", b"one")
    await sub.unsubscribe()
    with pytest.raises(NatsTimeout):
        await sub.fetch(1, timeout=1)      # the request goes to an inbox nobody listens on
    info = await js.consumer_info("U", "dur")
    assert (info.num_pending, info.num_ack_pending, info.delivered.stream_seq) == (1, 0, 0)


async def test_nats_py_mirror_and_sources_fill_and_a_missing_origin_is_an_error(nc, nserver):
    js = nc.jetstream()
    await js.add_stream(name="ORIGIN", subjects=["origin.>"])
    for i in range(3):
        await js.publish("origin.x", b"%d" % i)
    await js.add_stream(name="COPY", mirror=StreamSource(name="ORIGIN"))
    await js.add_stream(name="AGG", sources=[StreamSource(name="ORIGIN"), StreamSource(name="OTHER")])

    async def filled():
        copy, agg = await js.stream_info("COPY"), await js.stream_info("AGG")
        other = next(s for s in agg.sources if s.name == "OTHER")
        return copy.state.messages == 3 and agg.state.messages == 3 and other.error and "not found" in \
            other.error["description"]
    await until(filled, timeout=30, what="the mirror and the source to fill, and OTHER reported missing")
    copy = await js.stream_info("COPY")
    assert copy.mirror.name == "ORIGIN" and copy.mirror.error is None and copy.state.last_seq == 3
    agg = await js.stream_info("AGG")
    other = next(s for s in agg.sources if s.name == "OTHER")
    assert other.error["err_code"] == 10045
    msg = await js.get_msg("AGG", 1)
    assert msg.headers["Nats-Stream-Source"].startswith("ORIGIN 1 ")
    assert (await js.stream_info("ORIGIN")).mirror is None
    rb = await rb_connect([nserver.addr], timeout=5)
    try:
        info = await rb.jetstream().stream_info("COPY")
        assert info.mirror.name == "ORIGIN" and info.state.messages == 3
    finally:
        await rb.close()


async def test_republish_sends_each_stored_message_once_as_a_core_message(nc):
    js = nc.jetstream()
    await js.add_stream(name="RP", subjects=["rp.>"], republish={"src": ">", "dest": "copy.>"})
    sub = await nc.subscribe("copy.>")
    await js.publish("rp.one", b"hello", headers={"h": "v"})
    msg = await sub.next_msg(timeout=5)
    assert (msg.subject, msg.data) == ("copy.rp.one", b"hello")
    assert msg.headers["Nats-Stream"] == "RP" and msg.headers["Nats-Sequence"] == "1"
    assert msg.headers["Nats-Subject"] == "rp.one" and msg.headers["h"] == "v"
    assert msg.headers["Nats-Time-Stamp"].endswith("Z")
    with pytest.raises(NatsTimeout):
        await sub.next_msg(timeout=0.5)            # once
    assert (await js.stream_info("RP")).config.republish.dest == "copy.>"
