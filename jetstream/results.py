"""Results of commands and reads, with JetStream's field names."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .config import ConsumerConfig, ExternalStream, StreamConfig, SubjectTransform
from .model import Base


@dataclass
class PubAck(Base):
    stream: str
    seq: int
    duplicate: Optional[bool] = None
    domain: Optional[str] = None


@dataclass
class StreamState(Base):
    messages: int = 0
    bytes: int = 0
    first_seq: int = 0
    first_ts: int = 0        # unix ns
    last_seq: int = 0
    last_ts: int = 0         # unix ns
    num_subjects: int = 0
    num_deleted: int = 0
    consumer_count: int = 0


@dataclass
class PeerInfo(Base):
    """One replica other than the leader, as the leader sees it."""
    name: str
    current: bool = False
    offline: Optional[bool] = None
    active: Optional[int] = None    # ns since the leader last heard from it
    lag: Optional[int] = None       # entries behind the leader's commit index


@dataclass
class ClusterInfo(Base):
    """JetStream's `cluster` block of stream and consumer info (nats-py's field names)."""
    _nested = {"replicas": PeerInfo}
    name: Optional[str] = None
    leader: Optional[str] = None
    replicas: list[PeerInfo] = field(default_factory=list)

    def asked(self, num_replicas: int) -> "ClusterInfo":
        """The block as NATS shows a stream of `num_replicas`: its leader and that many
        replicas less one (an R1 stream, none). Every node here holds every stream; the
        node's own status (/raftz, cluster status) lists all of them."""
        return ClusterInfo(self.name, self.leader, self.replicas[:max(0, num_replicas - 1)])


@dataclass
class StreamSourceInfo(Base):
    """How far a mirror or a source lags its origin (JetStream's StreamSourceInfo)."""
    _nested = {"subject_transforms": SubjectTransform, "external": ExternalStream}
    name: str
    lag: int = 0                    # messages behind the origin
    active: Optional[int] = None    # ns since the last contact with the origin
    filter_subject: Optional[str] = None
    subject_transforms: Optional[list] = None
    external: Optional[ExternalStream] = None
    error: Optional[dict] = None    # the origin's last error, as {code, err_code, description}


@dataclass
class StreamInfo(Base):
    _nested = {"config": StreamConfig, "state": StreamState, "cluster": ClusterInfo,
               "mirror": StreamSourceInfo, "sources": StreamSourceInfo}
    config: StreamConfig
    state: StreamState
    created: int = 0         # unix ns
    cluster: Optional[ClusterInfo] = None
    mirror: Optional[StreamSourceInfo] = None
    sources: Optional[list[StreamSourceInfo]] = None
    ts: int = 0


@dataclass
class SequenceInfo(Base):
    consumer_seq: int = 0
    stream_seq: int = 0
    last_active: Optional[int] = None   # unix ns


@dataclass
class ConsumerInfo(Base):
    _nested = {"config": ConsumerConfig, "delivered": SequenceInfo, "ack_floor": SequenceInfo,
               "cluster": ClusterInfo}
    stream_name: str
    name: str
    config: ConsumerConfig
    created: int = 0
    delivered: SequenceInfo = field(default_factory=SequenceInfo)
    ack_floor: SequenceInfo = field(default_factory=SequenceInfo)
    num_ack_pending: int = 0
    num_redelivered: int = 0
    num_waiting: int = 0
    num_pending: int = 0
    cluster: Optional[ClusterInfo] = None
    push_bound: Optional[bool] = None
    ts: int = 0


@dataclass
class StoredMsg(Base):
    """A message as stored (get message)."""
    stream: str
    subject: str
    seq: int
    data: bytes
    headers: Optional[dict]
    time: int                # unix ns


@dataclass
class DeliveredMsg(Base):
    """A message handed to a consumer, with the metadata of its `$JS.ACK` reply."""
    stream: str
    consumer: str
    subject: str
    data: bytes
    headers: Optional[dict]
    stream_seq: int
    consumer_seq: int
    num_delivered: int
    num_pending: int
    time: int                # unix ns, when the message was stored


@dataclass
class PurgeResponse(Base):
    success: bool = True
    purged: int = 0


@dataclass
class AckResult(Base):
    """`applied` is False when the ack referred to nothing pending (already acked,
    never delivered, or the consumer uses ack_policy none): JetStream accepts
    such acks silently."""
    applied: bool = True
