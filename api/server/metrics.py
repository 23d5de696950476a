"""/metrics in Prometheus text format (prometheus-client), with the names the seeds' dashboards
and prometheus-nats-exporter's Grafana boards use.

Latencies and counts are observed as they happen; stream, consumer and Raft state is read
from the node at scrape time, so what a scrape shows is what the node holds at that moment.
Each node has its own registry (never the process-global one), so in-process tests and
several nodes in one interpreter do not collide.
"""
from __future__ import annotations

import bisect
from collections import Counter
from typing import Optional

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

MAX_SUBJECT_LABELS = 100      # distinct subject label values per stream; the rest count as "_other"
OTHER = "_other"

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class LatencyHistogram:
    """A Prometheus histogram without prometheus-client's two locks per observation, and
    with a count: a batch of publishes acked together is one call. Each is written by one
    thread only (the event loop, or the Raft tick for fsyncs); a scrape reads it as is."""

    def __init__(self, name: str, doc: str, buckets: tuple):
        self.name, self.doc, self.bounds = name, doc, buckets
        self.counts = [0] * (len(buckets) + 1)       # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def family(self) -> HistogramMetricFamily:
        """The `le` labels spelled as prometheus-client's Histogram spells them ("1.0", "+Inf")."""
        cumulative, total = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            total += n
            cumulative.append((floatToGoString(bound), total))
        return HistogramMetricFamily(self.name, self.doc, buckets=cumulative, sum_value=self.sum)


class SubjectCounts:
    """Messages stored per (stream, subject), with a bound on distinct subjects per stream so
    a stream with a million subjects cannot blow up the scrape."""

    def __init__(self, cap: int = MAX_SUBJECT_LABELS):
        self.cap = cap
        self.counts: dict[str, Counter] = {}

    def add(self, stream: str, subject: Optional[str], n: int = 1) -> None:
        c = self.counts.get(stream)
        if c is None:
            c = self.counts[stream] = Counter()
        key = subject or OTHER
        if key not in c and len(c) >= self.cap:
            key = OTHER
        c[key] += n

    def drop(self, stream: str) -> None:
        self.counts.pop(stream, None)


class NodeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=False)
        self.publish_seconds = LatencyHistogram("jetstream_publish_seconds", "JetStream publish: arrival to ack",
                                                _LATENCY_BUCKETS)
        self.ack_seconds = LatencyHistogram("jetstream_ack_seconds", "consumer ack: arrival to applied",
                                            _LATENCY_BUCKETS)
        self.commit_seconds = LatencyHistogram("raftbroker_entry_commit_seconds",
                                               "one group-commit entry: proposed to applied on this node",
                                               _LATENCY_BUCKETS)
        self.entry_commands = LatencyHistogram("raftbroker_entry_commands", "commands per group-commit entry",
                                               (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500))
        self.fsync_seconds = LatencyHistogram("raftbroker_fsync_seconds", "Raft log fdatasync latency",
                                              _LATENCY_BUCKETS)
        self.published_counts = SubjectCounts()
        self.consumed: Counter = Counter()        # (stream, consumer, status) -> acks seen here
        self.leader_changes = 0
        self._state = None
        self.registry.register(_StateCollector(self))

    def published(self, stream: str, subject: str, seconds: float, n: int = 1) -> None:
        """n publishes to one subject this node took and acked after `seconds` (counted
        where they arrived, so the cluster's total is the sum over nodes, as with
        nats-server's per-server counters)."""
        self.published_counts.add(stream, subject, n)
        self.publish_seconds.observe(seconds, n)

    def on_events(self, events) -> None:
        for ev in events:
            if ev.kind == "stream_deleted":
                self.published_counts.drop(ev.stream)

    def render(self, state: "ScrapeState") -> bytes:
        """The text exposition, with `state` (read just now from the node) as the gauges."""
        self._state = state
        try:
            return generate_latest(self.registry)
        finally:
            self._state = None


class ScrapeState:
    """What a scrape reads from the node: streams with their consumers, and Raft status."""

    def __init__(self, server_name: str, is_leader: bool, leader: str, streams: list, raft: Optional[dict],
                 proposals_queued: int):
        self.server_name = server_name
        self.is_leader = is_leader
        self.leader = leader              # every stream's leader is the Raft leader
        self.streams = streams            # [(StreamInfo, [ConsumerInfo])]
        self.raft = raft
        self.proposals_queued = proposals_queued


def _gauge(name, doc, labels):
    return GaugeMetricFamily(name, doc, labels=labels)


class _StateCollector:
    def __init__(self, metrics: NodeMetrics):
        self.m = metrics

    def collect(self):
        m, st = self.m, self.m._state
        yield from self._counters(m)
        if st is None:
            return
        yield from self._streams(st)
        yield from self._raft(st)

    def _counters(self, m: NodeMetrics):
        pub = CounterMetricFamily("jetstream_messages_published", "messages this node took and stored, by stream and subject",
                                  labels=["stream", "subject"])
        for stream, c in sorted(m.published_counts.counts.items()):
            for subject, n in sorted(c.items()):
                pub.add_metric([stream, subject], n)
        yield pub
        con = CounterMetricFamily("jetstream_messages_consumed", "acks received on this node, by status",
                                  labels=["stream", "consumer", "status"])
        for (stream, consumer, status), n in sorted(m.consumed.items()):
            con.add_metric([stream, consumer, status], n)
        yield con
        for h in (m.publish_seconds, m.ack_seconds, m.commit_seconds, m.entry_commands, m.fsync_seconds):
            yield h.family()

    def _streams(self, st: ScrapeState):
        leader = "true" if st.is_leader else "false"
        sl = ["server_name", "stream_name", "stream_leader", "is_stream_leader"]
        cl = sl + ["consumer_name"]
        g = {n: _gauge(n, d, sl) for n, d in (
            ("jetstream_stream_total_messages", "messages in the stream"),
            ("jetstream_stream_total_bytes", "bytes in the stream"),
            ("jetstream_stream_first_seq", "first sequence"),
            ("jetstream_stream_last_seq", "last sequence"),
            ("jetstream_stream_consumer_count", "consumers on the stream"))}
        c = {n: _gauge(n, d, cl) for n, d in (
            ("jetstream_consumer_num_pending", "messages not yet delivered"),
            ("jetstream_consumer_num_ack_pending", "delivered, not yet acked"),
            ("jetstream_consumer_num_redelivered", "messages redelivered"),
            ("jetstream_consumer_num_waiting", "waiting pull requests"),
            ("jetstream_consumer_delivered_stream_seq", "last delivered stream sequence"),
            ("jetstream_consumer_ack_floor_stream_seq", "ack floor stream sequence"))}
        seeds_stream = _gauge("jetstream_stream_messages", "messages in the stream (seeds' name)", ["stream"])
        seeds_pending = _gauge("jetstream_consumer_pending_messages", "pending messages (seeds' name)",
                               ["stream", "consumer"])
        ack_pending = _gauge("nats_consumer_ack_pending", "delivered, not yet acked", ["stream", "consumer"])
        redelivered = CounterMetricFamily("nats_consumer_redelivered", "messages redelivered",
                                          labels=["stream", "consumer"])
        for info, consumers in st.streams:
            name, s = info.config.name, info.state
            base = [st.server_name, name, st.leader, leader]
            for key, v in (("jetstream_stream_total_messages", s.messages), ("jetstream_stream_total_bytes", s.bytes),
                           ("jetstream_stream_first_seq", s.first_seq), ("jetstream_stream_last_seq", s.last_seq),
                           ("jetstream_stream_consumer_count", s.consumer_count)):
                g[key].add_metric(base, v)
            seeds_stream.add_metric([name], s.messages)
            for ci in consumers:
                lab = base + [ci.name]
                for key, v in (("jetstream_consumer_num_pending", ci.num_pending),
                               ("jetstream_consumer_num_ack_pending", ci.num_ack_pending),
                               ("jetstream_consumer_num_redelivered", ci.num_redelivered),
                               ("jetstream_consumer_num_waiting", ci.num_waiting),
                               ("jetstream_consumer_delivered_stream_seq", ci.delivered.stream_seq),
                               ("jetstream_consumer_ack_floor_stream_seq", ci.ack_floor.stream_seq)):
                    c[key].add_metric(lab, v)
                seeds_pending.add_metric([name, ci.name], ci.num_pending)
                ack_pending.add_metric([name, ci.name], ci.num_ack_pending)
                redelivered.add_metric([name, ci.name], ci.num_redelivered)
        yield from g.values()
        yield from c.values()
        yield from (seeds_stream, seeds_pending, ack_pending, redelivered)

    def _raft(self, st: ScrapeState):
        q = _gauge("raftbroker_proposals_queued", "commands waiting for the next entry", ["server_name"])
        q.add_metric([st.server_name], st.proposals_queued)
        yield q
        r = st.raft
        if r is None:
            return
        lab = ["server_name"]
        for name, doc, v in (("raftbroker_raft_term", "current Raft term", r["term"]),
                             ("raftbroker_raft_commit_index", "commit index", r["commit_index"]),
                             ("raftbroker_raft_applied_index", "applied index", r["applied_index"]),
                             ("raftbroker_raft_is_leader", "1 on the leader", 1 if r["role"] == "leader" else 0),
                             ("raftbroker_raft_log_entries", "entries in the Raft log since its last compaction",
                              r["log_len"])):
            g = _gauge(name, doc, lab)
            g.add_metric([st.server_name], v)
            yield g
        for name, doc in (("raftbroker_raft_leader_changes", "leader changes seen by this node"),
                          ("raftbroker_raft_elections", "elections this node started"),
                          ("raftbroker_raft_snapshots_taken", "snapshots this node wrote"),
                          ("raftbroker_raft_snapshots_installed", "snapshots this node installed from a leader")):
            key = name.removeprefix("raftbroker_raft_")
            cm = CounterMetricFamily(name, doc, labels=lab)
            cm.add_metric([st.server_name], r.get(key, 0))
            yield cm
        lag = _gauge("raftbroker_raft_peer_lag", "entries a peer is behind (on the leader)", ["server_name", "peer"])
        contact = _gauge("raftbroker_raft_peer_last_contact_seconds", "since the leader last heard from a peer",
                         ["server_name", "peer"])
        for m in r["members"]:
            if "lag" in m:
                lag.add_metric([st.server_name, m["name"]], m["lag"])
                if m.get("last_contact_s") is not None:
                    contact.add_metric([st.server_name, m["name"]], m["last_contact_s"])
        yield lag
        yield contact
