"""Mirror and source streams on a 3-node cluster of real processes, driven through the
client library (issue 10): the seeds' two examples, who runs each pipeline, and a
pipeline that moves when its node is killed in the middle of a copy."""
from __future__ import annotations

import asyncio

import pytest

from api.client import connect
from cluster_util import Cluster
from e2e_util import until

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path / "c"))
    c.start()
    c.wait_named()
    yield c
    c.stop()


async def all_msgs(js, stream: str, consumer: str = "CHECK") -> list:
    """Every message of `stream` as (seq, subject, headers, data, time), through one
    ack-none pull consumer."""
    info = await js.stream_info(stream)
    await js.add_consumer(stream, durable_name=consumer, ack_policy="none")
    sub = await js.pull_subscribe("", durable=consumer, stream=stream)
    out = []
    while len(out) < info.state.messages:
        for m in await sub.fetch(1000, timeout=2):
            out.append((m.metadata.sequence.stream, m.subject, m.headers, m.data, m.metadata.timestamp))
    await js.delete_consumer(stream, consumer)
    return out


async def status(nc) -> dict:
    return await nc._request("cluster.status", {}, 5)


async def runners(nc) -> dict:
    return {(p["stream"], p["origin"]): p["runner"] for p in (await status(nc))["pipelines"]}


async def test_seed_examples_mirror_and_aggregate_with_filter_transform_and_start(cluster):
    nc = await connect(cluster.clients(), timeout=10)
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    await js.add_stream(name="INVENTORY", subjects=["inv.>"])
    await js.add_stream(name="SHIPPING", subjects=["ship.>"])
    for i in range(10):
        await js.publish(f"orders.{'eu' if i % 2 else 'us'}", f"o{i}".encode(), headers={"k": str(i)})
        await js.publish("inv.widget", f"i{i}".encode())
        await js.publish("ship.out", f"s{i}".encode())
    await js.delete_msg("ORDERS", 4)

    await js.add_stream(name="ORDERS_MIRROR", mirror={"name": "ORDERS"}, storage="file")
    await js.add_stream(name="ALL_EVENTS", storage="file", sources=[
        {"name": "ORDERS", "filter_subject": "orders.eu"},
        {"name": "INVENTORY", "subject_transforms": [{"src": "inv.*", "dest": "all.inv.{{wildcard(1)}}"}]},
        {"name": "SHIPPING", "opt_start_seq": 6}])

    async def copied():
        m, a = await js.stream_info("ORDERS_MIRROR"), await js.stream_info("ALL_EVENTS")
        return m.state.messages == 9 and a.state.messages == 4 + 10 + 5   # orders.eu seq 4 was deleted
    await until(copied, timeout=60, what="the mirror and the aggregate to fill")

    origin, mirror = await all_msgs(js, "ORDERS"), await all_msgs(js, "ORDERS_MIRROR")
    assert mirror == origin and [m[0] for m in mirror] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    m_info = await js.stream_info("ORDERS_MIRROR")
    assert (m_info.state.first_seq, m_info.state.last_seq) == (1, 10)
    assert m_info.mirror.name == "ORDERS" and m_info.mirror.error is None and m_info.mirror.lag == 0

    agg = await all_msgs(js, "ALL_EVENTS")
    subjects = [m[1] for m in agg]
    assert sorted(set(subjects)) == ["all.inv.widget", "orders.eu", "ship.out"]
    assert [m[3] for m in agg if m[1] == "ship.out"] == [f"s{i}".encode() for i in range(5, 10)]
    assert [m[3] for m in agg if m[1] == "orders.eu"] == [b"o1", b"o5", b"o7", b"o9"]
    assert all(m[2]["Nats-Stream-Source"].startswith(("ORDERS ", "INVENTORY ", "SHIPPING ")) for m in agg)
    assert [m[0] for m in agg] == list(range(1, 20))
    a_info = await js.stream_info("ALL_EVENTS")
    assert {s.name for s in a_info.sources} == {"ORDERS", "INVENTORY", "SHIPPING"}
    assert all(s.error is None for s in a_info.sources)

    # New messages keep flowing; a mirror takes no publishes of its own.
    await js.publish("orders.eu", b"late")
    await until(async_eq(js, "ORDERS_MIRROR", 10), timeout=30, what="the late message in the mirror")
    await until(async_eq(js, "ALL_EVENTS", 20), timeout=30, what="the late message in the aggregate")
    await nc.close()


def async_eq(js, stream, n):
    async def check():
        return (await js.stream_info(stream)).state.messages == n
    return check


async def test_the_pipeline_runs_on_a_follower_and_moves_when_it_is_killed(cluster):
    nc = await connect(cluster.clients(), timeout=10)
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    acks = []
    for chunk in range(20):
        futs = [await js.publish_async("orders.x", f"{chunk}-{i}".encode()) for i in range(1000)]
        acks += [await f for f in futs]
    await js.add_stream(name="ORDERS_MIRROR", mirror={"name": "ORDERS"})

    leader = (await status(nc))["leader"]
    runner = await until(lambda: _runner(nc), timeout=30, what="a runner")
    assert runner != leader
    await until(async_at_least(js, "ORDERS_MIRROR", 1000), timeout=60, what="the copy to start")
    victim = next(i for i, n in enumerate(cluster.nodes) if n.name == runner)
    cluster.kill(victim)
    moved = await until(lambda: _runner(nc, not_=runner), timeout=60, what="the pipeline to move")
    assert moved not in (runner, leader)
    # More publishes while the copy resumes elsewhere.
    for i in range(500):
        await js.publish("orders.x", f"after-{i}".encode())
    await until(async_eq(js, "ORDERS_MIRROR", 20500), timeout=120, what="the mirror to catch up")
    assert await all_msgs(js, "ORDERS_MIRROR") == await all_msgs(js, "ORDERS")
    await nc.close()


async def _runner(nc, not_: str = ""):
    r = (await runners(nc)).get(("ORDERS_MIRROR", "ORDERS"))
    return r if r and r != not_ else None


def async_at_least(js, stream, n):
    async def check():
        return (await js.stream_info(stream)).state.messages >= n
    return check


async def test_a_mirror_in_a_second_cluster_copies_while_the_origin_takes_publishes(cluster, tmp_path):
    other = Cluster(str(tmp_path / "other"))
    other.start()
    try:
        a = await connect(cluster.clients(), timeout=10)
        b = await connect(other.clients(), timeout=10)
        js_a, js_b = a.jetstream(), b.jetstream()
        await js_a.add_stream(name="ORDERS", subjects=["orders.>"])

        async def publish():
            for i in range(3000):
                await js_a.publish("orders.x", f"{i}".encode())
        pub = asyncio.create_task(publish())
        await js_b.add_stream(name="ORDERS_DR", mirror={"name": "ORDERS", "external": {"servers": cluster.clients()}})
        await pub
        await until(async_eq(js_b, "ORDERS_DR", 3000), timeout=120, what="the other cluster's mirror to catch up")
        assert await all_msgs(js_b, "ORDERS_DR") == await all_msgs(js_a, "ORDERS")
        info = await js_b.stream_info("ORDERS_DR")
        assert info.mirror.external.servers == cluster.clients() and info.mirror.error is None
        await a.close()
        await b.close()
    finally:
        other.stop()


async def test_expired_and_deleted_origin_messages_become_skips_so_numbering_stays_aligned(cluster):
    nc = await connect(cluster.clients(), timeout=10)
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"], max_age=1.5)
    for i in range(5):
        await js.publish("orders.x", f"gone-{i}".encode())
    await until(async_eq(js, "ORDERS", 0), timeout=30, what="seqs 1-5 to expire in the origin")
    await js.update_stream(name="ORDERS", subjects=["orders.>"], max_age=0)
    for i in range(5, 10):
        await js.publish("orders.x", f"kept-{i}".encode())
    await js.delete_msg("ORDERS", 8)
    await js.delete_msg("ORDERS", 10)                    # a gap at the tail, too
    await js.add_stream(name="ORDERS_MIRROR", mirror={"name": "ORDERS"})

    async def aligned():
        s = (await js.stream_info("ORDERS_MIRROR")).state
        return (s.first_seq, s.last_seq, s.messages) == (6, 10, 3)
    await until(aligned, timeout=60, what="the mirror to hold 6, 7, 9 and skip up to 10")
    assert [m[0] for m in await all_msgs(js, "ORDERS_MIRROR")] == [6, 7, 9]
    ack = await js.publish("orders.x", b"next")
    await until(async_eq(js, "ORDERS_MIRROR", 4), timeout=30, what="the next message in the mirror")
    assert ack.seq == 11 and await all_msgs(js, "ORDERS_MIRROR") == await all_msgs(js, "ORDERS")
    await nc.close()


async def test_a_deleted_then_recreated_origin_is_reported_as_an_error_not_as_silence(cluster):
    nc = await connect(cluster.clients(), timeout=10)
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    for i in range(5):
        await js.publish("orders.x", f"first-{i}".encode())
    await js.add_stream(name="ORDERS_MIRROR", mirror={"name": "ORDERS"})
    await until(async_eq(js, "ORDERS_MIRROR", 5), timeout=60, what="the first copy")

    async def mirror_error(words: str):
        err = (await js.stream_info("ORDERS_MIRROR")).mirror.error
        return err if err and words in err["description"] else None

    await js.delete_stream("ORDERS")
    err = await until(lambda: mirror_error("not found"), timeout=60, what="the missing origin to show")
    assert err["code"] == 404 and err["err_code"] == 10029, err
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    for i in range(3):
        await js.publish("orders.x", f"second-{i}".encode())
    err = await until(lambda: mirror_error("created again"), timeout=60, what="the identity change to show")
    assert err["err_code"] == 10029
    info = await js.stream_info("ORDERS_MIRROR")
    # Nothing of the new origin was copied over the old one's numbering.
    assert info.state.messages == 5 and [m[3] for m in await all_msgs(js, "ORDERS_MIRROR")] == \
        [f"first-{i}".encode() for i in range(5)]
    await nc.close()


async def test_a_client_cannot_write_into_a_mirror_through_the_pipelines_request(cluster):
    nc = await connect(cluster.clients(), timeout=10)
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    await js.add_stream(name="ORDERS_MIRROR", mirror={"name": "ORDERS"})
    runner = await until(lambda: _runner(nc), timeout=30, what="a runner")
    forged = {"stream": "ORDERS_MIRROR", "origin": "ORDERS", "runner": runner,
              "msgs": [[1, "orders.x", None, b"forged", 1]]}
    for proof in (None, "0" * 64):
        with pytest.raises(Exception) as e:
            await js._api("source.copy", {**forged, **({"proof": proof} if proof else {})})
        assert getattr(e.value, "code", None) == 403 and "cluster secret" in str(e.value)
    await js.publish("orders.x", b"real")
    await until(async_eq(js, "ORDERS_MIRROR", 1), timeout=30, what="the real copy")
    assert [m[3] for m in await all_msgs(js, "ORDERS_MIRROR")] == [b"real"]
    await nc.close()


async def test_sourcing_moves_work_out_of_a_work_queue_and_into_another(cluster):
    """A work-queue origin gives its messages to the pipeline, which acks each only once
    the destination has committed it; a work-queue destination serves its own workers."""
    nc = await connect(cluster.clients(), timeout=10)
    js = nc.jetstream()
    await js.add_stream(name="JOBS", subjects=["jobs.>"], retention="workqueue")
    await js.add_stream(name="EVENTS", subjects=["events.>"], retention="interest")
    await js.add_consumer("EVENTS", durable_name="AUDIT", ack_policy="explicit")
    for i in range(300):
        await js.publish(f"jobs.{i % 3}", f"job-{i}".encode())
        await js.publish("events.x", f"event-{i}".encode())
    await js.add_stream(name="WORK", retention="workqueue", sources=[{"name": "JOBS"}, {"name": "EVENTS"}])
    await until(async_eq(js, "WORK", 600), timeout=90, what="both origins copied into WORK")
    await until(async_eq(js, "JOBS", 0), timeout=30, what="the work queue origin to hand its jobs over")
    # The interest origin keeps what its own consumer has not acked yet.
    assert (await js.stream_info("EVENTS")).state.messages == 300
    copied = await sorted_data(js, "WORK")
    assert copied == sorted([f"job-{i}".encode() for i in range(300)] + [f"event-{i}".encode() for i in range(300)])

    await js.add_consumer("WORK", durable_name="WORKER", ack_policy="explicit")
    sub = await js.pull_subscribe("", durable="WORKER", stream="WORK")
    done = 0
    while done < 600:
        for m in await sub.fetch(100, timeout=5):
            await m.ack_sync()
            done += 1
    await until(async_eq(js, "WORK", 0), timeout=30, what="the worked-off queue to empty")
    await nc.close()


async def sorted_data(js, stream: str) -> list[bytes]:
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        out.append((await js.get_msg(stream, seq)).data)
    return sorted(out)
