"""The `raftbroker` command."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import storage
from storage import (
    Ack, AddConsumer, AddStream, ConsumerConfig, Entry, NextMsgs, Publish, Store, StreamConfig,
)


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


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _serve(args) -> None:
    import asyncio
    import signal

    from api.http import start_http
    from api.server import Server, ServerConfig
    from cluster.local import LocalNode
    from storage import StoreOptions

    host, port = _hostport(args.listen)
    store = Store.open(args.data, StoreOptions(sync=not args.no_sync))
    node = LocalNode(store, name=args.name, client_addr=f"{host}:{port}")
    node.start()
    server = Server(node, ServerConfig(host=host, port=port, server_id=args.name, token=args.token,
                                       user=args.user, password=args.password))
    await server.start()
    runner = None
    if args.http:
        hhost, hport = _hostport(args.http)
        runner = await start_http(node, hhost, hport)
    print(f"raftbroker {args.name}: clients on {host}:{server.port}" +
          (f", http on {args.http}" if args.http else "") + f", data in {args.data}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Stop taking requests, let proposals already queued be applied, close RocksDB.
    await server.stop()
    if runner:
        await runner.cleanup()
    await node.stop()


def server(args) -> int:
    import asyncio
    import logging
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_serve(args))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="raftbroker", description="raftbroker message broker")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="single-node engine demo: create a stream, publish, consume")
    p.add_argument("--data", help="data directory (default: a new temporary one)")
    p.set_defaults(func=demo)
    p = sub.add_parser("server", help="run a node")
    p.add_argument("--name", default="n1")
    p.add_argument("--data", default="./data")
    p.add_argument("--listen", default="127.0.0.1:4222", help="client address HOST:PORT")
    p.add_argument("--http", default=None, help="HTTP address HOST:PORT for /healthz")
    p.add_argument("--token", default=None, help="require this token from clients")
    p.add_argument("--user", default=None)
    p.add_argument("--password", default=None)
    p.add_argument("--no-sync", action="store_true", help="do not fsync each entry (loses recent writes on power loss)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=server)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
