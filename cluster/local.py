"""The single-node `LocalNode`: each group-committed entry is applied straight to the store."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Callable, Optional

from jetstream.results import ClusterInfo
from storage import Entry, Store
from storage.commands import Command

from .commit import BatchBounds, GroupCommitNode


class LocalNode(GroupCommitNode):
    def __init__(self, store: Store, bounds: BatchBounds | None = None, clock: Callable[[], int] = time.time_ns,
                 name: str = "n1", client_addr: Optional[str] = None):
        super().__init__(bounds, clock)
        self.store = store
        self.name = name
        self.client_addr = client_addr
        # One thread owns the store: applies and reads never overlap.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def leader(self) -> tuple[str, Optional[str]]:
        return self.name, self.client_addr

    def cluster_info(self) -> Optional[ClusterInfo]:
        return None

    async def read(self, fn: Callable[[Store], object], fresh: bool = False):
        """Run fn(store) after every entry proposed before this call is applied
        (one thread applies and reads, in order, so `fresh` needs no barrier)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self.store)

    async def _commit(self, time_ns: int, commands: list[Command]) -> tuple[list, list]:
        entry = Entry(self.store.applied_index + 1, time_ns, commands)
        res = await asyncio.get_running_loop().run_in_executor(self._executor, self.store.apply, entry)
        return res.results, res.events

    async def stop(self) -> None:
        await self._stop_commits()
        await asyncio.get_running_loop().run_in_executor(self._executor, self.store.close)
        self._executor.shutdown(wait=True)
