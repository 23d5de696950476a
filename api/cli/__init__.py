"""The `raftbroker` command: it parses arguments and hands each command to its module."""
from __future__ import annotations

import argparse
import sys

from api.server.config import add_arguments


def demo(args) -> int:
    from .demo import demo as run
    return run(args)


def server(args) -> int:
    from api.server.config import ConfigError, resolve
    from api.server.node import run_node
    try:
        cfg = resolve(args)
    except (ConfigError, OSError) as e:
        print(f"raftbroker: {e}", file=sys.stderr)
        return 2
    return run_node(cfg)


def up(args) -> int:
    from .up import up as run
    return run(args)


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
    p.add_argument("--nats-port", type=int, default=4322,
                   help="first node's NATS-protocol port; node i uses it + i; 0 turns NATS off")
    p.set_defaults(func=up)
    from . import bench, cluster, consumer, msgs, stream
    cluster.add_parser(sub)
    stream.add_parser(sub)
    consumer.add_parser(sub)
    msgs.add_parsers(sub)
    bench.add_parser(sub)
    from chaos.cli import add_run_arguments, run_command
    p = sub.add_parser("chaos", help="the chaos suite: run a cluster under faults and check the history")
    csub = p.add_subparsers(dest="chaos_cmd", required=True)
    p = csub.add_parser("run", help="run a cluster under faults and check the history")
    add_run_arguments(p)
    p.set_defaults(func=run_command)
    args = parser.parse_args(argv)
    return args.func(args)

