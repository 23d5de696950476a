"""The store's apply cost per message, with no network and no Raft: what every node pays
for every publish it applies.

    python bench/apply.py                     # 1000 entries of 100 publishes, WAL off (as under Raft)
    python bench/apply.py --per-entry 1       # one publish per entry (sync publishing)
    python bench/apply.py --wal               # with RocksDB's write-ahead log (the single-node store)
    python bench/apply.py --profile           # and the functions that cost the most (cProfile)

Each publish is 128 random bytes with a Nats-Msg-Id, as raftbroker's client sends them. The
entries are encoded before the clock starts; what is timed is decoding them and applying
them to a file-storage stream, wall and CPU time (CPU includes RocksDB's flushes and
compactions, which run in its own threads).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jetstream.config import StreamConfig  # noqa: E402
from storage import AddStream, Entry, Publish, Store, StoreOptions  # noqa: E402
from storage.commands import decode, encode  # noqa: E402

T0 = 1_700_000_000 * 10**9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--per-entry", type=int, default=100, help="publishes per entry")
    ap.add_argument("--wal", action="store_true", help="keep RocksDB's write-ahead log")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="raftbroker-apply-bench-") as d:
        store = Store.open(d, StoreOptions(sync=False, wal=args.wal))
        store.apply(Entry(1, T0, [AddStream(StreamConfig(name="B", subjects=["bench.>"]))]))
        prefix = os.urandom(16).hex()
        blobs = [encode([Publish("bench.x", os.urandom(128), {"Nats-Msg-Id": f"{prefix}-{i}-{k}"})
                         for k in range(args.per_entry)]) for i in range(args.entries)]

        def run():
            for i, blob in enumerate(blobs):
                store.apply(Entry(i + 2, T0 + (i + 1) * 1_000_000, decode(blob)))

        profiler = cProfile.Profile() if args.profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.runcall(run)
        else:
            run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        store.close()
    n = args.entries * args.per_entry
    print(f"{n:,} publishes in {args.entries:,} entries of {args.per_entry} (WAL {'on' if args.wal else 'off'}"
          f"{', under cProfile' if profiler else ''}): {wall / n * 1e6:.1f} us wall, {cpu / n * 1e6:.1f} us CPU "
          f"per publish")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
