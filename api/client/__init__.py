"""The asyncio client library, shaped like nats-py.

    nc = await connect(["127.0.0.1:4222"])
    js = nc.jetstream()
    ack = await js.publish("orders.created", b"...", msg_id="ord-1")

Config and result types are the wire-facing model's dataclasses (`StreamConfig`,
`ConsumerConfig`, `PubAck`, `StreamInfo`, `ConsumerInfo`, `ClusterInfo`); errors are
typed and carry JetStream's codes. It needs only `jetstream`, the RPC codec and
msgpack: no engine, no RocksDB, no Raft.
"""
from jetstream.config import ConsumerConfig, StreamConfig  # noqa: F401
from jetstream.errors import (  # noqa: F401
    ClusterUnavailableError, ConsumerNotFoundError, JSError, NoMessageFoundError, NotLeaderError,
    StreamNotFoundError, WrongLastMsgIDError, WrongLastSequenceError,
)
from jetstream.results import ClusterInfo, ConsumerInfo, PeerInfo, PubAck, PurgeResponse, StreamInfo  # noqa: F401
from .connection import Client, connect  # noqa: F401
from .errors import AuthorizationError, ConnectionClosedError, ConnectionLostError, TimeoutError  # noqa: F401
from .jetstream import JetStreamContext, PullSubscription  # noqa: F401
from .msg import Msg, MsgMetadata, SequencePair, Subscription  # noqa: F401

APIError = JSError      # nats-py's name for a JetStream API error
