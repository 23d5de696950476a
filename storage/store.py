"""The store: applies entries of commands to the partitions, atomically, and answers reads.

`Store.apply(entry)` is deterministic: it reads only the entry and the state
(the entry carries the leader's clock), and it lands every change of the
entry together with the entry's index in one write per partition. An entry
whose index a partition already holds is not applied to it again.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import msgpack

from . import keys as K
from jetstream import subjects as subj
from .commands import (
    ACK, NAK, PROGRESS, TERM, Ack, AddConsumer, AddStream, Announce, AssignSource, DeleteConsumer, DeleteMsg,
    DeleteStream, Entry, NextMsgs, Publish, PurgeStream, SourceCopy, Sweep, Touch, UpdateStream,
)
from jetstream.config import (
    StreamConfig, check_consumer_update, check_stream_update, normalize_consumer_config, normalize_stream_config,
    normalize_update_config, ns,
)
from jetstream.errors import (
    BadRequestError, ConsumerAlreadyExistsError, ConsumerDoesNotExistError, ConsumerNotFoundError,
    HeaderExceedsMaximumError, InternalError, JSError, MaximumConsumersLimitError, MessageSizeExceedsError,
    NoMessageFoundError, NoStreamForSubjectError, SequenceNotFoundError,
    StreamMsgDeleteFailedError, StreamNameExistError, StreamNotFoundError, StreamNotMatchError,
    StreamPurgeFailedError, StreamRollupFailedError, StreamSealedError, StreamStoreFailedError,
    StreamSubjectOverlapError, WrongLastMsgIDError, WrongLastSequenceError, js_error,
)
from jetstream.results import (
    AckResult, ConsumerInfo, PubAck, PurgeResponse, StoredMsg, StreamInfo, StreamState,
)
from .origins import MIRROR_ERR, SOURCE_ERR, SOURCE_HEADER, origins_of, source_header, source_infos, sync_origins
from .consumer import ConsumerRec
from .errors import StoreCorruptError
from .events import Event
from .kv import MemoryBackend, RocksBackend, Tx
from .partition import Partition
from .stream import StreamRec, header_len, stored_size, unpack_msg

log = logging.getLogger("raftbroker.storage")

MAX_HEADER_BYTES = 65535
ROUTE_CACHE_MAX = 100_000
# The publish headers that ask for a check; any other header (a msg id included) is data.
_CHECKED_HEADERS = frozenset({"Nats-Expected-Stream", "Nats-Expected-Last-Subject-Sequence",
                              "Nats-Expected-Last-Sequence", "Nats-Expected-Last-Msg-Id", "Nats-Rollup"})


@dataclass
class StoreOptions:
    sync: bool = True                   # fsync every entry's write batch (file partition)
    wal: bool = True                    # RocksDB's write-ahead log; off where a Raft journal is the log
    max_replicas: int = 1               # the cluster size; num_replicas above it is refused
    max_payload: int = 8 * 1024 * 1024  # bytes of headers + data in one message
    max_ack_pending_limit: int = 100_000
    max_batch: int = 10_000             # messages one NextMsgs may hand out
    verify_on_open: bool = True         # read every key with checksums before serving


@dataclass
class ApplyResult:
    index: int
    results: list                        # per command: a result, a JSError, or None if not applied here
    events: list = field(default_factory=list)
    applied: bool = True                 # False when every partition already held this index


class _Skip(Exception):
    """The command belongs to a partition this entry is not applied to (replay)."""


class _CommandCrashed(Exception):
    def __init__(self, pos: int, error: BaseException):
        super().__init__(pos, error)
        self.pos = pos
        self.error = error


class _Ctx:
    __slots__ = ("index", "now", "replay", "pos", "events", "stored")

    def __init__(self, index: int, now: int, replay: bool):
        self.index = index
        self.now = now
        self.replay = replay      # only the memory partition takes this entry
        self.pos = 0
        self.events: list[Event] = []
        self.stored: dict[str, int] = {}


class Store:
    def __init__(self, path: str, options: StoreOptions, rocks: RocksBackend, memory_image: Optional[bytes]):
        self.path = path
        self.options = options
        self.file = Partition("file", rocks)
        self.mem = Partition("memory", MemoryBackend())
        self._routes: dict[str, Optional[StreamRec]] = {}
        self.file.load()
        if memory_image is not None:
            self.load_memory_image(memory_image)
        else:
            self.mem.load()
        self._handlers = {
            AddStream: self._add_stream, UpdateStream: self._update_stream, DeleteStream: self._delete_stream,
            PurgeStream: self._purge_stream, Publish: self._publish, DeleteMsg: self._delete_msg,
            AddConsumer: self._add_consumer, DeleteConsumer: self._delete_consumer, NextMsgs: self._next_msgs,
            Ack: self._ack, Touch: self._touch, Sweep: self._sweep, Announce: self._announce,
            SourceCopy: self._source_copy, AssignSource: self._assign_source,
        }

    @classmethod
    def open(cls, path: str, options: StoreOptions | None = None, memory_image: bytes | None = None) -> "Store":
        """Open (or create) the store in `path`.

        Memory streams are not in RocksDB: a restarted process starts with the
        memory partition empty at index 0, or at the index of `memory_image` (the
        memory part of a snapshot). The Raft layer then re-applies the journal from
        that index; `apply` re-applies only the memory partition's part of entries
        the file partition already holds."""
        options = options or StoreOptions()
        os.makedirs(path, exist_ok=True)
        rocks = RocksBackend(os.path.join(path, "rocks"), sync=options.sync, wal=options.wal)
        if options.verify_on_open:
            n = rocks.verify()
            log.info("store verified", extra={"keys": n, "path": path})
        return cls(path, options, rocks, memory_image)

    def close(self) -> None:
        self.file.backend.close()

    @property
    def applied_index(self) -> int:
        return self.file.applied

    @property
    def memory_applied_index(self) -> int:
        return self.mem.applied

    @property
    def time_ns(self) -> int:
        return self.file.time_ns

    # == applying ===================================================================
    def apply(self, entry: Entry) -> ApplyResult:
        live = [p for p in (self.file, self.mem) if entry.index > p.applied]
        if not live:
            return ApplyResult(entry.index, [None] * len(entry.commands), applied=False)
        failed: dict[int, BaseException] = {}
        while True:
            try:
                return self._apply_once(entry, live, failed)
            except _CommandCrashed as crash:
                # A bug in one command must not wedge the log or leave half a command
                # behind: drop everything this entry staged, rebuild the records from
                # the backends, and apply the entry again with that command failed.
                # Every replica runs the same code on the same state, so all of them
                # fail the same command the same way.
                log.exception("command crashed while applying", extra={"index": entry.index, "pos": crash.pos},
                              exc_info=crash.error)
                failed[crash.pos] = crash.error
                self.file.load()
                self.mem.load()
                self._routes.clear()

    def _apply_once(self, entry: Entry, live: list[Partition], failed: dict) -> ApplyResult:
        replay = self.file not in live
        now = max([entry.time_ns] + [p.time_ns for p in live])
        ctx = _Ctx(entry.index, now, replay)
        results = []
        for pos, cmd in enumerate(entry.commands):
            ctx.pos = pos
            if pos in failed:
                results.append(InternalError(f"internal error while applying command: {failed[pos]!r}"))
                continue
            try:
                handler = self._handlers[type(cmd)]
            except KeyError:
                results.append(BadRequestError(f"unknown command {type(cmd).__name__}"))
                continue
            try:
                results.append(handler(cmd, ctx))
            except JSError as e:
                results.append(e)
            except _Skip:
                results.append(None)
            except StoreCorruptError:
                raise
            except Exception as e:  # noqa: BLE001 - see apply()
                raise _CommandCrashed(pos, e) from e
        for name, seq in ctx.stored.items():
            ctx.events.append(Event("stored", name, stream_seq=seq))
        for p in live:
            p.stage(entry.index, now)
        # File first: if the process dies between the two, the memory partition is
        # lost anyway, and the file partition never claims an index it lacks.
        for p in live:
            p.commit()
        return ApplyResult(entry.index, results, ctx.events)

    # == lookups ======================================================================
    def _part(self, st: StreamRec) -> Partition:
        return self.mem if st.storage == "memory" else self.file

    def _find(self, name: str) -> Optional[StreamRec]:
        return self.file.streams.get(name) or self.mem.streams.get(name)

    def _stream(self, ctx: _Ctx, name: str) -> tuple[StreamRec, Tx]:
        if ctx.replay:
            st = self.mem.streams.get(name)
            if st is None:
                raise _Skip()
        else:
            st = self._find(name)
            if st is None:
                raise StreamNotFoundError()
        part = self._part(st)
        part.touched.add(name)
        return st, part.tx

    def _consumer(self, ctx: _Ctx, stream: str, name: str) -> tuple[StreamRec, Tx, ConsumerRec]:
        st, tx = self._stream(ctx, stream)
        c = st.consumers.get(name)
        if c is None:
            raise ConsumerNotFoundError()
        return st, tx, c

    def _route(self, ctx: _Ctx, subject: str) -> StreamRec:
        if ctx.replay:
            # The file catalogue is ahead of this entry; the memory one is at it.
            for st in self.mem.streams.values():
                if st.captures(subject):
                    return st
            raise _Skip()
        st = self._routes.get(subject, False)
        if st is False:
            st = next((s for p in (self.file, self.mem) for s in p.streams.values() if s.captures(subject)), None)
            if len(self._routes) >= ROUTE_CACHE_MAX:
                self._routes.clear()
            self._routes[subject] = st
        if st is None:
            raise NoStreamForSubjectError()
        return st

    def _cross_check(self, ctx: _Ctx, check) -> None:
        """Run `check` (conflicts of a memory stream with file streams) once, and
        record its verdict in the file partition: a later replay of this entry into
        the memory partition cannot see the file streams as they were then."""
        key = K.verdict_key(ctx.index, ctx.pos)
        if ctx.replay:
            raw = self.file.backend.get(key)
            if raw is None:
                raise StoreCorruptError(f"verdict for entry {ctx.index} command {ctx.pos} is missing; "
                                        "the memory streams cannot be rebuilt from this journal. Restore the node "
                                        "from a snapshot (wipe its data directory and let it rejoin).")
            verdict = msgpack.unpackb(raw, raw=False)
        else:
            try:
                check()
                verdict = None
            except JSError as e:
                verdict = e.to_wire()
            self.file.tx.put(key, msgpack.packb(verdict))
        if verdict:
            raise JSError.from_wire(verdict)

    def prune_verdicts(self, up_to_index: int) -> None:
        """Drop verdicts a snapshot at `up_to_index` makes unnecessary."""
        self.file.backend.commit({}, [(K.verdict_key(0, 0), K.verdict_key(up_to_index + 1, 0))])

    # == stream commands =============================================================
    def _check_catalog(self, ctx: _Ctx, cfg, exclude: Optional[str]) -> None:
        def conflicts(part: Partition) -> None:
            other = part.streams.get(cfg.name)
            if other is not None and cfg.name != exclude:
                raise StreamNameExistError()
            for st in part.streams.values():
                if st.name == exclude:
                    continue
                if any(subj.overlaps(a, b) for a in cfg.subjects for b in st.config.subjects):
                    raise StreamSubjectOverlapError()

        if cfg.storage == "memory":
            conflicts(self.mem)
            self._cross_check(ctx, lambda: conflicts(self.file))
        else:
            conflicts(self.file)
            conflicts(self.mem)

    def _stream_info(self, st: StreamRec) -> StreamInfo:
        mirror, sources = source_infos(st.config, st.origins, self.file.time_ns)
        return StreamInfo(config=st.config, created=st.created, ts=self.file.time_ns, state=StreamState(
            messages=st.msgs, bytes=st.bytes, first_seq=st.first_seq, first_ts=st.first_ts, last_seq=st.last_seq,
            last_ts=st.last_ts, num_subjects=st.num_subjects, num_deleted=st.num_deleted,
            consumer_count=len(st.consumers)), mirror=mirror, sources=sources)

    def _add_stream(self, cmd: AddStream, ctx: _Ctx) -> StreamInfo:
        cfg = normalize_stream_config(cmd.config, self.options.max_replicas)
        part = self.mem if cfg.storage == "memory" else self.file
        if ctx.replay and part is self.file:
            raise _Skip()
        existing = part.streams.get(cfg.name)
        if existing is not None:
            if existing.config == cfg:
                return self._stream_info(existing)   # creating the same stream again is a no-op
            raise StreamNameExistError()
        self._check_catalog(ctx, cfg, exclude=None)
        st = StreamRec(part.next_sid, cfg, ctx.now)
        if cfg.first_seq > 1:
            st.first_seq, st.last_seq = cfg.first_seq, cfg.first_seq - 1
        part.next_sid += 1
        part.add_stream(st)
        self._routes.clear()
        ctx.events.append(Event("stream_changed", st.name))
        return self._stream_info(st)

    def _update_stream(self, cmd: UpdateStream, ctx: _Ctx) -> StreamInfo:
        st, tx = self._stream(ctx, cmd.config.name or "")
        new = check_stream_update(st.config, normalize_update_config(cmd.config, self.options.max_replicas))
        self._check_catalog(ctx, new, exclude=st.name)
        old = st.config
        st.config = new
        sync_origins(st.origins, new)
        st.dirty = True
        self._routes.clear()
        st.enforce_limits(tx)
        st.enforce_per_subject_limit_all(tx)
        if old.retention != new.retention and new.retention == "interest" and st.consumers:
            # Like JetStream, re-check what existing consumers have acked; with no
            # consumer yet there is nothing to decide from, so nothing is dropped.
            self._drop_uninterested(st, tx)
        ctx.events.append(Event("stream_changed", st.name))
        return self._stream_info(st)

    def _delete_stream(self, cmd: DeleteStream, ctx: _Ctx) -> bool:
        st, _tx = self._stream(ctx, cmd.stream)
        self._part(st).drop_stream(st)
        self._routes.clear()
        ctx.stored.pop(st.name, None)
        ctx.events.append(Event("stream_deleted", st.name))
        return True

    def _purge_stream(self, cmd: PurgeStream, ctx: _Ctx) -> PurgeResponse:
        st, tx = self._stream(ctx, cmd.stream)
        if cmd.seq and cmd.keep:
            raise BadRequestError()
        if st.config.sealed:
            raise StreamSealedError()
        if st.config.deny_purge:
            raise StreamPurgeFailedError("stream purge not permitted")
        if cmd.filter is not None and not subj.is_valid_subject(cmd.filter):
            raise BadRequestError(f"invalid purge filter {cmd.filter!r}")
        return PurgeResponse(True, self._purge(st, tx, cmd.filter, cmd.seq, cmd.keep))

    def _purge(self, st: StreamRec, tx: Tx, filt: Optional[str], seq: Optional[int], keep: Optional[int]) -> int:
        if not filt and not seq and not keep:
            return st.purge_all(tx)
        matching = [s for s, m in st.scan(tx, st.first_seq) if not filt or subj.matches(filt, m[0])]
        if keep:
            victims = matching[:-keep] if keep < len(matching) else []
        elif seq:
            victims = [s for s in matching if s < seq]
        else:
            victims = matching
        for s in victims:
            st.remove_msg(tx, s)
        return len(victims)

    def _delete_msg(self, cmd: DeleteMsg, ctx: _Ctx) -> bool:
        st, tx = self._stream(ctx, cmd.stream)
        if st.config.sealed:
            raise StreamSealedError()
        if st.config.deny_delete:
            raise StreamMsgDeleteFailedError("message delete not permitted")
        if not st.remove_msg(tx, cmd.seq):
            raise SequenceNotFoundError(f"sequence {cmd.seq} not found")
        return True

    # == publish ==================================================================
    def _publish(self, cmd: Publish, ctx: _Ctx) -> PubAck:
        subject = cmd.subject
        # A subject in the route cache was validated when it was cached (only
        # _publish fills it, after this check), so the check is skipped for it. A `*` or a
        # final `>` token is a literal here, as in nats-server (nats-py's KV writes keys
        # such as "x.*" with validate_keys=False, and purges "hello.*" with a rollup).
        if not isinstance(subject, str) or (
                subject not in self._routes and not subj.is_valid_subject(subject)):
            raise BadRequestError("invalid publish subject")
        st = self._route(ctx, subject)
        part = self._part(st)
        tx = part.tx
        cfg = st.config
        t = cfg.subject_transform
        if t is not None and subj.matches(t.src, subject):
            subject = subj.transform(t.src, t.dest, subject)     # stored, and matched by consumers, as this
        now = ctx.now
        data = cmd.data
        headers = cmd.headers or None
        if not isinstance(data, bytes):
            raise BadRequestError("message data must be bytes")
        if cfg.sealed:
            raise StreamSealedError()
        if cfg.max_age and st.msgs:
            # Messages past max_age at this entry's time are already gone in JetStream
            # (its age timer), so expectations and discard-new limits must not see them.
            part.touched.add(cfg.name)
            st.expire(tx, now)
        msg_id = rollup = None
        checked = False
        if headers:
            if not isinstance(headers, dict):
                raise BadRequestError("headers must map strings to strings")
            for k, v in headers.items():
                if not (isinstance(k, str) and isinstance(v, str)):
                    raise BadRequestError("headers must map strings to strings")
            # Most publishes carry a msg id and nothing else to check.
            checked = not _CHECKED_HEADERS.isdisjoint(headers)
            # An empty expectation header is no expectation (JetStream checks `!= ""`).
            expected = headers.get("Nats-Expected-Stream") if checked else None
            if expected and expected != cfg.name:
                raise StreamNotMatchError()
            msg_id = headers.get("Nats-Msg-Id") or None
            if msg_id is not None:
                dup = st.dedup_lookup(tx, msg_id, now)
                if dup is not None:
                    return PubAck(cfg.name, dup, duplicate=True)
        if checked:
            expected = headers.get("Nats-Expected-Last-Subject-Sequence")
            if expected is not None:
                last = st.last_seq_for_subject(tx, subject)
                if _as_int(expected) != last:
                    raise WrongLastSequenceError(f"wrong last sequence: {last}")
            expected = headers.get("Nats-Expected-Last-Sequence")
            if expected and _as_int(expected) != st.last_seq:
                raise WrongLastSequenceError(f"wrong last sequence: {st.last_seq}")
            expected = headers.get("Nats-Expected-Last-Msg-Id")
            if expected and expected != (st.last_msg_id or ""):
                raise WrongLastMsgIDError(f"wrong last msg ID: {st.last_msg_id or ''}")
            rollup = headers.get("Nats-Rollup")
            if rollup is not None:
                if not cfg.allow_rollup_hdrs or cfg.deny_purge:
                    raise StreamRollupFailedError("rollup not permitted")
                if rollup not in ("sub", "all"):
                    raise StreamRollupFailedError(f"rollup value invalid: {rollup!r}")
        size = self._check_admit(st, tx, subject, headers, data)
        part.touched.add(cfg.name)
        last = st.last_seq
        seq, stored = self._store(st, tx, subject, headers, data, now, size)
        if stored and cfg.republish and subj.matches(cfg.republish.src, subject):
            ctx.events.append(_republished(cfg, subject, headers, data, seq, last, now))
        if stored:
            if rollup == "sub":
                self._purge(st, tx, subject, None, 1)
            elif rollup == "all":
                self._purge(st, tx, None, None, 1)
            st.enforce_limits(tx, subject)
        if msg_id is not None:
            st.dedup_record(tx, msg_id, seq, now)
        st.last_msg_id = msg_id
        ctx.stored[cfg.name] = seq
        return PubAck(cfg.name, seq)

    def _check_admit(self, st: StreamRec, tx: Tx, subject: str, headers: Optional[dict], data: bytes) -> int:
        """The size and discard-new limits a message must pass to be stored; its stored size."""
        cfg = st.config
        hlen = header_len(headers)
        if hlen > MAX_HEADER_BYTES:
            raise HeaderExceedsMaximumError()
        payload = hlen + len(data)
        if payload > self.options.max_payload or (cfg.max_msg_size >= 0 and payload > cfg.max_msg_size):
            raise MessageSizeExceedsError()
        size = stored_size(subject, hlen, data, cfg.storage)
        if cfg.discard == "new":
            self._check_discard_new(st, tx, subject, size)
        return size

    @staticmethod
    def _store(st: StreamRec, tx: Tx, subject: str, headers: Optional[dict], data: bytes,
               ts: int, size: int) -> tuple[int, bool]:
        """(sequence, whether the message was kept)."""
        if st.config.retention == "interest" and not any(c.matches(subject) for c in st.consumers.values()):
            # No consumer would ever ack it: JetStream does not keep it, but the
            # sequence is used and the publisher still gets its ack.
            return st.skip(ts), False
        seq = st.store(tx, subject, headers, data, ts, size)
        for c in st.consumers.values():
            c.on_stored(seq, subject)
        return seq, True

    def _check_discard_new(self, st: StreamRec, tx: Tx, subject: str, size: int) -> None:
        cfg = st.config
        at_subject_limit = cfg.max_msgs_per_subject > 0 and \
            st.subject_count(tx, subject) >= cfg.max_msgs_per_subject
        if at_subject_limit and cfg.discard_new_per_subject:
            raise StreamStoreFailedError("maximum messages per subject exceeded")
        if cfg.max_msgs > 0 and st.msgs >= cfg.max_msgs and not at_subject_limit:
            raise StreamStoreFailedError("maximum messages exceeded")
        if cfg.max_bytes > 0 and st.bytes + size >= cfg.max_bytes:
            raise StreamStoreFailedError("maximum bytes exceeded")

    # == mirrors and sources ==========================================================
    def _origin(self, ctx: _Ctx, stream: str, origin: str):
        st, tx = self._stream(ctx, stream)
        state = st.origins.get(origin)
        if state is None:
            raise BadRequestError(f"stream {stream} has no mirror or source {origin!r}")
        return st, tx, state, origins_of(st.config)[origin]

    def _assign_source(self, cmd: AssignSource, ctx: _Ctx) -> bool:
        st, _tx, state, _o = self._origin(ctx, cmd.stream, cmd.origin)
        state.runner = cmd.runner
        st.dirty = True
        return True

    def _source_copy(self, cmd: SourceCopy, ctx: _Ctx) -> dict:
        """Store what a pipeline copied; returns the origin's state after it."""
        st, tx, state, origin = self._origin(ctx, cmd.stream, cmd.origin)
        err_code = MIRROR_ERR if st.config.mirror else SOURCE_ERR
        if cmd.runner != state.runner:
            raise js_error(err_code, f"{cmd.runner or 'this node'} is not the runner of {cmd.origin}'s pipeline "
                                     f"(it is {state.runner or 'nobody'})", 409)
        st.dirty = True
        state.contact = ctx.now
        if cmd.created and state.created and cmd.created != state.created:
            state.error = js_error(err_code, f"origin stream {origin.name} was deleted and created again (created "
                                             f"{cmd.created}, was {state.created}): nothing more is copied until "
                                             f"the {'mirror' if st.config.mirror else 'source'} is removed and added "
                                             "again", 409).to_wire()
            return state.to_dict()
        state.created = cmd.created or state.created
        error = cmd.error
        for oseq, subject, headers, data, ts in cmd.msgs:
            if oseq <= state.last:
                continue
            try:
                if st.config.mirror:
                    if oseq <= st.last_seq:
                        raise StreamStoreFailedError(f"mirror is at sequence {st.last_seq}, past origin "
                                                     f"sequence {oseq}")
                    st.skip_to(oseq - 1, ts)
                else:
                    subject = origin.transform(subject)
                    headers = dict(headers or {}, **{SOURCE_HEADER: source_header(origin, oseq, subject)})
                    ts = ctx.now
                size = self._check_admit(st, tx, subject, headers, data)
            except JSError as e:
                # A limit of this stream (max_msgs with discard new, message size) stops
                # the copy here, reported, and the pipeline retries from this message.
                error = e.to_wire()
                break
            seq, stored = self._store(st, tx, subject, headers, data, ts, size)
            if stored:
                st.enforce_limits(tx, subject)
            ctx.stored[st.name] = seq
            state.last = oseq
        else:
            if cmd.skip_to > state.last:
                if st.config.mirror:
                    st.skip_to(cmd.skip_to, ctx.now)
                state.last = cmd.skip_to
        state.lag = max(0, cmd.lag)
        state.error = error
        return state.to_dict()

    # == consumers ====================================================================
    def _add_consumer(self, cmd: AddConsumer, ctx: _Ctx) -> ConsumerInfo:
        st, tx = self._stream(ctx, cmd.stream)
        cfg = normalize_consumer_config(cmd.config, st.config, self.options.max_ack_pending_limit)
        if not cfg.name:
            cfg.name = _ephemeral_name(st.name, ctx.index, ctx.pos)
        existing = st.consumers.get(cfg.name)
        if existing is not None:
            if existing.config == cfg:
                return existing.info(st.name)
            if cmd.action == "create":
                raise ConsumerAlreadyExistsError()
            check_consumer_update(existing.config, cfg)
            self._check_workqueue_unique(st, cfg)
            refilter = existing.config.filters != cfg.filters
            existing.set_config(cfg)
            if refilter:
                existing.num_pending = existing.count_pending(st, tx)
            existing.dirty = True
            return existing.info(st.name)
        if cmd.action == "update":
            raise ConsumerDoesNotExistError()
        if 0 < st.config.max_consumers <= len(st.consumers):
            raise MaximumConsumersLimitError()
        self._check_workqueue_unique(st, cfg)
        c = ConsumerRec(st.next_cid, cfg, ctx.now)
        st.next_cid += 1
        st.dirty = True
        c.init_position(st, tx)
        st.consumers[cfg.name] = c
        return c.info(st.name)

    @staticmethod
    def _check_workqueue_unique(st: StreamRec, cfg) -> None:
        if st.config.retention != "workqueue":
            return
        others = [c for c in st.consumers.values() if c.name != cfg.name]
        if not others:
            return
        if not cfg.filters or any(not c.filters for c in others):
            raise js_error(10099, "multiple non-filtered consumers not allowed on workqueue stream")
        for c in others:
            if any(subj.overlaps(a, b) for a in cfg.filters for b in c.filters):
                raise js_error(10100, "filtered consumer not unique on workqueue stream")

    def _delete_consumer(self, cmd: DeleteConsumer, ctx: _Ctx) -> bool:
        st, tx, c = self._consumer(ctx, cmd.stream, cmd.consumer)
        self._remove_consumer(st, tx, c, ctx)
        return True

    def _remove_consumer(self, st: StreamRec, tx: Tx, c: ConsumerRec, ctx: _Ctx) -> None:
        del st.consumers[c.name]
        tx.delete(K.consumer_key(st.sid, c.name))
        tx.delete_range(*K.prefix_range(K.pending_prefix(st.sid, c.cid)))
        st.dirty = True
        ctx.events.append(Event("consumer_deleted", st.name, c.name))
        if st.config.retention == "interest":
            self._drop_uninterested(st, tx)

    def _drop_uninterested(self, st: StreamRec, tx: Tx) -> None:
        """Interest retention: remove every message no consumer still needs."""
        for seq, msg in list(st.scan(tx, st.first_seq)):
            if not any(c.needs_ack(seq, msg[0]) for c in st.consumers.values()):
                st.remove_msg(tx, seq, msg)

    def _release(self, st: StreamRec, tx: Tx, seqs) -> None:
        """Interest and workqueue retention: drop acked messages nobody needs any more."""
        if st.config.retention == "limits":
            return
        for seq in seqs:
            msg = st.get(tx, seq)
            if msg is not None and not any(c.needs_ack(seq, msg[0]) for c in st.consumers.values()):
                st.remove_msg(tx, seq, msg)

    def _next_msgs(self, cmd: NextMsgs, ctx: _Ctx) -> list:
        st, tx, c = self._consumer(ctx, cmd.stream, cmd.consumer)
        if not isinstance(cmd.batch, int) or cmd.batch < 1:
            raise BadRequestError("batch must be a positive integer")
        batch = min(cmd.batch, self.options.max_batch)
        out = c.next_batch(st, tx, ctx.now, batch, cmd.max_bytes or 0, ctx.events)
        if not c.acks:
            self._release(st, tx, [m.stream_seq for m in out])
        return out

    def _ack(self, cmd: Ack, ctx: _Ctx) -> AckResult:
        st, tx, c = self._consumer(ctx, cmd.stream, cmd.consumer)
        c.last_active = ctx.now
        c.dirty = True
        seq = cmd.stream_seq
        if cmd.kind == ACK:
            done = c.ack(seq)
            self._release(st, tx, done)
            return AckResult(bool(done))
        if cmd.kind == NAK:
            delay = cmd.delay or 0
            if not isinstance(delay, (int, float)) or not math.isfinite(delay):
                raise BadRequestError("nak delay must be a finite number of seconds")
            return AckResult(c.nak(seq, ctx.now, ns(delay)))
        if cmd.kind == PROGRESS:
            return AckResult(c.progress(seq, ctx.now))
        if cmd.kind == TERM:
            p = c.pending.get(seq)
            if p is None:
                return AckResult(False)
            c.forget(seq)
            ctx.events.append(Event("terminated", st.name, c.name, stream_seq=seq, deliveries=p[1],
                                    reason=cmd.reason))
            self._release(st, tx, [seq])
            return AckResult(True)
        raise BadRequestError(f"unknown ack kind {cmd.kind!r}")

    def _touch(self, cmd: Touch, ctx: _Ctx) -> bool:
        _st, _tx, c = self._consumer(ctx, cmd.stream, cmd.consumer)
        c.last_active = ctx.now
        c.dirty = True
        return True

    def _announce(self, cmd: Announce, ctx: _Ctx) -> bool:
        if not ctx.replay:
            self.file.tx.put(K.node_key(cmd.name), msgpack.packb(
                {"raft": cmd.raft, "client": cmd.client, "http": cmd.http, "nats": cmd.nats}))
        return True

    def origin_rows(self) -> list[tuple]:
        """(stream, origin key, StreamSource, is mirror, runner) for every mirror and source."""
        return [(st.name, key, o, bool(st.config.mirror), st.origins[key].runner)
                for p in (self.file, self.mem) for st in p.streams.values()
                for key, o in origins_of(st.config).items() if key in st.origins]

    def nodes(self) -> dict[str, dict]:
        """The cluster's node directory: name -> {raft, client, http, nats}."""
        return {k[len(K.NODE):].decode(): msgpack.unpackb(v)
                for k, v in Tx(self.file.backend).scan(*K.prefix_range(K.NODE))}

    def _sweep(self, cmd: Sweep, ctx: _Ctx) -> int:
        """Returns how many consumers were removed for inactivity."""
        removed = 0
        parts = [self.mem] if ctx.replay else [self.file, self.mem]
        for part in parts:
            for st in list(part.streams.values()):
                tx = part.tx
                part.touched.add(st.name)
                st.expire(tx, ctx.now)
                st.dedup_prune(tx, ctx.now)
                for c in list(st.consumers.values()):
                    if c.acks:
                        c.expire_deliveries(st, ctx.now, ctx.events)
                    limit = c.config.inactive_threshold
                    if limit and ctx.now - c.last_active > ns(limit):
                        self._remove_consumer(st, tx, c, ctx)
                        removed += 1
        return removed

    # == reads =========================================================================
    def _read_stream(self, name: str) -> tuple[StreamRec, Tx]:
        st = self._find(name)
        if st is None:
            raise StreamNotFoundError()
        return st, Tx(self._part(st).backend)

    def stream_info(self, name: str) -> StreamInfo:
        return self._stream_info(self._read_stream(name)[0])

    def stream_names(self, subject: Optional[str] = None) -> list[str]:
        names = [st.name for p in (self.file, self.mem) for st in p.streams.values()
                 if subject is None or any(subj.overlaps(subject, s) for s in st.config.subjects)]
        return sorted(names)

    def find_stream(self, subject: str) -> Optional[str]:
        for p in (self.file, self.mem):
            for st in p.streams.values():
                if st.captures(subject):
                    return st.name
        return None

    def _read_consumer(self, stream: str, name: str) -> ConsumerRec:
        c = self._read_stream(stream)[0].consumers.get(name)
        if c is None:
            raise ConsumerNotFoundError()
        return c

    def consumer_info(self, stream: str, name: str) -> ConsumerInfo:
        return self._read_consumer(stream, name).info(stream)

    def consumer_work(self, stream: str, name: str, now: int) -> tuple[bool, Optional[int]]:
        return self._read_consumer(stream, name).work(now)

    def consumer_names(self, stream: str) -> list[str]:
        return sorted(self._read_stream(stream)[0].consumers)

    def stream_subjects(self, name: str) -> dict[str, int]:
        st, tx = self._read_stream(name)
        return dict(st.subjects(tx))

    def get_msg(self, stream: str, seq: Optional[int] = None, last_by_subj: Optional[str] = None,
                next_by_subj: Optional[str] = None) -> StoredMsg:
        if (seq and last_by_subj) or (last_by_subj and next_by_subj) or not (seq or last_by_subj or next_by_subj):
            raise BadRequestError()
        st, tx = self._read_stream(stream)
        found = None
        if last_by_subj:
            if subj.is_literal(last_by_subj):
                s = st.last_seq_for_subject(tx, last_by_subj)
                found = (s, st.get(tx, s)) if s else None
            else:
                found = next(((s, m) for s, m in st.scan(tx, st.first_seq, reverse=True)
                              if subj.matches(last_by_subj, m[0])), None)
        elif next_by_subj:
            found = next(((s, m) for s, m in st.scan(tx, seq or 0) if subj.matches(next_by_subj, m[0])), None)
        else:
            m = st.get(tx, seq)
            found = (seq, m) if m is not None else None
        if not found or found[1] is None:
            raise NoMessageFoundError()
        s, (subject, headers, data, ts) = found
        return StoredMsg(stream=st.name, subject=subject, seq=s, data=data, headers=headers, time=ts)

    def digest(self) -> dict[str, str]:
        """Per stream, a digest of its messages, counters and consumer states."""
        return self.digest_view()()

    def digest_view(self):
        """What `digest` hashes, taken now, as a function that hashes it later. Taking it
        is cheap (metadata and a frozen view of the messages); the hashing may then run
        without the apply lock: a read that holds the lock for seconds stops this node
        applying entries, and a node that cannot apply stops answering its leader."""
        parts = []
        for p in (self.file, self.mem):
            frozen = p.backend.frozen()
            for st in p.streams.values():
                info = self._stream_info(st).to_dict()
                info.pop("ts", None)
                consumers = [st.consumers[name].info(st.name).to_dict() for name in sorted(st.consumers)]
                parts.append((st.name, st.sid, st.first_seq, st.last_seq, info, consumers, frozen))

        def compute() -> dict[str, str]:
            out = {}
            for name, sid, first, last, info, consumers, frozen in parts:
                h = hashlib.sha256(msgpack.packb(info))
                for seq in range(max(first, 1), last + 1):
                    raw = frozen.get(K.msg_key(sid, seq))
                    if raw is not None:
                        h.update(msgpack.packb((seq, unpack_msg(raw)), use_bin_type=True))
                for c in consumers:
                    h.update(msgpack.packb(c))
                out[name] = h.hexdigest()
            return out
        return compute

    # == snapshots ====================================================================
    def load_memory_image(self, image: bytes) -> None:
        """Replace the memory partition with a snapshot's image (its index with it)."""
        self.mem.backend = MemoryBackend()
        self.mem.backend.load(msgpack.unpackb(image, raw=False, strict_map_key=False)["items"])
        self.mem.load()
        self._routes.clear()

    def memory_image(self) -> bytes:
        return msgpack.packb({"items": self.mem.backend.items()}, use_bin_type=True)

    def snapshot(self, out_path: str, extra: dict[str, bytes] | None = None) -> dict:
        from .snapshot import write_snapshot
        return write_snapshot(self, out_path, extra)


def _as_int(v) -> int:
    # JetStream parses these headers leniently: what is not a number matches no
    # sequence, so the publish fails as a wrong last sequence, not a bad request.
    try:
        return int(v)
    except (TypeError, ValueError):
        return -1


def _ephemeral_name(stream: str, index: int, pos: int) -> str:
    # Deterministic, so every replica names the ephemeral consumer alike.
    return hashlib.sha256(f"{stream}\x00{index}\x00{pos}".encode()).hexdigest()[:12].upper()


def _republished(cfg: StreamConfig, subject: str, headers: Optional[dict], data: bytes, seq: int, last: int,
                 ts: int) -> Event:
    """The core message a stream's `republish` sends for a stored message (its leader
    sends it, at most once; the time header is added there, in JSON's format)."""
    r = cfg.republish
    out = dict(headers or {})
    out.update({"Nats-Stream": cfg.name, "Nats-Subject": subject, "Nats-Sequence": str(seq),
                "Nats-Last-Sequence": str(last)})
    if r.headers_only:
        out["Nats-Msg-Size"] = str(len(data))
        data = b""
    return Event("republish", cfg.name, stream_seq=seq, subject=subj.transform(r.src, r.dest, subject),
                 headers=out, data=data, time=ts)
