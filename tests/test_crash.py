"""Crash safety: SIGKILL a process that is applying multi-command entries (sync=True)
at random points; every reopen must find whole entries only, and at least every
entry the process reported as applied."""
import os
import random
import signal
import subprocess
import sys
import threading
import time

from storage import Store, StoreOptions

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crash_child import PER_ENTRY, STREAM, payload  # noqa: E402

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_child.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_BUDGET = 16.0     # seconds spent on kill rounds (plus one last check)
MAX_ROUNDS = 10


def _run_and_kill(path: str, delay: float, after_open: bool) -> list[str]:
    """Start the child, SIGKILL it `delay` seconds after it started (or, with
    `after_open`, after it opened the store); returns every line it printed."""
    proc = subprocess.Popen([sys.executable, CHILD, path, "60"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, text=True)
    lines: list[str] = []
    opened = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("open "):
                opened.set()
        opened.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if after_open:
        opened.wait(timeout=30)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        pass
    still_running = proc.poll() is None
    if still_running:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    reader.join(timeout=10)
    err = proc.stderr.read()
    proc.stderr.close()
    assert still_running, f"child ended on its own (rc={proc.returncode}): {lines[-3:]} {err[-2000:]}"
    assert not any(line.startswith("error") for line in lines), (lines[-3:], err[-2000:])
    return lines


def _last_reported(lines: list[str]) -> int:
    applied = [int(line.split()[1]) for line in lines if line.startswith("applied ")]
    return applied[-1] if applied else -1


def _check_store(path: str, reported: int, before: int) -> int:
    """Reopen and check the invariants; returns the applied index N."""
    store = Store.open(path, StoreOptions(sync=True))
    try:
        n = store.applied_index
        assert n >= before, f"applied index went back from {before} to {n}"
        assert n >= reported, f"child reported entry {reported} applied, the store holds only {n}"
        # At most the one entry in flight when the kill came can be there unreported.
        assert n <= max(reported, before) + 1, (n, reported, before)
        if n == 0:
            assert store.stream_names() == []
            return 0
        state = store.stream_info(STREAM).state
        assert state.messages == PER_ENTRY * n, f"{state.messages} messages after {n} entries: a partial entry"
        assert (state.first_seq, state.last_seq, state.num_deleted) == (1, PER_ENTRY * n, 0)
        assert state.num_subjects == 4
        last = store.get_msg(STREAM, seq=state.last_seq)
        assert last.data == payload(n, PER_ENTRY - 1)
        # Every message written since the last check (and a sample of older ones)
        # is the one its sequence stands for.
        st, tx = store._read_stream(STREAM)
        first = max(PER_ENTRY * (before - 1), 0) + 1
        seqs = [seq for seq, _ in st.scan(tx, first)]
        assert seqs == list(range(first, PER_ENTRY * n + 1))
        rng = random.Random(n)
        for seq in seqs + [rng.randint(1, PER_ENTRY * n) for _ in range(200)]:
            msg = store.get_msg(STREAM, seq=seq)
            index, pos = divmod(seq - 1, PER_ENTRY)
            assert msg.data == payload(index + 1, pos), (seq, msg.data[:20])
            assert msg.subject == f"crash.{pos % 4}"
        assert dict(store.stream_subjects(STREAM)) == {f"crash.{i}": PER_ENTRY * n // 4 for i in range(4)}
        return n
    finally:
        store.close()


def test_sigkill_never_leaves_a_partial_entry(tmp_path):
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    path = str(tmp_path / "store")
    n = 0
    history = []
    start = time.monotonic()
    for _round in range(MAX_ROUNDS):
        if time.monotonic() - start > TIME_BUDGET:
            break
        # Most kills land while entries are being applied; one round in four counts
        # from the start, so the kill may also land during start-up (open, verify).
        after_open = _round % 4 != 3
        delay = rng.uniform(0.0, 1.0) if after_open else rng.uniform(0.0, 0.6)
        lines = _run_and_kill(path, delay, after_open)
        opened = [int(line.split()[1]) for line in lines if line.startswith("open ")]
        if opened:
            # The child resumed exactly where the previous reopen found the store.
            assert opened[0] == n, (opened, n, f"seed={seed}")
        reported = _last_reported(lines)
        n = _check_store(path, reported, n)
        history.append((round(delay, 2), reported, n))
    assert len(history) >= 4, f"seed={seed} {history}"
    # Entries really were being applied at the kills (not only during start-up).
    assert n > 0 and sum(1 for _d, rep, _n in history if rep > 0) >= 2, f"seed={seed} {history}"
    print(f"seed={seed} rounds (delay, last reported, applied after reopen): {history}")
