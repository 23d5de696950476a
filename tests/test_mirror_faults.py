"""A large mirror copy across two 3-node clusters of real processes, under faults
(issue 10): the follower running the pipeline is killed, the origin's leader is
killed, and the whole mirror cluster is killed and restarted, each in the middle of
copying 200,000 messages. The mirror must end identical to the origin: the same
sequences, subjects, headers, data and timestamps, nothing twice, nothing missing.

(The partition of the pipeline's node from the origin needs a network of namespaces:
it is the chaos suite's mirror workload, `python -m chaos run --workload mirror`.)"""
from __future__ import annotations

import asyncio

import pytest

from api.client import connect
from chaos.mirror import publish_backlog
from cluster_util import Cluster
from e2e_util import until
from test_mirrors import all_msgs, runners, status

pytestmark = pytest.mark.slow

TOTAL = 200_000
STEP = 25_000            # copied between two faults


async def mirrored(js) -> int:
    return (await js.stream_info("ORDERS_DR")).state.messages


async def wait_copied_past(js, n: int, what: str) -> int:
    async def past():
        got = await mirrored(js)
        return got if got >= n else 0
    return await until(past, timeout=180, interval=0.2, what=what)


async def runner_of(nc) -> str | None:
    # An origin in another cluster is keyed by its name and where it is: ORDERS@host:port,...
    return next((r for (stream, _), r in (await runners(nc)).items() if stream == "ORDERS_DR"), None)


async def test_mirror_ends_identical_after_runner_kill_origin_leader_kill_and_mirror_cluster_restart(tmp_path):
    origin, mirror = Cluster(str(tmp_path / "origin")), Cluster(str(tmp_path / "mirror"))
    origin.start()
    mirror.start()
    try:
        mirror.wait_named()
        a = await connect(origin.clients(), timeout=10)
        b = await connect(mirror.clients(), timeout=10)
        js_a, js_b = a.jetstream(), b.jetstream()
        await js_a.add_stream(name="ORDERS", subjects=["orders.>"], num_replicas=3)
        await publish_backlog(js_a, TOTAL, "orders")
        await js_b.add_stream(name="ORDERS_DR", num_replicas=3,
                              mirror={"name": "ORDERS", "external": {"servers": origin.clients()}})

        # 1. The follower that runs the pipeline dies; another follower takes over.
        got = await wait_copied_past(js_b, STEP, "the copy to start")
        leader, runner = (await status(b))["leader"], await runner_of(b)
        assert runner not in (None, leader), f"the pipeline runs on {runner}, the leader is {leader}"
        victim = next(i for i, n in enumerate(mirror.nodes) if n.name == runner)
        mirror.kill(victim)
        moved = await until(lambda: _moved(b, runner), timeout=60, what="the pipeline to move")
        assert moved != runner
        mirror.start(victim)
        got = await wait_copied_past(js_b, got + STEP, "the copy to go on after the runner was killed")

        # 2. The origin's leader dies; the pipeline reads from the new one.
        origin_leader = origin.leader()
        origin.kill(origin_leader)
        origin.leader(among=[i for i in range(3) if i != origin_leader], timeout_s=30)
        got = await wait_copied_past(js_b, got + STEP, "the copy to go on after the origin's leader was killed")
        origin.start(origin_leader)

        # 3. Every node of the mirror cluster dies at once and comes back.
        assert got < TOTAL, "the copy finished before the last fault: make STEP smaller"
        await b.close()
        for i in range(3):
            mirror.kill(i)
        mirror.start()
        mirror.leader(timeout_s=60)
        b = await connect(mirror.clients(), timeout=10)
        js_b = b.jetstream()
        await until(lambda: _at_least(js_b, TOTAL), timeout=300, interval=0.5, what="the mirror to catch up")

        info = await js_b.stream_info("ORDERS_DR")
        assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (TOTAL, 1, TOTAL)
        assert info.mirror.error is None and info.mirror.lag == 0
        copy, source = await all_msgs(js_b, "ORDERS_DR"), await all_msgs(js_a, "ORDERS")
        assert len(source) == TOTAL and [m[0] for m in copy] == list(range(1, TOTAL + 1))
        assert copy == source
        mirror.wait_same_digest()
        await a.close()
        await b.close()
    finally:
        mirror.stop()
        origin.stop()


async def _moved(nc, old: str) -> str | None:
    try:
        r = await runner_of(nc)
    except Exception:  # noqa: BLE001 - the cluster may be electing
        return None
    return r if r and r != old else None


async def _at_least(js, n: int) -> bool:
    try:
        return await mirrored(js) >= n
    except Exception:  # noqa: BLE001 - retried while the restarted cluster settles
        return False
