"""`raftbroker consumer add|edit|info|ls|rm|next`, after `nats consumer`."""
from __future__ import annotations

import argparse
import asyncio
import datetime
import time

from api.client import PullSubscription
from jetstream.config import ConsumerConfig
from jetstream.results import ConsumerInfo
from . import render as R
from .conn import CommandError, UsageError, add_connection_args, run
from .stream import _BOOL, add_config_flags, duration, durations, given, read_config_file

CONSUMER_FLAGS = [
    ("--description", "description", dict()),
    ("--ack", "ack_policy", dict(choices=["explicit", "none", "all"])),
    ("--replay", "replay_policy", dict(choices=["instant", "original"])),
    ("--max-deliver", "max_deliver", dict(type=int, help="deliveries per message; -1 for unlimited")),
    ("--ack-wait", "ack_wait", dict(type=duration, help="e.g. 30s")),
    ("--max-pending", "max_ack_pending", dict(type=int, help="unacknowledged messages in flight")),
    ("--max-waiting", "max_waiting", dict(type=int, help="pull requests waiting at once")),
    ("--deliver-subject", "deliver_subject", dict(metavar="SUBJECT", help="push delivery to SUBJECT (default: pull)")),
    ("--deliver-group", "deliver_group", dict(metavar="QUEUE", help="queue group of a push consumer")),
    ("--backoff", "backoff", dict(type=durations, help="redelivery delays, e.g. 1s,5s,30s")),
    ("--inactive-threshold", "inactive_threshold", dict(type=duration)),
    ("--heartbeat", "idle_heartbeat", dict(type=duration, help="idle heartbeat of a push consumer")),
    ("--flow-control", "flow_control", dict(action=_BOOL)),
    ("--headers-only", "headers_only", dict(action=_BOOL)),
    ("--replicas", "num_replicas", dict(type=int)),
    ("--memory", "mem_storage", dict(action=_BOOL, help="keep the consumer's state in memory")),
]


def parse_deliver(text: str) -> dict:
    """`all`, `last`, `new`, `last-per-subject`, a start sequence, or a start time (ISO 8601, or
    a duration meaning that long ago) as ConsumerConfig fields."""
    t = text.strip().lower()
    named = {"all": "all", "last": "last", "new": "new", "last-per-subject": "last_per_subject",
             "last_per_subject": "last_per_subject"}
    if t in named:
        return {"deliver_policy": named[t]}
    if t.isdigit():
        return {"deliver_policy": "by_start_sequence", "opt_start_seq": int(t)}
    try:
        start_ns = time.time_ns() - int(R.parse_duration(t) * 1e9)
    except ValueError:
        try:
            when = datetime.datetime.fromisoformat(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid --deliver {text!r}: all, last, new, last-per-subject, a sequence, "
                "a time (2025-01-31T12:00:00) or a duration ago (1h)") from None
        if when.tzinfo is None:
            when = when.astimezone()
        start_ns = int(when.timestamp() * 1e9)
    return {"deliver_policy": "by_start_time", "opt_start_time": start_ns}


def _add_flags(v: argparse.ArgumentParser) -> None:
    add_config_flags(v, CONSUMER_FLAGS)
    v.add_argument("--filter", action="append", metavar="SUBJECT", help="filter subject (repeatable)")
    v.add_argument("--deliver", type=parse_deliver, metavar="POLICY",
                   help="all | last | new | last-per-subject | SEQ | TIME | DURATION-ago")


def _config(args, base: dict) -> ConsumerConfig:
    d = dict(base)
    d.update(read_config_file(args.config))
    d.update(given(args, CONSUMER_FLAGS))
    if args.filter:
        d.pop("filter_subject", None)
        d.pop("filter_subjects", None)
        if len(args.filter) == 1:
            d["filter_subject"] = args.filter[0]
        else:
            d["filter_subjects"] = args.filter
    if args.deliver:
        for f in ("opt_start_seq", "opt_start_time"):
            d.pop(f, None)
        d.update(args.deliver)
    return ConsumerConfig.from_dict(d)


async def cmd_add(nc, args):
    name = args.consumer or args.durable
    if args.consumer and args.durable and args.consumer != args.durable:
        raise UsageError(f"two names given: {args.consumer!r} and --durable {args.durable!r}")
    cfg = _config(args, {})
    name = name or cfg.durable_name or cfg.name
    if not name:
        raise UsageError("consumer add needs a NAME (argument, --durable or \"durable_name\" in --config)")
    cfg = cfg.evolve(durable_name=name, name=name)
    args.consumer = name
    info = await nc.jetstream().add_consumer(args.stream, cfg, action="create")
    show_info(args, info, f"Consumer {args.stream} > {info.name} was created")


async def cmd_edit(nc, args):
    js = nc.jetstream()
    current = await js.consumer_info(args.stream, args.consumer)
    info = await js.update_consumer(args.stream, _config(args, current.config.to_dict()))
    show_info(args, info, f"Consumer {args.stream} > {info.name} was updated")


async def cmd_info(nc, args):
    show_info(args, await nc.jetstream().consumer_info(args.stream, args.consumer))


async def cmd_ls(nc, args):
    infos = await nc.jetstream().consumers_info(args.stream)
    if args.json:
        R.emit_json([i.to_dict() for i in infos])
        return
    if not infos:
        print(f"No consumers defined on {args.stream}")
        return
    R.console().print(R.table(f"Consumers on {args.stream}", [
        "Name", "Description", "Created", "Ack Pending", "Unprocessed", "Last Delivery"], [
        (i.name, i.config.description, R.format_time(i.created), f"{i.num_ack_pending:,}", f"{i.num_pending:,}",
         R.format_ago(i.delivered.last_active)) for i in infos]))


async def cmd_rm(nc, args):
    await nc.jetstream().delete_consumer(args.stream, args.consumer)
    if args.json:
        R.emit_json({"stream": args.stream, "consumer": args.consumer, "deleted": True})
    else:
        print(f"Deleted consumer {args.stream} > {args.consumer}")


async def cmd_next(nc, args):
    js = nc.jetstream()
    # Fail on a missing stream or consumer by name, not as "no messages".
    await js.consumer_info(args.stream, args.consumer)
    sub = PullSubscription(js, args.stream, args.consumer)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    got = []
    while len(got) < args.count:
        left = deadline - loop.time()
        if left <= 0:
            break
        for m in await sub.fetch(batch=args.count - len(got), timeout=left):
            if args.ack:
                await m.ack_sync()
            got.append(m)
            md = m.metadata
            if args.json:
                R.emit_json_line(R.msg_dict(m.subject, m.data, m.headers, stream_seq=md.sequence.stream,
                                            consumer_seq=md.sequence.consumer, num_delivered=md.num_delivered,
                                            num_pending=md.num_pending, time=md.timestamp, acked=args.ack))
            else:
                R.print_msg(f"[{R.format_time(md.timestamp)}] {args.stream}#{md.sequence.stream} "
                            f"(consumer seq {md.sequence.consumer}, delivered {md.num_delivered}x"
                            f"{', acked' if args.ack else ''})", m.subject, m.data, m.headers)
    if len(got) < args.count:
        raise CommandError(f"received {len(got)} of {args.count} messages from {args.stream} > {args.consumer} "
                           f"within {R.format_duration(args.timeout)}")


def _seq_line(s) -> str:
    line = f"Consumer sequence: {s.consumer_seq:,} Stream sequence: {s.stream_seq:,}"
    return line + (f" Last delivery: {R.format_ago(s.last_active)}" if s.last_active else "")


def show_info(args, info: ConsumerInfo, headline: str | None = None) -> None:
    if args.json:
        R.emit_json(info.to_dict())
        return
    c = info.config
    con = R.console()
    con.print(headline or f"Information for Consumer {info.stream_name} > {info.name} created "
                          f"{R.format_time(info.created)}")
    con.print()
    start = {"by_start_sequence": f" from sequence {c.opt_start_seq}",
             "by_start_time": f" from {R.format_time(c.opt_start_time)}"}.get(c.deliver_policy, "")
    con.print(R.section("Configuration:", [
        ("Name", info.name),
        ("Durable Name", c.durable_name),
        ("Description", c.description),
        ("Delivery Subject", c.deliver_subject) if c.deliver_subject else ("Pull Mode", "true"),
        ("Deliver Queue Group", c.deliver_group),
        ("Filter Subject", c.filter_subject or (", ".join(c.filter_subjects) if c.filter_subjects else None)),
        ("Deliver Policy", c.deliver_policy.replace("_", " ").title() + start),
        ("Ack Policy", c.ack_policy.capitalize()),
        ("Ack Wait", R.format_duration(c.ack_wait) if c.ack_wait is not None else None),
        ("Replay Policy", c.replay_policy.capitalize()),
        ("Maximum Deliveries", c.max_deliver if c.max_deliver and c.max_deliver > 0 else "unlimited"),
        ("Backoff", ", ".join(R.format_duration(b) for b in c.backoff) if c.backoff else None),
        ("Max Ack Pending", c.max_ack_pending),
        ("Max Waiting Pulls", c.max_waiting),
        ("Idle Heartbeat", R.format_duration(c.idle_heartbeat) if c.idle_heartbeat else None),
        ("Flow Control", "true" if c.flow_control else None),
        ("Inactive Threshold", R.format_duration(c.inactive_threshold) if c.inactive_threshold else None),
    ]))
    if info.cluster:
        con.print()
        con.print(R.section("Cluster Information:", [("Name", info.cluster.name), ("Leader", info.cluster.leader)] + [
            ("Replica", f"{p.name}, {'current' if p.current else 'outdated'}") for p in info.cluster.replicas]))
    con.print()
    con.print(R.section("State:", [
        ("Last Delivered Message", _seq_line(info.delivered)),
        ("Acknowledgment Floor", _seq_line(info.ack_floor)),
        ("Outstanding Acks", f"{info.num_ack_pending:,} out of maximum {c.max_ack_pending}"),
        ("Redelivered Messages", f"{info.num_redelivered:,}"),
        ("Unprocessed Messages", f"{info.num_pending:,}"),
        ("Waiting Pulls", f"{info.num_waiting:,}" if not c.deliver_subject else None),
        ("Active Interest", ("Active" if info.push_bound else "No interest") if c.deliver_subject else None),
    ]))


def add_parser(sub) -> None:
    p = sub.add_parser("consumer", aliases=["con"], help="manage consumers: add | edit | info | ls | rm | next")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name, func, help_, aliases=(), named=True):
        v = verbs.add_parser(name, help=help_, aliases=list(aliases))
        add_connection_args(v)
        v.add_argument("stream", metavar="STREAM")
        if named:
            v.add_argument("consumer", metavar="CONSUMER")
        v.set_defaults(func=lambda args: run(args, func))
        return v

    v = verb("add", cmd_add, "create a durable consumer", ["create", "new"], named=False)
    v.add_argument("consumer", nargs="?", metavar="CONSUMER")
    v.add_argument("--durable", "--name", dest="durable", metavar="NAME", help="the consumer's name")
    _add_flags(v)
    v = verb("edit", cmd_edit, "change a consumer's configuration", ["update"])
    _add_flags(v)
    verb("info", cmd_info, "configuration and delivery state of a consumer")
    verb("ls", cmd_ls, "list a stream's consumers", ["list"], named=False)
    verb("rm", cmd_rm, "delete a consumer", ["delete"])
    v = verb("next", cmd_next, "fetch messages from a pull consumer and print them")
    v.add_argument("--count", "-c", type=int, default=1, help="messages to fetch (default 1)")
    v.add_argument("--ack", action="store_true", help="acknowledge each message (and wait for it)")
    v.add_argument("--timeout", type=duration, default=5.0, help="for all of them (default 5s)")
