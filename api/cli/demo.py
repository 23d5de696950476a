"""`raftbroker demo`: drive the storage engine directly, no server."""
from __future__ import annotations

import tempfile
import time

import storage
from storage import Ack, AddConsumer, AddStream, ConsumerConfig, Entry, NextMsgs, Publish, Store, StreamConfig


def demo(args) -> int:
    """Single-node demo of the engine: create a stream, publish, consume, ack."""
    data_dir = args.data or tempfile.mkdtemp(prefix="raftbroker-demo-")
    store = Store.open(data_dir)
    index = store.applied_index

    def run(*commands):
        nonlocal index
        index += 1
        res = store.apply(Entry(index, time.time_ns(), list(commands)))
        for r in res.results:
            if isinstance(r, storage.JSError):
                raise r
        return res.results

    if "ORDERS" not in store.stream_names():
        run(AddStream(StreamConfig(name="ORDERS", subjects=["orders.>"], max_age=7 * 24 * 3600)))
        run(AddConsumer("ORDERS", ConsumerConfig(durable_name="proc", ack_policy="explicit", max_deliver=5)))
    acks = run(*[Publish(f"orders.{kind}", f"order {i}".encode(), {"Nats-Msg-Id": f"ord-{index}-{i}"})
                 for i, kind in enumerate(["created", "paid", "shipped"])])
    for a in acks:
        print(f"published: stream={a.stream} seq={a.seq} duplicate={bool(a.duplicate)}")
    (batch,) = run(NextMsgs("ORDERS", "proc", batch=10))
    for m in batch:
        print(f"consumed: {m.subject} {m.data.decode()!r} stream_seq={m.stream_seq} delivered={m.num_delivered}")
    run(*[Ack("ORDERS", "proc", m.stream_seq) for m in batch])
    info = store.stream_info("ORDERS")
    cinfo = store.consumer_info("ORDERS", "proc")
    print(f"stream ORDERS: messages={info.state.messages} first_seq={info.state.first_seq} "
          f"last_seq={info.state.last_seq}")
    print(f"consumer proc: num_pending={cinfo.num_pending} num_ack_pending={cinfo.num_ack_pending} "
          f"ack_floor={cinfo.ack_floor.stream_seq}")
    print(f"data directory: {data_dir}")
    store.close()
    return 0
