"""Child process of tests/test_crash.py: applies entries to a Store until killed.

    python tests/crash_child.py STORE_DIR MAX_SECONDS

Opens the store (sync=True), then applies entries applied_index+1, +2, ...
Every entry holds PER_ENTRY Publish commands (entry 1 also creates the
stream first); message data encodes (entry index, position). After each
apply returns, the entry's index is printed and flushed: everything printed
has been applied and synced.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from storage import AddStream, Entry, JSError, Publish, Store, StoreOptions, StreamConfig  # noqa: E402

STREAM = "CRASH"
PER_ENTRY = 20
T0 = 1_700_000_000 * 10**9


def payload(index: int, pos: int) -> bytes:
    return f"{index}:{pos}:".encode() + b"p" * 40


def entry(index: int) -> Entry:
    cmds = [AddStream(StreamConfig(name=STREAM, subjects=["crash.>"]))] if index == 1 else []
    cmds += [Publish(f"crash.{pos % 4}", payload(index, pos)) for pos in range(PER_ENTRY)]
    return Entry(index, T0 + index * 1000, cmds)


def main() -> None:
    path, max_seconds = sys.argv[1], float(sys.argv[2])
    store = Store.open(path, StoreOptions(sync=True))
    index = store.applied_index
    print(f"open {index}", flush=True)
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        index += 1
        res = store.apply(entry(index))
        bad = [r for r in res.results if isinstance(r, JSError) or r is None]
        if bad or not res.applied:
            print(f"error {index} {bad!r}", flush=True)
            sys.exit(2)
        print(f"applied {index}", flush=True)
    store.close()


if __name__ == "__main__":
    main()
