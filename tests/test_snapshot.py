"""Snapshots (pack, verify, restore) and the apply() path for a command that crashes."""
import os
import random
import tarfile

import pytest

from storage import (
    ACK, Ack, AddConsumer, AddStream, ConsumerConfig, Entry, JSError, NextMsgs, Publish, PurgeStream, Store,
    StoreCorruptError, StoreOptions, StreamConfig, read_manifest, restore_snapshot,
)
from jetstream.errors import InternalError

T0 = 1_700_000_000 * 10**9


def build(store: Store, first_index: int = 1, n: int = 40) -> int:
    """File and memory streams with messages, consumers, pending deliveries and dedupe ids."""
    idx = first_index
    now = T0

    def apply(*cmds):
        nonlocal idx, now
        res = store.apply(Entry(idx, now, list(cmds)))
        idx += 1
        now += 250_000_000
        return res.results

    if first_index == 1:
        apply(AddStream(StreamConfig(name="F", subjects=["f.>"], max_msgs_per_subject=20)),
              AddStream(StreamConfig(name="M", subjects=["m.>"], storage="memory")))
        apply(AddConsumer("F", ConsumerConfig(durable_name="c", ack_wait=5.0)),
              AddConsumer("M", ConsumerConfig(durable_name="c", ack_wait=5.0, filter_subject="m.a")))
    for i in range(n):
        apply(*[Publish(f"{p}.{'abc'[(i + k) % 3]}", os.urandom(30 + k), {"Nats-Msg-Id": f"id-{i}-{k}"})
                for p in "fm" for k in range(5)])
        if i % 4 == 3:
            for s in ("F", "M"):
                (batch,) = apply(NextMsgs(s, "c", batch=6))
                apply(*[Ack(s, "c", m.stream_seq, ACK) for m in batch[::2]])
        if i == n // 2:
            apply(PurgeStream("F", filter="f.b", keep=2))
    return idx


def open_store(path, memory_image=None) -> Store:
    return Store.open(str(path), StoreOptions(sync=False), memory_image=memory_image)


def snapshot_state(store: Store) -> dict:
    return {"digest": store.digest(), "applied": store.applied_index, "mem": store.memory_applied_index,
            "time": store.time_ns,
            "consumers": {s: store.consumer_info(s, "c").to_dict() for s in ("F", "M")}}


@pytest.fixture
def populated(tmp_path):
    store = open_store(tmp_path / "src")
    next_index = build(store)
    yield store, next_index
    store.close()


def test_snapshot_restores_identical_store(tmp_path, populated):
    store, next_index = populated
    snap = str(tmp_path / "snap.tar")
    manifest = store.snapshot(snap)
    assert manifest["applied_index"] == store.applied_index == next_index - 1
    assert manifest["memory_applied_index"] == store.memory_applied_index
    assert read_manifest(snap) == manifest
    assert not any(n.startswith("snap.tar.") for n in os.listdir(tmp_path))   # no .tmp / .work left

    target = str(tmp_path / "restored")
    manifest2, image = restore_snapshot(snap, target)
    assert manifest2 == manifest
    restored = open_store(target, memory_image=image)
    try:
        assert snapshot_state(restored) == snapshot_state(store)
        assert restored.memory_applied_index == manifest["memory_applied_index"]
        assert set(restored.digest()) == {"F", "M"}
        # Both go on identically from there.
        build(store, next_index, 8)
        build(restored, next_index, 8)
        assert snapshot_state(restored) == snapshot_state(store)
    finally:
        restored.close()


def test_restore_refuses_to_overwrite_a_store(tmp_path, populated):
    store, _ = populated
    snap = str(tmp_path / "snap.tar")
    store.snapshot(snap)
    target = tmp_path / "existing"
    other = open_store(target)
    other.apply(Entry(1, T0, [AddStream(StreamConfig(name="OTHER", subjects=["o"]))]))
    other.close()
    before = sorted(os.listdir(target / "rocks"))
    with pytest.raises(FileExistsError):
        restore_snapshot(snap, str(target))
    assert sorted(os.listdir(target / "rocks")) == before
    other = open_store(target)
    assert other.stream_names() == ["OTHER"]
    other.close()
    # The source store's own directory is refused too.
    with pytest.raises(FileExistsError):
        restore_snapshot(snap, store.path)


def _members(snap: str) -> list[tarfile.TarInfo]:
    with tarfile.open(snap) as tar:
        return [m for m in tar.getmembers() if m.isfile()]


def _flip(src: str, dst: str, offset: int, rng: random.Random) -> None:
    with open(src, "rb") as f:
        raw = bytearray(f.read())
    raw[offset] ^= 1 << rng.randrange(8)
    with open(dst, "wb") as f:
        f.write(raw)


def test_snapshot_with_a_flipped_byte_is_refused(tmp_path, populated):
    """One flipped bit anywhere in the contents of any packed file (the manifest and
    its digest included) is refused before anything is installed."""
    store, _ = populated
    snap = str(tmp_path / "snap.tar")
    manifest = store.snapshot(snap)
    members = _members(snap)
    names = {m.name for m in members}
    assert {"manifest.json", "memory.msgpack", "rocks/CURRENT"} <= names
    assert set(manifest["files"]) <= names
    assert any(n.endswith(".sst") or n.endswith(".log") for n in names)

    rng = random.Random(1234)
    bad = str(tmp_path / "bad.tar")
    cases = []
    for m in members:
        if not m.size:
            continue
        if m.size <= 80:                       # small files: every byte
            offsets = set(range(m.size))
        else:
            offsets = {0, m.size - 1} | {rng.randrange(m.size) for _ in range(25)}
        cases += [(m.name, m.offset_data + o) for o in sorted(offsets)]
    target = tmp_path / "target"
    for name, offset in cases:
        _flip(snap, bad, offset, rng)
        with pytest.raises(StoreCorruptError):
            restore_snapshot(bad, str(target))
        assert not (target / "rocks").exists(), (name, offset)
        assert not os.path.exists(str(target) + ".restoring")
    # The untouched snapshot still restores.
    restore_snapshot(snap, str(target))
    assert (target / "rocks").is_dir()


def test_manifest_values_are_checked(tmp_path, populated):
    """A flipped digit in the manifest must not hand back a wrong applied index."""
    store, _ = populated
    snap = str(tmp_path / "snap.tar")
    store.snapshot(snap)
    (m,) = [m for m in _members(snap) if m.name == "manifest.json"]
    with open(snap, "rb") as f:
        raw = f.read()
    text = raw[m.offset_data:m.offset_data + m.size]
    rng = random.Random(5)
    for key in (b'"applied_index": ', b'"memory_applied_index": ', b'"time_ns": '):
        offset = m.offset_data + text.index(key) + len(key)
        _flip(snap, str(tmp_path / "bad.tar"), offset, rng)
        with pytest.raises(StoreCorruptError):
            read_manifest(str(tmp_path / "bad.tar"))
        with pytest.raises(StoreCorruptError):
            restore_snapshot(str(tmp_path / "bad.tar"), str(tmp_path / "t"))
        assert not (tmp_path / "t" / "rocks").exists()


def test_truncated_snapshot_is_refused(tmp_path, populated):
    store, _ = populated
    snap = str(tmp_path / "snap.tar")
    store.snapshot(snap)
    members = _members(snap)
    cuts = [100] + [m.offset_data + m.size // 2 for m in members if m.size > 1] + [members[-1].offset_data]
    for cut in cuts:
        with open(snap, "rb") as f, open(tmp_path / "cut.tar", "wb") as g:
            g.write(f.read(cut))
        with pytest.raises(StoreCorruptError):
            restore_snapshot(str(tmp_path / "cut.tar"), str(tmp_path / "t"))
        assert not (tmp_path / "t" / "rocks").exists()


# == a command that crashes ==========================================================

def _crash_on(store: Store, cmd_type, predicate, after_original: bool = True):
    """Make the handler of `cmd_type` raise RuntimeError for the commands `predicate` picks,
    after it has done its work (so the retry must also throw away half-done changes)."""
    original = store._handlers[cmd_type]
    calls = []

    def handler(cmd, ctx):
        if predicate(cmd):
            calls.append(ctx.index)
            if after_original:
                original(cmd, ctx)
            raise RuntimeError("boom")
        return original(cmd, ctx)

    store._handlers[cmd_type] = handler
    return calls


@pytest.mark.parametrize("storage_type", ["file", "memory"])
def test_crashing_command_fails_alone(tmp_path, storage_type):
    store = open_store(tmp_path / "s")
    ref = open_store(tmp_path / "ref")
    setup = [AddStream(StreamConfig(name="S", subjects=["s.>"], storage=storage_type)),
             AddStream(StreamConfig(name="O", subjects=["o.>"], storage="memory" if storage_type == "file"
                                    else "file")),
             AddConsumer("S", ConsumerConfig(durable_name="c"))]
    for s in (store, ref):
        s.apply(Entry(1, T0, setup))
    calls = _crash_on(store, Publish, lambda cmd: cmd.data == b"boom")

    cmds = [Publish("s.1", b"one"), Publish("o.1", b"other"), Publish("s.2", b"boom"), Publish("s.3", b"three"),
            NextMsgs("S", "c", batch=10), Publish("o.2", b"other2")]
    res = store.apply(Entry(2, T0 + 10**9, cmds))
    # Reference: the same entry without the crashing command.
    ref_res = ref.apply(Entry(2, T0 + 10**9, [c for c in cmds if not (isinstance(c, Publish) and c.data == b"boom")]))
    assert calls == [2]                     # crashed once, then skipped on the retry
    r = res.results
    assert isinstance(r[2], InternalError) and "boom" in r[2].description
    assert [(x.stream, x.seq) for x in (r[0], r[1], r[3], r[5])] == [("S", 1), ("O", 1), ("S", 2), ("O", 2)]
    assert [(m.subject, m.data) for m in r[4]] == [("s.1", b"one"), ("s.3", b"three")]
    assert not any(isinstance(x, JSError) for i, x in enumerate(r) if i != 2)
    assert [e.to_dict() for e in res.events] == [e.to_dict() for e in ref_res.events]
    assert store.applied_index == store.memory_applied_index == 2
    assert store.digest() == ref.digest()

    # Still usable: the next entries apply normally, and a reopen finds the same.
    for s in (store, ref):
        out = s.apply(Entry(3, T0 + 2 * 10**9, [Publish("s.4", b"four"), Ack("S", "c", 1, ACK)])).results
        assert out[0].seq == 3 and out[1].applied is True
    assert store.digest() == ref.digest()
    if storage_type == "file":
        d = store.digest()
        store.close()
        store = open_store(tmp_path / "s")
        assert store.digest()["S"] == d["S"]
        assert store.stream_info("S").state.messages == 3
    store.close()
    ref.close()


def test_crash_before_any_change_and_in_other_handlers(tmp_path):
    store = open_store(tmp_path / "s")
    store.apply(Entry(1, T0, [AddStream(StreamConfig(name="S", subjects=["s.>"])),
                              AddConsumer("S", ConsumerConfig(durable_name="c"))]))
    _crash_on(store, NextMsgs, lambda cmd: cmd.batch == 7)
    _crash_on(store, Publish, lambda cmd: cmd.subject == "s.x", after_original=False)
    res = store.apply(Entry(2, T0, [Publish("s.a", b"1"), NextMsgs("S", "c", batch=7), Publish("s.x", b"2"),
                                    NextMsgs("S", "c", batch=1)])).results
    assert isinstance(res[1], InternalError) and isinstance(res[2], InternalError)
    assert res[0].seq == 1
    assert [m.stream_seq for m in res[3]] == [1]        # the crashed batch handed out nothing
    info = store.consumer_info("S", "c")
    assert info.delivered.stream_seq == 1 and info.num_ack_pending == 1
    assert store.stream_info("S").state.messages == 1
    store.close()


def test_a_damaged_block_is_never_packed_into_a_snapshot(tmp_path):
    store = open_store(tmp_path / "src")
    build(store, n=200)
    store.snapshot(str(tmp_path / "first"))        # the checkpoint flushed the data into SST files
    ssts = sorted((tmp_path / "src").rglob("*.sst"), key=lambda p: p.stat().st_size)
    assert ssts
    raw = bytearray(ssts[-1].read_bytes())
    raw[64] ^= 0xFF                                 # a data block, well before the footer
    ssts[-1].write_bytes(bytes(raw))
    with pytest.raises(StoreCorruptError):
        store.snapshot(str(tmp_path / "second"))
    assert not (tmp_path / "second").exists()
    assert not os.path.exists(str(tmp_path / "second") + ".work")
