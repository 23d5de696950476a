"""RocksDB's memory stays bounded however much of the store is read."""
import os

from storage.kv import BLOCK_CACHE_BYTES, RocksBackend


def test_reading_more_than_the_block_cache_holds_keeps_it_within_its_bound(tmp_path):
    backend = RocksBackend(str(tmp_path / "rocks"), sync=False, wal=False)
    value = os.urandom(4096)        # random: compression cannot shrink what is cached
    keys = [b"M%08d" % i for i in range(3 * BLOCK_CACHE_BYTES // len(value))]
    for lo in range(0, len(keys), 500):
        backend.commit({k: value for k in keys[lo:lo + 500]}, [])
    backend.db.flush()              # into tables: reads now go through the block cache
    for k in keys:
        assert backend.get(k) == value
    used = backend.db.property_int_value("rocksdb.block-cache-usage")
    assert BLOCK_CACHE_BYTES // 2 < used <= BLOCK_CACHE_BYTES
    backend.close()
