"""Raft snapshots of the store: pysyncobj's serializer hooks, and installing one.

A snapshot is the store's own snapshot file (RocksDB checkpoint + memory
image, every file digested) with pysyncobj's `raftData` packed alongside.
pysyncobj calls `serialize` and `deserialize` in its tick thread.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil

from storage import Store, StoreOptions, read_extra, restore_snapshot, verify_snapshot
from storage.kv import fsync_dir

log = logging.getLogger("raftbroker.snapshot")

RAFT_DATA = "raft.pickle"
MEMORY = "memory.msgpack"


def write(store: Store, path: str, raft_data) -> dict:
    # pickle: raftData holds pysyncobj's own Node objects, and pysyncobj pickles them too.
    return store.snapshot(path, extra={RAFT_DATA: pickle.dumps(raft_data, protocol=4)})


def read(path: str) -> tuple[dict, tuple]:
    """Verify every digest; (manifest, raftData). Raises StoreCorruptError."""
    manifest = verify_snapshot(path)
    return manifest, pickle.loads(read_extra(path, RAFT_DATA))


def memory_image(path: str) -> bytes:
    return read_extra(path, MEMORY)


def recover_dirs(data_dir: str) -> None:
    """Finish or undo an install a kill interrupted (see `install`)."""
    store, old = os.path.join(data_dir, "store"), os.path.join(data_dir, "store.old")
    shutil.rmtree(os.path.join(data_dir, "store.incoming"), ignore_errors=True)
    if os.path.isdir(old):
        if os.path.isdir(store):
            shutil.rmtree(old)                 # the new store was in place: the install finished
        else:
            os.rename(old, store)              # killed between the renames: back to the old store
        fsync_dir(data_dir)


def install(data_dir: str, store: Store, path: str, options: StoreOptions) -> Store:
    """Replace `store` (closed here) by the snapshot's; returns the new store.
    Every step is a rename of a complete, synced directory, so a kill leaves
    either store for `recover_dirs` to settle."""
    incoming = os.path.join(data_dir, "store.incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    manifest, image = restore_snapshot(path, incoming)
    store.close()
    live, old = os.path.join(data_dir, "store"), os.path.join(data_dir, "store.old")
    os.rename(live, old)
    os.rename(incoming, live)
    fsync_dir(data_dir)
    shutil.rmtree(old)
    new = Store.open(live, options, memory_image=image)
    log.info("snapshot installed", extra={"applied_index": new.applied_index, "path": path})
    return new
