"""Snapshots: the whole store (RocksDB checkpoint + memory partition) packed in one file.

The file is a tar with a manifest of SHA-256 digests, written to a temporary
name, synced, and renamed into place. Restoring verifies every digest before
anything is installed, and refuses to install over existing data.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass

from .errors import StoreCorruptError
from .kv import fsync_dir, verify_rocks_dir

FORMAT = 1
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"   # SHA-256 of the manifest's bytes: the manifest is checked too
MEMORY = "memory.msgpack"


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Capture:
    """A store's state at one applied index, held in `work`: a RocksDB checkpoint
    (hard links), the memory image and the extra files. Packing it needs nothing
    from the live store, so the store can move on meanwhile."""
    work: str
    applied_index: int
    memory_applied_index: int
    time_ns: int


def capture_snapshot(store, work: str, extra: dict[str, bytes] | None = None) -> Capture:
    """The quick part of a snapshot; hold the store still while it runs."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        store.file.backend.checkpoint(os.path.join(work, "rocks"))
        with open(os.path.join(work, MEMORY), "wb") as f:
            f.write(store.memory_image())
        for name, raw in (extra or {}).items():
            with open(os.path.join(work, name), "wb") as f:
                f.write(raw)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Capture(work, store.applied_index, store.memory_applied_index, store.time_ns)


def pack_snapshot(cap: Capture, tmp_path: str) -> dict:
    """The slow part, in any thread: verify, digest and pack the capture into
    `tmp_path`, synced; `place_snapshot` puts it into place. Returns the manifest."""
    try:
        # RocksDB does not verify blocks when it copies them; read them all first so
        # a damaged store is never packed into a snapshot and spread to others. The
        # checkpoint's files are the live store's own (hard links).
        verify_rocks_dir(os.path.join(cap.work, "rocks"))
        files = {}
        for root, _dirs, names in os.walk(cap.work):
            for n in names:
                full = os.path.join(root, n)
                files[os.path.relpath(full, cap.work)] = _sha256_file(full)
        manifest = {"format": FORMAT, "applied_index": cap.applied_index,
                    "memory_applied_index": cap.memory_applied_index, "time_ns": cap.time_ns, "files": files}
        with tarfile.open(tmp_path, "w") as tar:
            raw = json.dumps(manifest, sort_keys=True).encode()
            ti = tarfile.TarInfo(MANIFEST)
            ti.size = len(raw)
            tar.addfile(ti, io.BytesIO(raw))
            digest = hashlib.sha256(raw).hexdigest().encode()
            ti = tarfile.TarInfo(MANIFEST_DIGEST)
            ti.size = len(digest)
            tar.addfile(ti, io.BytesIO(digest))
            for rel in sorted(files):
                tar.add(os.path.join(cap.work, rel), arcname=rel)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        return manifest
    finally:
        shutil.rmtree(cap.work, ignore_errors=True)


def place_snapshot(tmp_path: str, out_path: str) -> None:
    os.replace(tmp_path, out_path)
    fsync_dir(os.path.dirname(os.path.abspath(out_path)))


def write_snapshot(store, out_path: str, extra: dict[str, bytes] | None = None) -> dict:
    """Pack `store` into `out_path` in one go; returns the manifest. `extra` files
    (the Raft layer's own data) are packed and digested alongside; read them back
    with `read_extra`."""
    manifest = pack_snapshot(capture_snapshot(store, out_path + ".work", extra), out_path + ".tmp")
    place_snapshot(out_path + ".tmp", out_path)
    return manifest


def read_manifest(snapshot_path: str) -> dict:
    try:
        with tarfile.open(snapshot_path, "r") as tar:
            raw = tar.extractfile(MANIFEST).read()
            digest = tar.extractfile(MANIFEST_DIGEST).read()
        if hashlib.sha256(raw).hexdigest().encode() != digest:
            raise StoreCorruptError(f"snapshot {snapshot_path}: the manifest does not match its digest")
        manifest = json.loads(raw)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise StoreCorruptError(f"snapshot {snapshot_path}: the manifest lists no files")
        return manifest
    except (tarfile.TarError, KeyError, ValueError, AttributeError, OSError) as e:
        raise StoreCorruptError(f"snapshot {snapshot_path} is unreadable: {e}") from e


def read_extra(snapshot_path: str, name: str) -> bytes:
    """One extra file of the snapshot, checked against the manifest's digest."""
    manifest = read_manifest(snapshot_path)
    try:
        with tarfile.open(snapshot_path, "r") as tar:
            raw = tar.extractfile(name).read()
    except (tarfile.TarError, KeyError, AttributeError, OSError) as e:
        raise StoreCorruptError(f"snapshot {snapshot_path}: cannot read {name}: {e}") from e
    if hashlib.sha256(raw).hexdigest() != manifest["files"].get(name):
        raise StoreCorruptError(f"snapshot {snapshot_path}: {name} does not match its digest")
    return raw


def verify_snapshot(snapshot_path: str) -> dict:
    """Check every file of the snapshot against its digest; returns the manifest."""
    manifest = read_manifest(snapshot_path)
    try:
        with tarfile.open(snapshot_path, "r") as tar:
            seen = set()
            for member in tar:
                if member.name in manifest["files"]:
                    h = hashlib.sha256()
                    f = tar.extractfile(member)
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                    if h.hexdigest() != manifest["files"][member.name]:
                        raise StoreCorruptError(f"snapshot {snapshot_path}: {member.name} does not match its digest")
                    seen.add(member.name)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise StoreCorruptError(f"snapshot {snapshot_path} is unreadable: {e}") from e
    missing = set(manifest["files"]) - seen
    if missing:
        raise StoreCorruptError(f"snapshot {snapshot_path} lacks {sorted(missing)[0]}")
    return manifest


def restore_snapshot(snapshot_path: str, data_dir: str) -> tuple[dict, bytes]:
    """Install the snapshot's RocksDB into `data_dir` (which must hold no store yet).
    Returns (manifest, memory image) — pass the image to `Store.open`."""
    if os.path.exists(os.path.join(data_dir, "rocks")):
        raise FileExistsError(f"{data_dir} already holds a store; move it away before restoring")
    manifest = read_manifest(snapshot_path)
    if manifest.get("format") != FORMAT:
        raise StoreCorruptError(f"snapshot {snapshot_path} has unknown format {manifest.get('format')!r}")
    staging = data_dir.rstrip("/") + ".restoring"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        with tarfile.open(snapshot_path, "r") as tar:
            tar.extractall(staging, filter="data")
        for rel, digest in manifest["files"].items():
            path = os.path.join(staging, rel)
            if not os.path.isfile(path) or _sha256_file(path) != digest:
                raise StoreCorruptError(f"snapshot {snapshot_path}: {rel} does not match its digest")
        with open(os.path.join(staging, MEMORY), "rb") as f:
            image = f.read()
        for root, _dirs, names in os.walk(os.path.join(staging, "rocks")):
            for n in names:
                with open(os.path.join(root, n), "rb") as f:
                    os.fsync(f.fileno())
        os.makedirs(data_dir, exist_ok=True)
        os.rename(os.path.join(staging, "rocks"), os.path.join(data_dir, "rocks"))
        fsync_dir(data_dir)
        return manifest, image
    except (tarfile.TarError, OSError) as e:
        raise StoreCorruptError(f"snapshot {snapshot_path} cannot be unpacked: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
