"""Storage engine throughput and memory benchmark.

    python bench/engine.py            # full run (20k / 200k timed publishes, 1M-message fill)
    python bench/engine.py --quick    # smaller run (5k / 50k timed publishes, 200k fill)

Reports applied publishes per second for 128-byte messages, in entries of 1
and of 100 Publish commands, with sync (fsync per entry) on and off, and the
process's peak RSS (ru_maxrss) while filling one stream with many messages.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from storage import AddStream, Entry, JSError, Publish, Store, StoreOptions, StreamConfig  # noqa: E402

MSG = b"x" * 128
T0 = 1_700_000_000 * 10**9


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 2**20 if sys.platform == "darwin" else ru / 1024


def open_store(path: str, sync: bool) -> Store:
    store = Store.open(path, StoreOptions(sync=sync))
    store.apply(Entry(1, T0, [AddStream(StreamConfig(name="BENCH", subjects=["bench.>"]))]))
    return store


def publish_entries(store: Store, first_index: int, n_entries: int, per_entry: int):
    cmds = [Publish("bench.data", MSG) for _ in range(per_entry)]
    for i in range(first_index, first_index + n_entries):
        res = store.apply(Entry(i, T0 + i, cmds))
        if isinstance(res.results[0], JSError):
            raise res.results[0]


def rate(base: str, total: int, per_entry: int, sync: bool) -> float:
    path = tempfile.mkdtemp(prefix="bench-", dir=base)
    store = open_store(path, sync)
    n_entries = total // per_entry
    t = time.perf_counter()
    publish_entries(store, 2, n_entries, per_entry)
    dt = time.perf_counter() - t
    assert store.stream_info("BENCH").state.messages == n_entries * per_entry
    store.close()
    shutil.rmtree(path, ignore_errors=True)
    return n_entries * per_entry / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller run")
    ap.add_argument("--dir", default=None, help="where to create the stores (default: a temp dir)")
    args = ap.parse_args()

    n1, n100, fill = (5_000, 50_000, 200_000) if args.quick else (20_000, 200_000, 1_000_000)
    base = tempfile.mkdtemp(prefix="raftbroker-bench-", dir=args.dir)
    try:
        print(f"128-byte messages; store dir {base}; load average {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} CPUs (fsync latency and CPU share depend on other work)")
        for per_entry, total in ((1, n1), (100, n100)):
            for sync in (True, False):
                r = rate(base, total, per_entry, sync)
                print(f"  {per_entry:>3} msg/entry  sync={'on ' if sync else 'off'}  {total:>8,} msgs  "
                      f"{r:>10,.0f} msgs/s", flush=True)

        print(f"fill: {fill:,} messages, 100 per entry, sync=off (fsync per entry does not change memory use)")
        path = os.path.join(base, "fill")
        store = open_store(path, sync=False)
        per_entry = 100
        step = fill // 4
        index = 2
        t = time.perf_counter()
        for q in range(1, 5):
            publish_entries(store, index, step // per_entry, per_entry)
            index += step // per_entry
            print(f"  after {q * step:>9,} msgs  RSS {current_rss_mb():7.1f} MB  peak {peak_rss_mb():7.1f} MB  "
                  f"({time.perf_counter() - t:5.1f} s)", flush=True)
        st = store.stream_info("BENCH").state
        assert st.messages == fill, st
        store.close()
        print(f"peak RSS (ru_maxrss) after {fill:,} messages: {peak_rss_mb():.1f} MB")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
