"""The store without RocksDB's write-ahead log (as the Raft node runs it): a process that
dies keeps a prefix of its entries, with the index of the last one, so replaying the
journal from there rebuilds exactly what a store that never died holds; and a snapshot's
checkpoint still holds every entry."""
import subprocess
import sys
import textwrap

from storage import (
    AddConsumer, AddStream, ConsumerConfig, Entry, Publish, Store, StoreOptions, StreamConfig, restore_snapshot,
)

T0 = 1_700_000_000 * 10**9
ENTRIES = 300


def entry(i: int) -> Entry:
    """Entry i (1-based) of a fixed history: a stream and a consumer, then publishes."""
    if i == 1:
        return Entry(1, T0, [AddStream(StreamConfig(name="F", subjects=["f.>"], max_msgs_per_subject=50)),
                             AddConsumer("F", ConsumerConfig(durable_name="c"))])
    return Entry(i, T0 + i * 1_000_000, [
        Publish(f"f.{(i + k) % 7}", bytes([i % 251]) * 700, {"Nats-Msg-Id": f"{i}-{k}"}) for k in range(20)])


def no_wal(path) -> Store:
    return Store.open(str(path), StoreOptions(sync=False, wal=False))


def test_a_killed_process_keeps_a_prefix_and_the_journal_replays_the_rest(tmp_path):
    # Small memtables, so some batches are flushed and the rest die with the process.
    script = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = {sys.path!r}
        import storage.kv
        storage.kv.WRITE_BUFFER_BYTES = 256 << 10
        from tests.test_store_without_wal import ENTRIES, entry, no_wal
        store = no_wal({str(tmp_path / "killed")!r})
        for i in range(1, ENTRIES + 1):
            store.apply(entry(i))
        os._exit(9)
    """)
    subprocess.run([sys.executable, "-c", script], check=False, timeout=120)
    killed = no_wal(tmp_path / "killed")
    kept = killed.applied_index
    assert 0 < kept < ENTRIES         # some batches were flushed, the rest were lost
    for i in range(kept + 1, ENTRIES + 1):
        killed.apply(entry(i))
    whole = Store.open(str(tmp_path / "whole"), StoreOptions(sync=False))
    for i in range(1, ENTRIES + 1):
        whole.apply(entry(i))
    assert killed.digest() == whole.digest()
    assert killed.stream_info("F").state == whole.stream_info("F").state
    killed.close()
    whole.close()


def test_a_snapshot_holds_every_entry(tmp_path):
    store = no_wal(tmp_path / "src")
    for i in range(1, 40):
        store.apply(entry(i))
    store.snapshot(str(tmp_path / "snap.tar"))
    digest = store.digest()
    store.close()
    restore_snapshot(str(tmp_path / "snap.tar"), str(tmp_path / "dst"))
    restored = no_wal(tmp_path / "dst")
    assert restored.applied_index == 39
    assert restored.digest() == digest
    restored.close()
