"""A stream: its record, its messages, and the operations that store and remove them.

A `StreamRec` is the in-process copy of one stream's record; its messages,
subject index and dedupe entries live in the partition's backend and are
read and written through the entry's `Tx`. Every removal goes through
`remove_msg` so counters, the subject index and consumers stay in step.
"""
from __future__ import annotations

import threading
from typing import Iterator, Optional

import msgpack

from . import keys as K
from jetstream import subjects as subj
from jetstream.config import StreamConfig, ns
from .origins import OriginState, sync_origins

SUBJECT_CACHE_MAX = 100_000


def header_len(headers: Optional[dict]) -> int:
    """Length of the headers in NATS wire form ("NATS/1.0\\r\\nK: V\\r\\n...\\r\\n")."""
    if not headers:
        return 0
    n = 12
    for k, v in headers.items():
        v = str(v)
        n += (len(k) if k.isascii() else len(k.encode())) + (len(v) if v.isascii() else len(v.encode())) + 4
    return n


def msg_size(subject: str, headers: Optional[dict], data: bytes, storage: str) -> int:
    return stored_size(subject, header_len(headers), data, storage)


def stored_size(subject: str, hlen: int, data: bytes, storage: str) -> int:
    """What JetStream counts a stored message as, so `bytes` and `max_bytes` agree with it:
    memStoreMsgSize (16 for sequence and timestamp) or fileStoreMsgSize (record length,
    sequence, timestamp, subject length and hash: 30, plus 4 for the header length)."""
    if storage == "memory":
        return len(subject) + hlen + len(data) + 16
    return 30 + len(subject) + (4 + hlen if hlen else 0) + len(data)


_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's Packer: msgpack.packb builds one per call, a third of a message's
    packing time; a Packer must not be shared between threads."""
    try:
        return _local.packer
    except AttributeError:
        p = _local.packer = msgpack.Packer(use_bin_type=True)
        return p


def pack_msg(subject: str, headers: Optional[dict], data: bytes, ts: int) -> bytes:
    return _packer().pack((subject, headers, data, ts))


def unpack_msg(raw: bytes) -> tuple[str, Optional[dict], bytes, int]:
    return msgpack.unpackb(raw, raw=False)


class StreamRec:
    __slots__ = ("sid", "config", "created", "first_seq", "last_seq", "msgs", "bytes", "first_ts", "last_ts",
                 "num_subjects", "last_msg_id", "next_cid", "consumers", "subj_counts", "dirty",
                 "storage", "origins", "new_ids", "_config_dict")

    def __init__(self, sid: int, config: StreamConfig, created: int):
        self.sid = sid
        self.config = config
        self.created = created
        self.first_seq = 0
        self.last_seq = 0
        self.msgs = 0
        self.bytes = 0
        self.first_ts = 0
        self.last_ts = 0
        self.num_subjects = 0
        self.last_msg_id: Optional[str] = None
        self.next_cid = 1
        self.consumers: dict = {}
        self.subj_counts: dict[str, int] = {}          # cache over the T keys
        self.dirty = True
        self.storage = config.storage
        self.origins: dict[str, OriginState] = {}      # mirror/source origin key -> its state
        sync_origins(self.origins, config)
        self.new_ids: list[str] = []                   # msg ids recorded by the current entry
        self._config_dict: tuple = (None, None)        # (config, its to_dict()), for to_record

    # -- persistence -------------------------------------------------------
    def to_record(self) -> bytes:
        # Written by every entry that touches the stream; its config only changes by being
        # replaced (UpdateStream), so its dict is built once per config object.
        config, as_dict = self._config_dict
        if config is not self.config:
            config, as_dict = self._config_dict = (self.config, self.config.to_dict())
        return msgpack.packb({
            "sid": self.sid, "config": as_dict, "created": self.created,
            "first_seq": self.first_seq, "last_seq": self.last_seq, "msgs": self.msgs, "bytes": self.bytes,
            "first_ts": self.first_ts, "last_ts": self.last_ts, "num_subjects": self.num_subjects,
            "last_msg_id": self.last_msg_id, "next_cid": self.next_cid,
            "origins": {k: o.to_dict() for k, o in self.origins.items()},
        }, use_bin_type=True)

    @classmethod
    def from_record(cls, raw: bytes) -> "StreamRec":
        d = msgpack.unpackb(raw, raw=False)
        st = cls(d["sid"], StreamConfig.from_dict(d["config"]), d["created"])
        for f in ("first_seq", "last_seq", "msgs", "bytes", "first_ts", "last_ts", "num_subjects",
                  "last_msg_id", "next_cid"):
            setattr(st, f, d[f])
        st.origins = {k: OriginState.from_dict(o) for k, o in d.get("origins", {}).items()}
        st.dirty = False
        return st

    @property
    def name(self) -> str:
        return self.config.name

    def captures(self, subject: str) -> bool:
        return any(subj.matches(p, subject) for p in self.config.subjects)

    # -- subjects ----------------------------------------------------------
    def subject_count(self, tx, subject: str) -> int:
        n = self.subj_counts.get(subject)
        if n is None:
            raw = tx.get(K.subj_count_key(self.sid, subject))
            n = int.from_bytes(raw, "big") if raw else 0
            self.subj_counts[subject] = n
        return n

    def _set_subject_count(self, tx, subject: str, n: int) -> None:
        self.subj_counts[subject] = n
        key = K.subj_count_key(self.sid, subject)
        if n:
            tx.put(key, n.to_bytes(8, "big"))
        else:
            tx.delete(key)

    def trim_caches(self) -> None:
        if len(self.subj_counts) > SUBJECT_CACHE_MAX:
            self.subj_counts.clear()

    def last_seq_for_subject(self, tx, subject: str) -> int:
        kv = tx.first(*K.prefix_range(K.subj_index_prefix(self.sid, subject)), reverse=True)
        return K.read_u64(kv[0], len(kv[0]) - 8) if kv else 0

    def first_seq_for_subject(self, tx, subject: str) -> int:
        kv = tx.first(*K.prefix_range(K.subj_index_prefix(self.sid, subject)))
        return K.read_u64(kv[0], len(kv[0]) - 8) if kv else 0

    def subjects(self, tx) -> Iterator[tuple[str, int]]:
        prefix = K.subj_count_prefix(self.sid)
        for k, v in tx.scan(*K.prefix_range(prefix)):
            yield k[len(prefix):].decode(), int.from_bytes(v, "big")

    # -- messages ----------------------------------------------------------
    def get(self, tx, seq: int) -> Optional[tuple[str, Optional[dict], bytes, int]]:
        raw = tx.get(K.msg_key(self.sid, seq))
        return unpack_msg(raw) if raw is not None else None

    def scan(self, tx, from_seq: int, to_seq: int | None = None, reverse: bool = False):
        """(seq, (subject, headers, data, ts)) for stored messages in [from_seq, to_seq]."""
        lo = K.msg_key(self.sid, max(from_seq, 0))
        hi = K.msg_key(self.sid, to_seq + 1) if to_seq is not None else K.successor(K.msg_prefix(self.sid))
        for k, v in tx.scan(lo, hi, reverse):
            yield K.read_u64(k, 5), unpack_msg(v)

    def store(self, tx, subject: str, headers: Optional[dict], data: bytes, ts: int, size: int) -> int:
        """Store a message of `size` (stored_size) as the next sequence."""
        seq = self.last_seq + 1
        tx.put(K.msg_key(self.sid, seq), pack_msg(subject, headers, data, ts))
        tx.put(K.subj_index_key(self.sid, subject, seq), b"")
        n = self.subject_count(tx, subject)
        if n == 0:
            self.num_subjects += 1
        self._set_subject_count(tx, subject, n + 1)
        self.last_seq = seq
        self.last_ts = ts
        if self.msgs == 0:
            self.first_seq = seq
            self.first_ts = ts
        self.msgs += 1
        self.bytes += size
        self.dirty = True
        return seq

    def skip(self, ts: int) -> int:
        """Consume a sequence without storing (interest stream with no interest).
        The sequence is the stream's last, so last_ts moves too (JetStream's SkipMsg)."""
        self.last_seq += 1
        self.last_ts = ts
        if self.msgs == 0:
            self.first_seq = self.last_seq + 1
        self.dirty = True
        return self.last_seq

    def skip_to(self, seq: int, ts: int) -> None:
        """Consume every sequence up to `seq` without storing (a mirror keeping its
        origin's numbering over messages the origin no longer holds)."""
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        self.last_ts = ts
        if self.msgs == 0:
            self.first_seq = seq + 1
        self.dirty = True

    def remove_msg(self, tx, seq: int, msg=None) -> bool:
        """Remove one message and keep every counter, index and consumer in step."""
        if msg is None:
            msg = self.get(tx, seq)
            if msg is None:
                return False
        subject, headers, data, _ts = msg
        tx.delete(K.msg_key(self.sid, seq))
        tx.delete(K.subj_index_key(self.sid, subject, seq))
        n = self.subject_count(tx, subject) - 1
        if n == 0:
            self.num_subjects -= 1
        self._set_subject_count(tx, subject, n)
        self.msgs -= 1
        self.bytes -= msg_size(subject, headers, data, self.config.storage)
        if self.msgs == 0:
            self.first_seq = self.last_seq + 1
            self.first_ts = 0
        elif seq == self.first_seq:
            for nseq, nmsg in self.scan(tx, seq + 1):
                self.first_seq, self.first_ts = nseq, nmsg[3]
                break
        for c in self.consumers.values():
            c.on_msg_removed(seq, subject)
        self.dirty = True
        return True

    def remove_first(self, tx) -> bool:
        for seq, msg in self.scan(tx, self.first_seq):
            return self.remove_msg(tx, seq, msg)
        return False

    def purge_all(self, tx) -> int:
        """Drop every message at once (range deletes), consumers skip to the end."""
        purged = self.msgs
        for prefix in (K.msg_prefix(self.sid), b"I" + K.u32(self.sid), K.subj_count_prefix(self.sid)):
            tx.delete_range(*K.prefix_range(prefix))
        self.subj_counts.clear()
        self.msgs = self.bytes = self.num_subjects = 0
        self.first_seq = self.last_seq + 1
        self.first_ts = 0
        for c in self.consumers.values():
            c.on_purge_all(self.last_seq)
        self.dirty = True
        return purged

    def enforce_limits(self, tx, subject: Optional[str] = None) -> None:
        """Discard-old limits after a store or a config change."""
        c = self.config
        if c.max_msgs_per_subject > 0 and subject is not None:
            while self.subject_count(tx, subject) > c.max_msgs_per_subject:
                self.remove_msg(tx, self.first_seq_for_subject(tx, subject))
        if c.discard == "old" or subject is None:
            while c.max_msgs > 0 and self.msgs > c.max_msgs:
                self.remove_first(tx)
            while c.max_bytes > 0 and self.bytes > c.max_bytes:
                self.remove_first(tx)

    def enforce_per_subject_limit_all(self, tx) -> None:
        if self.config.max_msgs_per_subject > 0:
            for s, _ in list(self.subjects(tx)):
                self.enforce_limits(tx, s)

    def expire(self, tx, now: int) -> int:
        """Remove messages older than max_age, oldest first."""
        if not self.config.max_age or not self.msgs:
            return 0
        cutoff = now - ns(self.config.max_age)
        removed = 0
        while self.msgs and self.first_ts and self.first_ts <= cutoff:
            if not self.remove_first(tx):
                break
            removed += 1
        return removed

    # -- dedupe ------------------------------------------------------------
    # The window lives in the backend only: a D key per msg_id (its seq and time) and,
    # per entry, an E key in time order listing the ids the entry recorded, so pruning
    # reads just what expired. Held in memory, the window (every publish of raftbroker's
    # client carries an id) grew a node by ~100 MiB per million messages; here it costs a
    # RocksDB get and a put per publish with an id. A Bloom filter in front of the get
    # was tried: in pure Python it cost more (~7 us) than the get it saved.
    def dedup_lookup(self, tx, msg_id: str, now: int) -> Optional[int]:
        raw = tx.get(K.dedup_key(self.sid, msg_id))
        if raw is None:
            return None
        seq, ts = msgpack.unpackb(raw)
        return None if ts <= now - ns(self.config.duplicate_window) else seq

    def dedup_record(self, tx, msg_id: str, seq: int, ts: int) -> None:
        tx.put(K.dedup_key(self.sid, msg_id), _packer().pack((seq, ts)))
        self.new_ids.append(msg_id)

    def flush_dedup(self, tx, ts: int) -> None:
        """The E key of the ids this entry recorded (all at the entry's time `ts`): keyed by
        the time and the first id, the others in its value. Unique: the window is over
        zero for every stream that records ids, so an id is recorded again only at a
        later time."""
        ids = self.new_ids
        if ids:
            tx.put(K.dedup_expiry_key(self.sid, ts, ids[0]), msgpack.packb(ids[1:]) if len(ids) > 1 else b"")
            self.new_ids = []

    def dedup_prune(self, tx, now: int) -> None:
        cutoff = now - ns(self.config.duplicate_window)
        expired = list(tx.scan(K.dedup_expiry_prefix(self.sid), K.dedup_expiry_key(self.sid, max(0, cutoff + 1), "")))
        for k, v in expired:
            tx.delete(k)
            for msg_id in [K.dedup_expiry_msg_id(k)] + (msgpack.unpackb(v) if v else []):
                key = K.dedup_key(self.sid, msg_id)
                raw = tx.get(key)
                # The id may have been recorded again since (after it had expired): keep that.
                if raw is not None and msgpack.unpackb(raw)[1] <= cutoff:
                    tx.delete(key)

    @property
    def num_deleted(self) -> int:
        return (self.last_seq - self.first_seq + 1 - self.msgs) if self.msgs else 0
