"""A 3-node cluster of real processes: replication, failover, restarts (issue 4)."""
from __future__ import annotations

import asyncio
import signal
import time

import pytest

from api.client import ConsumerConfig, connect
from cluster_util import Cluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path / "c"))
    c.start()
    yield c
    c.stop()


async def _publisher(js, subject: str, tag: str, acked: list, stop: asyncio.Event) -> None:
    """Publishes tag-0, tag-1, … one at a time; records (seq, payload) of each ack."""
    i = 0
    while not stop.is_set():
        payload = f"{tag}-{i}".encode()
        try:
            ack = await js.publish(subject, payload, timeout=20)
        except Exception:  # noqa: BLE001 - unacknowledged: may or may not be stored
            await asyncio.sleep(0.05)
            continue
        acked.append((ack.seq, payload))
        i += 1


class Publishers:
    """Several publishers running until halted; `acked` holds (seq, payload) of every ack."""

    def __init__(self, js, n: int = 4, tag: str = "p", subject: str = "s.x", acked: list | None = None):
        self.acked = [] if acked is None else acked
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(_publisher(js, subject, f"{tag}{k}", self.acked, self._stop))
                       for k in range(n)]

    async def until(self, n: int) -> None:
        """Wait until n publishes are acknowledged in all."""
        while len(self.acked) < n:
            await asyncio.sleep(0.02)

    async def more(self, n: int) -> None:
        """Wait until n more are acknowledged."""
        await self.until(len(self.acked) + n)

    async def halt(self) -> list:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.acked


async def _contents(js, stream: str) -> list[tuple[int, bytes]]:
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        m = await js.get_msg(stream, seq)
        out.append((m.seq, m.data))
    return out


def _check_acked(acked: list, stored: list) -> None:
    """Every acknowledged publish is stored exactly once, at its acked sequence, and
    each publisher's messages are in the order it published them."""
    by_payload: dict[bytes, list[int]] = {}
    for seq, data in stored:
        by_payload.setdefault(data, []).append(seq)
    for seq, data in acked:
        assert by_payload.get(data) == [seq], f"{data!r} acked at {seq}, stored at {by_payload.get(data)}"
    tags: dict[str, list[int]] = {}
    for seq, data in stored:
        tag, _, n = data.decode().rpartition("-")
        tags.setdefault(tag, []).append(int(n))
    for tag, ns in tags.items():
        assert ns == sorted(ns) and len(ns) == len(set(ns)), f"publisher {tag} reordered or duplicated"


async def test_replicates_to_all_nodes_through_any_node(cluster):
    li = cluster.leader()
    follower = next(i for i in range(3) if i != li)
    # Connected to a follower only: the client is sent to the leader by itself.
    nc = await connect([cluster.nodes[follower].client])
    js = nc.jetstream()
    info = await js.add_stream(name="S", subjects=["s.>"], num_replicas=3)
    assert info.config.num_replicas == 3
    assert nc.connected_url == cluster.nodes[li].client
    with pytest.raises(Exception) as e:
        await js.add_stream(name="T", subjects=["t.>"], num_replicas=4)
    assert getattr(e.value, "err_code", None) == 10023       # insufficient resources
    for start in range(0, 10_000, 500):
        acks = await js.publish_batch([("s.x", b"m%05d" % i) for i in range(start, start + 500)])
        assert all(not isinstance(a, Exception) for a in acks)
    info = await js.stream_info("S")
    assert info.state.messages == 10_000
    assert info.cluster.leader == cluster.nodes[li].name
    assert sorted(r.name for r in info.cluster.replicas) == sorted(
        n.name for i, n in enumerate(cluster.nodes) if i != li)
    # An R1 stream is stored on every node too, but shows the replicas it asked for: none, as in NATS.
    await js.add_stream(name="ONE", subjects=["one"], num_replicas=1)
    one = await js.stream_info("ONE")
    assert one.cluster.leader == cluster.nodes[li].name and one.cluster.replicas == []
    await nc.close()
    d = cluster.wait_same_digest()
    assert d["messages"] == {"S": 10_000, "ONE": 0}


async def test_leader_sigkill_during_publishes_loses_nothing(cluster):
    li = cluster.leader()
    nc = await connect(cluster.clients())
    js = nc.jetstream()
    await js.add_stream(name="S", subjects=["s.>"], num_replicas=3)
    pubs = Publishers(js)
    await pubs.until(300)
    cluster.kill(li)
    new = cluster.leader(among=[i for i in range(3) if i != li])
    assert new != li
    await pubs.more(300)                   # publishing resumed on the new leader
    acked = await pubs.halt()
    stored = await _contents(js, "S")
    _check_acked(acked, stored)
    cluster.start(li)                      # the killed node catches up
    cluster.wait_healthy()
    d = cluster.wait_same_digest()
    assert d["messages"]["S"] == len(stored)
    await nc.close()


async def test_acks_survive_leader_failover(cluster):
    li = cluster.leader()
    nc = await connect(cluster.clients())
    js = nc.jetstream()
    await js.add_stream(name="W", subjects=["w.>"], num_replicas=3)
    for i in range(40):
        await js.publish("w.x", b"%d" % i)
    await js.add_consumer("W", ConsumerConfig(durable_name="c", ack_policy="explicit", ack_wait=2.0))
    sub = await js.pull_subscribe("w.x", durable="c", stream="W")
    acked = set()
    msgs = await sub.fetch(25, timeout=5)
    for m in msgs[:20]:
        await m.ack_sync()
        acked.add(m.metadata.sequence.stream)
    unacked = {m.metadata.sequence.stream for m in msgs[20:]}      # delivered once, never acked
    cluster.kill(li)
    cluster.leader(among=[i for i in range(3) if i != li])
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 30
    while len(seen) < 20 and time.monotonic() < deadline:
        for m in await sub.fetch(20, timeout=1):
            seq = m.metadata.sequence.stream
            assert seq not in acked, f"message {seq} was acked before the failover and came again"
            seen[seq] = m.metadata.num_delivered
            await m.ack_sync()
    assert set(seen) == set(range(21, 41))
    for seq in unacked:                    # the delivery before the failover was counted
        assert seen[seq] >= 2
    info = await js.consumer_info("W", "c")
    assert info.num_ack_pending == 0 and info.num_pending == 0
    await nc.close()


async def test_sigkill_all_then_restart_keeps_every_ack(cluster):
    cluster.leader()
    nc = await connect(cluster.clients())
    js = nc.jetstream()
    await js.add_stream(name="S", subjects=["s.>"], num_replicas=3)
    pubs = Publishers(js)
    await pubs.until(500)
    for i in range(3):
        cluster.signal(i, signal.SIGKILL)
    acked = await pubs.halt()
    cluster.start()
    cluster.leader()
    cluster.wait_healthy()
    stored = await _contents(js, "S")
    _check_acked(acked, stored)
    cluster.wait_same_digest()
    await nc.close()


async def test_restart_replays_journal_without_double_apply(cluster):
    cluster.leader()
    nc = await connect(cluster.clients())
    js = nc.jetstream()
    await js.add_stream(name="S", subjects=["s.>"], num_replicas=3)
    await js.add_stream(name="M", subjects=["m.>"], num_replicas=3, storage="memory")
    for _ in range(10):
        await js.publish_batch([("s.x", b"x" * 64)] * 100)
        await js.publish_batch([("m.x", b"y" * 64)] * 100)
    before = cluster.wait_same_digest()
    assert before["messages"] == {"S": 1000, "M": 1000}
    # One node restarts: its file store is ahead of nothing, its memory stream is rebuilt
    # from its own journal; then all three restart.
    cluster.stop(2)
    cluster.start(2)
    cluster.wait_healthy()
    after_one = cluster.wait_same_digest()
    assert after_one["streams"] == before["streams"]
    cluster.stop()
    cluster.start()
    cluster.leader()
    cluster.wait_healthy()
    after_all = cluster.wait_same_digest()
    assert after_all["streams"] == before["streams"]
    assert after_all["messages"] == {"S": 1000, "M": 1000}
    for node in cluster.nodes:
        assert "cannot apply" not in cluster.log(node)
    await nc.close()


async def test_wrong_or_missing_secret_cannot_join(tmp_path, cluster):
    li = cluster.leader()
    term = cluster.raftz(cluster.nodes[li])["term"]
    for secret, extra in (("not-the-secret", ()), (None, ("--insecure-dev-cluster",))):
        intruder = Cluster(str(tmp_path / f"x{len(extra)}"), n=1, secret=secret, extra=extra)
        node = intruder.nodes[0]
        # It claims the first node's Raft address is its peer and asks to bootstrap.
        intruder.start(peers=[node.raft] + [n.raft for n in cluster.nodes])
        try:
            # Watched over several election timeouts: it never learns a leader or leads,
            # and the cluster's leader and term never move.
            until = time.monotonic() + 4
            while time.monotonic() < until:
                z = intruder.raftz(node)
                assert z["leader"] == "" and z["role"] != "leader"
                assert cluster.raftz(cluster.nodes[li])["term"] == term
                time.sleep(0.2)
            assert cluster.leader() == li
        finally:
            intruder.stop()


async def test_unconfirmed_ack_sync_raises(cluster):
    li = cluster.leader()
    nc = await connect(cluster.clients())
    js = nc.jetstream()
    await js.add_stream(name="A", subjects=["a.>"], num_replicas=3)
    await js.publish("a.x", b"1")
    await js.add_consumer("A", ConsumerConfig(durable_name="c", ack_policy="explicit"))
    (m,) = await (await js.pull_subscribe("a.x", durable="c", stream="A")).fetch(1, timeout=5)
    cluster.signal(li, signal.SIGSTOP)        # the ack cannot be committed anywhere in time
    try:
        with pytest.raises(Exception) as e:
            await m.ack_sync(timeout=2)
        assert not isinstance(e.value, AssertionError)
    finally:
        cluster.signal(li, signal.SIGCONT)
    await nc.close()


def test_cluster_cli_status_and_step_down(cluster):
    import subprocess
    import sys
    li = cluster.wait_named()
    servers = ",".join(cluster.clients())
    out = subprocess.run([sys.executable, "-m", "api.cli", "cluster", "status", "--server", servers],
                         capture_output=True, text=True, timeout=60).stdout
    assert f"leader: {cluster.nodes[li].name}" in out
    for n in cluster.nodes:
        assert n.name in out and n.raft in out
    r = subprocess.run([sys.executable, "-m", "api.cli", "cluster", "step-down", "--server", servers],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 15
    while cluster.leader() == li and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.leader() != li
