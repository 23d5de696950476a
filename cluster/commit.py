"""Group commit: proposals wait in a bounded queue and ride together in one entry.

`GroupCommitNode` is the interface the RPC server talks to (`propose`,
`propose_future`, `propose_one`, `read`, `barrier`, event listeners). How an
entry is made durable is the subclass's one job: `LocalNode` applies it to
the store directly, `RaftNode` commits it through the Raft log first.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from jetstream.errors import JSError
from storage.commands import Command, Publish

log = logging.getLogger("raftbroker.node")


class NodeBusyError(JSError):
    code = 503
    err_code = 10008
    description = "too many proposals waiting; try again"


@dataclass
class BatchBounds:
    max_commands: int = 1000               # commands packed into one entry
    max_bytes: int = 2 * 1024 * 1024       # payload bytes packed into one entry
    max_queued: int = 50_000               # proposals waiting for an entry before new ones are refused
    max_inflight: int = 1                  # entries committing at once (pipelining depth)


def _weight(cmd: Command) -> int:
    return len(cmd.data) + len(cmd.subject) + 64 if isinstance(cmd, Publish) else 64


class GroupCommitNode:
    """Subclasses implement `_commit(time_ns, commands) -> (results, events)`."""

    def __init__(self, bounds: BatchBounds | None = None, clock: Callable[[], int] = time.time_ns):
        self.bounds = bounds or BatchBounds()
        self.clock = clock
        # (commands, their weight, future, one): the future gets the list of their results,
        # or with `one` the only result. No commands is a read barrier: it waits for an entry.
        self._queue: list[tuple[list[Command], int, asyncio.Future, bool]] = []
        self._queued = 0                        # commands in the queue
        self._wake = asyncio.Event()
        self._listeners: list[Callable] = []
        self._task: Optional[asyncio.Task] = None
        self._inflight: Optional[asyncio.Semaphore] = None
        self._closed = False
        self.on_entry: Optional[Callable[[int, float], None]] = None   # (commands, seconds), for /metrics

    @property
    def proposals_queued(self) -> int:
        return self._queued

    # -- the interface the server uses ------------------------------------------------
    def add_listener(self, fn: Callable) -> None:
        """fn(events) is called on the event loop after each applied entry."""
        self._listeners.append(fn)

    def _check_open(self, n: int) -> None:
        if self._closed:
            raise NodeBusyError("node is shutting down")
        if self._queued + n > self.bounds.max_queued:
            raise NodeBusyError()

    def _enqueue(self, commands: list[Command], weight: int, one: bool = False) -> asyncio.Future:
        f = asyncio.get_running_loop().create_future()
        self._queue.append((commands, weight, f, one))
        self._queued += len(commands)
        self._wake.set()
        return f

    def _runs(self, items: list, count: Callable, weight: Callable):
        """(run, its weight): consecutive items in runs that each fit in one entry
        (max_commands counted by `count`, max_bytes by `weight`); a run has at least one."""
        run: list = []
        n = size = 0
        for it in items:
            k, w = count(it), weight(it)
            if run and (n + k > self.bounds.max_commands or size + w > self.bounds.max_bytes):
                yield run, size
                run, n, size = [], 0, 0
            run.append(it)
            n += k
            size += w
        if run:
            yield run, size

    async def propose(self, commands: list[Command]) -> list:
        """Apply commands (possibly sharing an entry with others); results in order.
        A command's JSError is its result, not raised. One future per entry-sized
        run of commands, not one per command."""
        self._check_open(len(commands))
        futs = [self._enqueue(g, w) for g, w in self._runs(commands, lambda _: 1, _weight)]
        out: list = []
        for results in await asyncio.gather(*futs):
            out.extend(results)
        return out

    def propose_future(self, command: Command) -> asyncio.Future:
        """Queue one command now; a future of its result (a JSError result is the
        future's value, not raised). Lets the server serve a publish or an ack
        with a callback instead of a task per request."""
        self._check_open(1)
        return self._enqueue([command], _weight(command), one=True)

    async def propose_one(self, command: Command):
        r = await self.propose_future(command)
        if isinstance(r, JSError):
            raise r
        return r

    async def barrier(self) -> None:
        """Return once an entry proposed after this call is applied: everything
        acknowledged before the call is then visible. Waiting reads share entries."""
        self._check_open(1)
        await self._enqueue([], 0)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._inflight = asyncio.Semaphore(self.bounds.max_inflight)
        self._task = asyncio.get_running_loop().create_task(self._commit_loop())

    async def _stop_commits(self) -> None:
        """Refuse new proposals and let the queued ones finish or fail."""
        self._closed = True
        if self._task:
            self._wake.set()
            await self._task
            for _ in range(self.bounds.max_inflight):
                await self._inflight.acquire()

    def _take_batch(self) -> list[tuple[list[Command], int, asyncio.Future, bool]]:
        """Queued proposals, whole, up to the entry's bounds (at least one)."""
        batch, _ = next(self._runs(self._queue, lambda item: len(item[0]), lambda item: item[1]))
        self._queue = self._queue[len(batch):]
        self._queued -= sum(len(cmds) for cmds, _, _, _ in batch)
        return batch

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # While entries are being committed, new proposals gather in the queue
            # and ride in the next entry: that is the group commit.
            await self._inflight.acquire()
            batch = self._take_batch()
            loop.create_task(self._commit_batch(batch))

    async def _commit_batch(self, batch) -> None:
        try:
            commands = [c for cmds, _, _, _ in batch for c in cmds]
            t0 = time.perf_counter()
            try:
                results, events = await self._commit(self.clock(), commands)
            except Exception as e:  # the entry failed as a whole (no leader, I/O, timeout)
                if not isinstance(e, JSError):
                    log.exception("committing an entry failed")
                for _, _, f, _ in batch:
                    if not f.done():
                        f.set_exception(e)
                return
            if self.on_entry is not None:
                self.on_entry(len(commands), time.perf_counter() - t0)
            at = 0
            for cmds, _, f, one in batch:
                n = len(cmds)
                if not f.done():
                    f.set_result(results[at] if one else results[at:at + n])
                at += n
            if events:
                self._emit(events)
        finally:
            self._inflight.release()

    def _emit(self, events) -> None:
        for fn in self._listeners:
            try:
                fn(events)
            except Exception:  # a listener's bug must not stop the log
                log.exception("event listener failed")

    async def _commit(self, time_ns: int, commands: list[Command]) -> tuple[list, list]:
        raise NotImplementedError
