"""The chaos workload: publishers and consumers that record every attempt in the history.

Publishers publish unique values (`<process>-<n>`, also the msg_id), some one at
a time, some with a window of publishes in flight. A pull consumer and a push
deliver group read and `ack_sync` what they get. `drain` runs after healing:
it reads every consumer to the end and the final stream.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Optional

from api.client import ConsumerConfig, connect
from jetstream.errors import JSError

from .history import FAIL, INFO, OK, Op

STREAM = "CHAOS"
SUBJECT = "chaos.v"
PULL, PUSH = "pull", "grp"


@dataclass
class WorkloadConfig:
    stream: str = STREAM
    subject: str = SUBJECT              # every publish goes here; the stream takes `<first token>.>`
    sequential_publishers: int = 2
    windowed_publishers: int = 1
    window: int = 4
    pull_workers: int = 1
    push_workers: int = 2
    publish_timeout_s: float = 5.0
    # Well above any queueing delay in the workers: a redelivery then means a
    # delivery was really lost (a worker's connection dropped, say), not a slow worker.
    ack_wait_s: float = 30.0
    # After healing, how long the final reads ride out a cluster without a leader
    # (a broken build can leave one that keeps re-electing) before the run gives up.
    final_read_patience_s: float = 60.0


def _outcome(e: BaseException) -> str:
    # A follower's "not leader" is retried inside the client; what reaches us is an
    # error after which the publish may or may not be stored: unknown, unless the
    # server refused it as such before proposing (a JSError other than availability).
    if isinstance(e, JSError) and e.err_code not in (10008, 10009):
        return FAIL
    return INFO


class Workload:
    def __init__(self, servers: list[str], cfg: WorkloadConfig, t0: float, record: Callable[[Op], None]):
        """t0: the run's start on time.monotonic(); history times are seconds since it."""
        self.servers = servers
        self.cfg = cfg
        self.t0 = t0
        self.now = lambda: time.monotonic() - t0
        self.record = record
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._clients = []
        self.acked = 0

    async def _client(self):
        nc = await connect(self.servers, timeout=self.cfg.publish_timeout_s, max_reconnect_attempts=-1)
        nc.attempt_timeout = 2.0
        self._clients.append(nc)
        return nc

    async def setup(self) -> None:
        nc = await self._client()
        js = nc.jetstream()
        stream = self.cfg.stream
        await js.add_stream(name=stream, subjects=[self.cfg.subject.split(".", 1)[0] + ".>"], num_replicas=3,
                            duplicate_window=120)
        await js.add_consumer(stream, ConsumerConfig(durable_name=PULL, ack_policy="explicit",
                                                     ack_wait=self.cfg.ack_wait_s, max_ack_pending=10_000))
        # The push consumer is made once, here: workers that each created it would race,
        # and the loser's update would move its deliver subject away from the winner.
        await js.add_consumer(stream, ConsumerConfig(durable_name=PUSH, deliver_subject=f"_CHAOS.{PUSH}",
                                                     deliver_group=PUSH, ack_policy="explicit",
                                                     ack_wait=self.cfg.ack_wait_s, max_ack_pending=10_000))

    async def start(self) -> None:
        for k in range(self.cfg.sequential_publishers):
            self._spawn(self._publisher(f"pub-{k}", 1))
        for k in range(self.cfg.windowed_publishers):
            self._spawn(self._publisher(f"win-{k}", self.cfg.window))
        for k in range(self.cfg.pull_workers):
            self._spawn(self._puller(f"pull-{k}"))
        for k in range(self.cfg.push_workers):
            self._spawn(self._pusher(f"push-{k}"))

    def _spawn(self, coro) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def close(self) -> None:
        for nc in self._clients:
            try:
                await asyncio.wait_for(nc.close(), 5)
            except Exception:  # noqa: BLE001 - closing a client of a dead cluster
                pass

    # -- publishers ------------------------------------------------------------------------
    async def _publisher(self, name: str, window: int) -> None:
        js = (await self._client()).jetstream()
        slots = asyncio.Semaphore(window)
        n = 0
        pending: set[asyncio.Task] = set()
        while not self.stop.is_set():
            await slots.acquire()
            if self.stop.is_set():
                break
            value = f"{name}-{n}"
            n += 1
            t = asyncio.get_running_loop().create_task(self._publish(js, name, value))
            pending.add(t)
            t.add_done_callback(lambda t: (pending.discard(t), slots.release()))
        await asyncio.gather(*pending, return_exceptions=True)

    async def _publish(self, js, process: str, value: str) -> None:
        op = Op("publish", process, self.now(), value=value, msg_id=value)
        try:
            ack = await js.publish(self.cfg.subject, value.encode(), msg_id=value, timeout=self.cfg.publish_timeout_s)
            op.outcome, op.seq = OK, ack.seq
            self.acked += 1
        except Exception as e:  # noqa: BLE001 - every failure is recorded, none is fatal
            op.outcome, op.error = _outcome(e), f"{type(e).__name__}: {e}"[:200]
        op.complete = self.now()
        self.record(op)

    # -- consumers --------------------------------------------------------------------------
    async def _ack(self, process: str, msg) -> None:
        seq = msg.metadata.sequence.stream
        op = Op("ack", process, self.now(), consumer=msg.metadata.consumer, seq=seq)
        try:
            await msg.ack_sync(timeout=self.cfg.publish_timeout_s)
            op.outcome = OK
        except Exception as e:  # noqa: BLE001
            op.outcome, op.error = _outcome(e), f"{type(e).__name__}: {e}"[:200]
        op.complete = self.now()
        self.record(op)

    def _delivered(self, process: str, msg, asked: Optional[float] = None) -> None:
        """A delivery's invoke is when it was asked for (a fetch's start) or when its
        frame arrived (push), not when a worker got round to it: a copy that left the
        server before an ack was confirmed is then not taken for a later delivery."""
        t = msg.received - self.t0 if msg.received else self.now()
        # The consumer the server says it delivered for: a worker bound to another
        # consumer than the one it asked for would show up as a different one.
        self.record(Op("deliver", process, t if asked is None else asked, t, OK, value=msg.data.decode(),
                       consumer=msg.metadata.consumer,
                       seq=msg.metadata.sequence.stream, delivered=msg.metadata.num_delivered))

    async def _puller(self, name: str, until_drained: Optional[asyncio.Event] = None) -> None:
        nc = await self._client()
        sub = await nc.jetstream().pull_subscribe(self.cfg.subject, durable=PULL, stream=self.cfg.stream)
        while not self.stop.is_set():
            asked = self.now()
            try:
                msgs = await sub.fetch(20, timeout=1.0)
            except Exception:  # noqa: BLE001 - a failed fetch delivered nothing we saw
                await asyncio.sleep(0.2)
                continue
            for m in msgs:
                self._delivered(name, m, asked)
            await asyncio.gather(*(self._ack(name, m) for m in msgs))

    async def _pusher(self, name: str) -> None:
        nc = await self._client()
        # Acks run alongside the callback (up to 64 at once), as a real worker pool
        # would: one ack_sync at a time cannot keep up with the publishers.
        slots = asyncio.Semaphore(64)
        acks: set[asyncio.Task] = set()

        async def ack(m) -> None:
            try:
                await self._ack(name, m)
            finally:
                slots.release()

        async def handle(m) -> None:
            self._delivered(name, m)
            await slots.acquire()
            t = asyncio.get_running_loop().create_task(ack(m))
            acks.add(t)
            t.add_done_callback(acks.discard)

        while not self.stop.is_set():
            try:
                await nc.jetstream().subscribe(self.cfg.subject, queue=PUSH, durable=PUSH, stream=self.cfg.stream, cb=handle,
                                               manual_ack=True)
                break
            except Exception:  # noqa: BLE001 - no leader yet: try again
                await asyncio.sleep(0.5)
        await self.stop.wait()
        await asyncio.gather(*acks, return_exceptions=True)

    # -- after healing ----------------------------------------------------------------------
    async def drain(self, stall_s: float) -> dict:
        """Read both consumers to the end (acking, with redeliveries); return their
        final info. Gives up when nothing is left to do, or when the backlog has not
        shrunk for `stall_s` (keep it above ack_wait: lost deliveries come back only then)."""
        self.stop.clear()
        self._spawn(self._puller("pull-drain"))
        for k in range(self.cfg.push_workers):
            self._spawn(self._pusher(f"push-drain-{k}"))
        js = (await self._client()).jetstream(timeout=self.cfg.final_read_patience_s)
        best, best_at = None, time.monotonic()
        timed_out = True
        while time.monotonic() - best_at < stall_s:
            try:
                infos = {c: await js.consumer_info(self.cfg.stream, c) for c in (PULL, PUSH)}
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.5)
                continue
            left = sum(i.num_pending + i.num_ack_pending for i in infos.values())
            if left == 0:
                timed_out = False
                break
            if best is None or left < best:
                best, best_at = left, time.monotonic()
            await asyncio.sleep(0.5)
        await self.halt()
        out = {}
        for c in (PULL, PUSH):
            i = await js.consumer_info(self.cfg.stream, c)
            out[c] = {"num_pending": i.num_pending, "num_ack_pending": i.num_ack_pending,
                      "ack_floor": i.ack_floor.stream_seq,
                      # The drain ran (to the end, or until it timed out): the checker then
                      # holds the consumer to every stored message, and reports stuck counters.
                      "drained": True, "drain_timed_out": timed_out}
        return out

    async def read_stream(self, row: Optional[Callable] = None) -> list:
        """The final stream, in sequence order (see `read_all`); `row` makes each
        message's entry, by default (seq, value)."""
        js = (await self._client()).jetstream(timeout=self.cfg.final_read_patience_s)
        return await read_all(js, self.cfg.stream, row or value_row, self.cfg.final_read_patience_s)


def value_row(m) -> tuple[int, str]:
    return m.metadata.sequence.stream, m.data.decode()


async def read_all(js, stream: str, row: Callable, patience_s: float) -> list:
    """Every message of `stream`, in sequence order, through an ack-none consumer. After
    an error a fresh consumer resumes after the last message read: a fetch whose reply
    was lost has already moved an ack-none consumer past what it carried. Gives up after
    `patience_s` without progress (no leader for that long)."""
    out: list = []
    last = [0]                  # the last seq read, whatever shape `row` gives entries
    give_up = time.monotonic() + patience_s
    attempt = 0
    while True:
        attempt += 1
        had = len(out)
        try:
            return await _read_from(js, stream, f"chaos-reader-{attempt}", row, out, last)
        except Exception:  # noqa: BLE001 - no leader for a while: resume, unless stuck
            if len(out) > had:
                give_up = time.monotonic() + patience_s
            elif time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.5)


async def _read_from(js, stream: str, name: str, row: Callable, out: list, last: list) -> list:
    info = await js.add_consumer(stream, ConsumerConfig(durable_name=name, ack_policy="none",
                                                        deliver_policy="by_start_sequence",
                                                        opt_start_seq=last[0] + 1))
    sub = await js.pull_subscribe("", durable=info.name, stream=stream)
    while True:
        msgs = await sub.fetch(500, timeout=1.0)
        if not msgs:
            if (await js.consumer_info(stream, info.name)).num_pending == 0:
                return out
            continue
        out.extend(row(m) for m in msgs)
        last[0] = msgs[-1].metadata.sequence.stream
