"""The `raftbroker` command."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from api.node_config import add_arguments

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


def _open_node(cfg):
    """The node behind the server: a Raft node with --raft, else a single LocalNode."""
    from cluster.commit import BatchBounds
    from storage import StoreOptions
    bounds = BatchBounds(max_commands=cfg.batch_max_commands, max_bytes=cfg.batch_max_bytes)
    if not cfg.raft:
        from cluster.local import LocalNode
        store = Store.open(cfg.data, StoreOptions(sync=not cfg.no_sync))
        return LocalNode(store, bounds, name=cfg.name, client_addr=cfg.client_addr), 8 * 1024 * 1024
    from cluster.raft import NodeIdentity, RaftNode
    from cluster.settings import RaftSettings
    members = sorted(set(cfg.peer_list) | {cfg.raft_addr})
    max_payload = 1024 * 1024
    bounds.max_inflight = 4
    ident = NodeIdentity(name=cfg.name, raft=cfg.raft_addr, client=cfg.client_addr, http=cfg.http_addr,
                         raft_bind=cfg.raft, peers=members)
    settings = RaftSettings(election_min_s=cfg.election_min_s, election_max_s=cfg.election_max_s,
                            compaction_min_entries=cfg.snapshot_entries, sync=not cfg.no_sync)
    options = StoreOptions(sync=not cfg.no_sync, max_replicas=len(members), max_payload=max_payload)
    from cluster.clock import node_clock
    node = RaftNode(ident, cfg.data, cfg.cluster_secret or None, settings, bounds, options, cfg.bootstrap,
                    clock=node_clock())
    return node, max_payload


async def _serve(cfg) -> None:
    import asyncio
    import signal

    from api.http import start_http
    from api.server import Server, ServerConfig

    host, port = _hostport(cfg.listen)
    node, max_payload = _open_node(cfg)
    node.start()
    server = Server(node, ServerConfig(host=host, port=port, server_id=cfg.name, token=cfg.token or None,
                                       user=cfg.user or None, password=cfg.password or None,
                                       max_payload=max_payload))
    await server.start()
    runner = None
    if cfg.http:
        hhost, hport = _hostport(cfg.http)
        runner = await start_http(node, hhost, hport)
    print(f"raftbroker {cfg.name}: clients on {host}:{server.port}" +
          (f", http on {cfg.http}" if cfg.http else "") + (f", raft on {cfg.raft}" if cfg.raft else "") +
          f", data in {cfg.data}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if os.environ.get("RAFTBROKER_TEST_POWER_CUT") == "1" and hasattr(node, "power_cut"):
        # Test-only: on SIGUSR1, lose every write not yet synced and die at once.
        signal.signal(signal.SIGUSR1, lambda *_: node.power_cut())
    await stop.wait()
    # Stop taking requests, let proposals already queued finish or fail, close RocksDB.
    await server.stop()
    if runner:
        await runner.cleanup()
    await node.stop()


# A node holds millions of long-lived objects (store records, the dedupe map, the
# Raft log in memory) while each message makes short-lived ones that refcounting
# frees anyway. CPython's default thresholds (700, 10, 10) then rescan the long-lived
# ones so often that the publish rate fell by a fifth as the stream grew.
GC_THRESHOLDS = (100_000, 50, 1000)


def server(args) -> int:
    import asyncio
    import gc
    import logging

    from api.logs import setup_logging
    from api.node_config import ConfigError, resolve
    from cluster.errors import CorruptStateError
    try:
        cfg = resolve(args)
    except (ConfigError, OSError) as e:
        print(f"raftbroker: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.name)
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        asyncio.run(_serve(cfg))
    except CorruptStateError as e:
        logging.getLogger("raftbroker").critical("corruption found: %s", e)
        print(f"raftbroker {cfg.name}: refusing to start: {e}", file=sys.stderr, flush=True)
        return 3
    return 0


def up(args) -> int:
    """A local cluster of child processes on 127.0.0.1, stopped together on Ctrl-C
    or SIGTERM. Node i (from 0) uses the base ports + i: clients, HTTP and Raft."""
    import signal
    import subprocess
    n = args.nodes
    client = [f"127.0.0.1:{args.client_port + i}" for i in range(n)]
    http = [f"127.0.0.1:{args.http_port + i}" for i in range(n)]
    raft = [f"127.0.0.1:{args.raft_port + i}" for i in range(n)]

    def on_signal(*_):
        raise KeyboardInterrupt     # `kill` stops the children too, as Ctrl-C does

    # SIGINT explicitly as well: a shell starts `raftbroker up &` with SIGINT ignored,
    # and Python then never turns it into KeyboardInterrupt.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    procs = []
    failed = False
    try:
        for i in range(n):
            name = f"n{i + 1}"
            cmd = [sys.executable, "-m", "api.cli", "server", "--name", name,
                   "--data", os.path.join(args.data, name), "--listen", client[i],
                   "--http", http[i], "--raft", raft[i], "--peers", ",".join(raft),
                   "--cluster-secret", args.secret, "--bootstrap", "--log-level", args.log_level]
            procs.append(subprocess.Popen(cmd))
            print(f"{name}: clients {client[i]}  http {http[i]}  raft {raft[i]}  "
                  f"data {os.path.join(args.data, name)}", flush=True)
        print(f"connect with: servers={client}  (Ctrl-C stops all)", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = True               # a node ended by itself: stop the others
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave nodes running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return 1 if failed else 0


def cluster_cmd(args) -> int:
    import asyncio
    import json

    from api.client import connect

    async def run():
        nc = await connect(args.server.split(","), token=args.token, max_reconnect_attempts=2)
        try:
            if args.action == "status":
                return await nc._request("cluster.status", {}, idempotent=True)
            if args.action in ("add-peer", "remove-peer"):
                if not args.peer:
                    raise SystemExit(f"{args.action} needs the peer's Raft address HOST:PORT")
                op = "cluster.add_peer" if args.action == "add-peer" else "cluster.remove_peer"
                return await nc._request(op, {"raft": args.peer}, timeout=15)
            return await nc._request("cluster.step_down", {}, timeout=15)
        finally:
            await nc.close()

    out = asyncio.run(run())
    if args.action == "status" and not args.json:
        print(f"leader: {out['leader']} ({out['leader_client']})  term {out['term']}  "
              f"commit {out['commit_index']}  applied {out['applied_index']}")
        for m in out["members"]:
            extra = f"  lag {m['lag']}  last contact {m['last_contact_s']:.2f}s" if "lag" in m and \
                m.get("last_contact_s") is not None else ""
            print(f"  {m['name']:<8} raft {m['raft']:<21} client {m['client']}{extra}")
    else:
        print(json.dumps(out, indent=2, default=str))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="raftbroker", description="raftbroker message broker")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="single-node engine demo: create a stream, publish, consume")
    p.add_argument("--data", help="data directory (default: a new temporary one)")
    p.set_defaults(func=demo)
    p = sub.add_parser("server", help="run a node (a cluster member with --raft)")
    add_arguments(p)
    p.set_defaults(func=server)
    p = sub.add_parser("up", help="run a local cluster of child processes on 127.0.0.1")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--data", default="./data")
    p.add_argument("--secret", default="raftbroker-dev-secret", help="cluster secret (a development one by default)")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--client-port", type=int, default=4222, help="first node's client port; node i uses it + i")
    p.add_argument("--http-port", type=int, default=8222, help="first node's HTTP port; node i uses it + i")
    p.add_argument("--raft-port", type=int, default=6222, help="first node's Raft port; node i uses it + i")
    p.set_defaults(func=up)
    p = sub.add_parser("cluster", help="cluster administration: status | add-peer | remove-peer | step-down")
    p.add_argument("action", choices=["status", "add-peer", "remove-peer", "step-down"])
    p.add_argument("peer", nargs="?", help="Raft address HOST:PORT (add-peer, remove-peer)")
    p.add_argument("--server", default="127.0.0.1:4222,127.0.0.1:4223,127.0.0.1:4224")
    p.add_argument("--token", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cluster_cmd)
    from chaos.cli import add_run_arguments, run_command
    p = sub.add_parser("chaos", help="the chaos suite: run a cluster under faults and check the history")
    csub = p.add_subparsers(dest="chaos_cmd", required=True)
    p = csub.add_parser("run", help="run a cluster under faults and check the history")
    add_run_arguments(p)
    p.set_defaults(func=run_command)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
