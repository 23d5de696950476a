"""A durable, checksummed Raft log and term/vote store for pysyncobj.

pysyncobj's own FileJournal grows an mmap in place, never fsyncs, has no checksums
and reads an unreadable meta file as "term 0, voted for nobody" - after a crash a
node could vote twice in one term. `RaftJournal` replaces it through pysyncobj's
`Journal` interface (`install_journal_factory()`, then
`SyncObjConf(journalFile=RaftJournal(dir))`).

Files in the journal directory:

    raft.log   header | record | record | ...
               header = b"RBRAFTLG" | u32 format version
               record = u32 length | u32 crc32 | u64 idx | u64 term | command (`length` bytes)
               The crc32 covers length, idx, term and command (all little endian).
    raft.meta  b"RBRAFTMT" | u32 format version | u32 body length | u32 crc32(body) | body
               body = msgpack {"term", "voted_for", "commit_index", "extra"}

Durability. `add()` only hands the record to the OS; `sync()` makes everything
added so far durable (one fdatasync, skipped when nothing is pending). pysyncobj
has no hook between appending an entry and acknowledging it, so whoever owns the
SyncObj must call `sync()` before anything leaves the node. `onOneSecondTimer`
syncs as well, which bounds the window if that is forgotten. `setCurrentTerm` and
`set_extra` are durable when they return: Raft needs the term and vote on disk
before a vote is sent.

With `sync=False` nothing on the hot path is fsynced: a power loss can lose
everything since the last compaction (the term and vote included, which is unsafe
for Raft - use it for tests and benchmarks only). Compactions, `clear()` and the
creation of a fresh directory still fsync the log and the meta, so what survives
a power loss is always a state the node can start from.

Crash recovery on open. A record whose length runs past the end of the file, or
a zero-filled tail, is a write that never reached the disk whole: it is cut off
with a warning. Such a tail is trusted only when nothing in it checks out - if
the bytes up to EOF form a complete record under the true length, or a valid
next record sits inside the claimed length, the length field itself is damaged
and opening fails. Anything else that does not check out (a complete record
with a bad checksum, a bad header, non-contiguous indexes, a term going down, an
unreadable or missing meta) raises `CorruptStateError` and leaves the files as
found. Not tolerated: a filesystem that persists a later block of the unsynced
tail but not an earlier one (a zeroed hole followed by data); ext4 in its default
data=ordered mode never produces that for appends.
"""
from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from array import array
from typing import Any, Callable, Iterable, Optional

import msgpack
import pysyncobj.syncobj
from pysyncobj.journal import Journal

from storage.kv import fsync_dir

from .errors import CorruptStateError

log = logging.getLogger("raftbroker.journal")

LOG_NAME = "raft.log"
META_NAME = "raft.meta"
TMP_SUFFIX = ".tmp"
LOG_MAGIC = b"RBRAFTLG"
META_MAGIC = b"RBRAFTMT"
FORMAT_VERSION = 1

_LOG_HEADER = struct.Struct("<8sI")        # magic, format version
_REC_HEADER = struct.Struct("<IIQQ")       # length, crc32, idx, term
_REC_CRC_FIELDS = struct.Struct("<IQQ")    # the header fields the crc covers
_META_HEADER = struct.Struct("<8sIII")     # magic, format version, body length, crc32(body)
_IDX = struct.Struct("<Q")
LOG_HEADER_SIZE = _LOG_HEADER.size
REC_HEADER_SIZE = _REC_HEADER.size
MAX_COMMAND_BYTES = 2**32 - 1              # the length field is a u32
COPY_CHUNK_BYTES = 1 << 20                 # compaction copies the kept tail in chunks of this size
CACHE_BYTES = 8 << 20                      # commands of the newest entries kept in memory
RELEASE_BYTES = 16 << 20                   # opening: hand the mapped pages back this often

_fdatasync = getattr(os, "fdatasync", os.fsync)


def crash_point(name: str) -> None:
    """Test-only: RAFTBROKER_TEST_CRASH_AT=<name> kills the process right here, as a
    SIGKILL in the middle of a compaction would."""
    if os.environ.get("RAFTBROKER_TEST_CRASH_AT") == name:
        os._exit(137)


def _record_crc(length: int, idx: int, term: int, command) -> int:
    return zlib.crc32(command, zlib.crc32(_REC_CRC_FIELDS.pack(length, idx, term)))


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _is_zero(buf, start: int, end: int) -> bool:
    chunk = buf[start:end]
    return chunk.count(0) == len(chunk)


def _valid_record_at(buf, off: int, want_idx: int) -> bool:
    if off + REC_HEADER_SIZE > len(buf):
        return False
    length, crc, idx, term = _REC_HEADER.unpack_from(buf, off)
    end = off + REC_HEADER_SIZE + length
    return idx == want_idx and end <= len(buf) and _record_crc(length, idx, term, buf[off + REC_HEADER_SIZE:end]) == crc


def _check_torn_tail(path: str, buf, off: int, prev: Optional[tuple[int, int]]) -> None:
    """Raise unless buf[off:] can be the prefix of a record whose write was cut short;
    prev is (idx, term) of the last good record before it, if any."""
    size = len(buf)
    if _is_zero(buf, off, size):
        return
    left = size - off
    if left >= 16 and prev is not None:
        (idx,) = _IDX.unpack_from(buf, off + 8)
        if idx != prev[0] + 1:
            raise CorruptStateError(path, f"truncated record has idx {idx}, expected {prev[0] + 1}", off)
    if left < REC_HEADER_SIZE:
        return
    length, crc, idx, term = _REC_HEADER.unpack_from(buf, off)
    if prev is not None and term < prev[1]:
        raise CorruptStateError(path, f"truncated record has term {term} below the previous term {prev[1]}", off)
    # A torn write is a prefix of its record, so nothing in it can check out.
    true_length = left - REC_HEADER_SIZE
    if _record_crc(true_length, idx, term, buf[off + REC_HEADER_SIZE:]) == crc:
        raise CorruptStateError(path, f"length field says {length} bytes but the record checksums correctly "
                                      f"with {true_length} bytes (damaged length field)", off)
    needle = _IDX.pack(idx + 1)
    pos = buf.find(needle, off + REC_HEADER_SIZE + 8)
    while pos != -1:
        if _valid_record_at(buf, pos - 8, idx + 1):
            raise CorruptStateError(path, f"length field says {length} bytes, which swallows the valid record "
                                          f"idx {idx + 1} at offset {pos - 8} (damaged length field)", off)
        pos = buf.find(needle, pos + 1)


def scan_log(path: str, buf, release: Optional[Callable[[int], None]] = None
             ) -> tuple[Optional[int], array, array, int]:
    """Check a whole raft.log image: (idx of its first record or None, the records' terms,
    their offsets, end of the last good record). Commands are checked, not copied;
    release(offset), when given, is told every RELEASE_BYTES that the bytes before
    offset are done with."""
    size = len(buf)
    if size < LOG_HEADER_SIZE:
        raise CorruptStateError(path, f"file is {size} bytes, shorter than its {LOG_HEADER_SIZE}-byte header", 0)
    magic, version = _LOG_HEADER.unpack_from(buf, 0)
    if magic != LOG_MAGIC:
        raise CorruptStateError(path, f"bad header magic {magic!r} (not a raftbroker Raft log)", 0)
    if version != FORMAT_VERSION:
        raise CorruptStateError(path, f"unsupported format version {version} (this build reads {FORMAT_VERSION})", 0)
    first: Optional[int] = None
    terms, offsets = array("Q"), array("Q")
    off = released = LOG_HEADER_SIZE
    while off < size:
        if release is not None and off - released >= RELEASE_BYTES:
            release(off)
            released = off
        if size - off >= REC_HEADER_SIZE:
            length, crc, idx, term = _REC_HEADER.unpack_from(buf, off)
            end = off + REC_HEADER_SIZE + length
            if end <= size:
                if _record_crc(length, idx, term, buf[off + REC_HEADER_SIZE:end]) != crc:
                    if _is_zero(buf, off, size):
                        break  # zero-filled tail: the size reached the disk, the data did not
                    raise CorruptStateError(path, f"checksum mismatch in record #{len(offsets)}", off)
                if offsets and idx != first + len(offsets):
                    raise CorruptStateError(path, f"record idx {idx} does not follow idx "
                                                  f"{first + len(offsets) - 1}", off)
                if terms and term < terms[-1]:
                    raise CorruptStateError(path, f"record idx {idx} has term {term}, below the previous "
                                                  f"term {terms[-1]}", off)
                if first is None:
                    first = idx
                terms.append(term)
                offsets.append(off)
                off = end
                continue
        _check_torn_tail(path, buf, off, (first + len(offsets) - 1, terms[-1]) if offsets else None)
        break
    return first, terms, offsets, off


class RaftJournal(Journal):
    """pysyncobj's Raft log and term/vote store, kept in `directory` (see the module doc).

    Entries read as `(command: bytes, idx: int, term: int)` tuples; pysyncobj indexes and
    slices the log freely, and a slice is a lazy view (`LogView`). Only the commands of
    the newest entries, about `cache_bytes` of them, stay in memory: those are what the
    leader sends and every node applies next. Older ones are read back from raft.log and
    their checksums checked again; a node's memory does not grow with its log between
    compactions. Thread-safe: pysyncobj's tick thread and the cluster code (`set_extra`,
    `sync`) may call in concurrently.
    """

    def __init__(self, directory: str, sync: bool = True, also_sync_dirs: Iterable[str] = (),
                 also_sync_files: Iterable[str] = (), cache_bytes: int = CACHE_BYTES):
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, LOG_NAME)
        self.meta_path = os.path.join(self.directory, META_NAME)
        self.sync_writes = sync
        self.on_sync: Optional[Callable[[float], None]] = None    # fsync seconds, for /metrics
        # pysyncobj renames a new snapshot into place just before it drops the entries
        # the snapshot covers; that rename must be durable first or a power loss leaves
        # the old snapshot next to a log that no longer reaches back to it. pysyncobj
        # never fsyncs the snapshot's contents either (its atomicReplace is a bare
        # os.rename), hence also_sync_files for the snapshot file itself.
        self.also_sync_dirs = [os.path.abspath(d) for d in also_sync_dirs]
        self.also_sync_files = [os.path.abspath(f) for f in also_sync_files]
        self.synced_size = 0            # bytes of raft.log known to be durable
        self._lock = threading.RLock()
        # Entry at list position p: idx _first_idx + p, term _terms[p], record at _offsets[p].
        # Indexes are contiguous (add() refuses a gap), so they need no array of their own.
        self._first_idx = 0
        self._terms = array("Q")
        self._offsets = array("Q")
        self.cache_bytes = cache_bytes
        self._cache: list[bytes] = []   # commands of positions _cache_pos.. (the newest entries)
        self._cache_pos = 0
        self._cache_size = 0
        self._size = 0                  # bytes of raft.log written (durable or not)
        self._dirty = False             # records added since the last sync()
        self._fd = -1
        self._closed = False
        self._term = 0
        self._voted_for: Optional[str] = None
        self._commit_index = 1          # pysyncobj's FileJournal default
        self._extra: dict[str, Any] = {}
        self._meta_dirty = False        # commit index changed but not yet written
        self._meta_unsynced = False     # raft.meta holds bytes written without fsync
        self._synced_meta: Optional[bytes] = None   # last raft.meta image known durable (for power_cut)
        os.makedirs(self.directory, exist_ok=True)
        self._dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            try:
                fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"{self.directory} is in use by another RaftJournal") from None
            self._open()
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
            os.close(self._dir_fd)
            raise

    # -- opening -----------------------------------------------------------------------------
    def _open(self) -> None:
        for name in (LOG_NAME + TMP_SUFFIX, META_NAME + TMP_SUFFIX):
            tmp = os.path.join(self.directory, name)
            if os.path.exists(tmp):
                log.info("journal %s: removing %s left by an interrupted rewrite", self.directory, name)
                os.unlink(tmp)
        meta_found = os.path.exists(self.meta_path)
        if meta_found:
            with open(self.meta_path, "rb") as f:
                self._load_meta(f.read())
        log_found = os.path.exists(self.path)
        if log_found:
            self._load_log()
        if not meta_found:
            if self._terms:
                raise CorruptStateError(self.meta_path, f"missing while {LOG_NAME} holds {len(self._terms)} "
                                                        f"entries (idx {self.first_index()}..{self.last_index()}), "
                                                        f"so the node's term and vote are unknown")
            self._write_meta(durable=True)
        elif not log_found and (self._term != 0 or self._voted_for is not None or self._extra):
            # A fresh directory gets its meta first and its log right after; only a
            # crash in between leaves a pristine meta without a log.
            raise CorruptStateError(self.path, f"missing while {META_NAME} records term {self._term}")
        if not log_found:
            self._replace_log(0)
        last = self.last_index()
        if last is not None and self._commit_index > last:
            log.warning("journal %s: commit index %d is past the last entry %d (entries lost in a crash); "
                        "clamping", self.directory, self._commit_index, last)
            self._commit_index = last

    def _load_log(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR)
        size = os.fstat(self._fd).st_size
        if size == 0:
            first, terms, offsets, end = scan_log(self.path, b"")
        else:
            with mmap.mmap(self._fd, size, access=mmap.ACCESS_READ) as buf:
                # Every page read stays in this process's RSS while mapped: without
                # this a node opening a 256 MiB journal peaked at 287 MiB.
                def release(upto: int) -> None:
                    buf.madvise(mmap.MADV_DONTNEED, 0, upto - upto % mmap.PAGESIZE)
                first, terms, offsets, end = scan_log(self.path, buf, release)
        if end < size:
            log.warning("journal %s: cutting a torn tail of %d bytes at offset %d (a write that never reached "
                        "the disk whole)", self.path, size - end, end)
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        self._first_idx, self._terms, self._offsets = first or 0, terms, offsets
        self._cache, self._cache_pos, self._cache_size = [], len(terms), 0
        self._size = self.synced_size = end

    def _load_meta(self, blob: bytes) -> None:
        p, hdr = self.meta_path, _META_HEADER.size
        if len(blob) < hdr:
            raise CorruptStateError(p, f"file is {len(blob)} bytes, shorter than its {hdr}-byte header", 0)
        magic, version, length, crc = _META_HEADER.unpack_from(blob, 0)
        if magic != META_MAGIC:
            raise CorruptStateError(p, f"bad header magic {magic!r} (not a raftbroker Raft meta file)", 0)
        if version != FORMAT_VERSION:
            raise CorruptStateError(p, f"unsupported format version {version} (this build reads {FORMAT_VERSION})", 0)
        body = blob[hdr:]
        if len(body) != length:
            raise CorruptStateError(p, f"body is {len(body)} bytes but the header says {length}", hdr)
        if zlib.crc32(body) != crc:
            raise CorruptStateError(p, "checksum mismatch", hdr)
        try:
            meta = msgpack.unpackb(body, raw=False)
            term, voted_for, commit, extra = meta["term"], meta["voted_for"], meta["commit_index"], meta["extra"]
        except Exception as e:
            raise CorruptStateError(p, f"unreadable body ({e!r})", hdr) from None
        if not (type(term) is int and term >= 0 and type(commit) is int and commit >= 0
                and (voted_for is None or isinstance(voted_for, str)) and isinstance(extra, dict)):
            raise CorruptStateError(p, f"invalid values {meta!r}", hdr)
        self._term, self._voted_for, self._commit_index, self._extra = term, voted_for, commit, extra
        self._synced_meta = blob

    # -- the log -----------------------------------------------------------------------------
    def add(self, command, idx: int, term: int) -> None:
        if isinstance(command, str):
            command = command.encode("utf-8")   # as pysyncobj's FileJournal does
        elif type(command) is not bytes:
            command = bytes(command)
        with self._lock:
            self._check_open()
            if self._terms:
                last_idx, last_term = self._first_idx + len(self._terms) - 1, self._terms[-1]
                # Refuse what the reader would reject: better one failed append than a log
                # the node can no longer open.
                if idx != last_idx + 1 or term < last_term:
                    raise ValueError(f"journal {self.path}: entry (idx {idx}, term {term}) cannot follow "
                                     f"(idx {last_idx}, term {last_term})")
            if len(command) > MAX_COMMAND_BYTES:
                raise ValueError(f"journal {self.path}: command of {len(command)} bytes exceeds {MAX_COMMAND_BYTES}")
            length = len(command)
            header = _REC_HEADER.pack(length, _record_crc(length, idx, term, command), idx, term)
            written = os.pwritev(self._fd, [header, command], self._size)
            if written < len(header) + length:
                _pwrite_all(self._fd, (header + command)[written:], self._size + written)
            if not self._terms:
                self._first_idx = idx
            self._terms.append(term)
            self._offsets.append(self._size)
            self._cache.append(command)
            self._cache_size += length
            if self._cache_size > self.cache_bytes:
                self._shrink_cache()
            self._size += REC_HEADER_SIZE + length
            self._dirty = True

    def _shrink_cache(self) -> None:
        """Forget the oldest cached commands, down to half the budget (so this runs once
        per cache_bytes/2 added, not on every add); the newest always stays."""
        drop, size = 0, self._cache_size
        while size > self.cache_bytes // 2 and drop < len(self._cache) - 1:
            size -= len(self._cache[drop])
            drop += 1
        del self._cache[:drop]
        self._cache_pos += drop
        self._cache_size = size

    def sync(self) -> None:
        """Make every added record durable (no-op when none is pending; no fsync when sync=False)."""
        with self._lock:
            self._check_open()
            if not self._dirty:
                return
            if self.sync_writes:
                t0 = time.perf_counter()
                _fdatasync(self._fd)
                self.synced_size = self._size
                if self.on_sync is not None:
                    self.on_sync(time.perf_counter() - t0)
            self._dirty = False

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop the entries at list position `entryFrom` and after (a conflicting suffix)."""
        with self._lock:
            self._check_open()
            if entryFrom < 0:
                raise ValueError(f"position {entryFrom} < 0")
            if entryFrom >= len(self._terms):
                return
            off = self._offsets[entryFrom]
            os.ftruncate(self._fd, off)
            del self._terms[entryFrom:], self._offsets[entryFrom:]
            if entryFrom <= self._cache_pos:
                self._cache, self._cache_pos, self._cache_size = [], entryFrom, 0
            else:
                del self._cache[entryFrom - self._cache_pos:]
                self._cache_size = sum(map(len, self._cache))
            self._size = off
            if self.sync_writes:
                _fdatasync(self._fd)
                self.synced_size = off
                self._dirty = False
            else:
                self.synced_size = min(self.synced_size, off)

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop the entries before list position `entryTo` (compaction after a snapshot)."""
        with self._lock:
            self._check_open()
            if entryTo > 0:
                self._compact(min(entryTo, len(self._terms)))

    def clear(self) -> None:
        with self._lock:
            self._check_open()
            self._compact(len(self._terms))

    def _compact(self, pos: int) -> None:
        for p in self.also_sync_files + self.also_sync_dirs:
            try:
                fsync_dir(p)   # an O_RDONLY fsync flushes a file as well as a directory
            except FileNotFoundError:
                pass            # no snapshot yet, so none to make durable
        self._replace_log(pos)
        if self._meta_unsynced:
            self._write_meta(durable=True)   # with sync=False the last compaction is what survives
        log.debug("journal %s: compacted to %d entries", self.directory, len(self._terms))

    def _replace_log(self, pos: int) -> None:
        """Atomically replace raft.log with the records from list position `pos` on.

        Written to a temporary file, fsynced, renamed over raft.log and the directory
        fsynced: a kill at any point leaves either the old or the new complete file.
        """
        start = self._offsets[pos] if pos < len(self._offsets) else self._size
        tmp = self.path + TMP_SUFFIX
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _pwrite_all(fd, _LOG_HEADER.pack(LOG_MAGIC, FORMAT_VERSION), 0)
            out, src = LOG_HEADER_SIZE, start
            while src < self._size:
                chunk = os.pread(self._fd, min(COPY_CHUNK_BYTES, self._size - src), src)
                if not chunk:
                    raise OSError(f"{self.path} is shorter than the {self._size} bytes written to it")
                _pwrite_all(fd, chunk, out)
                out, src = out + len(chunk), src + len(chunk)
            os.fsync(fd)
            crash_point("compaction")
            os.replace(tmp, self.path)
            crash_point("compaction-renamed")
        except BaseException:
            os.close(fd)
            raise
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)
        shift = start - LOG_HEADER_SIZE
        self._first_idx += pos
        self._terms = self._terms[pos:]
        self._offsets = array("Q", [o - shift for o in self._offsets[pos:]])
        if pos > self._cache_pos:
            gone = pos - self._cache_pos
            self._cache_size -= sum(map(len, self._cache[:gone]))
            del self._cache[:gone]
        self._cache_pos = max(self._cache_pos - pos, 0)
        self._size = self.synced_size = out
        self._dirty = False
        os.fsync(self._dir_fd)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return LogView(self, range(len(self._terms))[item])
        n = len(self._terms)
        pos = item + n if item < 0 else item
        if not 0 <= pos < n:
            raise IndexError(f"journal position {item} out of range ({n} entries)")
        return self.entry(pos)

    def entry(self, pos: int) -> tuple[bytes, int, int]:
        with self._lock:
            cached = pos - self._cache_pos
            command = self._cache[cached] if cached >= 0 else self._read_command(pos)
            return command, self._first_idx + pos, self._terms[pos]

    def _read_command(self, pos: int) -> bytes:
        off = self._offsets[pos]
        end = self._offsets[pos + 1] if pos + 1 < len(self._offsets) else self._size
        record = os.pread(self._fd, end - off, off)
        want_idx, want_term = self._first_idx + pos, self._terms[pos]
        if len(record) == end - off >= REC_HEADER_SIZE:
            length, crc, idx, term = _REC_HEADER.unpack_from(record, 0)
            command = record[REC_HEADER_SIZE:]
            if (length, idx, term) == (len(command), want_idx, want_term) \
                    and _record_crc(length, idx, term, command) == crc:
                return command
        raise CorruptStateError(self.path, f"record idx {want_idx} no longer reads back as written (changed or cut "
                                           f"on disk while the node ran); stop the node and check the disk", off)

    def __len__(self) -> int:
        return len(self._terms)

    def size_bytes(self) -> int:
        """Bytes of raft.log (entries since the last compaction)."""
        return self._size

    def first_index(self) -> Optional[int]:
        return self._first_idx if self._terms else None

    def last_index(self) -> Optional[int]:
        return self._first_idx + len(self._terms) - 1 if self._terms else None

    # -- term, vote, commit index, extra -----------------------------------------------------
    def setCurrentTerm(self, term: int, votedForNodeId: Optional[str]) -> None:
        if votedForNodeId is not None and not isinstance(votedForNodeId, str):
            raise TypeError(f"votedForNodeId must be a node id string or None, not {votedForNodeId!r}")
        with self._lock:
            self._check_open()
            if term < self._term:
                raise ValueError(f"journal {self.directory}: term would go down from {self._term} to {term}")
            if (term, votedForNodeId) != (self._term, self._voted_for):
                self._term, self._voted_for = term, votedForNodeId
                self._persist_meta()

    def getCurrentTerm(self) -> int:
        return self._term

    def getVotedForNodeId(self) -> Optional[str]:
        return self._voted_for

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        # Only a hint for replay after a restart, so written lazily (onOneSecondTimer).
        with self._lock:
            if raftCommitIndex != self._commit_index:
                self._commit_index = raftCommitIndex
                self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        return self._commit_index

    def get_extra(self, key: str, default: Any = None) -> Any:
        return self._extra.get(key, default)

    def set_extra(self, key: str, value: Any) -> None:
        """Store a msgpack-able value (tuples come back as lists), durably when sync=True."""
        msgpack.packb(value, use_bin_type=True)     # refuse what cannot be stored before changing anything
        with self._lock:
            self._check_open()
            self._extra[key] = value
            self._persist_meta()

    def onOneSecondTimer(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.sync()
            if self._meta_dirty:
                self._persist_meta()

    def _persist_meta(self) -> None:
        if self.sync_writes:
            self.sync()     # a durable commit index must not point past the durable log
        self._write_meta(durable=self.sync_writes)

    def _write_meta(self, durable: bool) -> None:
        body = msgpack.packb({"term": self._term, "voted_for": self._voted_for,
                              "commit_index": self._commit_index, "extra": self._extra}, use_bin_type=True)
        blob = _META_HEADER.pack(META_MAGIC, FORMAT_VERSION, len(body), zlib.crc32(body)) + body
        tmp = self.meta_path + TMP_SUFFIX
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _pwrite_all(fd, blob, 0)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.meta_path)
        self._meta_dirty = False
        if durable:
            os.fsync(self._dir_fd)
            self._synced_meta, self._meta_unsynced = blob, False
        else:
            self._meta_unsynced = True

    # -- lifecycle ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"journal {self.directory} is closed")

    def close(self) -> None:
        """Sync what is pending (as the sync mode allows), write the commit index, close the files."""
        with self._lock:
            if self._closed:
                return
            try:
                self.sync()
                if self._meta_dirty:
                    self._persist_meta()
            finally:
                self._closed = True
                os.close(self._fd)
                os.close(self._dir_fd)   # releases the directory lock

    def _destroy(self) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def power_cut(self) -> None:
        """Test hook: leave the files as a power loss now would, then close.

        Drops the raft.log bytes never fsynced and puts back the last durable raft.meta.
        The process is expected to die right after; appends attempted in between fail.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.ftruncate(self._fd, self.synced_size)
            if self._meta_unsynced and self._synced_meta is not None:
                with open(self.meta_path + TMP_SUFFIX, "wb") as f:
                    f.write(self._synced_meta)
                os.replace(self.meta_path + TMP_SUFFIX, self.meta_path)
            os.close(self._fd)
            os.close(self._dir_fd)


class LogView:
    """Entries `positions` of a journal, read when indexed or iterated. pysyncobj slices
    the log from a position to its end and then takes what fits in one message; a view
    keeps that from reading (or copying) every entry after the position. Slicing a view
    gives a list, as pysyncobj's messages need one. Used right away by the thread that
    took it: a compaction in between would shift the positions."""

    __slots__ = ("_journal", "_positions")

    def __init__(self, journal: RaftJournal, positions: range):
        self._journal, self._positions = journal, positions

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self._journal.entry(p) for p in self._positions[item]]
        return self._journal.entry(self._positions[item])

    def __iter__(self):
        return map(self._journal.entry, self._positions)

    def __eq__(self, other):
        if isinstance(other, (list, LogView)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None


_original_create_journal = None


def install_journal_factory() -> None:
    """Make pysyncobj accept a RaftJournal as `SyncObjConf.journalFile`.

    SyncObj.__init__ is the only user of `conf.journalFile`: it passes it to the name
    `createJournal` in module `pysyncobj.syncobj`, which is replaced here (idempotently).
    File names and None still go to pysyncobj's own factory.
    """
    global _original_create_journal
    if getattr(pysyncobj.syncobj.createJournal, "_raftbroker", False):
        return
    _original_create_journal = pysyncobj.syncobj.createJournal

    def createJournal(journalFile=None):
        if isinstance(journalFile, RaftJournal):
            if journalFile.closed:
                raise RuntimeError(f"journal {journalFile.directory} is closed; open a new RaftJournal")
            return journalFile
        return _original_create_journal(journalFile)

    createJournal._raftbroker = True
    pysyncobj.syncobj.createJournal = createJournal
