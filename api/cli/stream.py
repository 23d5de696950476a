"""`raftbroker stream add|edit|info|ls|rm|purge|get|rmm|view`, after `nats stream`."""
from __future__ import annotations

import argparse
import json

from jetstream.config import StreamConfig
from jetstream.errors import NoMessageFoundError
from jetstream.results import PurgeResponse, StreamInfo
from . import render as R
from .conn import UsageError, add_connection_args, run


def _typed(parse):
    def convert(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


duration = _typed(R.parse_duration)
durations = _typed(R.parse_durations)
size = _typed(R.parse_size)


def _subjects(text: str) -> list[str]:
    return [s for s in text.split(",") if s]


# (flag, StreamConfig field, argparse keywords). Every default is None, so `edit` changes
# only what was given and `add` lets --config and the server's defaults fill the rest.
_BOOL = argparse.BooleanOptionalAction
STREAM_FLAGS = [
    ("--subjects", "subjects", dict(type=_subjects, help="comma-separated subjects (default: the stream name)")),
    ("--description", "description", dict()),
    ("--storage", "storage", dict(choices=["file", "memory"])),
    ("--retention", "retention", dict(choices=["limits", "interest", "workqueue"])),
    ("--discard", "discard", dict(choices=["old", "new"])),
    ("--max-msgs", "max_msgs", dict(type=int, help="-1 for unlimited")),
    ("--max-bytes", "max_bytes", dict(type=size, help="e.g. 1GB; -1 for unlimited")),
    ("--max-age", "max_age", dict(type=duration, help="e.g. 1h, 30s, 500ms; 0 for unlimited")),
    ("--max-msg-size", "max_msg_size", dict(type=size)),
    ("--max-msgs-per-subject", "max_msgs_per_subject", dict(type=int)),
    ("--max-consumers", "max_consumers", dict(type=int)),
    ("--dupe-window", "duplicate_window", dict(type=duration, help="duplicate tracking window, e.g. 2m")),
    ("--replicas", "num_replicas", dict(type=int)),
    ("--allow-rollup", "allow_rollup_hdrs", dict(action=_BOOL)),
    ("--deny-delete", "deny_delete", dict(action=_BOOL)),
    ("--deny-purge", "deny_purge", dict(action=_BOOL)),
    ("--allow-direct", "allow_direct", dict(action=_BOOL)),
    ("--discard-per-subject", "discard_new_per_subject", dict(action=_BOOL)),
    ("--mirror", "mirror", dict(type=lambda n: {"name": n}, metavar="STREAM", help="mirror this stream")),
    ("--source", "sources", dict(type=lambda n: {"name": n}, action="append", metavar="STREAM",
                                 help="source from this stream (repeatable)")),
]


def add_config_flags(p: argparse.ArgumentParser, flags) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument("--config", metavar="FILE", help="JSON configuration (StreamConfig/ConsumerConfig shape); "
                                                     "flags override it")
    for flag, field, kw in flags:
        g.add_argument(flag, dest=f"cfg_{field}", default=None, **kw)


def given(args, flags) -> dict:
    return {field: getattr(args, f"cfg_{field}") for _, field, _ in flags
            if getattr(args, f"cfg_{field}") is not None}


def read_config_file(path: str | None) -> dict:
    if not path:
        return {}
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read configuration {path}: {e}") from None
    if not isinstance(d, dict):
        raise UsageError(f"configuration {path} must hold a JSON object")
    return d


# -- commands ---------------------------------------------------------------------------
async def cmd_add(nc, args):
    d = read_config_file(args.config)
    d.update(given(args, STREAM_FLAGS))
    if args.stream:
        d["name"] = args.stream
    if not d.get("name"):
        raise UsageError("stream add needs a NAME (argument or \"name\" in --config)")
    args.stream = d["name"]
    info = await nc.jetstream().add_stream(StreamConfig.from_dict(d))
    show_info(args, info, f"Stream {info.config.name} was created")


async def cmd_edit(nc, args):
    js = nc.jetstream()
    changes = given(args, STREAM_FLAGS)
    if args.seal:
        changes["sealed"] = True
    current = await js.stream_info(args.stream)
    d = current.config.to_dict()
    d.update(read_config_file(args.config))
    d.update(changes)
    d["name"] = args.stream
    info = await js.update_stream(StreamConfig.from_dict(d))
    show_info(args, info, f"Stream {args.stream} was updated")


async def cmd_info(nc, args):
    show_info(args, await nc.jetstream().stream_info(args.stream))


async def cmd_ls(nc, args):
    js = nc.jetstream()
    if args.names:
        names = await js.stream_names(args.subject)
        if args.json:
            R.emit_json(names)
        else:
            print("\n".join(names))
        return
    infos = [await js.stream_info(n) for n in await js.stream_names(args.subject)] if args.subject else \
        await js.streams_info()
    if args.json:
        R.emit_json([i.to_dict() for i in infos])
        return
    if not infos:
        print("No streams defined")
        return
    R.console().print(R.table("Streams", ["Name", "Description", "Created", "Messages", "Size", "Last Message"], [
        (i.config.name, i.config.description, R.format_time(i.created), f"{i.state.messages:,}",
         R.format_size(i.state.bytes), R.format_ago(i.state.last_ts) if i.state.last_ts else "never")
        for i in infos]))


async def cmd_rm(nc, args):
    await nc.jetstream().delete_stream(args.stream)
    if args.json:
        R.emit_json({"stream": args.stream, "deleted": True})
    else:
        print(f"Deleted stream {args.stream}")


async def cmd_purge(nc, args):
    body = {"name": args.stream, "filter": args.subject, "keep": args.keep, "seq": args.seq}
    # The raw answer, because the library's purge_stream returns only nats-py's bool and
    # a script wants the count.
    r = PurgeResponse.from_dict(await nc.jetstream()._api("stream.purge", body))
    if args.json:
        R.emit_json({"stream": args.stream, **r.to_dict()})
    else:
        print(f"Purged {r.purged:,} messages from {args.stream}")


def _stored(m, stream: str) -> dict:
    return R.msg_dict(m.subject, m.data, m.headers, stream=stream, seq=m.seq, time=m.time)


def _print_stored(m, stream: str) -> None:
    R.print_msg(f"[{stream}#{m.seq}] {R.format_time(m.time)}", m.subject, m.data, m.headers)


async def cmd_get(nc, args):
    if (args.seq is None) == (args.last_for is None):
        raise UsageError("stream get needs a SEQ or --last-for SUBJECT (not both)")
    js = nc.jetstream()
    m = await (js.get_msg(args.stream, args.seq) if args.seq is not None else
               js.get_last_msg(args.stream, args.last_for))
    if args.json:
        R.emit_json(_stored(m, args.stream))
    else:
        _print_stored(m, args.stream)


async def cmd_rmm(nc, args):
    await nc.jetstream().delete_msg(args.stream, args.seq)
    if args.json:
        R.emit_json({"stream": args.stream, "seq": args.seq, "deleted": True})
    else:
        print(f"Deleted message {args.seq} from {args.stream}")


async def cmd_view(nc, args):
    js = nc.jetstream()
    await js.stream_info(args.stream)   # a missing stream is an error, an empty one is not
    seq, out = args.start, []
    while args.count is None or len(out) < args.count:
        try:
            m = await js.get_msg(args.stream, seq, subject=args.subject or ">", next=True)
        except NoMessageFoundError:
            break
        out.append(m)
        seq = m.seq + 1
        if not args.json:
            _print_stored(m, args.stream)
    if args.json:
        R.emit_json([_stored(m, args.stream) for m in out])
    elif not out:
        print(f"No messages in {args.stream}")


def show_info(args, info: StreamInfo, headline: str | None = None) -> None:
    if args.json:
        R.emit_json(info.to_dict())
        return
    c, s = info.config, info.state
    con = R.console()
    con.print(headline or f"Information for Stream {c.name} created {R.format_time(info.created)}")
    con.print()
    con.print(R.section("Configuration:", [
        ("Subjects", ", ".join(c.subjects or []) or None),
        ("Description", c.description),
        ("Acknowledgements", str(not c.no_ack).lower()),
        ("Retention", f"{c.storage.capitalize()} - {c.retention.capitalize()}"),
        ("Replicas", c.num_replicas),
        ("Discard Policy", c.discard.capitalize() + (" Per Subject" if c.discard_new_per_subject else "")),
        ("Duplicate Window", R.format_duration(c.duplicate_window)),
        ("Direct Get", str(c.allow_direct).lower()),
        ("Allows Msg Delete", str(not c.deny_delete).lower()),
        ("Allows Purge", str(not c.deny_purge).lower()),
        ("Allows Rollups", str(c.allow_rollup_hdrs).lower()),
        ("Sealed", "true" if c.sealed else None),
        ("Maximum Messages", R.format_limit(c.max_msgs)),
        ("Maximum Per Subject", R.format_limit(c.max_msgs_per_subject)),
        ("Maximum Bytes", R.format_size(c.max_bytes)),
        ("Maximum Age", R.format_duration(c.max_age)),
        ("Maximum Message Size", R.format_size(c.max_msg_size)),
        ("Maximum Consumers", R.format_limit(c.max_consumers)),
    ]))
    if info.cluster:
        rows = [("Name", info.cluster.name), ("Leader", info.cluster.leader)]
        for p in info.cluster.replicas:
            seen = f"seen {R.format_duration(p.active / 1e9)} ago" if p.active is not None else "not seen"
            state = "offline" if p.offline else ("current" if p.current else "outdated")
            rows.append(("Replica", f"{p.name}, {state}, {seen}" + (f", {p.lag:,} behind" if p.lag else "")))
        con.print()
        con.print(R.section("Cluster Information:", rows))
    if c.mirror:
        con.print()
        con.print(R.section("Mirror Information:", _origin(c.mirror, info.mirror)))
    for i, src in enumerate(c.sources or []):
        health = next((h for h in info.sources or [] if h.name == src.name), None)
        con.print()
        con.print(R.section("Source Information:" if i == 0 else "", _origin(src, health)))
    con.print()
    con.print(R.section("State:", [
        ("Messages", f"{s.messages:,}"),
        ("Bytes", R.format_size(s.bytes)),
        ("First Sequence", f"{s.first_seq:,}" + (f" @ {R.format_time(s.first_ts)}" if s.first_ts else "")),
        ("Last Sequence", f"{s.last_seq:,}" + (f" @ {R.format_time(s.last_ts)}" if s.last_ts else "")),
        ("Deleted Messages", f"{s.num_deleted:,}" if s.num_deleted else None),
        ("Active Consumers", s.consumer_count),
        ("Number of Subjects", s.num_subjects),
    ]))


def _origin(cfg, health) -> list[tuple[str, object]]:
    """A mirror's or source's configuration (a StreamSource) and, when the server reports it, its health."""
    transforms = ", ".join(f"{t.src} → {t.dest}" for t in cfg.subject_transforms or []) or None
    where = ", ".join(cfg.external.servers or []) or cfg.external.api if cfg.external else None
    rows = [("Stream Name", cfg.name), ("Filter", cfg.filter_subject), ("Subject Transforms", transforms),
            ("External", where)]
    if health is None:
        return rows + [("Health", "not reported by the server")]
    rows += [("Lag", f"{health.lag:,}"),
             ("Last Seen", R.format_duration(health.active / 1e9) + " ago" if health.active is not None else "never")]
    if health.error:
        rows.append(("Error", health.error.get("description", health.error)))
    return rows


# -- parser -----------------------------------------------------------------------------
def add_parser(sub) -> None:
    p = sub.add_parser("stream", aliases=["str"], help="manage streams: add | edit | info | ls | rm | purge | get | "
                                                       "rmm | view")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name, func, help_, aliases=()):
        v = verbs.add_parser(name, help=help_, aliases=list(aliases))
        add_connection_args(v)
        v.set_defaults(func=lambda args: run(args, func))
        return v

    v = verb("add", cmd_add, "create a stream", ["create", "new"])
    v.add_argument("stream", nargs="?", metavar="NAME")
    add_config_flags(v, STREAM_FLAGS)
    v = verb("edit", cmd_edit, "change a stream's configuration", ["update"])
    v.add_argument("stream", metavar="NAME")
    add_config_flags(v, STREAM_FLAGS)
    v.add_argument("--seal", action="store_true", help="make the stream read-only for good")
    v = verb("info", cmd_info, "configuration, state and cluster of a stream")
    v.add_argument("stream", metavar="NAME")
    v = verb("ls", cmd_ls, "list streams", ["list"])
    v.add_argument("--subject", help="only streams that capture this subject")
    v.add_argument("--names", "-n", action="store_true", help="names only")
    v = verb("rm", cmd_rm, "delete a stream and its messages", ["delete"])
    v.add_argument("stream", metavar="NAME")
    v = verb("purge", cmd_purge, "remove messages, keeping the stream")
    v.add_argument("stream", metavar="NAME")
    v.add_argument("--subject", help="only messages on this subject")
    v.add_argument("--keep", type=int, help="keep this many of the newest messages")
    v.add_argument("--seq", type=int, help="remove messages below this sequence")
    v = verb("get", cmd_get, "one stored message, by sequence or last on a subject")
    v.add_argument("stream", metavar="NAME")
    v.add_argument("seq", type=int, nargs="?", metavar="SEQ")
    v.add_argument("--last-for", metavar="SUBJECT", help="the last message on SUBJECT")
    v = verb("rmm", cmd_rmm, "delete one message by sequence")
    v.add_argument("stream", metavar="NAME")
    v.add_argument("seq", type=int, metavar="SEQ")
    v = verb("view", cmd_view, "print stored messages in order")
    v.add_argument("stream", metavar="NAME")
    v.add_argument("--count", "-c", type=int, help="at most this many (default: all)")
    v.add_argument("--start", type=int, default=1, metavar="SEQ", help="first sequence (default 1)")
    v.add_argument("--subject", help="only messages on subjects matching this")
