"""Commands: everything a client does to a stream or consumer, as data.

A command is applied in a Raft entry that also carries the leader's clock
(`Entry.time_ns`), so a command never needs a timestamp of its own. Commands
travel as msgpack lists `[op, fields]` (see `encode`/`decode`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import msgpack

from jetstream.config import ConsumerConfig, StreamConfig


@dataclass
class Command:
    op: ClassVar[str] = ""

    def to_wire(self) -> list:
        d = {}
        for name in _field_names(type(self)):
            v = getattr(self, name)
            d[name] = v.to_dict() if hasattr(v, "to_dict") else v
        return [self.op, d]


_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


@dataclass
class AddStream(Command):
    op: ClassVar[str] = "stream.add"
    config: StreamConfig = field(default_factory=StreamConfig)


@dataclass
class UpdateStream(Command):
    op: ClassVar[str] = "stream.update"
    config: StreamConfig = field(default_factory=StreamConfig)


@dataclass
class DeleteStream(Command):
    op: ClassVar[str] = "stream.delete"
    stream: str = ""


@dataclass
class PurgeStream(Command):
    op: ClassVar[str] = "stream.purge"
    stream: str = ""
    filter: Optional[str] = None
    seq: Optional[int] = None     # purge everything below seq (exclusive)
    keep: Optional[int] = None    # keep the newest `keep` messages


@dataclass
class Publish(Command):
    """Store a message. Expectations and dedupe travel in headers, as in JetStream
    (Nats-Msg-Id, Nats-Expected-Stream, Nats-Expected-Last-Sequence,
    Nats-Expected-Last-Subject-Sequence, Nats-Expected-Last-Msg-Id, Nats-Rollup)."""
    op: ClassVar[str] = "pub"
    subject: str = ""
    data: bytes = b""
    headers: Optional[dict] = None

    def to_wire(self) -> list:     # most commands are publishes: no field walk
        return ["pub", {"subject": self.subject, "data": self.data, "headers": self.headers}]


@dataclass
class DeleteMsg(Command):
    op: ClassVar[str] = "msg.delete"
    stream: str = ""
    seq: int = 0
    no_erase: bool = True


@dataclass
class AddConsumer(Command):
    op: ClassVar[str] = "consumer.add"
    stream: str = ""
    config: ConsumerConfig = field(default_factory=ConsumerConfig)
    action: str = ""   # "" = create or update, "create", "update"


@dataclass
class DeleteConsumer(Command):
    op: ClassVar[str] = "consumer.delete"
    stream: str = ""
    consumer: str = ""


@dataclass
class NextMsgs(Command):
    """Take the next batch for delivery: redeliveries first, then new messages."""
    op: ClassVar[str] = "consumer.next"
    stream: str = ""
    consumer: str = ""
    batch: int = 1
    max_bytes: int = 0


ACK, NAK, PROGRESS, TERM = "ack", "nak", "progress", "term"


@dataclass
class Ack(Command):
    """Acknowledge one delivered message, by stream sequence. `kind` is ack, nak
    (with optional delay), progress (+WPI) or term (with reason)."""
    op: ClassVar[str] = "consumer.ack"
    stream: str = ""
    consumer: str = ""
    stream_seq: int = 0
    kind: str = ACK
    delay: float = 0.0            # seconds, nak only
    reason: Optional[str] = None  # term only


@dataclass
class Touch(Command):
    """Mark a consumer active (a waiting pull or a bound push subscriber)."""
    op: ClassVar[str] = "consumer.touch"
    stream: str = ""
    consumer: str = ""


@dataclass
class Sweep(Command):
    """Do the time-driven work due at the entry's time: max_age expiry, the
    max_deliver check of expired deliveries, inactive consumer removal,
    dedupe window pruning."""
    op: ClassVar[str] = "sweep"


@dataclass
class Announce(Command):
    """A cluster node's name and the addresses others reach it at; replicated so
    that every node can name the leader and send clients to it."""
    op: ClassVar[str] = "node.announce"
    name: str = ""
    raft: str = ""
    client: str = ""
    http: str = ""
    nats: str = ""


@dataclass
class SourceCopy(Command):
    """What a mirror/source pipeline read from one origin, to store in its stream.

    `msgs` are `[origin_seq, subject, headers, data, ts]` in origin order; those at or
    below the origin's recorded last sequence are dropped, so a replayed batch stores
    nothing twice. `skip_to` says the origin holds nothing else up to that sequence
    (deleted or expired there). With no messages the command is the pipeline's report:
    lag, and the error it meets (origin not found, unreachable, ...) or None."""
    op: ClassVar[str] = "source.copy"
    stream: str = ""
    origin: str = ""                 # origin key (jetstream.config.origin_key)
    runner: str = ""                 # the node that read these; refused unless it is the assigned one
    created: int = 0                 # the origin stream's creation time, its identity
    msgs: list = field(default_factory=list)
    skip_to: int = 0
    lag: int = 0
    error: Optional[dict] = None


@dataclass
class AssignSource(Command):
    """The leader's choice of the node that runs one origin's pipeline."""
    op: ClassVar[str] = "source.assign"
    stream: str = ""
    origin: str = ""
    runner: str = ""


COMMANDS: dict[str, type[Command]] = {c.op: c for c in [
    AddStream, UpdateStream, DeleteStream, PurgeStream, Publish, DeleteMsg, AddConsumer, DeleteConsumer,
    NextMsgs, Ack, Touch, Sweep, Announce, SourceCopy, AssignSource]}


def from_wire(item: list) -> Command:
    op, d = item
    if op == "pub":
        return Publish(d["subject"], d["data"], d.get("headers"))
    cls = COMMANDS[op]
    if cls in (AddStream, UpdateStream):
        d = dict(d, config=StreamConfig.from_dict(d.get("config")))
    elif cls is AddConsumer:
        d = dict(d, config=ConsumerConfig.from_dict(d.get("config")))
    return cls(**d)


def encode(commands: list[Command]) -> bytes:
    return msgpack.packb([c.to_wire() for c in commands], use_bin_type=True)


def decode(blob: bytes) -> list[Command]:
    return [from_wire(x) for x in msgpack.unpackb(blob, raw=False)]


@dataclass
class Entry:
    """One Raft log entry: its index, the leader's clock, and the commands it carries."""
    index: int
    time_ns: int
    commands: list
