"""The single-node `Node`: proposals are group-committed into entries and applied locally.

This is the narrow interface the RPC server talks to. The Raft node of the
cluster issue keeps the same shape (`propose`, `read`, event listeners), so
the server does not change when the log moves between it and the store.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from storage import Entry, Store
from storage.commands import Command, Publish
from storage.errors import JSError

log = logging.getLogger("raftbroker.node")


class NodeBusyError(JSError):
    code = 503
    err_code = 10008
    description = "too many proposals waiting; try again"


@dataclass
class BatchBounds:
    max_commands: int = 1000               # commands packed into one entry
    max_bytes: int = 4 * 1024 * 1024       # payload bytes packed into one entry
    max_queued: int = 50_000               # proposals waiting for an entry before new ones are refused


def _weight(cmd: Command) -> int:
    return len(cmd.data) + 64 if isinstance(cmd, Publish) else 64


class LocalNode:
    def __init__(self, store: Store, bounds: BatchBounds | None = None, clock: Callable[[], int] = time.time_ns,
                 name: str = "n1", client_addr: Optional[str] = None):
        self.store = store
        self.bounds = bounds or BatchBounds()
        self.clock = clock
        self.name = name
        self.client_addr = client_addr
        self._queue: list[tuple[Command, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._listeners: list[Callable] = []
        # One thread owns the store: applies and reads never overlap.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._task: Optional[asyncio.Task] = None
        self._closed = False

    # -- the interface the server uses ------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return True

    @property
    def leader(self) -> tuple[str, Optional[str]]:
        return self.name, self.client_addr

    def add_listener(self, fn: Callable) -> None:
        """fn(events) is called on the event loop after each applied entry."""
        self._listeners.append(fn)

    async def propose(self, commands: list[Command]) -> list:
        """Apply commands (possibly sharing an entry with others); results in order."""
        if self._closed:
            raise NodeBusyError("node is shutting down")
        if len(self._queue) + len(commands) > self.bounds.max_queued:
            raise NodeBusyError()
        loop = asyncio.get_running_loop()
        futs = []
        for c in commands:
            f = loop.create_future()
            self._queue.append((c, f))
            futs.append(f)
        self._wake.set()
        return list(await asyncio.gather(*futs))

    def propose_future(self, command: Command) -> asyncio.Future:
        """Queue one command now; a future of its result (a JSError result is the
        future's value, not raised). Same checks as propose(). Lets the server serve
        a publish or an ack with a callback instead of a task per request."""
        if self._closed:
            raise NodeBusyError("node is shutting down")
        if len(self._queue) + 1 > self.bounds.max_queued:
            raise NodeBusyError()
        f = asyncio.get_running_loop().create_future()
        self._queue.append((command, f))
        self._wake.set()
        return f

    async def propose_one(self, command: Command):
        # Without gather(): one command is one future, not a future plus a
        # gathering future and callbacks.
        r = await self.propose_future(command)
        if isinstance(r, JSError):
            raise r
        return r

    async def read(self, fn: Callable[[Store], object]):
        """Run fn(store) after every entry proposed before this call is applied."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self.store)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._commit_loop())

    async def stop(self) -> None:
        self._closed = True
        if self._task:
            self._wake.set()
            await self._task
        await asyncio.get_running_loop().run_in_executor(self._executor, self.store.close)
        self._executor.shutdown(wait=True)

    def _take_batch(self) -> list[tuple[Command, asyncio.Future]]:
        n, size = 0, 0
        for cmd, _ in self._queue:
            w = _weight(cmd)
            if n and (n >= self.bounds.max_commands or size + w > self.bounds.max_bytes):
                break
            n += 1
            size += w
        batch, self._queue = self._queue[:n], self._queue[n:]
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
            # While one entry is being applied and synced, new proposals gather in
            # the queue and ride in the next entry: that is the group commit.
            batch = self._take_batch()
            entry = Entry(self.store.applied_index + 1, self.clock(), [c for c, _ in batch])
            try:
                res = await loop.run_in_executor(self._executor, self.store.apply, entry)
            except Exception as e:  # the store refused the entry as a whole (I/O, corruption)
                log.exception("applying entry failed", extra={"index": entry.index})
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), r in zip(batch, res.results):
                if not f.done():
                    f.set_result(r)
            if res.events:
                for fn in self._listeners:
                    try:
                        fn(res.events)
                    except Exception:  # a listener's bug must not stop the log
                        log.exception("event listener failed")
