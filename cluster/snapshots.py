"""Raft snapshots of the store: pysyncobj's serializer hooks, and installing one.

A snapshot is the store's own snapshot file (RocksDB checkpoint + memory
image, every file digested) with pysyncobj's `raftData` packed alongside.
pysyncobj calls the serializer and deserializer in its tick thread; only the
capture (checkpoint hard links, memory image) runs there, the packing runs in
a thread of its own (see RaftNode).
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil

from storage import Store, StoreOptions, read_extra, restore_snapshot, verify_snapshot
from storage.snapshot import Capture, capture_snapshot, pack_snapshot, place_snapshot
from storage.kv import fsync_dir

log = logging.getLogger("raftbroker.snapshot")

RAFT_DATA = "raft.pickle"
MEMORY = "memory.msgpack"


# pysyncobj renames its temporary file over the snapshot as soon as our serializer
# returns, before the new snapshot is packed. When there is no snapshot yet to stand
# in for it, this marker does; nothing was compacted while it was in place (entries
# are dropped only once the packed snapshot replaced it), so a node that finds it at
# start removes it and replays its journal from the start.
PLACEHOLDER = b"raftbroker: the first snapshot was being packed\n"


def capture(store: Store, path: str, raft_data) -> Capture:
    """The quick part, in the tick thread: see `storage.snapshot.capture_snapshot`."""
    # pickle: raftData holds pysyncobj's own Node objects, and pysyncobj pickles them too.
    return capture_snapshot(store, path + ".work", extra={RAFT_DATA: pickle.dumps(raft_data, protocol=4)})


def pack(cap: Capture, path: str) -> dict:
    """The slow part, in a packing thread: the synced file `path + ".packed"`."""
    return pack_snapshot(cap, path + ".packed")


def place(path: str) -> None:
    place_snapshot(path + ".packed", path)


def stand_in(path: str, tmp_path: str) -> None:
    """Make pysyncobj's `tmp_path` the current snapshot (a hard link), or the
    placeholder when there is none."""
    if os.path.exists(tmp_path):
        os.remove(tmp_path)
    if os.path.exists(path):
        os.link(path, tmp_path)
    else:
        with open(tmp_path, "wb") as f:
            f.write(PLACEHOLDER)


def _is_placeholder(path: str) -> bool:
    if os.path.getsize(path) != len(PLACEHOLDER):
        return False
    with open(path, "rb") as f:
        return f.read() == PLACEHOLDER


def settle_packing(path: str) -> bool:
    """At start: drop what a kill during packing left, and the placeholder of a
    first snapshot never packed. True when a placeholder was removed."""
    discard_partial(path)
    if os.path.exists(path) and _is_placeholder(path):
        os.remove(path)
        return True
    return False


def discard_partial(path: str) -> None:
    """What a packing that a kill interrupted left behind (our own temporary names)."""
    shutil.rmtree(path + ".work", ignore_errors=True)
    if os.path.exists(path + ".packed"):
        os.remove(path + ".packed")


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
