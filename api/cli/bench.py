"""`raftbroker bench pub|sub|js pub|js fetch|js consume SUBJECT`: load from C clients, each on
its own connection, then messages/s and MB/s per client and in total, and latency percentiles.

Every payload of 8 bytes or more starts with its publish time (unix ns), so a subscriber or
consumer measures end-to-end latency even in another process; `bench sub` in one shell and
`bench pub` in another measure core fan-out that way.
"""
from __future__ import annotations

import asyncio
import csv
import math
import struct
import sys
import time
from dataclasses import dataclass, field

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jetstream.config import ConsumerConfig, StreamConfig
from jetstream.errors import ConsumerNotFoundError, StreamNotFoundError
from api.client import PullSubscription
from . import render as R
from .conn import EXIT_USAGE, CommandError, add_connection_args, open_connection, run
from .stream import duration

STAMP = struct.Struct(">q")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
PROGRESS_EVERY_S = 0.1
CONSUME_POLL_S = 0.05
MB = 1_000_000


@dataclass
class ClientStats:
    msgs: int = 0
    bytes: int = 0
    start: float = 0.0      # time.monotonic() of the first message
    end: float = 0.0        # ... and of the last
    ack_lat_s: list = field(default_factory=list)
    e2e_lat_s: list = field(default_factory=list)

    def mark(self, size: int) -> None:
        now = time.monotonic()
        if not self.msgs:
            self.start = now
        self.msgs += 1
        self.bytes += size
        self.end = now

    def e2e(self, data: bytes) -> None:
        if len(data) >= STAMP.size:
            self.e2e_lat_s.append(max(0.0, (time.time_ns() - STAMP.unpack_from(data)[0]) / 1e9))


def payload(size: int) -> bytes:
    body = b"x" * size
    return STAMP.pack(time.time_ns()) + body[STAMP.size:] if size >= STAMP.size else body


def percentile(sorted_values: list, p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))]


def latency_summary(values: list) -> dict | None:
    if not values:
        return None
    v = sorted(values)
    out = {f"p{p:g}_ms": percentile(v, p) * 1000 for p in PERCENTILES}
    out["max_ms"] = v[-1] * 1000
    out["count"] = len(v)
    return out


def throughput(msgs: int, nbytes: int, start: float, end: float) -> dict:
    secs = max(end - start, 1e-9)
    return {"msgs": msgs, "bytes": nbytes, "seconds": round(secs, 6), "msgs_per_s": msgs / secs,
            "mb_per_s": nbytes / MB / secs}


def split(total: int, clients: int) -> list[int]:
    return [total // clients + (1 if i < total % clients else 0) for i in range(clients)]


# -- workloads: each is one client's loop ---------------------------------------------------
async def core_pub(nc, args, st: ClientStats, n: int, shared) -> None:
    for _ in range(n):
        await nc.publish(args.subject, payload(args.size))
        st.mark(args.size)
    await nc.flush()


async def core_sub(nc, args, st: ClientStats, n: int, shared) -> None:
    sub = shared["subs"][id(nc)]
    while st.msgs < n:
        m = await sub.next_msg(timeout=args.timeout)
        st.mark(len(m.data))
        st.e2e(m.data)


async def js_pub(nc, args, st: ClientStats, n: int, shared) -> None:
    js = nc.jetstream()
    if args.sync:
        for _ in range(n):
            t0 = time.monotonic()
            await js.publish(args.subject, payload(args.size))
            st.ack_lat_s.append(time.monotonic() - t0)
            st.mark(args.size)
        return
    window = asyncio.Semaphore(args.window)
    failures: list[BaseException] = []

    def done(fut, t0):
        window.release()
        if fut.exception() is not None:
            failures.append(fut.exception())
            return
        st.ack_lat_s.append(time.monotonic() - t0)
        st.mark(args.size)

    pending = []
    for _ in range(n):
        if failures:
            break
        await window.acquire()
        t0 = time.monotonic()
        fut = await js.publish_async(args.subject, payload(args.size))
        fut.add_done_callback(lambda f, t0=t0: done(f, t0))
        pending.append(fut)
    await asyncio.gather(*pending, return_exceptions=True)
    if failures:
        raise failures[0]


async def _take(args, st: ClientStats, m) -> None:
    st.mark(len(m.data))
    st.e2e(m.data)
    if args.ack:
        await m.ack()


async def js_fetch(nc, args, st: ClientStats, n: int, shared) -> None:
    sub = PullSubscription(nc.jetstream(), args.stream, shared["consumer"])
    while shared["left"] > 0:
        # Reserve the batch before asking, so clients fetching at once never take more than
        # the total between them.
        want = min(args.batch, shared["left"])
        shared["left"] -= want
        msgs = await sub.fetch(batch=want, timeout=args.timeout)
        shared["left"] += want - len(msgs)
        if not msgs:
            return
        for m in msgs:
            await _take(args, st, m)
    await nc.flush()    # the acks above were not waited for: make sure they left


async def js_consume(nc, args, st: ClientStats, n: int, shared) -> None:
    sub = shared["subs"][id(nc)]
    idle_s = 0.0
    while shared["left"] > 0:
        # Short waits: once another member of the group takes the last message this one
        # must notice, not sit out the whole idle timeout.
        try:
            m = await sub.next_msg(timeout=CONSUME_POLL_S)
        except asyncio.TimeoutError:
            idle_s += CONSUME_POLL_S
            if idle_s >= args.timeout:
                return
            continue
        idle_s = 0.0
        if m.metadata is None:   # an idle heartbeat
            continue
        shared["left"] -= 1
        await _take(args, st, m)
    await nc.flush()


# -- setup ---------------------------------------------------------------------------------
async def ensure_stream(js, args) -> None:
    try:
        await js.stream_info(args.stream)
    except StreamNotFoundError:
        await js.add_stream(StreamConfig(name=args.stream, subjects=[args.subject], storage=args.storage,
                                         num_replicas=args.replicas))
        return
    if args.purge:
        await js.purge_stream(args.stream)


async def ensure_consumer(nc, args, push: bool) -> ConsumerConfig:
    js = nc.jetstream()
    await js.stream_info(args.stream)   # a missing stream is named as such, not as a consumer error
    try:
        return (await js.consumer_info(args.stream, args.consumer)).config
    except ConsumerNotFoundError:
        pass
    cfg = ConsumerConfig(durable_name=args.consumer, filter_subject=args.subject,
                         ack_policy="explicit" if args.ack else "none",
                         deliver_subject=nc.new_inbox() if push else None,
                         deliver_group=args.consumer if push else None)
    return (await js.add_consumer(args.stream, cfg)).config


WORKLOADS = {"pub": core_pub, "sub": core_sub, "js pub": js_pub, "js fetch": js_fetch, "js consume": js_consume}


async def bench(nc, args):
    kind = args.kind
    conns = [nc] + [await open_connection(args) for _ in range(args.clients - 1)]
    shared: dict = {"left": args.msgs}
    try:
        if kind == "js pub":
            await ensure_stream(nc.jetstream(), args)
        elif kind in ("js fetch", "js consume"):
            cfg = await ensure_consumer(nc, args, push=kind == "js consume")
            shared["consumer"] = args.consumer
        if kind in ("sub", "js consume"):
            subject = args.subject if kind == "sub" else cfg.deliver_subject
            queue = (cfg.deliver_group or "") if kind == "js consume" else ""
            shared["subs"] = {id(c): await c.subscribe(subject, queue=queue) for c in conns}
            print(f"Subscribed on {subject} with {args.clients} client(s), waiting for messages",
                  file=sys.stderr, flush=True)
        # Fan-out: every core subscriber sees every message; everything else shares the total.
        counts = [args.msgs] * args.clients if kind == "sub" else split(args.msgs, args.clients)
        stats = [ClientStats() for _ in conns]
        expected = args.msgs * args.clients if kind == "sub" else args.msgs
        work = [asyncio.ensure_future(WORKLOADS[kind](c, args, st, n, shared))
                for c, st, n in zip(conns, stats, counts)]
        await _with_progress(args, work, stats, expected)
    finally:
        for c in conns[1:]:
            await c.close()
    done = sum(s.msgs for s in stats)
    report = make_report(args, stats)
    show(args, report)
    if done < expected:
        raise CommandError(f"{kind}: {done:,} of {expected:,} messages within the {R.format_duration(args.timeout)} "
                           "idle timeout")


async def _with_progress(args, work: list, stats: list[ClientStats], expected: int) -> None:
    progress = Progress(TextColumn(f"{args.kind} {args.subject}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                        console=R.console(stderr=True), disable=args.no_progress)
    t0 = time.monotonic()
    with progress:
        task = progress.add_task("bench", total=expected, rate="")
        while True:
            finished, _ = await asyncio.wait(work, timeout=PROGRESS_EVERY_S, return_when=asyncio.FIRST_EXCEPTION)
            done = sum(s.msgs for s in stats)
            progress.update(task, completed=done, rate=f"{done / max(time.monotonic() - t0, 1e-9):,.0f} msgs/s")
            if any(t.done() and not t.cancelled() and t.exception() for t in work):
                for t in work:
                    t.cancel()
                break
            if all(t.done() for t in work):
                break
    for t in work:
        if t.done() and not t.cancelled() and t.exception() is not None:
            e = t.exception()
            if isinstance(e, asyncio.TimeoutError):
                continue    # an idle subscriber: reported as a short count
            raise e


def make_report(args, stats: list[ClientStats]) -> dict:
    active = [s for s in stats if s.msgs]
    clients = [{"client": i + 1, **throughput(s.msgs, s.bytes, s.start, s.end)} for i, s in enumerate(stats)]
    for c, s in zip(clients, stats):
        c["latency"] = {k: v for k, v in (("publish_ack", latency_summary(s.ack_lat_s)),
                                          ("end_to_end", latency_summary(s.e2e_lat_s))) if v}
    total = throughput(sum(s.msgs for s in stats), sum(s.bytes for s in stats),
                       min((s.start for s in active), default=0.0), max((s.end for s in active), default=0.0))
    latency = {k: v for k, v in (
        ("publish_ack", latency_summary([x for s in stats for x in s.ack_lat_s])),
        ("end_to_end", latency_summary([x for s in stats for x in s.e2e_lat_s]))) if v}
    return {"kind": args.kind, "subject": args.subject, "size": args.size, "clients": clients, "total": total,
            "latency": latency, "_samples": {k: [x for s in stats for x in getattr(s, f)] for k, f in
                                            (("publish_ack", "ack_lat_s"), ("end_to_end", "e2e_lat_s"))}}


def show(args, report: dict) -> None:
    samples = report.pop("_samples")
    if args.csv:
        write_csv(args.csv, report)
    if args.histogram:
        write_histogram(args.histogram, report, samples)
    if args.json:
        R.emit_json(report)
        return
    con = R.console()
    rows = [(c["client"], f"{c['msgs']:,}", f"{c['seconds']:.3f}", f"{c['msgs_per_s']:,.0f}", f"{c['mb_per_s']:.2f}")
            for c in report["clients"]]
    t = report["total"]
    rows.append(("total", f"{t['msgs']:,}", f"{t['seconds']:.3f}", f"{t['msgs_per_s']:,.0f}", f"{t['mb_per_s']:.2f}"))
    con.print(R.table(f"{report['kind']} {report['subject']}: {report['size']} B messages",
                      ["Client", "Msgs", "Seconds", "Msgs/s", "MB/s"], rows))
    if report["latency"]:
        con.print(R.table("Latency (ms)", ["", "Count"] + [f"p{p:g}" for p in PERCENTILES] + ["max"], [
            (k.replace("_", " "), f"{v['count']:,}", *(f"{v[f'p{p:g}_ms']:.3f}" for p in PERCENTILES),
             f"{v['max_ms']:.3f}") for k, v in report["latency"].items()]))


def write_csv(path: str, report: dict) -> None:
    kinds = list(report["latency"])
    lat_cols = [f"{k}_{m}" for k in kinds for m in [f"p{p:g}_ms" for p in PERCENTILES] + ["max_ms"]]
    cols = ["kind", "client", "msgs", "bytes", "seconds", "msgs_per_s", "mb_per_s"] + lat_cols
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row, lat in [(c, c["latency"]) for c in report["clients"]] + \
                        [({"client": "total", **report["total"]}, report["latency"])]:
            w.writerow([report["kind"]] + [row[c] for c in cols[1:7]] +
                       [lat.get(k, {}).get(m, "") for k in kinds for m in [f"p{p:g}_ms" for p in PERCENTILES] +
                        ["max_ms"]])


def write_histogram(path: str, report: dict, samples: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")   # no display here, and none needed for a file
    import matplotlib.pyplot as plt
    kinds = [k for k, v in samples.items() if v]
    fig, axes = plt.subplots(max(1, len(kinds)), 1, figsize=(8, 3.5 * max(1, len(kinds))), squeeze=False)
    for ax, k in zip(axes[:, 0], kinds):
        ax.hist([x * 1000 for x in samples[k]], bins=100)
        ax.set_yscale("log")
        ax.set_xlabel("ms")
        ax.set_ylabel("messages")
        lat = report["latency"][k]
        ax.set_title(f"{report['kind']} {report['subject']}: {k.replace('_', ' ')} latency "
                     f"(p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms)")
    if not kinds:
        axes[0, 0].set_title(f"{report['kind']}: no latency samples")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def matplotlib_missing() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return True
    return False


def start(args) -> int:
    # Checked before any load is sent: finding out at the end would waste the whole run.
    if args.histogram and matplotlib_missing():
        print("raftbroker: --histogram needs matplotlib, which is not installed (pip install matplotlib)",
              file=sys.stderr)
        return EXIT_USAGE
    return run(args, bench)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: pub | sub | js pub | js fetch | js consume")
    kinds = p.add_subparsers(dest="bench_kind", required=True, metavar="KIND")

    def kind(parent, name, label, help_):
        v = parent.add_parser(name, help=help_)
        add_connection_args(v)
        v.add_argument("subject", metavar="SUBJECT")
        v.add_argument("--msgs", type=int, default=10_000, help="messages in all (default %(default)s; "
                                                                 "for sub: per subscriber)")
        v.add_argument("--size", type=int, default=128, help="payload bytes (default %(default)s)")
        v.add_argument("--clients", type=int, default=1, help="clients, each its own connection")
        v.add_argument("--timeout", type=duration, default=10.0,
                       help="receivers give up after this long without a message (default 10s)")
        v.add_argument("--csv", metavar="FILE", help="write per-client and total results as CSV")
        v.add_argument("--histogram", metavar="FILE.png", help="write latency histograms (needs matplotlib)")
        v.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
        v.set_defaults(func=start, kind=label)
        return v

    kind(kinds, "pub", "pub", "core publish")
    kind(kinds, "sub", "sub", "core subscribe: every client receives --msgs messages")
    js = kinds.add_parser("js", help="JetStream: pub | fetch | consume")
    jkinds = js.add_subparsers(dest="js_kind", required=True, metavar="KIND")
    for name, help_ in (("pub", "publish to a stream and wait for acks"),
                        ("fetch", "pull from a durable consumer the clients share"),
                        ("consume", "push from a durable consumer to a queue group of the clients")):
        v = kind(jkinds, name, f"js {name}", help_)
        v.add_argument("--stream", default="benchstream", help="stream (js pub creates it; default %(default)s)")
        if name == "pub":
            v.add_argument("--replicas", type=int, default=1, help="replicas of a stream js pub creates")
            v.add_argument("--storage", choices=["file", "memory"], default="file")
            v.add_argument("--purge", action="store_true", help="empty an existing stream first")
            mode = v.add_mutually_exclusive_group()
            mode.add_argument("--sync", action="store_true", help="one publish at a time per client")
            mode.add_argument("--window", type=int, default=100, help="acks outstanding per client (default 100)")
        else:
            v.add_argument("--consumer", default=f"bench-{name}", help="durable consumer (created if missing)")
            v.add_argument("--ack", action="store_true", help="acknowledge every message (explicit ack policy)")
        if name == "fetch":
            v.add_argument("--batch", type=int, default=100, help="messages per fetch (default 100)")
