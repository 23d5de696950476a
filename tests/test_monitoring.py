"""The operator's HTTP surface on a running 3-node cluster: /varz /connz /jsz /healthz
/metrics and the consumer-health check, checked against what the test did."""
from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request

import nats
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.client import ConsumerConfig, connect
from api.server.metrics import NodeMetrics
from cluster_util import Cluster
from e2e_util import until

pytestmark = pytest.mark.slow
EXPORTER_COUNT_GAUGE = "jetstream_stream_consumer_count"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("mon")), nats=True)
    c.start()
    c.leader()
    c.wait_healthy()        # incl. the NATS routes to the leader, which /healthz counts
    yield c
    c.stop()


def _get(node, path: str):
    try:
        with urllib.request.urlopen(f"http://{node.http}{path}", timeout=5) as r:
            body = r.read()
            return r.status, body
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _json(node, path: str):
    status, body = _get(node, path)
    return status, json.loads(body)


def _samples(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(samples: dict, name: str, **labels) -> float:
    rows = [v for lab, v in samples.get(name, []) if all(lab.get(k) == want for k, want in labels.items())]
    assert len(rows) == 1, f"{name}{labels}: {rows}"
    return rows[0]


@pytest.fixture(scope="module")
def scenario(cluster):
    asyncio.run(_scenario(cluster))
    cluster.wait_same_digest()
    return cluster


async def _scenario(cluster):
    """100 publishes to MON; consumer C fetched 60 and acked 40."""
    nc = await connect(cluster.clients())
    js = nc.jetstream()
    await js.add_stream(name="MON", subjects=["mon.*"], num_replicas=3)
    acks = await js.publish_batch([(f"mon.{i % 3}", b"x" * 10) for i in range(100)])
    assert all(not isinstance(a, Exception) for a in acks)
    await js.add_consumer("MON", ConsumerConfig(durable_name="C", ack_policy="explicit", ack_wait=300))
    sub = await js.pull_subscribe("mon.*", durable="C", stream="MON")
    got = []
    while len(got) < 60:
        got += await sub.fetch(60 - len(got), timeout=5)
    for m in got[:40]:
        await m.ack_sync()
    await nc.close()


async def test_jsz_numbers_match_what_was_done_on_every_node(scenario):
    for node in scenario.nodes:
        status, z = _json(node, "/jsz?streams=true&consumers=true&config=true")
        assert status == 200
        assert (z["streams"], z["consumers"], z["messages"]) == (1, 1, 100)
        assert z["meta_cluster"]["cluster_size"] == 3 and z["meta_cluster"]["leader"]
        (stream,) = z["account_details"][0]["stream_detail"]
        assert stream["name"] == "MON" and stream["state"]["messages"] == 100
        assert stream["config"]["subjects"] == ["mon.*"]
        (c,) = stream["consumer_detail"]
        assert (c["name"], c["num_pending"], c["num_ack_pending"]) == ("C", 40, 20)
        assert c["config"]["ack_policy"] == "explicit"
    _, plain = _json(scenario.nodes[0], "/jsz")
    assert "account_details" not in plain


async def test_varz_and_connz_count_connections_and_traffic(scenario):
    node = scenario.nodes[0]
    nc = await nats.connect(f"nats://{node.nats}", name="watcher", max_reconnect_attempts=0)
    try:
        await nc.subscribe("watch.>")
        for _ in range(5):
            await nc.publish("watch.x", b"12345")
        await nc.flush()
        status, v = _json(node, "/varz")
        assert status == 200
        assert v["server_name"] == node.name and v["version"].startswith("2.10")
        assert v["connections"] >= 1 and v["subscriptions"] >= 1
        assert v["in_msgs"] >= 5 and v["in_bytes"] >= 25 and v["mem"] > 0
        assert v["jetstream"]["meta"]["cluster_size"] == 3
        _, cz = _json(node, "/connz")
        mine = [c for c in cz["connections"] if c["name"] == "watcher"]
        assert len(mine) == 1 and mine[0]["in_msgs"] == 5 and mine[0]["subscriptions"] == 1
        assert mine[0]["lang"] == "python3"
        _, page = _json(node, f"/connz?offset={cz['total']}&limit=1")
        assert page["connections"] == [] and page["total"] == cz["total"]
    finally:
        await nc.close()


async def test_healthz_options(scenario):
    node = scenario.nodes[1]
    assert _json(node, "/healthz")[0] == 200
    assert _json(node, "/healthz?js-enabled-only=true")[0] == 200
    assert _json(node, "/healthz?stream=MON")[0] == 200
    assert _json(node, "/healthz?stream=MON&consumer=C")[0] == 200
    status, body = _json(node, "/healthz?stream=NOPE")
    assert status == 503 and "stream not found" in body["error"]


async def test_metrics_parse_and_carry_the_dashboards_names(scenario):
    leader_name = scenario.nodes[scenario.leader()].name
    for node in scenario.nodes:
        status, body = _get(node, "/metrics")
        assert status == 200
        s = _samples(body.decode())
        assert _value(s, "jetstream_stream_total_messages", stream_name="MON", server_name=node.name,
                      stream_leader=leader_name, is_stream_leader=str(node.name == leader_name).lower()) == 100
        assert _value(s, "jetstream_stream_messages", stream="MON") == 100
        assert _value(s, "jetstream_consumer_num_pending", stream_name="MON", consumer_name="C") == 40
        assert _value(s, "jetstream_consumer_num_ack_pending", stream_name="MON", consumer_name="C") == 20
        assert _value(s, "nats_consumer_ack_pending", stream="MON", consumer="C") == 20
        assert _value(s, "jetstream_consumer_delivered_stream_seq", stream_name="MON", consumer_name="C") == 60
        assert _value(s, "jetstream_consumer_ack_floor_stream_seq", stream_name="MON", consumer_name="C") == 40
        assert _value(s, "raftbroker_raft_applied_index", server_name=node.name) > 0
    # Counted where the publish arrived (our client publishes on the leader): 100 over the cluster.
    published = 0
    for node in scenario.nodes:
        s = _samples(_get(node, "/metrics")[1].decode())
        published += sum(v for lab, v in s.get("jetstream_messages_published_total", []) if lab["stream"] == "MON")
    assert published == 100
    leader = scenario.nodes[scenario.leader()]
    s = _samples(_get(leader, "/metrics")[1].decode())
    by_subject = {lab["subject"]: v for lab, v in s["jetstream_messages_published_total"]}
    assert by_subject == {"mon.0": 34, "mon.1": 33, "mon.2": 33}
    assert len([1 for lab, _ in s["raftbroker_raft_peer_lag"]]) == 2
    assert _value(s, "raftbroker_entry_commands_count") > 0


async def test_promtool_accepts_metrics_from_every_node(scenario):
    for node in scenario.nodes:
        body = _get(node, "/metrics")[1]
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
        # Exit 1 is a format error. Exit 3 is lint only: the one lint complaint allowed is the
        # "_count" suffix of prometheus-nats-exporter's own gauge name, which its dashboards need.
        complaints = [ln for ln in (r.stdout + r.stderr).decode().splitlines() if ln.strip()]
        assert r.returncode in (0, 3), complaints
        assert all(ln.startswith(EXPORTER_COUNT_GAUGE + " ") for ln in complaints), complaints


async def test_consumer_health_turns_503_when_behind_and_200_when_caught_up(scenario):
    node = scenario.nodes[2]
    path = "/healthz/consumer/MON/C?max_pending=10&max_ack_pending=5"
    status, body = _json(node, path)
    assert status == 503
    assert any("pending 40 > 10" in r for r in body["reasons"])
    assert any("ack pending 20 > 5" in r for r in body["reasons"])
    assert _json(node, "/healthz/consumer/MON/NOPE")[0] == 404
    nc = await connect(scenario.clients())
    try:
        sub = await nc.jetstream().pull_subscribe("mon.*", durable="C", stream="MON")
        seen = 0
        while seen < 40:        # the 40 not yet delivered (the 20 unacked return only after ack_wait)
            msgs = await sub.fetch(40, timeout=5)
            for m in msgs:
                await m.ack_sync()
            seen += len(msgs)
        await until(lambda: _json(node, path)[0] == 503 and _json(node, path)[1]["num_pending"] == 0,
                    timeout=10, what="pending drained on node 3")
        status, body = _json(node, "/healthz/consumer/MON/C?max_pending=10&max_ack_pending=100")
        assert status == 200, body
    finally:
        await nc.close()


def test_latency_histograms_count_batches_and_spell_le_as_prometheus_client_does():
    m = NodeMetrics()
    m.published("S", "s.a", 0.0003, 5)
    m.entry_commands.observe(1)
    text = generate_latest(m.registry).decode()
    assert 'jetstream_publish_seconds_bucket{le="0.0005"} 5.0' in text
    assert 'jetstream_publish_seconds_bucket{le="0.00025"} 0.0' in text
    assert 'jetstream_publish_seconds_bucket{le="+Inf"} 5.0' in text
    assert "jetstream_publish_seconds_count 5.0" in text
    assert 'raftbroker_entry_commands_bucket{le="1.0"} 1.0' in text
    assert 'jetstream_messages_published_total{stream="S",subject="s.a"} 5.0' in text
