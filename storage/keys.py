"""Key layout of a partition (one RocksDB, or the in-memory sorted dict).

All integers are big-endian so that keys sort by number. `sid` is a stream's
numeric id (new for every incarnation of a name, so a deleted stream's keys
can never be mistaken for a recreated one's); `cid` likewise for consumers.
"""
from __future__ import annotations

import struct

META = b"\x00meta"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

u32 = _U32.pack
u64 = _U64.pack


def read_u64(b: bytes, offset: int = 0) -> int:
    return _U64.unpack_from(b, offset)[0]


def successor(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with `prefix`."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\xff" * 16
    p[-1] += 1
    return bytes(p)


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    return prefix, successor(prefix)


NODE = b"N"    # cluster node directory: N<name> -> {raft, client, http}


def node_key(name: str) -> bytes:
    return NODE + name.encode()


def stream_key(name: str) -> bytes:
    return b"S" + name.encode()


def msg_prefix(sid: int) -> bytes:
    return b"M" + u32(sid)


def msg_key(sid: int, seq: int) -> bytes:
    return b"M" + u32(sid) + u64(seq)


def subj_index_prefix(sid: int, subject: str) -> bytes:
    return b"I" + u32(sid) + subject.encode() + b"\x00"


def subj_index_key(sid: int, subject: str, seq: int) -> bytes:
    return subj_index_prefix(sid, subject) + u64(seq)


def subj_count_key(sid: int, subject: str) -> bytes:
    return b"T" + u32(sid) + subject.encode()


def subj_count_prefix(sid: int) -> bytes:
    return b"T" + u32(sid)


def dedup_prefix(sid: int) -> bytes:
    return b"D" + u32(sid)


def dedup_key(sid: int, msg_id: str) -> bytes:
    return b"D" + u32(sid) + msg_id.encode()


def dedup_expiry_prefix(sid: int) -> bytes:
    return b"E" + u32(sid)


def dedup_expiry_key(sid: int, ts: int, msg_id: str) -> bytes:
    return dedup_expiry_prefix(sid) + u64(ts) + msg_id.encode()


def dedup_expiry_msg_id(key: bytes) -> str:
    return key[1 + _U32.size + _U64.size:].decode()    # after "E", the sid and the time


def consumer_prefix(sid: int) -> bytes:
    return b"C" + u32(sid)


def consumer_key(sid: int, name: str) -> bytes:
    return b"C" + u32(sid) + name.encode()


def pending_prefix(sid: int, cid: int | None = None) -> bytes:
    return b"P" + u32(sid) + (u32(cid) if cid is not None else b"")


def pending_key(sid: int, cid: int, seq: int) -> bytes:
    return b"P" + u32(sid) + u32(cid) + u64(seq)


def verdict_key(index: int, pos: int) -> bytes:
    return b"V" + u64(index) + u32(pos)


# Every per-stream key family, for deleting a stream in one sweep of ranges.
STREAM_FAMILIES = (b"M", b"I", b"T", b"D", b"E", b"C", b"P")


def stream_ranges(sid: int) -> list[tuple[bytes, bytes]]:
    return [prefix_range(f + u32(sid)) for f in STREAM_FAMILIES]
