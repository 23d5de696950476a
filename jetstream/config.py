"""Stream and consumer configuration: JetStream's fields, defaults and rules.

Public durations keep JetStream's names and are seconds as floats
(`max_age`, `duplicate_window`, `ack_wait`, `backoff`, ...). Validation
returns a normalised copy with every default filled in, or raises the
JSError JetStream would raise.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from . import subjects as subj
from .errors import (
    ConsumerCreateError, InsufficientResourcesError, JSError, ReplicasNotSupportedError,
    StreamInvalidConfigError, js_error,
)
from .model import Base

NS = 1_000_000_000
MAX_NAME_LEN = 255
DEFAULT_DUPLICATE_WINDOW_S = 120.0
MIN_DURATION_S = 0.1
DEFAULT_ACK_WAIT_S = 30.0
DEFAULT_MAX_ACK_PENDING = 1000
DEFAULT_MAX_WAITING = 512
EPHEMERAL_INACTIVE_THRESHOLD_S = 5.0


class RetentionPolicy(str, Enum):
    LIMITS = "limits"
    INTEREST = "interest"
    WORK_QUEUE = "workqueue"


class DiscardPolicy(str, Enum):
    OLD = "old"
    NEW = "new"


class StorageType(str, Enum):
    FILE = "file"
    MEMORY = "memory"


class DeliverPolicy(str, Enum):
    ALL = "all"
    LAST = "last"
    NEW = "new"
    BY_START_SEQUENCE = "by_start_sequence"
    BY_START_TIME = "by_start_time"
    LAST_PER_SUBJECT = "last_per_subject"


class AckPolicy(str, Enum):
    NONE = "none"
    ALL = "all"
    EXPLICIT = "explicit"


class ReplayPolicy(str, Enum):
    INSTANT = "instant"
    ORIGINAL = "original"


@dataclass
class SubjectTransform(Base):
    src: str = ""
    dest: str = ""


@dataclass
class ExternalStream(Base):
    """Where an origin in another cluster is reached. `api`/`deliver` are JetStream's
    prefixes (kept so a NATS config round-trips); raftbroker reaches the other cluster
    through its client addresses `servers`, with that cluster's credentials."""
    api: Optional[str] = None
    deliver: Optional[str] = None
    servers: Optional[list] = None
    token: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = None


@dataclass
class StreamSource(Base):
    """One origin of a mirror or a sourcing stream (nats-py's StreamSource)."""
    _nested = {"subject_transforms": SubjectTransform, "external": ExternalStream}
    name: str = ""
    opt_start_seq: Optional[int] = None
    opt_start_time: Optional[int] = None      # unix ns
    filter_subject: Optional[str] = None
    subject_transforms: Optional[list] = None
    external: Optional[ExternalStream] = None

    @property
    def filters(self) -> list[str]:
        if self.subject_transforms:
            return [t.src for t in self.subject_transforms]
        return [self.filter_subject] if self.filter_subject else []

    def transform(self, subject: str) -> str:
        """The subject a copied message is stored under."""
        for t in self.subject_transforms or []:
            if subj.matches(t.src, subject):
                return subj.transform(t.src, t.dest, subject) if t.dest else subject
        return subject


@dataclass
class RePublish(Base):
    """Every stored message is also sent, at most once, as a core message to `dest`."""
    src: Optional[str] = None            # which subjects (default every one)
    dest: Optional[str] = None
    headers_only: bool = False


@dataclass
class StreamConsumerLimits(Base):
    """Defaults (and ceilings) for the stream's consumers (2.10)."""
    inactive_threshold: Optional[float] = None   # seconds
    max_ack_pending: Optional[int] = None


COMPRESSIONS = ("none", "s2")


@dataclass
class StreamConfig(Base):
    _nested = {"mirror": StreamSource, "sources": StreamSource, "republish": RePublish,
               "consumer_limits": StreamConsumerLimits, "subject_transform": SubjectTransform}
    name: Optional[str] = None
    description: Optional[str] = None
    subjects: Optional[list] = None
    retention: str = "limits"
    max_consumers: int = -1
    max_msgs: int = -1
    max_bytes: int = -1
    discard: str = "old"
    discard_new_per_subject: bool = False
    max_age: float = 0.0             # seconds; 0 = unlimited
    max_msgs_per_subject: int = -1
    max_msg_size: int = -1
    storage: str = "file"
    num_replicas: int = 1
    no_ack: bool = False
    duplicate_window: float = 0.0    # seconds; 0 = default (120 s, capped by max_age)
    sealed: bool = False
    deny_delete: bool = False
    deny_purge: bool = False
    allow_rollup_hdrs: bool = False
    allow_direct: bool = False
    mirror: Optional[StreamSource] = None
    sources: Optional[list] = None           # of StreamSource
    metadata: Optional[dict] = None
    mirror_direct: bool = False
    republish: Optional[RePublish] = None
    consumer_limits: Optional[StreamConsumerLimits] = None
    first_seq: int = 0                       # the first message's sequence (0 and 1: 1)
    subject_transform: Optional[SubjectTransform] = None    # applied to a captured subject before it is stored
    # Accepted and echoed; RocksDB compresses every stream's blocks its own way.
    compression: str = "none"


@dataclass
class ConsumerConfig(Base):
    name: Optional[str] = None
    durable_name: Optional[str] = None
    description: Optional[str] = None
    deliver_policy: str = "all"
    opt_start_seq: Optional[int] = None
    opt_start_time: Optional[int] = None      # unix ns
    ack_policy: str = "explicit"
    ack_wait: Optional[float] = None          # seconds
    max_deliver: Optional[int] = None
    backoff: Optional[list] = None            # seconds
    filter_subject: Optional[str] = None
    filter_subjects: Optional[list] = None
    replay_policy: str = "instant"
    rate_limit_bps: Optional[int] = None
    sample_freq: Optional[str] = None
    max_waiting: Optional[int] = None
    max_ack_pending: Optional[int] = None
    flow_control: Optional[bool] = None
    idle_heartbeat: Optional[float] = None    # seconds
    headers_only: Optional[bool] = None
    max_batch: Optional[int] = None
    max_expires: Optional[float] = None
    max_bytes: Optional[int] = None
    deliver_subject: Optional[str] = None
    deliver_group: Optional[str] = None
    inactive_threshold: Optional[float] = None  # seconds
    num_replicas: Optional[int] = None
    mem_storage: Optional[bool] = None
    metadata: Optional[dict] = None

    @property
    def is_push(self) -> bool:
        return bool(self.deliver_subject)

    @property
    def filters(self) -> list[str]:
        if self.filter_subjects:
            return list(self.filter_subjects)
        return [self.filter_subject] if self.filter_subject else []


def _enum_value(enum: type[Enum], value, what: str, err) -> str:
    v = value.value if isinstance(value, Enum) else value
    if v not in {e.value for e in enum}:
        raise err(f"invalid {what} {v!r}")
    return v


def valid_name(name) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME_LEN
            and not any(c in name for c in ".*>/\\") and all(c.isprintable() and not c.isspace() for c in name))


def _dur(value, what: str, err) -> float:
    if value is None:
        return 0.0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise err(f"{what} must be a finite number of seconds")
    return float(value)


def _int(value, what: str, err, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise err(f"{what} must be an integer")
    return value


def normalize_stream_config(cfg: StreamConfig, max_replicas: int = 1) -> StreamConfig:
    """Fill JetStream's defaults and reject what checkStreamCfg rejects."""
    err = StreamInvalidConfigError
    if not isinstance(cfg, StreamConfig):
        raise err("stream configuration invalid")
    c = dataclasses.replace(cfg)
    if not c.name:
        raise err("stream name is required")
    if not valid_name(c.name):
        raise err("stream name can not contain whitespace, '.', '*', '>', path separators "
                  f"or be longer than {MAX_NAME_LEN}")
    c.retention = _enum_value(RetentionPolicy, c.retention, "retention policy", err)
    c.discard = _enum_value(DiscardPolicy, c.discard, "discard policy", err)
    c.storage = _enum_value(StorageType, c.storage, "storage type", err)
    for f in ("max_msgs", "max_bytes", "max_msgs_per_subject", "max_msg_size", "max_consumers"):
        v = _int(getattr(c, f), f, err, -1)
        setattr(c, f, -1 if v <= 0 else v)
    c.num_replicas = _int(c.num_replicas, "num_replicas", err, 1) or 1
    if c.num_replicas < 1 or c.num_replicas > 5:
        raise err("replicas > 5 not supported" if c.num_replicas > 5 else "replicas must be >= 1")
    if c.num_replicas > max_replicas:
        if max_replicas == 1:
            raise ReplicasNotSupportedError()
        raise InsufficientResourcesError()
    c.max_age = _dur(c.max_age, "max_age", err)
    if c.max_age < 0:
        raise err("max age needs to be >= 0")
    if 0 < c.max_age < MIN_DURATION_S:
        raise err("max age needs to be >= 100ms")
    c.duplicate_window = _dur(c.duplicate_window, "duplicate_window", err)
    if c.duplicate_window < 0:
        raise err("duplicates window can not be negative")
    if c.duplicate_window == 0 and not c.mirror:
        c.duplicate_window = DEFAULT_DUPLICATE_WINDOW_S
        if 0 < c.max_age < c.duplicate_window:
            c.duplicate_window = c.max_age
    if c.max_age and c.duplicate_window > c.max_age:
        raise err("duplicates window can not be larger then max age")
    if c.discard_new_per_subject and (c.discard != "new" or c.max_msgs_per_subject <= 0):
        raise err("discard new per subject requires discard new policy to be set and max msgs per subject > 0")
    if c.deny_purge and c.allow_rollup_hdrs:
        raise err("roll-ups require the purge permission")
    if c.sealed:
        raise err("stream configuration for create can not be sealed")
    c.compression = c.compression or "none"
    if c.compression not in COMPRESSIONS:
        raise err(f"invalid compression {c.compression!r}")
    c.first_seq = _int(c.first_seq, "first_seq", err, 0)
    if c.first_seq < 0:
        raise err("first sequence can not be negative")
    c.mirror_direct = bool(c.mirror_direct)
    _check_origins(c)
    if c.mirror_direct and not c.mirror:
        raise err("stream has no mirror but does have mirror direct")
    if c.mirror and c.first_seq > 1:
        raise js_error(10143, "stream mirrors can not have first sequence configured")
    _check_consumer_limits(c)
    if c.mirror:
        if c.subjects:
            raise js_error(10034, "stream mirrors can not also contain subjects")
    elif not c.subjects and not c.sources:
        c.subjects = [c.name]
    c.subjects = list(c.subjects or [])
    for s in c.subjects:
        if not subj.is_valid_subject(s):
            raise err(f"invalid subject {s!r}")
    for i, a in enumerate(c.subjects):
        for b in c.subjects[i + 1:]:
            if subj.overlaps(a, b):
                raise err(f"subject {a!r} overlaps with {b!r}")
    _check_republish(c)
    if c.subject_transform is not None:
        t = c.subject_transform = SubjectTransform.from_dict(c.subject_transform)
        t.src = t.src or ">"
        if not t.dest or not subj.valid_transform(t.src, t.dest):
            raise err(f"stream configuration for subject transform from '{t.src}' to '{t.dest}' not valid")
    return c


def _check_republish(c: StreamConfig) -> None:
    if c.republish is None:
        return
    err = StreamInvalidConfigError
    r = c.republish = RePublish.from_dict(c.republish)
    r.src = r.src or ">"
    r.headers_only = bool(r.headers_only)
    if not r.dest or not subj.is_valid_subject(r.dest):
        raise err("stream configuration for republish destination is invalid")
    if any(subj.overlaps(r.dest, s) for s in c.subjects):
        # A republished message would be captured again, and republished again.
        raise err("stream configuration for republish destination forms a cycle")
    if not subj.is_valid_subject(r.src) or not subj.valid_transform(r.src, r.dest):
        raise err(f"stream configuration for republish with transform from '{r.src}' to '{r.dest}' not valid")


def _check_consumer_limits(c: StreamConfig) -> None:
    if c.consumer_limits is None:
        return
    lim = c.consumer_limits = StreamConsumerLimits.from_dict(c.consumer_limits)
    err = StreamInvalidConfigError
    if lim.inactive_threshold is not None:
        lim.inactive_threshold = _dur(lim.inactive_threshold, "consumer_limits.inactive_threshold", err) or None
        if lim.inactive_threshold is not None and lim.inactive_threshold < 0:
            raise err("consumer limits inactive threshold can not be negative")
    if lim.max_ack_pending is not None:
        lim.max_ack_pending = _int(lim.max_ack_pending, "consumer_limits.max_ack_pending", err, 0) or None
        if lim.max_ack_pending is not None and lim.max_ack_pending < -1:
            raise err("consumer limits max ack pending can not be below -1")
    if lim.inactive_threshold is None and lim.max_ack_pending is None:
        c.consumer_limits = None


def _check_origins(c: StreamConfig) -> None:
    """Mirror and source rules, with JetStream's error codes (checkStreamCfg)."""
    err = StreamInvalidConfigError
    c.mirror = StreamSource.from_dict(c.mirror) if c.mirror else None
    c.sources = [StreamSource.from_dict(s) for s in c.sources] if c.sources else None
    if c.mirror and c.sources:
        raise js_error(10031, "stream mirrors can not also contain other sources")
    if c.mirror and c.mirror.opt_start_seq and c.mirror.opt_start_time:
        raise js_error(10032, "stream mirrors can not have both start seq and start time configured")
    if c.mirror and c.mirror.name == c.name:
        raise err("stream mirror can not be the stream itself")
    seen = set()
    for o in ([c.mirror] if c.mirror else []) + (c.sources or []):
        if not valid_name(o.name):
            raise js_error(10142 if o is c.mirror else 10141,
                           "mirrored stream name is invalid" if o is c.mirror else "sourced stream name is invalid")
        if o.filter_subject and o.subject_transforms:
            raise err("source can not have both a filter subject and subject transforms")
        for f in o.filters:
            if not subj.is_valid_subject(f):
                raise err(f"invalid source filter subject {f!r}")
        for t in o.subject_transforms or []:
            if t.dest and not subj.valid_transform(t.src, t.dest):
                raise err(f"invalid subject transform destination {t.dest!r}")
        filters = o.filters
        if any(subj.overlaps(a, b) for i, a in enumerate(filters) for b in filters[i + 1:]):
            raise js_error(10147, "source filters can not overlap", 400)
        if o.external and o.external.servers is not None and not (
                isinstance(o.external.servers, list) and all(isinstance(a, str) and a for a in o.external.servers)):
            raise err("external servers must be a list of host:port addresses")
        key = origin_key(o)
        if key in seen:
            raise js_error(10140, "duplicate source configuration detected")
        seen.add(key)
    if c.sources and c.name in {s.name for s in c.sources if not s.external}:
        raise err("stream can not source from itself")


def origin_key(o: StreamSource) -> str:
    """How a stream's state names one origin: its name, and for another cluster where."""
    if o.external and (o.external.servers or o.external.api):
        return f"{o.name}@{','.join(o.external.servers or []) or o.external.api}"
    return o.name


def sealed_form(c: StreamConfig) -> StreamConfig:
    # Sealing makes the stream read-only for good (JetStream's configUpdateCheck).
    return dataclasses.replace(c, sealed=True, max_age=0.0, discard="new", deny_delete=True, deny_purge=True,
                               allow_rollup_hdrs=False)


def check_stream_update(old: StreamConfig, new: StreamConfig) -> StreamConfig:
    """JetStream's configUpdateCheck: what an update may and may not change."""
    err = StreamInvalidConfigError
    if new.name != old.name:
        raise err("stream configuration name must match original")
    if new.storage != old.storage:
        raise err("stream configuration update can not change storage type")
    if (new.retention == "workqueue") != (old.retention == "workqueue"):
        raise err("stream configuration update can not change retention policy to/from workqueue")
    if new.max_consumers != old.max_consumers:
        raise err("stream configuration update can not change MaxConsumers")
    if (new.mirror or None) != (old.mirror or None):
        if new.mirror is not None:   # removing it promotes the mirror to a normal stream
            raise js_error(10055, "Mirror configuration can not be updated")
    if old.sealed and not new.sealed:
        raise err("stream configuration update can not unseal a sealed stream")
    if old.deny_delete and not new.deny_delete:
        raise err("stream configuration update can not cancel deny message deletes")
    if old.deny_purge and not new.deny_purge:
        raise err("stream configuration update can not cancel deny purge")
    return sealed_form(new) if new.sealed else new


def normalize_update_config(cfg: StreamConfig, max_replicas: int) -> StreamConfig:
    # `sealed` is refused on create but allowed on update: validate the unsealed
    # form, then seal it in check_stream_update.
    sealed = bool(cfg.sealed)
    c = normalize_stream_config(dataclasses.replace(cfg, sealed=False), max_replicas)
    c.sealed = sealed
    return c


def _cons_err(err_code: int, description: str) -> JSError:
    return js_error(err_code, description, 400)


def normalize_consumer_config(cfg: ConsumerConfig, stream: StreamConfig, max_ack_pending_limit: int) -> ConsumerConfig:
    """JetStream's setConsumerConfigDefaults + checkConsumerCfg."""
    if not isinstance(cfg, ConsumerConfig):
        raise ConsumerCreateError("consumer config invalid")
    c = dataclasses.replace(cfg)
    limits = stream.consumer_limits
    if limits is not None:
        # The stream's defaults for what the consumer leaves unset (2.10's consumer_limits).
        if not c.max_ack_pending and limits.max_ack_pending:
            c.max_ack_pending = limits.max_ack_pending
        if not c.inactive_threshold and limits.inactive_threshold:
            c.inactive_threshold = limits.inactive_threshold
    if c.durable_name and c.name and c.durable_name != c.name:
        raise _cons_err(10132, "consumer durable and name have to be equal if both are provided")
    for n in (c.name, c.durable_name):
        if n is not None and not valid_name(n):
            raise _cons_err(10103, "consumer name can not contain '.', '*', '>', path separators or whitespace")
    if c.durable_name and not c.name:
        c.name = c.durable_name
    bad = lambda d: ConsumerCreateError(d)  # noqa: E731
    c.deliver_policy = _enum_value(DeliverPolicy, c.deliver_policy, "deliver policy", bad)
    c.ack_policy = _enum_value(AckPolicy, c.ack_policy, "ack policy", bad)
    c.replay_policy = _enum_value(ReplayPolicy, c.replay_policy, "replay policy", bad)
    push = c.is_push

    # Pull-only and push-only fields.
    if push:
        if c.max_waiting:
            raise _cons_err(10080, "consumer in push mode can not set max waiting")
        if not subj.is_valid_subject(c.deliver_subject, allow_wildcards=False):
            raise _cons_err(10079, "consumer deliver subject has wildcards")
        if any(subj.matches(s, c.deliver_subject) for s in stream.subjects or []):
            raise _cons_err(10081, "consumer deliver subject forms a cycle")
    else:
        if c.rate_limit_bps:
            raise _cons_err(10086, "consumer in pull mode can not have rate limit set")
        if c.idle_heartbeat:
            raise _cons_err(10088, "consumer idle heartbeat requires a push based consumer")
        if c.flow_control:
            raise _cons_err(10089, "consumer flow control requires a push based consumer")
        c.max_waiting = _int(c.max_waiting, "max_waiting", bad, DEFAULT_MAX_WAITING) or DEFAULT_MAX_WAITING
        if c.max_waiting < 0:
            raise _cons_err(10087, "consumer max waiting needs to be positive")
        if c.max_batch is not None and c.max_batch < 0:
            raise _cons_err(10114, "consumer max request batch needs to be > 0")
        if c.max_expires is not None and 0 < c.max_expires < 0.001:
            raise _cons_err(10115, "consumer max request expires needs to be >= 1ms")
    if c.flow_control and not c.idle_heartbeat:
        raise _cons_err(10108, "consumer with flow control also needs heartbeats")
    if c.idle_heartbeat is not None:
        c.idle_heartbeat = _dur(c.idle_heartbeat, "idle_heartbeat", bad)
        if 0 < c.idle_heartbeat < MIN_DURATION_S:
            raise _cons_err(10083, "consumer idle heartbeat needs to be >= 100ms")

    # Deliver policy and its optional fields.
    dp = c.deliver_policy
    if dp == "by_start_sequence":
        if not c.opt_start_seq or c.opt_start_time is not None:
            raise _cons_err(10094, "consumer delivery policy is deliver by start sequence, but optional start "
                                   "sequence is not set" if not c.opt_start_seq else
                            "consumer delivery policy is deliver by start sequence, but optional start time is "
                            "also set")
    elif dp == "by_start_time":
        if c.opt_start_time is None or c.opt_start_seq:
            raise _cons_err(10094, "consumer delivery policy is deliver by start time, but optional start time "
                                   "is not set" if c.opt_start_time is None else
                            "consumer delivery policy is deliver by start time, but optional start sequence is "
                            "also set")
    elif c.opt_start_seq or c.opt_start_time is not None:
        raise _cons_err(10094, f"consumer delivery policy is deliver {dp.replace('_', ' ')}, but optional "
                               f"start {'sequence' if c.opt_start_seq else 'time'} is also set")

    # Filters.
    if c.filter_subject and c.filter_subjects:
        raise _cons_err(10136, "consumer cannot have both FilterSubject and FilterSubjects specified")
    if c.filter_subjects is not None:
        if any(not f for f in c.filter_subjects):
            raise _cons_err(10139, "consumer filter in FilterSubjects cannot be empty")
        for i, a in enumerate(c.filter_subjects):
            for b in c.filter_subjects[i + 1:]:
                if subj.overlaps(a, b):
                    raise _cons_err(10138, "consumer subject filters cannot overlap")
        if not c.filter_subjects:
            c.filter_subjects = None
    if c.filter_subject == "":
        c.filter_subject = None
    for f in c.filters:
        if not subj.is_valid_subject(f):
            raise js_error(10052, f"invalid filter subject {f!r}", 500)
    if dp == "last_per_subject" and not c.filters:
        raise _cons_err(10094, "consumer delivery policy is deliver last per subject, but optional filter "
                               "subject is not set")

    # Acks, redelivery, limits.
    if c.ack_wait is not None:
        c.ack_wait = _dur(c.ack_wait, "ack_wait", bad)
        if c.ack_wait < 0:
            raise _cons_err(10183, "consumer ack wait needs to be positive")
    if c.backoff:
        if any((not isinstance(b, (int, float))) or b < 0 for b in c.backoff):
            raise _cons_err(10184, "consumer backoff needs to be positive")
        c.backoff = [float(b) for b in c.backoff]
    else:
        c.backoff = None
    c.max_deliver = _int(c.max_deliver, "max_deliver", bad, -1)
    if c.max_deliver == 0 or c.max_deliver < -1:
        c.max_deliver = -1
    if c.backoff and c.max_deliver != -1 and len(c.backoff) >= c.max_deliver:
        raise _cons_err(10116, "max deliver is required to be > length of backoff values")
    if c.backoff:
        c.ack_wait = c.backoff[0]
    elif not c.ack_wait:
        c.ack_wait = DEFAULT_ACK_WAIT_S
    if c.ack_policy == "none":
        if c.max_ack_pending not in (None, 0, -1) and push:
            raise _cons_err(10082, "consumer requires ack policy for max ack pending")
        c.max_ack_pending = -1
    else:
        c.max_ack_pending = _int(c.max_ack_pending, "max_ack_pending", bad, DEFAULT_MAX_ACK_PENDING)
        if c.max_ack_pending == 0:
            c.max_ack_pending = DEFAULT_MAX_ACK_PENDING
        if c.max_ack_pending == -1 or c.max_ack_pending < -1:
            c.max_ack_pending = max_ack_pending_limit
        if c.max_ack_pending > max_ack_pending_limit:
            raise _cons_err(10121, f"consumer max ack pending exceeds system limit of {max_ack_pending_limit}")
    c.rate_limit_bps = c.rate_limit_bps or None
    c.headers_only = bool(c.headers_only) or None
    if c.inactive_threshold is not None:
        c.inactive_threshold = _dur(c.inactive_threshold, "inactive_threshold", bad)
        if c.inactive_threshold < 0:
            raise _cons_err(10152, "consumer inactive threshold needs to be positive")
    if not c.durable_name and not c.inactive_threshold:
        c.inactive_threshold = EPHEMERAL_INACTIVE_THRESHOLD_S
    c.num_replicas = c.num_replicas or None

    # Workqueue rules (the per-stream uniqueness checks need the other consumers
    # and live in the store).
    if stream.retention == "workqueue":
        if not push and c.ack_policy == "none":
            raise _cons_err(10084, "consumer in pull mode requires explicit ack policy on workqueue stream")
        if c.ack_policy != "explicit":
            raise _cons_err(10098, "workqueue stream requires explicit ack")
        if c.deliver_policy != "all":
            raise _cons_err(10101, "consumer must be deliver all on workqueue stream")
    return c


# What a consumer update may not change, with JetStream's texts (checkNewConsumerConfig).
_CONSUMER_IMMUTABLE = (("deliver_policy", "deliver policy can not be updated"),
                       ("mem_storage", "storage type can not be updated"),
                       ("opt_start_seq", "start sequence can not be updated"),
                       ("opt_start_time", "start time can not be updated"),
                       ("ack_policy", "ack policy can not be updated"),
                       ("replay_policy", "replay policy can not be updated"),
                       ("idle_heartbeat", "heart beats can not be updated"),
                       ("flow_control", "flow control can not be updated"))


def check_consumer_update(old: ConsumerConfig, new: ConsumerConfig) -> None:
    for f, text in _CONSUMER_IMMUTABLE:
        if getattr(old, f) != getattr(new, f):
            raise ConsumerCreateError(text)
    if old.is_push != new.is_push:
        raise ConsumerCreateError("can not update pull consumer to push based" if new.is_push
                                  else "can not update push consumer to pull based")
    if old.max_waiting != new.max_waiting:
        raise ConsumerCreateError("max waiting can not be updated")


def ns(seconds: float) -> int:
    return int(round(seconds * NS))
