"""nats-py, unchanged, against a 3-node cluster of real processes (issue 12): core
messages cross the route mesh (queue groups stay one-member-per-message cluster-wide),
and JetStream works from a client connected to a follower only (forwarded to the
leader over the route). Routes must prove the cluster secret."""
from __future__ import annotations

import asyncio
import json
import socket

import nats
import pytest
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from cluster_util import Cluster
from e2e_util import until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("natscluster")), nats=True)
    c.start()
    c.leader()
    c.wait_named()
    yield c
    c.stop()


def url(node) -> str:
    return f"nats://{node.nats}"


async def nats_to(node, **kw):
    return await nats.connect(url(node), connect_timeout=5, max_reconnect_attempts=0, **kw)


async def until_routed(sub_nc, pub_nc, subject: str):
    """Wait until interest on `subject` from `sub_nc`'s node has reached `pub_nc`'s node."""
    probe = f"{subject}.probe" if not subject.endswith(">") else subject[:-1] + "probe"
    got = asyncio.Event()

    async def seen(m):
        got.set()
    sub = await sub_nc.subscribe(probe, cb=seen)
    await sub_nc.flush()

    async def arrived():
        await pub_nc.publish(probe, b"")
        await pub_nc.flush()
        try:
            await asyncio.wait_for(got.wait(), 0.2)
        except asyncio.TimeoutError:
            return False
        return True
    await until(arrived, timeout=30, what=f"routes to carry interest in {probe}")
    await sub.unsubscribe()


async def test_core_messages_and_requests_cross_nodes_and_queue_groups_stay_cluster_wide(cluster):
    a, b, c = [await nats_to(n) for n in cluster.nodes]
    try:
        got, members = [], []

        async def on_order(m):
            got.append((m.subject, m.data, m.headers))
        await a.subscribe("orders.*", cb=on_order)

        def member(name):
            async def on_work(m):
                members.append(name)
            return on_work
        markers = []

        async def on_marker(m):
            markers.append(m.data)
        for name, conn in (("a", a), ("b", b), ("c", c)):
            await conn.subscribe("work", queue="workers", cb=member(name))
            await conn.subscribe("work.marker", cb=on_marker)
        for conn in (a, b, c):
            await conn.flush()
        for sub_nc in (a, c):
            await until_routed(sub_nc, b, "work.x")
        await until_routed(a, c, "orders.x")

        await b.publish("orders.new", b"from-b", headers={"K": "v"})
        await c.publish("orders.new", b"from-c")
        for i in range(300):
            await b.publish("work", str(i).encode())
        # Routes keep order: once every node has the marker published after the work, all
        # the work routed to it has arrived too, so the count below is final.
        await b.publish("work.marker", b"end")
        await b.flush()
        await until(lambda: len(got) == 2 and len(markers) == 3, timeout=30, what="cross-node deliveries")
        assert sorted(got, key=repr) == sorted([("orders.new", b"from-b", {"K": "v"}),
                                                ("orders.new", b"from-c", None)], key=repr)
        assert len(members) == 300, "a queued message reached more than one member of the group, or none"
        assert set(members) == {"a", "b", "c"}, f"members on every node take work: {set(members)}"

        async def echo(m):
            await m.respond(m.data.upper())
        svc = await c.subscribe("svc.echo", cb=echo)
        await c.flush()
        await until_routed(c, a, "svc.echo")
        assert (await a.request("svc.echo", b"hi", timeout=5)).data == b"HI"
        await svc.unsubscribe()
        await c.flush()

        async def no_responders():
            try:
                await a.request("svc.echo", b"?", timeout=2)
            except NoRespondersError:
                return True
            except NatsTimeout:     # the node still routed it to c, which no longer has the responder
                return False
            return False
        await until(no_responders, timeout=30, what="the unsubscribe to reach the other nodes")
    finally:
        for conn in (a, b, c):
            await conn.close()


def _follower(cluster) -> int:
    leader = cluster.leader()
    return next(i for i in range(3) if i != leader)


async def test_jetstream_through_a_follower_only(cluster):
    f = await nats_to(cluster.nodes[_follower(cluster)])
    try:
        js = f.jetstream()
        await js.add_stream(name="FOLLOW", subjects=["follow.>"], num_replicas=3)
        acks = [await js.publish("follow.x", f"m{i}".encode(), headers={"Nats-Msg-Id": f"id{i}"}) for i in range(20)]
        assert [a.seq for a in acks] == list(range(1, 21))
        dup = await js.publish("follow.x", b"again", headers={"Nats-Msg-Id": "id3"})
        assert dup.duplicate and dup.seq == 4

        psub = await js.pull_subscribe("follow.>", durable="WORKER")
        msgs = await psub.fetch(10, timeout=5)
        assert [m.data for m in msgs] == [f"m{i}".encode() for i in range(10)]
        assert msgs[0].metadata.sequence.stream == 1
        for m in msgs:
            await m.ack_sync()
        info = await js.consumer_info("FOLLOW", "WORKER")
        assert (info.num_ack_pending, info.num_pending) == (0, 10)

        pushed = []

        async def on_push(m):
            pushed.append(m.data)
            await m.ack()
        await js.subscribe("follow.>", durable="PUSHER", cb=on_push)
        await until(lambda: len(pushed) == 20, timeout=30, what="push deliveries through the follower")
        assert (await js.stream_info("FOLLOW")).state.messages == 20
    finally:
        await f.close()


async def test_info_lists_every_node_for_discovery(cluster):
    nc = await nats_to(cluster.nodes[0])
    try:
        want = sorted(n.nats for n in cluster.nodes)

        async def listed():
            probe = await nats_to(cluster.nodes[1])
            urls = sorted(probe._server_info.get("connect_urls", []))
            await probe.close()
            return urls == want
        await until(listed, timeout=30, what="connect_urls to list all three nodes")
    finally:
        await nc.close()


def test_a_route_without_the_cluster_secret_is_refused(cluster):
    host, port = cluster.nodes[0].nats.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        f = s.makefile("rb")
        info = json.loads(f.readline()[5:])
        assert info.get("nonce")
        s.sendall(b'CONNECT {"route": "intruder", "proof": "00"}\r\nRS+ secret.>\r\n')
        line = f.readline()
        assert line.startswith(b"-ERR 'Authorization Violation'"), line
