"""nats-py, unchanged, against a 3-node cluster of real processes (issue 12): core
messages cross the route mesh (queue groups stay one-member-per-message cluster-wide),
and JetStream works from a client connected to a follower only (forwarded to the
leader over the route). Routes must prove the cluster secret."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import nats
import pytest
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig

from cluster_util import Cluster
from e2e_util import until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("natscluster")), nats=True)
    c.start()
    c.leader()
    c.wait_named()
    c.wait_healthy()        # incl. every follower's NATS routes to the leader
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


async def until_js_through(node):
    """Wait until JetStream answers through `node` (its route to the leader is up)."""
    nc = await nats_to(node)

    async def answers():
        try:
            await nc.jetstream().account_info()
            return True
        except Exception:  # noqa: BLE001 - no route to the leader yet
            return False
    try:
        await until(answers, timeout=30, interval=0.2, what=f"JetStream through {node.name}")
    finally:
        await nc.close()


async def test_jetstream_through_a_follower_only(cluster):
    await until_js_through(cluster.nodes[_follower(cluster)])
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


SEED_WORKER = os.path.join(os.path.dirname(__file__), "seed_programs", "worker.py")


def _start_worker(path: str, worker_id: str):
    p = subprocess.Popen([sys.executable, "-u", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env={**os.environ, "WORKER_ID": worker_id}, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")), daemon=True).start()
    return p, lines


async def test_the_seed_articles_nats_py_worker_runs_unchanged_against_a_follower(cluster, tmp_path):
    """Two copies of the seed's worker.py (a work queue, a durable consumer group, fetch and
    ack) share 40 orders published through another node: each order is processed once."""
    follower = cluster.nodes[_follower(cluster)]
    await until_js_through(follower)
    source = open(SEED_WORKER).read()
    assert 'nc.connect("nats://localhost:4222")' in source
    path = tmp_path / "worker.py"
    path.write_text(source.replace("nats://localhost:4222", url(follower)))
    workers = [_start_worker(str(path), w) for w in ("w1", "w2")]
    nc = await nats_to(cluster.nodes[cluster.leader()])
    try:
        try:
            await until(lambda: all(any("waiting for messages" in ln for ln in lines) for _, lines in workers),
                        timeout=60, what="both workers to start")
        except AssertionError as e:
            raise AssertionError(f"{e}: {[lines for _, lines in workers]}") from None
        js = nc.jetstream()
        for i in range(40):
            await js.publish("orders.new", json.dumps({"id": i, "customer": f"c{i % 7}"}).encode())

        def processed():
            return [(w, ln.split()[3]) for w, (_, lines) in zip(("w1", "w2"), workers)
                    for ln in list(lines) if "Processed order" in ln]
        await until(lambda: len(processed()) >= 40, timeout=90, what="the workers to process every order")
        done = processed()
        assert sorted(int(i) for _, i in done) == list(range(40)), "an order was lost or processed twice"
        assert {w for w, _ in done} == {"w1", "w2"}, "both workers take orders"
        await until(lambda: _stream_empty(js, "ORDERS"), timeout=30, what="the acked work to leave the queue")
    finally:
        for p, _ in workers:
            p.send_signal(signal.SIGTERM)
        for p, _ in workers:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        await nc.close()


async def _stream_empty(js, name: str) -> bool:
    return (await js.stream_info(name)).state.messages == 0


async def test_nats_py_publishes_survive_a_leader_sigkill_none_lost_doubled_or_reordered(tmp_path):
    c = Cluster(str(tmp_path / "c"), nats=True)
    c.start()
    try:
        c.leader()
        c.wait_named()
        for node in c.nodes:
            await until_js_through(node)
        nc = await nats.connect(servers=[url(n) for n in c.nodes], connect_timeout=5, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.2)
        js = nc.jetstream(timeout=2)
        await js.add_stream(name="S", subjects=["s.>"], num_replicas=3)
        acked: list[tuple[str, int]] = []
        i, killed, retries = 0, None, 0
        deadline = time.monotonic() + 120
        while len(acked) < 600 and time.monotonic() < deadline:
            if len(acked) == 200 and killed is None:
                killed = c.leader()
                c.kill(killed)
            msg_id = f"m{i}"
            try:
                ack = await js.publish("s.x", msg_id.encode(), headers={"Nats-Msg-Id": msg_id})
            except Exception:  # noqa: BLE001 - no answer: send the same message again (Nats-Msg-Id dedupes)
                retries += 1
                await asyncio.sleep(0.05)
                continue
            acked.append((msg_id, ack.seq))
            i += 1
        assert len(acked) == 600, f"only {len(acked)} acked in 120 s ({retries} retries)"
        c.start(killed)
        c.wait_healthy()
        psub = await js.pull_subscribe("s.>", durable="CHECK", config=ConsumerConfig(ack_policy=AckPolicy.NONE))
        stored = []
        while len(stored) < 600:
            stored += [(m.data.decode(), m.metadata.sequence.stream) for m in await psub.fetch(600, timeout=5)]
        assert stored == acked == [(f"m{k}", k + 1) for k in range(600)]
        assert (await js.stream_info("S")).state.messages == 600
        c.wait_same_digest()
        await nc.close()
    finally:
        c.stop()
