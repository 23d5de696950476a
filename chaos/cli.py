"""The chaos command line: `raftbroker chaos run --nodes 3 --duration 120 --faults kill,pause --seed 42`."""
from __future__ import annotations

import argparse
import json
import sys

from .nemesis import FAMILIES


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    from .runner import PROFILES
    p.add_argument("--profile", choices=sorted(PROFILES), help="preset nodes, duration and faults "
                   "(ci: 3 nodes, ~2 min, kill+pause+partition+power-cut; long: ≥10 min, every fault)")
    p.add_argument("--nodes", type=int, help="cluster size (3 or 5)")
    p.add_argument("--duration", type=float, help="seconds of faults")
    p.add_argument("--faults", help=f"comma-separated: {','.join(FAMILIES)}")
    p.add_argument("--workload", default="default", choices=["default", "mirror"],
                   help="mirror: a second cluster mirrors the first over external.servers, faults on both, "
                        "and the mirror is checked against the origin message by message")
    p.add_argument("--mirror-backlog", type=int, default=0, metavar="N",
                   help="mirror workload: also publish N messages to a second origin stream before the faults "
                        "and check its mirror, copied while the faults run, in full")
    p.add_argument("--seed", type=int, default=42, help="the same seed replays the same fault schedule")
    p.add_argument("--out", default="report", help="report directory")
    p.add_argument("--broken", default="", choices=["", "ack-before-commit", "skip-sync"],
                   help="TEST ONLY: run a deliberately broken build, to see the suite catch it")


def options(args):
    from .runner import PROFILES, RunOptions
    base = dict(PROFILES[args.profile]) if args.profile else {}
    if args.nodes:
        base["nodes"] = args.nodes
    if args.duration:
        base["duration"] = args.duration
    if args.faults:
        base["faults"] = [f.strip() for f in args.faults.split(",") if f.strip()]
    return RunOptions(seed=args.seed, out=args.out, broken=args.broken, workload=args.workload,
                      mirror_backlog=args.mirror_backlog, **base)


def run_command(args) -> int:
    from .runner import run
    return run(options(args))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_inner"]:
        from .runner import inner
        return inner(json.loads(argv[1]))
    parser = argparse.ArgumentParser(prog="python -m chaos", description="raftbroker chaos suite")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run a cluster under faults and check the history")
    add_run_arguments(p)
    p.set_defaults(func=run_command)
    args = parser.parse_args(argv)
    return args.func(args)
