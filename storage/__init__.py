"""raftbroker's deterministic state machine: streams and consumers on RocksDB."""
from .commands import (  # noqa: F401
    ACK, NAK, PROGRESS, TERM, Ack, AddConsumer, AddStream, Announce, Command, DeleteConsumer, DeleteMsg, DeleteStream, Entry,
    NextMsgs, Publish, PurgeStream, Sweep, Touch, UpdateStream, decode, encode,
)
from .config import (  # noqa: F401
    AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, ReplayPolicy, RetentionPolicy, StorageType,
    StreamConfig,
)
from .errors import JSError, StoreCorruptError  # noqa: F401
from .results import (  # noqa: F401
    AckResult, ConsumerInfo, DeliveredMsg, Event, PubAck, PurgeResponse, SequenceInfo, StoredMsg, StreamInfo,
    StreamState,
)
from .snapshot import read_extra, read_manifest, restore_snapshot, verify_snapshot  # noqa: F401
from .store import ApplyResult, Store, StoreOptions  # noqa: F401
