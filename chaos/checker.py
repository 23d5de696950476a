"""Judge a chaos run: read its history and the healed cluster's final state, say what went wrong.

Pure: no I/O, no clock. `check()` takes the `Op`s the workload recorded and the
`FinalState` read after healing and returns a `Verdict`. Every pass over the
history is a sort plus a sweep, so a history of a million ops is checked in
seconds.

What counts as an anomaly (each has a name in `ANOMALIES`):

Publishes, against ``final.stream``
- ``lost-prefix`` / ``lost-middle`` / ``lost-postfix``: an acknowledged value
  (some publish of it came back ok) is not in the final stream. The acked values
  are ordered by their acked seq (a value acked more than once, by a deduplicated
  retry, takes its lowest acked seq; an ok publish without a seq sorts last).
  Among them, a lost value is *prefix* if it comes before the first acked value
  that survived, *postfix* if it comes after the last one that survived, and
  *middle* if it lies between two survivors. If no acked value survived, every
  lost value is *prefix* (the stream lost everything from its start). Middle loss
  is the worst kind: the log kept later writes while dropping earlier ones, which
  no crash of the tail explains (Jepsen saw it in NATS after bit flips in `.blk`
  files). Postfix loss is what an ack before fsync looks like.
- ``duplicated``: one value stored at more than one seq (values are unique per
  run and a retry reuses its msg_id, so the stream must keep one copy).
- ``wrong-seq``: an ok publish whose value is stored, but not at the seq it was
  acknowledged with.
- ``unexpected``: a stored value no publish ever attempted.
- ``failed-present``: a stored value whose every attempt came back ``fail``
  ("definitely did not happen": the server refused before proposing).
- ``realtime-order``: publish A was acknowledged before publish B was invoked,
  both ok, yet B got the lower seq. Concurrent publishes may land either way.

Replicas
- ``divergent-digest``: after healing, nodes report different digests for a
  stream (or one node lacks a stream the others have).
- ``divergent-replica``: with ``final.node_streams``, two nodes hold different
  values at the same seq.

Consumers (each consumer named in ``final.consumers`` or in the history)
- ``delivery-mismatch``: a delivery of (seq, value) where the final stream holds
  another value at that seq, or nothing: a consumer saw a message the log later
  lost or rewrote.
- ``undelivered``: for a consumer the workload drained (``final.consumers[name]
  ["drained"]`` true), a stored message it never received.
- ``redelivered-after-ack``: a delivery of (consumer, seq) invoked after an
  `ack_sync` of that (consumer, seq) was confirmed ok. A redelivery after a
  failed or unknown ack is allowed. (Both delivery checks allow `deliver_slack_s`
  of flight time; see `check`.)
- ``delivered-count-decreased``: delivery X of (consumer, seq) completed before
  delivery Y was invoked, yet Y reports a smaller delivery count.
- ``consumer-state``: final counters that contradict the history (see
  `_check_consumer_state`).

Availability is reported in `Stats`, never as an anomaly: ok fractions of
publishes overall and inside the majority windows, fail/info counts, and per
fault how long after it ended the first ok publish completed.
"""
from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from chaos.history import FAIL, INFO, OK, FinalState, Op

LOST_PREFIX, LOST_MIDDLE, LOST_POSTFIX = "lost-prefix", "lost-middle", "lost-postfix"
DUPLICATED, WRONG_SEQ, UNEXPECTED, FAILED_PRESENT = "duplicated", "wrong-seq", "unexpected", "failed-present"
REALTIME_ORDER = "realtime-order"
DIVERGENT_DIGEST, DIVERGENT_REPLICA = "divergent-digest", "divergent-replica"
DELIVERY_MISMATCH, UNDELIVERED = "delivery-mismatch", "undelivered"
REDELIVERED_AFTER_ACK, DELIVERED_COUNT_DECREASED = "redelivered-after-ack", "delivered-count-decreased"
CONSUMER_STATE = "consumer-state"

ANOMALIES = (LOST_PREFIX, LOST_MIDDLE, LOST_POSTFIX, DUPLICATED, WRONG_SEQ, UNEXPECTED, FAILED_PRESENT,
             REALTIME_ORDER, DIVERGENT_DIGEST, DIVERGENT_REPLICA, DELIVERY_MISMATCH, UNDELIVERED,
             REDELIVERED_AFTER_ACK, DELIVERED_COUNT_DECREASED, CONSUMER_STATE)
LOST = (LOST_PREFIX, LOST_MIDDLE, LOST_POSTFIX)

MAX_EXAMPLES = 5            # per anomaly; the counts stay exact


@dataclass
class Recovery:
    """How long publishing took to come back after one fault window ended."""
    fault: str                          # the fault's name (the op's value)
    node: Optional[str]
    start_s: float
    end_s: Optional[float]              # None: the fault was never lifted in the history
    recovery_s: Optional[float]         # None: no publish succeeded after it ended


@dataclass
class Stats:
    publishes: int = 0
    publish_ok: int = 0
    publish_fail: int = 0
    publish_info: int = 0
    ok_fraction: Optional[float] = None             # publish_ok / publishes
    majority_publishes: int = 0                     # publishes invoked and answered inside one majority window
    majority_ok: int = 0
    majority_ok_fraction: Optional[float] = None    # None when no windows were given or none fit
    acked_values: int = 0                           # distinct values with an ok publish
    stored: int = 0                                 # messages in final.stream
    deliveries: int = 0
    acks: int = 0
    ack_ok: int = 0
    ack_fail: int = 0
    ack_info: int = 0
    recoveries: list[Recovery] = field(default_factory=list)


@dataclass
class Verdict:
    ok: bool
    counts: dict[str, int]                          # every name in ANOMALIES, 0 when absent
    examples: dict[str, list[dict[str, Any]]]       # up to MAX_EXAMPLES per anomaly
    stats: Stats

    @property
    def lost(self) -> int:
        return sum(self.counts[k] for k in LOST)

    def summary(self) -> str:
        """First line: PASS or FAIL and the anomaly counts; then stats; then examples."""
        if self.ok:
            lines = ["PASS 0 anomalies"]
        else:
            parts = []
            if self.lost:
                parts.append(f"lost={self.lost} (prefix={self.counts[LOST_PREFIX]} "
                             f"middle={self.counts[LOST_MIDDLE]} postfix={self.counts[LOST_POSTFIX]})")
            parts += [f"{k}={self.counts[k]}" for k in ANOMALIES if k not in LOST and self.counts[k]]
            lines = ["FAIL " + " ".join(parts)]
        s = self.stats
        line = (f"publishes {s.publishes}: ok {s.publish_ok}, fail {s.publish_fail}, info {s.publish_info}"
                f" (ok {_pct(s.ok_fraction)})")
        if s.majority_ok_fraction is not None:
            line += f"; inside majority windows {s.majority_publishes}: ok {_pct(s.majority_ok_fraction)}"
        lines.append(line)
        lines.append(f"acked values {s.acked_values}, stored {s.stored}, deliveries {s.deliveries}, "
                     f"acks {s.acks} (ok {s.ack_ok}, fail {s.ack_fail}, info {s.ack_info})")
        for r in s.recoveries:
            end = "never lifted" if r.end_s is None else f"{r.end_s:.3f}s"
            rec = "no ok publish after it" if r.recovery_s is None else f"recovered in {r.recovery_s:.3f}s"
            lines.append(f"fault {r.fault} on {r.node}: {r.start_s:.3f}s..{end}, {rec}")
        for k in ANOMALIES:
            for ex in self.examples[k]:
                lines.append(f"  {k}: " + " ".join(f"{a}={b!r}" for a, b in ex.items()))
        return "\n".join(lines)


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


class _Found:
    """Counts and a few examples per anomaly."""

    def __init__(self, kinds: Iterable[str] = ANOMALIES) -> None:
        self.counts = {k: 0 for k in kinds}
        self.examples: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}

    def add(self, kind: str, **example: Any) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < MAX_EXAMPLES:
            self.examples[kind].append(example)


def _end(op: Op) -> float:
    # An op that never completed is concurrent with everything after its invoke.
    return math.inf if op.complete is None else op.complete


def check(ops: list[Op], final: FinalState,
          majority_windows: Optional[list[tuple[float, float]]] = None,
          deliver_slack_s: float = 0.0) -> Verdict:
    """Check a history against the final state; see the module docstring for the anomalies.

    `deliver_slack_s` is how long a delivery may be in flight before its `deliver`
    op's invoke: a push message (or a fetch whose op records the arrival time rather
    than the fetch's invoke) may have left the server before an ack was confirmed or
    before an earlier-looking delivery. The two delivery checks then need a gap of
    more than that between the events they order.
    """
    found = _Found()
    publishes = [o for o in ops if o.kind == "publish"]
    delivers = [o for o in ops if o.kind == "deliver"]
    acks = [o for o in ops if o.kind == "ack"]

    stored_at: dict[str, list[int]] = defaultdict(list)     # value -> seqs holding it
    for seq, value in final.stream:
        stored_at[value].append(seq)
    by_seq = dict(final.stream)

    _check_publishes(publishes, final, stored_at, found)
    _check_realtime_order(publishes, found)
    _check_divergence(final, found)
    _check_consumers(delivers, acks, final, by_seq, deliver_slack_s, found)

    stats = _stats(ops, publishes, delivers, acks, final, majority_windows)
    return Verdict(ok=not any(found.counts.values()), counts=found.counts, examples=found.examples, stats=stats)


# -- publishes ---------------------------------------------------------------------
def _check_publishes(publishes: list[Op], final: FinalState, stored_at: dict[str, list[int]], found: _Found) -> None:
    outcomes: dict[str, set[str]] = defaultdict(set)
    acked_seq: dict[str, float] = {}                        # value -> lowest acked seq (inf: none given)
    for p in publishes:
        if p.value is None:
            continue
        outcomes[p.value].add(p.outcome)
        if p.outcome == OK:
            s = math.inf if p.seq is None else p.seq
            acked_seq[p.value] = min(acked_seq.get(p.value, math.inf), s)

    # Lost, classified by position among the acked values in acked-seq order.
    order = sorted(acked_seq, key=lambda v: (acked_seq[v], v))
    survived = [i for i, v in enumerate(order) if v in stored_at]
    first = survived[0] if survived else len(order)
    last = survived[-1] if survived else len(order)
    for i, v in enumerate(order):
        if v in stored_at:
            continue
        kind = LOST_PREFIX if i < first else LOST_POSTFIX if i > last else LOST_MIDDLE
        s = acked_seq[v]
        found.add(kind, value=v, acked_seq=None if s == math.inf else int(s))

    for p in publishes:
        if p.outcome == OK and p.seq is not None and p.value in stored_at and p.seq not in stored_at[p.value]:
            found.add(WRONG_SEQ, value=p.value, acked_seq=p.seq, stored_at=stored_at[p.value], process=p.process)

    for value, seqs in stored_at.items():
        if len(seqs) > 1:
            found.add(DUPLICATED, value=value, seqs=seqs)
        if value not in outcomes:
            found.add(UNEXPECTED, value=value, seqs=seqs)
        elif outcomes[value] == {FAIL}:
            found.add(FAILED_PRESENT, value=value, seqs=seqs)


def _check_realtime_order(publishes: list[Op], found: _Found) -> None:
    """If A completed ok before B was invoked (and B is ok), A.seq < B.seq.

    Sweep B in invoke order, folding in every A that completed strictly before
    B's invoke and keeping the highest seq among them: one sort each, O(n log n).
    Equal seqs are left alone: that is a deduplicated retry of the same value, and
    two different values on one seq are already `wrong-seq`.
    """
    acked = [p for p in publishes if p.outcome == OK and p.seq is not None]
    by_invoke = sorted(acked, key=lambda p: p.invoke)
    by_complete = sorted(acked, key=_end)
    j = 0
    top: Optional[Op] = None            # the completed op with the highest seq so far
    for b in by_invoke:
        while j < len(by_complete) and _end(by_complete[j]) < b.invoke:
            a = by_complete[j]
            if top is None or a.seq > top.seq:
                top = a
            j += 1
        if top is not None and top.seq > b.seq:
            found.add(REALTIME_ORDER, earlier_value=top.value, earlier_seq=top.seq, earlier_complete=top.complete,
                      later_value=b.value, later_seq=b.seq, later_invoke=b.invoke)


# -- replicas ------------------------------------------------------------------------
def _streams_map(digest: dict) -> dict:
    # Accept a node's whole /digest body as well as its "streams" map: applied_index
    # legitimately differs between nodes read a moment apart, so it is not compared.
    s = digest.get("streams")
    return s if isinstance(s, dict) else digest


def _check_divergence(final: FinalState, found: _Found) -> None:
    maps = {node: _streams_map(d) for node, d in final.digests.items()}
    names = sorted({name for m in maps.values() for name in m})
    for name in names:
        per_node = {node: m.get(name) for node, m in sorted(maps.items())}
        if len(set(per_node.values())) > 1:
            found.add(DIVERGENT_DIGEST, stream=name, digests=per_node)

    held: dict[int, dict[str, str]] = defaultdict(dict)     # seq -> node -> value
    for node, msgs in final.node_streams.items():
        for seq, value in msgs:
            held[seq][node] = value
    for seq in sorted(held):
        if len(set(held[seq].values())) > 1:
            found.add(DIVERGENT_REPLICA, seq=seq, values=dict(sorted(held[seq].items())))


# -- consumers -----------------------------------------------------------------------
def _check_consumers(delivers: list[Op], acks: list[Op], final: FinalState, by_seq: dict[int, str],
                     slack_s: float, found: _Found) -> None:
    names = sorted(set(final.consumers) | {o.consumer for o in delivers + acks if o.consumer is not None})
    delivered: dict[str, set[int]] = defaultdict(set)
    confirmed: dict[tuple[str, int], float] = {}            # (consumer, seq) -> first confirmed ack's complete
    for a in acks:
        if a.outcome == OK and a.seq is not None and a.consumer is not None:
            key = (a.consumer, a.seq)
            confirmed[key] = min(confirmed.get(key, math.inf), _end(a))
    per_key: dict[tuple[str, int], list[Op]] = defaultdict(list)

    for d in delivers:
        if d.consumer is None or d.seq is None:
            continue
        delivered[d.consumer].add(d.seq)
        per_key[(d.consumer, d.seq)].append(d)
        if d.value is not None and by_seq.get(d.seq) != d.value:
            found.add(DELIVERY_MISMATCH, consumer=d.consumer, seq=d.seq, delivered_value=d.value,
                      stored_value=by_seq.get(d.seq), invoke=d.invoke)
        acked_at = confirmed.get((d.consumer, d.seq))
        if acked_at is not None and d.invoke - slack_s > acked_at:
            found.add(REDELIVERED_AFTER_ACK, consumer=d.consumer, seq=d.seq, ack_complete=acked_at,
                      deliver_invoke=d.invoke, delivered=d.delivered)

    for (name, seq), ds in per_key.items():
        _check_delivered_counts(name, seq, ds, slack_s, found)

    for name in names:
        info = final.consumers.get(name, {})
        if info.get("drained"):
            for seq in sorted(by_seq):
                if seq not in delivered[name]:
                    found.add(UNDELIVERED, consumer=name, seq=seq, value=by_seq[seq])
        _check_consumer_state(name, info, by_seq, {s for (c, s) in confirmed if c == name}, found)


def _check_delivered_counts(name: str, seq: int, ds: list[Op], slack_s: float, found: _Found) -> None:
    """A delivery invoked after another completed must not report a smaller count."""
    ds = [d for d in ds if d.delivered is not None]
    by_complete = sorted(ds, key=_end)
    j = 0
    top: Optional[Op] = None
    for y in sorted(ds, key=lambda d: d.invoke):
        while j < len(by_complete) and _end(by_complete[j]) < y.invoke - slack_s:
            if top is None or by_complete[j].delivered > top.delivered:
                top = by_complete[j]
            j += 1
        if top is not None and y.delivered < top.delivered:
            found.add(DELIVERED_COUNT_DECREASED, consumer=name, seq=seq, earlier=top.delivered,
                      earlier_complete=top.complete, later=y.delivered, later_invoke=y.invoke)


def _floor_seq(v: Any) -> Optional[int]:
    """ack_floor as the final state may carry it: a stream seq, ConsumerInfo's dict, or its object."""
    if v is None or isinstance(v, int):
        return v
    if isinstance(v, dict):
        return v.get("stream_seq")
    return getattr(v, "stream_seq", None)


def _check_consumer_state(name: str, info: dict, by_seq: dict[int, str], acked: set[int], found: _Found) -> None:
    """Final counters against what the history decides.

    Always (for counters present): ack_floor <= the last stream seq; num_ack_pending
    <= the stored messages without a confirmed ack (a confirmed ack must stick); and
    ack_floor >= the longest run of stored seqs, from the first, that all have
    confirmed acks. When drained: num_pending == 0. When drained and every stored
    message has a confirmed ack: num_ack_pending == 0 and ack_floor == last seq.
    """
    pending, ack_pending, floor = info.get("num_pending"), info.get("num_ack_pending"), _floor_seq(info.get("ack_floor"))
    seqs = sorted(by_seq)
    last = seqs[-1] if seqs else 0
    unconfirmed = [s for s in seqs if s not in acked]
    prefix = (unconfirmed[0] if unconfirmed else last + 1) - 1   # stored seqs <= prefix are all acked
    prefix = max((s for s in seqs if s <= prefix), default=None)

    def bad(rule: str, **got: Any) -> None:
        found.add(CONSUMER_STATE, consumer=name, rule=rule, **got)

    if floor is not None and floor > last:
        bad("ack_floor <= last stream seq", ack_floor=floor, last_seq=last)
    if floor is not None and prefix is not None and floor < prefix:
        bad("ack_floor >= confirmed-ack prefix", ack_floor=floor, confirmed_prefix=prefix)
    if ack_pending is not None and ack_pending > len(unconfirmed):
        bad("num_ack_pending <= stored messages without a confirmed ack",
            num_ack_pending=ack_pending, unconfirmed=len(unconfirmed))
    if not info.get("drained"):
        return
    if pending is not None and pending != 0:
        bad("drained: num_pending == 0", num_pending=pending)
    if not unconfirmed:
        if ack_pending is not None and ack_pending != 0:
            bad("all acked: num_ack_pending == 0", num_ack_pending=ack_pending)
        if floor is not None and floor != last:
            bad("all acked: ack_floor == last stream seq", ack_floor=floor, last_seq=last)


# -- availability ----------------------------------------------------------------------
def _inside(op: Op, windows: Iterable[tuple[float, float]]) -> bool:
    # Invoked and answered inside one window; an op that never returned counts
    # by its invoke alone (it hung while a majority was there: unavailability).
    return any(lo <= op.invoke <= hi and (op.complete is None or op.complete <= hi) for lo, hi in windows)


def _stats(ops: list[Op], publishes: list[Op], delivers: list[Op], acks: list[Op], final: FinalState,
           majority_windows: Optional[list[tuple[float, float]]]) -> Stats:
    s = Stats(publishes=len(publishes), deliveries=len(delivers), acks=len(acks), stored=len(final.stream))
    s.publish_ok = sum(p.outcome == OK for p in publishes)
    s.publish_fail = sum(p.outcome == FAIL for p in publishes)
    s.publish_info = sum(p.outcome == INFO for p in publishes)
    s.ok_fraction = s.publish_ok / s.publishes if s.publishes else None
    s.acked_values = len({p.value for p in publishes if p.outcome == OK and p.value is not None})
    s.ack_ok = sum(a.outcome == OK for a in acks)
    s.ack_fail = sum(a.outcome == FAIL for a in acks)
    s.ack_info = sum(a.outcome == INFO for a in acks)
    if majority_windows:
        windows = sorted(majority_windows)
        inside = [p for p in publishes if _inside(p, windows)]
        s.majority_publishes = len(inside)
        s.majority_ok = sum(p.outcome == OK for p in inside)
        s.majority_ok_fraction = s.majority_ok / len(inside) if inside else None

    ok_completes = sorted(p.complete for p in publishes if p.outcome == OK and p.complete is not None)
    for f in sorted((o for o in ops if o.kind == "fault"), key=lambda o: o.invoke):
        rec = None
        if f.complete is not None:
            i = bisect.bisect_right(ok_completes, f.complete)
            if i < len(ok_completes):
                rec = ok_completes[i] - f.complete
        s.recoveries.append(Recovery(fault=f.value or "?", node=f.node, start_s=f.invoke, end_s=f.complete,
                                     recovery_s=rec))
    return s


# -- mirrors ------------------------------------------------------------------------------
MIRROR_LOST, MIRROR_DUPLICATED, MIRROR_MISNUMBERED = "lost", "duplicated", "misnumbered"
MIRROR_ALTERED, MIRROR_UNEXPECTED = "altered", "unexpected"
MIRROR_ANOMALIES = (MIRROR_LOST, MIRROR_DUPLICATED, MIRROR_MISNUMBERED, MIRROR_ALTERED, MIRROR_UNEXPECTED)


@dataclass(frozen=True)
class StoredMsg:
    """One message as a full read of a stream returns it. Everything but `seq` is the
    message's content, which a mirror must copy unchanged."""
    seq: int
    subject: str
    headers: tuple = ()             # sorted (name, value) pairs: hashable and order-free
    data: bytes = b""
    time: str = ""

    @property
    def content(self) -> tuple:
        return (self.subject, self.headers, self.data, self.time)


@dataclass
class MirrorVerdict:
    origin: int                                     # messages read from the origin
    mirror: int                                     # messages read from the mirror
    counts: dict[str, int]                          # every name in MIRROR_ANOMALIES
    examples: dict[str, list[dict[str, Any]]]
    label: str = "mirror"                           # which mirror of the run

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def line(self) -> str:
        return (f"{self.label}: origin {self.origin} messages, mirror {self.mirror}; "
                + " ".join(f"{k}={self.counts[k]}" for k in MIRROR_ANOMALIES))


def check_mirror(origin: list[StoredMsg], mirror: list[StoredMsg], label: str = "mirror") -> MirrorVerdict:
    """The mirror must equal the origin exactly. Per origin message: the same content at
    the same seq is right; the content at other seqs only is *misnumbered*; the content
    nowhere, while the mirror holds something else at that seq, is *altered* (a header,
    the data, the subject or the time changed); nothing at all is *lost*. In the mirror:
    every extra copy of one content is *duplicated*; content the origin never had, at a
    seq the origin does not hold, is *unexpected*. Origin contents are unique here (each
    carries its own msg id), so content identifies a message."""
    found = _Found(MIRROR_ANOMALIES)
    at_seq = {m.seq: m for m in mirror}
    seqs_of: dict[tuple, list[int]] = defaultdict(list)
    for m in mirror:
        seqs_of[m.content].append(m.seq)
    for o in origin:
        seqs = seqs_of.get(o.content, [])
        if o.seq in seqs:
            continue
        if seqs:
            found.add(MIRROR_MISNUMBERED, origin_seq=o.seq, mirror_seqs=seqs, subject=o.subject)
        elif o.seq in at_seq:
            found.add(MIRROR_ALTERED, seq=o.seq, origin=o.content, mirror=at_seq[o.seq].content)
        else:
            found.add(MIRROR_LOST, seq=o.seq, subject=o.subject, data=o.data[:60])
    for content, seqs in seqs_of.items():
        for _ in seqs[1:]:
            found.add(MIRROR_DUPLICATED, seqs=seqs, data=content[2][:60])
    origin_contents = {o.content for o in origin}
    origin_seqs = {o.seq for o in origin}
    for m in mirror:
        if m.content not in origin_contents and m.seq not in origin_seqs:
            found.add(MIRROR_UNEXPECTED, seq=m.seq, subject=m.subject, data=m.data[:60])
    return MirrorVerdict(len(origin), len(mirror), found.counts, found.examples, label)
