import itertools
import time

import pytest

import storage
from storage import Entry, Store, StoreOptions


class Engine:
    """Drives a Store the way the Raft layer will: one entry per call, a clock it controls."""

    def __init__(self, path, **opts):
        self.path = path
        self.opts = StoreOptions(**opts)
        self.store = Store.open(path, self.opts)
        self.index = itertools.count(self.store.applied_index + 1)
        self.now = 1_700_000_000 * 10**9

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 10**9)

    def apply_all(self, *commands):
        """Apply commands in one entry; returns the raw results (errors included)."""
        return self.store.apply(Entry(next(self.index), self.now, list(commands))).results

    def apply(self, command):
        """Apply one command; raises its JSError, returns its result otherwise."""
        (r,) = self.apply_all(command)
        if isinstance(r, storage.JSError):
            raise r
        return r

    def reopen(self):
        self.store.close()
        self.store = Store.open(self.path, self.opts)
        self.index = itertools.count(self.store.applied_index + 1)

    def close(self):
        self.store.close()


@pytest.fixture
def engine(tmp_path):
    e = Engine(str(tmp_path / "store"), sync=False)
    yield e
    e.close()
