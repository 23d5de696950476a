"""`raftbroker pub | sub | request | reply`: messages from the command line."""
from __future__ import annotations

import asyncio
import sys

from api.client.errors import TimeoutError
from . import render as R
from .conn import CommandError, UsageError, add_connection_args, run
from .stream import duration


def parse_headers(items: list[str] | None) -> dict | None:
    if not items:
        return None
    out = {}
    for item in items:
        k, sep, v = item.partition(":")
        if not sep or not k.strip():
            raise UsageError(f"invalid header {item!r}: expected KEY:VALUE")
        out[k.strip()] = v.strip()
    return out


def _body(args, i: int) -> bytes:
    # {{Count}} as in `nats pub`, so --count can publish distinct bodies.
    return args.data.replace("{{Count}}", str(i)).encode()


async def cmd_pub(nc, args):
    headers = parse_headers(args.header)
    if args.stdin:
        args.data = sys.stdin.read()
    if args.core and args.id:
        raise UsageError("--id needs a JetStream publish (drop --core)")
    js = nc.jetstream()
    for i in range(1, args.count + 1):
        body = _body(args, i)
        if args.core:
            await nc.publish(args.subject, body, headers=headers)
            result = {"subject": args.subject, "count": i}
        else:
            # With --count, one --id would make every message after the first a duplicate:
            # number them instead.
            msg_id = args.id if args.count == 1 or not args.id else f"{args.id}-{i}"
            ack = await js.publish(args.subject, body, headers=headers, msg_id=msg_id)
            result = {"subject": args.subject, **ack.to_dict()}
        if args.json:
            R.emit_json_line(result)
        elif args.core:
            print(f"Published {len(body)} bytes to {args.subject!r}")
        else:
            dup = " (duplicate)" if result.get("duplicate") else ""
            print(f"Stored in {result['stream']} at sequence {result['seq']}{dup}")
    if args.core:
        await nc.flush()   # core publishes are not acked: make sure they left before exiting


async def cmd_sub(nc, args):
    sub = await nc.subscribe(args.subject, queue=args.queue or "")
    print(f"Subscribing on {args.subject}" + (f" in queue {args.queue}" if args.queue else ""),
          file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    deadline = None if args.timeout is None else loop.time() + args.timeout
    n = 0
    while args.count is None or n < args.count:
        try:
            wait = 3600.0 if deadline is None else deadline - loop.time()
            if wait <= 0:
                raise TimeoutError()
            m = await sub.next_msg(timeout=wait)
        except TimeoutError:
            if args.count is None:
                return
            raise CommandError(f"received {n} of {args.count} messages on {args.subject} within "
                               f"{R.format_duration(args.timeout)}") from None
        n += 1
        md = m.metadata
        acked = False
        if args.ack and md is not None:
            await m.ack_sync()
            acked = True
        if args.json:
            extra = dict(stream=md.stream, consumer=md.consumer, stream_seq=md.sequence.stream,
                         num_delivered=md.num_delivered) if md else {}
            R.emit_json_line(R.msg_dict(m.subject, m.data, m.headers, reply=m.reply, acked=acked or None, **extra))
        else:
            where = f" {md.stream}#{md.sequence.stream}" if md else ""
            R.print_msg(f"[#{n}]{where} Received{' and acked' if acked else ''}", m.subject, m.data, m.headers)


async def cmd_request(nc, args):
    try:
        m = await nc.request(args.subject, args.data.encode(), timeout=args.timeout,
                             headers=parse_headers(args.header))
    except TimeoutError:
        raise CommandError(f"no reply on {args.subject} within {R.format_duration(args.timeout)}") from None
    if args.json:
        R.emit_json(R.msg_dict(m.subject, m.data, m.headers))
    else:
        R.print_msg("Received reply", m.subject, m.data, m.headers)


async def cmd_reply(nc, args):
    answered = 0

    async def respond(m):
        nonlocal answered
        if m.reply:
            await nc.publish(m.reply, args.data.encode())
            answered += 1
            if args.count and answered >= args.count:
                done.set()

    done = asyncio.Event()
    await nc.subscribe(args.subject, queue=args.queue or "", cb=respond)
    print(f"Listening on {args.subject}", file=sys.stderr, flush=True)
    try:
        await asyncio.wait_for(done.wait(), args.timeout)
    except asyncio.TimeoutError:
        if args.count:
            raise CommandError(f"answered {answered} of {args.count} requests on {args.subject}") from None
    await nc.flush()
    if args.json:
        R.emit_json({"subject": args.subject, "answered": answered})


def add_parsers(sub) -> None:
    def command(name, func, help_):
        p = sub.add_parser(name, help=help_)
        add_connection_args(p)
        p.add_argument("subject", metavar="SUBJECT")
        p.set_defaults(func=lambda args: run(args, func))
        return p

    p = command("pub", cmd_pub, "publish; stored and acknowledged by the stream that captures SUBJECT")
    p.add_argument("data", nargs="?", default="", metavar="DATA", help="body; {{Count}} is the message number")
    p.add_argument("--count", type=int, default=1, help="publish this many (default 1)")
    p.add_argument("-H", "--header", action="append", metavar="KEY:VALUE")
    p.add_argument("--id", help="Nats-Msg-Id, for the stream's duplicate detection")
    p.add_argument("--core", action="store_true", help="core publish: no stream, no ack")
    p.add_argument("--stdin", action="store_true", help="read the body from stdin")
    p = command("sub", cmd_sub, "print messages on SUBJECT (JetStream deliveries too)")
    p.add_argument("--queue", help="join this queue group")
    p.add_argument("--ack", action="store_true", help="acknowledge JetStream deliveries (and wait for it)")
    p.add_argument("--count", type=int, help="exit after this many messages")
    p.add_argument("--timeout", type=duration, help="give up after this long (with --count: exit 1)")
    p = command("request", cmd_request, "send a request and print the reply")
    p.add_argument("data", nargs="?", default="", metavar="DATA")
    p.add_argument("-H", "--header", action="append", metavar="KEY:VALUE")
    p.add_argument("--timeout", type=duration, default=2.0, help="wait this long for the reply (default 2s)")
    p = command("reply", cmd_reply, "answer requests on SUBJECT with DATA")
    p.add_argument("data", nargs="?", default="", metavar="DATA")
    p.add_argument("--queue", help="join this queue group")
    p.add_argument("--count", type=int, help="exit after answering this many")
    p.add_argument("--timeout", type=duration, help="exit after this long")
