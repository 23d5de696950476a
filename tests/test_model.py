"""Model-based test of the storage engine.

A hypothesis state machine runs random sequences of commands against the real
Store and against a small in-memory model written here from JetStream's
semantics (limits retention, one stream, explicit-ack pull consumers), and
after every step checks that the two agree on the stream state, the stored
messages, every consumer's info and everything NextMsgs hands out.

The model is deliberately naive: messages are a dict seq -> message, a
consumer is a cursor plus a dict of pending deliveries, and every counter is
recomputed by brute force.
"""
from __future__ import annotations

import shutil
import tempfile
import unittest
from dataclasses import dataclass
from typing import Optional

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from storage import (
    ACK, NAK, PROGRESS, TERM, Ack, AddConsumer, AddStream, ConsumerConfig, DeleteMsg, Entry, JSError, NextMsgs,
    Publish, PurgeStream, Store, StoreOptions, StreamConfig, Sweep, UpdateStream,
)
from jetstream.errors import ConsumerNotFoundError, NoMessageFoundError, SequenceNotFoundError

S = 10**9
T0 = 1_700_000_000 * S
STREAM = "S"
SUBJECTS = ["m.a", "m.b", "m.c"]
MSG_IDS = ["id-1", "id-2", "id-3"]
ACK_WAIT_S = 30
MAX_DELIVER = 3
DUP_WINDOW_S = 120
# name -> filter; c_all and c_a exist from the start, c_b may be added later.
CONSUMERS = {"c_all": None, "c_a": "m.a", "c_b": "m.b"}


def wire_size(subject: str, headers: Optional[dict], data: bytes, storage: str) -> int:
    # JetStream's stored size: subject + headers in NATS wire form
    # ("NATS/1.0\r\n" + "K: V\r\n"... + "\r\n") + payload, plus memStoreMsgSize's 16
    # (seq and timestamp) or fileStoreMsgSize's 30 (+4 with headers).
    hdr = 0
    if headers:
        hdr = len("NATS/1.0\r\n") + sum(len(f"{k}: {v}\r\n") for k, v in headers.items()) + len("\r\n")
    if storage == "memory":
        return len(subject) + hdr + len(data) + 16
    return len(subject) + (hdr + 4 if hdr else 0) + len(data) + 30


@dataclass
class MMsg:
    subject: str
    headers: Optional[dict]
    data: bytes
    ts: int



class MConsumer:
    def __init__(self, name: str, filt: Optional[str], cursor: int):
        self.name = name
        self.filter = filt
        self.cursor = cursor      # highest stream seq handed out for the first time (or skipped past)
        self.dseq = 0             # consumer sequence: every delivery, redeliveries included
        self.pending: dict[int, list] = {}   # stream seq -> [consumer_seq, deliveries, deadline_ns]

    def matches(self, subject: str) -> bool:
        return self.filter is None or self.filter == subject


class Model:
    def __init__(self, storage: str):
        self.storage = storage
        self.msgs: dict[int, MMsg] = {}
        self.last_seq = 0
        self.last_ts = 0
        self.empty_first = 0        # first_seq while empty: 0 for a fresh stream, else last_seq + 1
        self.dedup: dict[str, tuple[int, int]] = {}
        self.max_msgs = -1
        self.max_bytes = -1
        self.max_per_subject = -1
        self.max_age = 0           # seconds; 0 = unlimited
        self.consumers: dict[str, MConsumer] = {}

    # -- derived state, by brute force ------------------------------------------------
    @property
    def first_seq(self) -> int:
        return min(self.msgs) if self.msgs else self.empty_first

    @property
    def bytes(self) -> int:
        return sum(wire_size(m.subject, m.headers, m.data, self.storage) for m in self.msgs.values())

    def subject_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.msgs.values():
            out[m.subject] = out.get(m.subject, 0) + 1
        return out

    def num_pending(self, c: MConsumer, after: Optional[int] = None) -> int:
        after = c.cursor if after is None else after
        return sum(1 for s, m in self.msgs.items() if s > after and c.matches(m.subject))

    # -- removal -----------------------------------------------------------------------
    def remove(self, seq: int) -> None:
        del self.msgs[seq]
        for c in self.consumers.values():
            c.pending.pop(seq, None)   # a removed message can no longer be acked or redelivered
        if not self.msgs:
            self.empty_first = self.last_seq + 1

    def enforce_msgs_bytes(self) -> None:
        while self.max_msgs > 0 and len(self.msgs) > self.max_msgs:
            self.remove(min(self.msgs))
        while self.max_bytes > 0 and self.bytes > self.max_bytes:
            self.remove(min(self.msgs))

    def enforce_per_subject(self, subject: str) -> None:
        if self.max_per_subject <= 0:
            return
        while True:
            seqs = sorted(s for s, m in self.msgs.items() if m.subject == subject)
            if len(seqs) <= self.max_per_subject:
                return
            self.remove(seqs[0])

    # -- commands ----------------------------------------------------------------------
    def publish(self, subject: str, data: bytes, msg_id: Optional[str], now: int) -> tuple[int, bool]:
        if msg_id is not None:
            hit = self.dedup.get(msg_id)
            if hit is not None and now - hit[1] < DUP_WINDOW_S * S:
                return hit[0], True
        seq = self.last_seq + 1
        self.last_seq = seq
        self.last_ts = now
        self.msgs[seq] = MMsg(subject, {"Nats-Msg-Id": msg_id} if msg_id else None, data, now)
        # JetStream's order on store: per-subject limit, then max_msgs, then max_bytes.
        self.enforce_per_subject(subject)
        self.enforce_msgs_bytes()
        self.expire(now)
        if msg_id is not None:
            self.dedup[msg_id] = (seq, now)
        return seq, False

    def expire(self, now: int) -> None:
        # max_age: messages stored at or before now - max_age are gone. Expiry is
        # time-driven (JetStream's timer = our Sweep), and also runs after a store.
        if self.max_age:
            for seq in sorted(s for s, m in self.msgs.items() if m.ts <= now - self.max_age * S):
                self.remove(seq)

    def update_limits(self, max_msgs: int, max_bytes: int, max_per_subject: int, max_age: int) -> None:
        self.max_msgs, self.max_bytes, self.max_per_subject = max_msgs, max_bytes, max_per_subject
        self.max_age = max_age
        # JetStream's UpdateConfig order: max_msgs, max_bytes, then per subject.
        self.enforce_msgs_bytes()
        for subject in sorted(self.subject_counts()):
            self.enforce_per_subject(subject)

    def purge(self, filt: Optional[str], seq: Optional[int], keep: Optional[int]) -> int:
        if filt is None and not seq and not keep:
            n = len(self.msgs)
            self.msgs.clear()
            self.empty_first = self.last_seq + 1
            for c in self.consumers.values():
                # A full purge moves every consumer past the end of the stream.
                c.cursor = max(c.cursor, self.last_seq)
                c.pending.clear()
            return n
        matching = sorted(s for s, m in self.msgs.items() if filt is None or filt == m.subject
                          or (filt == "m.*"))
        if keep:
            victims = matching[:-keep] if keep < len(matching) else []
        elif seq:
            victims = [s for s in matching if s < seq]
        else:
            victims = matching
        for s in victims:
            self.remove(s)
        return len(victims)

    def expire_deliveries(self, c: MConsumer, now: int, events: set) -> None:
        # Limits retention: a delivery that used up max_deliver and timed out is
        # dropped (announced once by a max_deliveries event).
        for seq, p in list(c.pending.items()):
            if p[1] >= MAX_DELIVER and p[2] <= now:
                events.add(("max_deliveries", c.name, seq, p[1]))
                del c.pending[seq]

    def next_msgs(self, c: MConsumer, batch: int, now: int, events: set) -> list[tuple]:
        self.expire_deliveries(c, now, events)
        out = []
        due = sorted(s for s, p in c.pending.items() if p[2] <= now)
        for seq in due[:batch]:
            p = c.pending[seq]
            c.dseq += 1
            p[:] = [c.dseq, p[1] + 1, now + ACK_WAIT_S * S]
            m = self.msgs[seq]
            out.append((seq, c.dseq, p[1], self.num_pending(c), m.subject, m.data))
        for seq in sorted(self.msgs):
            if len(out) >= batch:
                break
            m = self.msgs[seq]
            if seq <= c.cursor or not c.matches(m.subject):
                continue
            c.dseq += 1
            c.cursor = seq
            c.pending[seq] = [c.dseq, 1, now + ACK_WAIT_S * S]
            out.append((seq, c.dseq, 1, self.num_pending(c), m.subject, m.data))
        return out


def events_of(result, kinds=("max_deliveries", "terminated")) -> set:
    return {(e.kind, e.consumer, e.stream_seq, e.deliveries) for e in result.events if e.kind in kinds}


class StoreMachine(RuleBasedStateMachine):
    storage = "file"

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="raftbroker-model-")
        self.opts = StoreOptions(sync=False, verify_on_open=False)
        self.store = Store.open(self.dir, self.opts)
        self.index = self.store.applied_index
        self.now = T0
        self.journal: list[Entry] = []
        self.model = Model(self.storage)
        r = self.apply1(AddStream(self.stream_config()))
        assert not isinstance(r, JSError), r
        for name in ("c_all", "c_a"):
            self._add_consumer(name)

    def teardown(self):
        try:
            self.store.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- plumbing ------------------------------------------------------------------------
    def stream_config(self) -> StreamConfig:
        m = self.model
        return StreamConfig(name=STREAM, subjects=["m.*"], storage=self.storage, max_msgs=m.max_msgs,
                            max_bytes=m.max_bytes, max_msgs_per_subject=m.max_per_subject, discard="old",
                            max_age=float(m.max_age),
                            duplicate_window=float(DUP_WINDOW_S))

    def apply(self, *cmds):
        self.index += 1
        entry = Entry(self.index, self.now, list(cmds))
        self.journal.append(entry)
        return self.store.apply(entry)

    def apply1(self, cmd):
        (r,) = self.apply(cmd).results
        return r

    def _add_consumer(self, name: str, policy: str = "all") -> None:
        filt = CONSUMERS[name]
        cfg = ConsumerConfig(durable_name=name, filter_subject=filt, ack_policy="explicit",
                             ack_wait=float(ACK_WAIT_S), max_deliver=MAX_DELIVER, deliver_policy=policy)
        r = self.apply1(AddConsumer(STREAM, cfg, action="create"))
        assert not isinstance(r, JSError), r
        m = self.model
        if policy == "all":      # start before the first stored message
            cursor = max(m.first_seq - 1, 0)
        elif policy == "new":    # only what is stored from now on
            cursor = m.last_seq
        else:                    # last: the newest matching message, if any
            last = [s for s, x in m.msgs.items() if filt is None or x.subject == filt]
            cursor = max(last) - 1 if last else m.last_seq
        m.consumers[name] = MConsumer(name, filt, cursor)

    # -- rules ------------------------------------------------------------------------------
    @initialize(msgs=st.lists(st.tuples(st.sampled_from(SUBJECTS), st.binary(max_size=24),
                                        st.one_of(st.none(), st.sampled_from(MSG_IDS))), max_size=8))
    def prefill(self, msgs):
        self.publish(msgs)

    @rule(msgs=st.lists(st.tuples(st.sampled_from(SUBJECTS), st.binary(max_size=24),
                                  st.one_of(st.none(), st.none(), st.sampled_from(MSG_IDS))),
                        min_size=1, max_size=4))
    def publish(self, msgs):
        # A few publishes per step (one entry each), so streams get some length.
        for subject, data, msg_id in msgs:
            headers = {"Nats-Msg-Id": msg_id} if msg_id else None
            r = self.apply1(Publish(subject, data, headers))
            seq, dup = self.model.publish(subject, data, msg_id, self.now)
            assert not isinstance(r, JSError), r
            assert (r.seq, bool(r.duplicate)) == (seq, dup), (r, seq, dup)

    @rule(name=st.sampled_from(list(CONSUMERS)), kind=st.sampled_from([ACK, NAK, NAK, TERM, PROGRESS]),
          delay=st.sampled_from([0, 0, 5, 45]), pick=st.integers(0, 1000), stray=st.booleans())
    def ack(self, name, kind, delay, pick, stray):
        c = self.model.consumers.get(name)
        pend = sorted(c.pending) if c else []
        seq = pend[pick % len(pend)] if pend and not stray else pick % (self.model.last_seq + 2)
        res = self.apply(Ack(STREAM, name, seq, kind, delay=float(delay) if kind == NAK else 0.0))
        (r,) = res.results
        if c is None:
            assert isinstance(r, ConsumerNotFoundError), r
            return
        assert not isinstance(r, JSError), r
        p = c.pending.get(seq)
        assert r.applied == (p is not None), (kind, seq, r)
        events = set()
        if p is not None:
            if kind == ACK:
                del c.pending[seq]
            elif kind == TERM:
                events.add(("terminated", name, seq, p[1]))
                del c.pending[seq]
            elif kind == NAK:
                p[2] = self.now + delay * S
            elif kind == PROGRESS:
                p[2] = self.now + ACK_WAIT_S * S
        assert events_of(res) == events

    @rule(name=st.sampled_from(list(CONSUMERS)), batch=st.integers(1, 5))
    def next_msgs(self, name, batch):
        self._next_msgs(name, batch)

    @rule(name=st.sampled_from(["c_all", "c_a"]), batch=st.integers(1, 5),
          advance=st.sampled_from([0, 0, 10, 31]))
    def next_msgs_later(self, name, batch, advance):
        # Deliveries (and redeliveries after ack_wait) are what most consumer state
        # depends on: give them more weight.
        self.now += advance * S
        self._next_msgs(name, batch)

    def _next_msgs(self, name, batch):
        res = self.apply(NextMsgs(STREAM, name, batch))
        (r,) = res.results
        c = self.model.consumers.get(name)
        if c is None:
            assert isinstance(r, ConsumerNotFoundError), r
            return
        assert not isinstance(r, JSError), r
        events = set()
        want = self.model.next_msgs(c, batch, self.now, events)
        got = [(d.stream_seq, d.consumer_seq, d.num_delivered, d.num_pending, d.subject, d.data) for d in r]
        assert got == want
        assert events_of(res) == events

    @rule()
    def sweep(self):
        res = self.apply(Sweep())
        events = set()
        self.model.expire(self.now)   # messages first, then deliveries
        for c in self.model.consumers.values():
            self.model.expire_deliveries(c, self.now, events)
        assert res.results == [0]
        assert events_of(res) == events

    @rule(seconds=st.sampled_from([0, 1, 5, 15, 29, 30, 31, 40]))
    def time_passes(self, seconds):
        self.now += seconds * S

    @rule(mode=st.sampled_from(["all", "filter", "keep", "filter_keep", "seq", "filter_seq", "wild"]),
          subject=st.sampled_from(SUBJECTS), n=st.integers(1, 3), pick=st.integers(0, 1000))
    def purge(self, mode, subject, n, pick):
        filt = subject if mode.startswith("filter") else ("m.*" if mode == "wild" else None)
        keep = n if mode.endswith("keep") else None
        seq = (pick % (self.model.last_seq + 2)) if mode.endswith("seq") else None
        r = self.apply1(PurgeStream(STREAM, filter=filt, seq=seq, keep=keep))
        purged = self.model.purge(filt, seq, keep)
        assert not isinstance(r, JSError), r
        assert (r.success, r.purged) == (True, purged)

    @rule(pick=st.integers(0, 1000))
    def delete_msg(self, pick):
        seq = pick % (self.model.last_seq + 2)
        r = self.apply1(DeleteMsg(STREAM, seq))
        if seq in self.model.msgs:
            assert r is True, r
            self.model.remove(seq)
        else:
            assert isinstance(r, SequenceNotFoundError), r

    @rule(max_msgs=st.sampled_from([-1, -1, 2, 4, 8]), max_bytes=st.sampled_from([-1, -1, 150, 300, 600]),
          max_per_subject=st.sampled_from([-1, -1, 1, 2, 3]), max_age=st.sampled_from([0, 0, 120, 200]))
    def update_limits(self, max_msgs, max_bytes, max_per_subject, max_age):
        self.model.update_limits(max_msgs, max_bytes, max_per_subject, max_age)
        r = self.apply1(UpdateStream(self.stream_config()))
        assert not isinstance(r, JSError), r

    @precondition(lambda self: "c_b" not in self.model.consumers)
    @rule(policy=st.sampled_from(["all", "new", "last"]))
    def add_consumer(self, policy):
        self._add_consumer("c_b", policy)

    @precondition(lambda self: self.storage == "file")
    @rule()
    def reopen(self):
        # File streams persist exactly: a reopened store has the same state.
        self.store.close()
        self.store = Store.open(self.dir, self.opts)
        assert self.store.applied_index == self.index
        # An entry it already holds is not applied to file streams again (the
        # invariant checks nothing changed).
        self.store.apply(self.journal[-1])

    @precondition(lambda self: self.storage == "memory")
    @rule()
    def reopen_and_replay(self):
        # Memory streams are gone after a restart; re-applying the journal (as
        # the Raft layer does) must rebuild exactly the same state.
        self.store.close()
        self.store = Store.open(self.dir, self.opts)
        assert self.store.memory_applied_index == 0
        for entry in self.journal:
            self.store.apply(entry)
        assert self.store.memory_applied_index == self.index

    # -- the comparison, after every step --------------------------------------------------
    @invariant()
    def agrees(self):
        m = self.model
        state = self.store.stream_info(STREAM).state
        first_ts = m.msgs[min(m.msgs)].ts if m.msgs else 0
        num_deleted = (m.last_seq - m.first_seq + 1 - len(m.msgs)) if m.msgs else 0
        assert (state.messages, state.bytes, state.first_seq, state.last_seq, state.num_subjects,
                state.num_deleted, state.first_ts, state.last_ts, state.consumer_count) == \
            (len(m.msgs), m.bytes, m.first_seq, m.last_seq, len(m.subject_counts()), num_deleted, first_ts,
             m.last_ts, len(m.consumers))
        # The messages themselves, seq by seq (including below first_seq: nothing stray).
        stored = {}
        for seq in range(1, m.last_seq + 2):
            try:
                g = self.store.get_msg(STREAM, seq=seq)
            except NoMessageFoundError:
                continue
            stored[seq] = (g.subject, g.headers, g.data, g.time)
        assert stored == {s: (x.subject, x.headers, x.data, x.ts) for s, x in m.msgs.items()}
        assert self.store.stream_subjects(STREAM) == m.subject_counts()
        assert self.store.consumer_names(STREAM) == sorted(m.consumers)
        for name, c in m.consumers.items():
            info = self.store.consumer_info(STREAM, name)
            sseq = info.delivered.stream_seq
            if c.filter is None:
                assert sseq == c.cursor, (name, sseq, c.cursor)
            else:
                # A filtered consumer may move its cursor over messages it does not
                # match, never over one it matches and has not delivered.
                assert c.cursor <= sseq <= m.last_seq, (name, sseq, c.cursor)
                assert not [s for s, x in m.msgs.items() if c.cursor < s <= sseq and c.matches(x.subject)]
            assert info.delivered.consumer_seq == c.dseq, name
            assert info.num_ack_pending == len(c.pending), (name, info.num_ack_pending, sorted(c.pending))
            assert info.num_redelivered == sum(1 for p in c.pending.values() if p[1] > 1), name
            assert info.num_pending == m.num_pending(c), (name, info.num_pending, m.num_pending(c))
            if c.pending:
                floor = (min(p[0] for p in c.pending.values()) - 1, min(c.pending) - 1)
            else:
                floor = (c.dseq, sseq)
            assert (info.ack_floor.consumer_seq, info.ack_floor.stream_seq) == floor, name


_SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class FileStoreMachine(StoreMachine):
    storage = "file"


class MemoryStoreMachine(StoreMachine):
    storage = "memory"


FileStoreMachine.TestCase.settings = _SETTINGS
MemoryStoreMachine.TestCase.settings = _SETTINGS
TestFileStoreModel: type[unittest.TestCase] = FileStoreMachine.TestCase
TestMemoryStoreModel: type[unittest.TestCase] = MemoryStoreMachine.TestCase
