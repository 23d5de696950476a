"""raftbroker's deterministic state machine: streams and consumers on RocksDB.

It builds on the wire-facing model in `jetstream` and re-exports the parts an engine
user needs with it."""
from jetstream.config import (  # noqa: F401
    AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, ReplayPolicy, RetentionPolicy, StorageType,
    StreamConfig,
)
from jetstream.errors import JSError  # noqa: F401
from jetstream.results import (  # noqa: F401
    AckResult, ConsumerInfo, DeliveredMsg, PubAck, PurgeResponse, SequenceInfo, StoredMsg, StreamInfo,
    StreamState,
)
from .commands import (  # noqa: F401
    ACK, NAK, PROGRESS, TERM, Ack, AddConsumer, AddStream, Announce, Command, DeleteConsumer, DeleteMsg, DeleteStream, Entry,
    AssignSource, NextMsgs, Publish, PurgeStream, SourceCopy, Sweep, Touch, UpdateStream, decode, encode,
)
from .errors import StoreCorruptError  # noqa: F401
from .events import Event  # noqa: F401
from .snapshot import read_extra, read_manifest, restore_snapshot, verify_snapshot  # noqa: F401
from .store import ApplyResult, Store, StoreOptions  # noqa: F401
