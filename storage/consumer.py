"""A consumer: its delivery cursor, its pending acks, and the rules that move them.

Counters are kept exactly in step with every change to the stream and the
consumer (`num_pending` moves on store, delivery and every removal), and are
persisted in the same write batch, so they cannot drift across restarts;
the property tests compare them with a recount after every step.
"""
from __future__ import annotations

from typing import Optional

import msgpack

from . import keys as K
from jetstream import subjects as subj
from jetstream.config import ConsumerConfig, ns
from jetstream.results import ConsumerInfo, DeliveredMsg, SequenceInfo
from .events import Event

# Bounds the messages one delivery command may look at while skipping
# messages its filter does not match, so one command never stalls the log.
MAX_SCAN_PER_COMMAND = 100_000

# pending entry fields: [consumer_seq, deliveries, deadline_ns, exhausted]
P_CSEQ, P_DELIVERIES, P_DEADLINE, P_EXHAUSTED = range(4)


class ConsumerRec:
    __slots__ = ("cid", "config", "created", "dseq", "sseq", "num_pending", "last_active", "pending", "lps",
                 "dirty", "dirty_pending", "filters", "ack_wait_ns", "backoff_ns")

    def __init__(self, cid: int, config: ConsumerConfig, created: int):
        self.cid = cid
        self.created = created
        self.dseq = 0            # last consumer sequence handed out (counts redeliveries)
        self.sseq = 0            # last stream sequence delivered for the first time
        self.num_pending = 0     # matching messages not yet delivered
        self.last_active = created
        self.pending: dict[int, list] = {}   # stream seq -> pending entry (delivered, not acked)
        self.lps: Optional[list[int]] = None  # last_per_subject seqs still to deliver, ascending
        self.dirty = True
        self.dirty_pending: set[int] = set()
        self.set_config(config)

    def set_config(self, config: ConsumerConfig) -> None:
        self.config = config
        self.filters = config.filters
        self.ack_wait_ns = ns(config.ack_wait or 0)
        self.backoff_ns = [ns(b) for b in config.backoff] if config.backoff else None

    @property
    def name(self) -> str:
        return self.config.name

    # -- persistence -------------------------------------------------------
    def to_record(self) -> bytes:
        return msgpack.packb({"cid": self.cid, "config": self.config.to_dict(), "created": self.created,
                              "dseq": self.dseq, "sseq": self.sseq, "num_pending": self.num_pending,
                              "last_active": self.last_active, "lps": self.lps}, use_bin_type=True)

    @classmethod
    def from_record(cls, raw: bytes) -> "ConsumerRec":
        d = msgpack.unpackb(raw, raw=False)
        c = cls(d["cid"], ConsumerConfig.from_dict(d["config"]), d["created"])
        c.dseq, c.sseq, c.num_pending = d["dseq"], d["sseq"], d["num_pending"]
        c.last_active, c.lps = d["last_active"], d["lps"]
        c.dirty = False
        return c

    def flush(self, tx, sid: int) -> None:
        if self.dirty:
            tx.put(K.consumer_key(sid, self.name), self.to_record())
            self.dirty = False
        for seq in self.dirty_pending:
            p = self.pending.get(seq)
            key = K.pending_key(sid, self.cid, seq)
            if p is None:
                tx.delete(key)
            else:
                tx.put(key, msgpack.packb(p))
        self.dirty_pending.clear()

    def load_pending(self, tx, sid: int) -> None:
        prefix = K.pending_prefix(sid, self.cid)
        for k, v in tx.scan(*K.prefix_range(prefix)):
            self.pending[K.read_u64(k, len(prefix))] = msgpack.unpackb(v)

    def _set_pending(self, seq: int, entry: Optional[list]) -> None:
        if entry is None:
            self.pending.pop(seq, None)
        else:
            self.pending[seq] = entry
        self.dirty_pending.add(seq)

    # -- matching and interest ------------------------------------------------
    def matches(self, subject: str) -> bool:
        f = self.filters
        if not f:
            return True
        for p in f:
            if subj.matches(p, subject):
                return True
        return False

    def needs_ack(self, seq: int, subject: str) -> bool:
        """Whether this consumer still holds interest in `seq` (interest/workqueue retention)."""
        if not self.matches(subject):
            return False
        if seq > self.sseq or (self.lps and seq in self.lps):
            return True
        return seq in self.pending

    @property
    def acks(self) -> bool:
        return self.config.ack_policy != "none"

    def ack_deadline(self, now: int, deliveries: int) -> int:
        if self.backoff_ns:
            return now + self.backoff_ns[min(deliveries, len(self.backoff_ns)) - 1]
        return now + self.ack_wait_ns

    # -- reactions to stream changes ------------------------------------------
    def on_stored(self, seq: int, subject: str) -> None:
        if seq > self.sseq and self.matches(subject):
            self.num_pending += 1
            self.dirty = True

    def on_msg_removed(self, seq: int, subject: str) -> None:
        if self.lps and seq in self.lps:
            self.lps.remove(seq)
            self.num_pending -= 1
            self.dirty = True
        elif seq > self.sseq and self.matches(subject):
            self.num_pending -= 1
            self.dirty = True
        if seq in self.pending:
            self._set_pending(seq, None)

    def on_purge_all(self, last_seq: int) -> None:
        self.sseq = max(self.sseq, last_seq)
        self.lps = None
        self.num_pending = 0
        for seq in list(self.pending):
            self._set_pending(seq, None)
        self.dirty = True

    # -- counters --------------------------------------------------------------
    def num_ack_pending(self) -> int:
        return sum(1 for p in self.pending.values() if not p[P_EXHAUSTED])

    def num_redelivered(self) -> int:
        return sum(1 for p in self.pending.values() if not p[P_EXHAUSTED] and p[P_DELIVERIES] > 1)

    def delivered_sseq(self) -> int:
        """The stream sequence reported as delivered. While last_per_subject seqs
        remain, `sseq` already sits on the last of them (it is the scan cursor for
        what follows them), so report the one just before the next to deliver, as
        JetStream does; otherwise undelivered messages would look delivered/acked."""
        return self.lps[0] - 1 if self.lps else self.sseq

    def ack_floor(self) -> tuple[int, int]:
        """(consumer_seq, stream_seq) below which everything delivered is acked (or
        terminated, or past max_deliver); never beyond what was delivered."""
        live = [s for s, p in self.pending.items() if not p[P_EXHAUSTED]]
        if not live:
            return self.dseq, self.delivered_sseq()
        first = min(live)
        return min(self.pending[s][P_CSEQ] for s in live) - 1, first - 1

    def info(self, stream: str) -> ConsumerInfo:
        fc, fs = self.ack_floor()
        return ConsumerInfo(
            stream_name=stream, name=self.name, config=self.config, created=self.created,
            delivered=SequenceInfo(consumer_seq=self.dseq, stream_seq=self.delivered_sseq(),
                                   last_active=self.last_active),
            ack_floor=SequenceInfo(consumer_seq=fc, stream_seq=fs),
            num_ack_pending=self.num_ack_pending(), num_redelivered=self.num_redelivered(),
            num_waiting=0, num_pending=self.num_pending)

    # -- starting position ------------------------------------------------------
    def init_position(self, st, tx) -> None:
        c = self.config
        dp = c.deliver_policy
        if dp == "all":
            self.sseq = max(st.first_seq - 1, 0)
        elif dp == "new":
            self.sseq = st.last_seq
        elif dp == "by_start_sequence":
            self.sseq = c.opt_start_seq - 1
        elif dp == "by_start_time":
            self.sseq = st.last_seq
            for seq, msg in st.scan(tx, st.first_seq):
                if msg[3] >= c.opt_start_time:
                    self.sseq = seq - 1
                    break
        elif dp == "last":
            self.sseq = st.last_seq
            for seq, msg in st.scan(tx, st.first_seq, reverse=True):
                if self.matches(msg[0]):
                    self.sseq = seq - 1
                    break
        elif dp == "last_per_subject":
            seqs = sorted(st.last_seq_for_subject(tx, s) for s, _ in st.subjects(tx) if self.matches(s))
            self.lps = seqs or None
            self.sseq = seqs[-1] if seqs else st.last_seq
        self.num_pending = self.count_pending(st, tx)
        self.dirty = True

    def count_pending(self, st, tx) -> int:
        """Recount matching messages after the cursor (used at creation and after a
        filter change; everything else keeps the counter in step incrementally)."""
        n = len(self.lps) if self.lps else 0
        if self.sseq < st.first_seq and not self.filters:
            return n + st.msgs
        if self.sseq < st.first_seq:
            return n + sum(cnt for s, cnt in st.subjects(tx) if self.matches(s))
        return n + sum(1 for _seq, msg in st.scan(tx, self.sseq + 1) if self.matches(msg[0]))

    # -- delivery ------------------------------------------------------------------
    def expire_deliveries(self, st, now: int, events: list) -> None:
        """Deliveries whose ack deadline passed and that used up max_deliver stop
        being redelivered; each is announced once by a max_deliveries event."""
        md = self.config.max_deliver
        if md is None or md < 1:
            return
        keep = st.config.retention != "limits"
        for seq, p in list(self.pending.items()):
            if not p[P_EXHAUSTED] and p[P_DELIVERIES] >= md and p[P_DEADLINE] <= now:
                events.append(Event("max_deliveries", st.name, self.name, stream_seq=seq,
                                    deliveries=p[P_DELIVERIES]))
                # Interest and workqueue streams keep such messages (JetStream does too),
                # so the consumer keeps its interest in them until they are acked or removed.
                self._set_pending(seq, [p[0], p[1], p[2], 1] if keep else None)

    def next_batch(self, st, tx, now: int, batch: int, max_bytes: int, events: list) -> list[DeliveredMsg]:
        self.last_active = now
        self.dirty = True
        out: list[DeliveredMsg] = []
        size = 0

        def room_for(msg) -> bool:
            nonlocal size
            if max_bytes <= 0:
                return True
            s = len(msg[0]) + len(msg[2])
            if out and size + s > max_bytes:
                return False
            size += s
            return True

        if self.acks:
            self.expire_deliveries(st, now, events)
            due = sorted(s for s, p in self.pending.items() if not p[P_EXHAUSTED] and p[P_DEADLINE] <= now)
            for seq in due:
                if len(out) >= batch:
                    return out
                msg = st.get(tx, seq)
                if msg is None:
                    self._set_pending(seq, None)
                    continue
                if not room_for(msg):
                    return out
                p = self.pending[seq]
                self.dseq += 1
                deliveries = p[P_DELIVERIES] + 1
                self._set_pending(seq, [self.dseq, deliveries, self.ack_deadline(now, deliveries), 0])
                out.append(self._delivered(st, seq, msg, deliveries))
            room = self.config.max_ack_pending - self.num_ack_pending()
        else:
            room = batch
        want = min(batch - len(out), room)
        if want <= 0:
            return out
        for seq, msg in self._new_messages(st, tx):
            if want <= 0 or not room_for(msg):
                break
            want -= 1
            self.dseq += 1
            self.num_pending -= 1
            if self.lps and seq == self.lps[0]:
                self.lps.pop(0)
                if not self.lps:
                    self.lps = None
            else:
                self.sseq = seq
            if self.acks:
                self._set_pending(seq, [self.dseq, 1, self.ack_deadline(now, 1), 0])
            out.append(self._delivered(st, seq, msg, 1))
        return out

    def _new_messages(self, st, tx):
        """Messages to deliver for the first time, in order. Advances the cursor over
        messages the filter skips, so a later call does not scan them again."""
        while self.lps:
            seq = self.lps[0]
            msg = st.get(tx, seq)
            if msg is None:       # removed meanwhile; on_msg_removed keeps lps honest
                self.lps.pop(0)
                continue
            yield seq, msg
            if self.lps and self.lps[0] == seq:
                return            # caller stopped without taking it
        self.lps = None
        scanned = 0
        for seq, msg in st.scan(tx, self.sseq + 1):
            if self.matches(msg[0]):
                yield seq, msg
            else:
                self.sseq = seq
                scanned += 1
                if scanned >= MAX_SCAN_PER_COMMAND:
                    return

    def _delivered(self, st, seq: int, msg, deliveries: int) -> DeliveredMsg:
        subject, headers, data, ts = msg
        if self.config.headers_only:
            headers = dict(headers or {}, **{"Nats-Msg-Size": str(len(data))})
            data = b""
        return DeliveredMsg(stream=st.name, consumer=self.name, subject=subject, data=data, headers=headers,
                            stream_seq=seq, consumer_seq=self.dseq, num_delivered=deliveries,
                            num_pending=self.num_pending, time=ts)

    # -- acknowledgements ----------------------------------------------------------
    def ack(self, seq: int) -> list[int]:
        """Ack `seq` (ack_policy all: everything up to it). Returns the acked seqs."""
        if self.config.ack_policy == "all":
            done = sorted(s for s in self.pending if s <= seq)
        else:
            done = [seq] if seq in self.pending else []
        for s in done:
            self._set_pending(s, None)
        return done

    def work(self, now: int) -> tuple[bool, Optional[int]]:
        """(something can be delivered now, earliest future redelivery deadline).
        Lets a server decide whether proposing a delivery could yield anything."""
        room = (not self.acks) or self.num_ack_pending() < self.config.max_ack_pending
        ready = self.num_pending > 0 and room
        later = None
        for p in self.pending.values():
            if p[P_EXHAUSTED]:
                continue
            if p[P_DEADLINE] <= now:
                return True, None
            later = p[P_DEADLINE] if later is None else min(later, p[P_DEADLINE])
        return ready, later

    def forget(self, seq: int) -> None:
        """Stop tracking one delivery (term): only that message, whatever the ack policy."""
        self._set_pending(seq, None)

    def nak(self, seq: int, now: int, delay_ns: int) -> bool:
        p = self.pending.get(seq)
        if p is None or p[P_EXHAUSTED]:
            return False
        # A nak is redelivered after its own delay (or at once), never by the backoff schedule.
        self._set_pending(seq, [p[0], p[1], now + max(delay_ns, 0), 0])
        return True

    def progress(self, seq: int, now: int) -> bool:
        p = self.pending.get(seq)
        if p is None or p[P_EXHAUSTED]:
            return False
        self._set_pending(seq, [p[0], p[1], self.ack_deadline(now, p[1]), 0])
        return True
