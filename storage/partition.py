"""A partition: one backend (RocksDB or memory) with its streams and applied index.

File streams live in the file partition, memory streams in the memory
partition. Each keeps its own last applied index, so a restarted process
(whose memory partition starts empty, or from a snapshot's image) can re-apply
the memory streams' part of entries the file partition already holds.
"""
from __future__ import annotations

import msgpack

from . import keys as K
from .consumer import ConsumerRec
from .kv import Tx
from .stream import StreamRec


class Partition:
    def __init__(self, kind: str, backend):
        self.kind = kind
        self.backend = backend
        self.tx = Tx(backend)
        self.applied = 0
        self.time_ns = 0
        self.next_sid = 1
        self.streams: dict[str, StreamRec] = {}
        self.touched: set[str] = set()        # stream names changed by the current entry
        self.dropped: set[str] = set()        # stream names deleted by the current entry

    def load(self) -> None:
        """(Re)build the in-process records from what the backend holds."""
        self.tx = Tx(self.backend)
        self.touched.clear()
        self.dropped.clear()
        raw = self.backend.get(K.META)
        meta = msgpack.unpackb(raw) if raw else {}
        self.applied = meta.get("applied", 0)
        self.time_ns = meta.get("time_ns", 0)
        self.next_sid = meta.get("next_sid", 1)
        self.streams = {}
        for _k, v in self.tx.scan(*K.prefix_range(b"S")):
            st = StreamRec.from_record(v)
            self.streams[st.name] = st
            prefix = K.consumer_prefix(st.sid)
            for _ck, cv in self.tx.scan(*K.prefix_range(prefix)):
                c = ConsumerRec.from_record(cv)
                c.load_pending(self.tx, st.sid)
                st.consumers[c.name] = c

    def add_stream(self, st: StreamRec) -> None:
        self.streams[st.name] = st
        self.touched.add(st.name)

    def drop_stream(self, st: StreamRec) -> None:
        del self.streams[st.name]
        self.touched.discard(st.name)
        self.dropped.add(st.name)
        for lo, hi in K.stream_ranges(st.sid):
            self.tx.delete_range(lo, hi)

    def stage(self, index: int, time_ns: int) -> None:
        """Put every change of the entry, and the entry's index, into the Tx."""
        tx = self.tx
        for name in self.dropped:
            if name not in self.streams:
                tx.delete(K.stream_key(name))
        for name in self.touched:
            st = self.streams[name]
            st.flush_dedup(tx, time_ns)
            if st.dirty:
                tx.put(K.stream_key(name), st.to_record())
                st.dirty = False
            for c in st.consumers.values():
                c.flush(tx, st.sid)
            st.trim_caches()
        self.touched.clear()
        self.dropped.clear()
        self.applied = index
        self.time_ns = time_ns
        tx.put(K.META, msgpack.packb({"applied": index, "time_ns": time_ns, "next_sid": self.next_sid}))

    def commit(self) -> None:
        self.tx.commit()
