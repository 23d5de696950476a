"""The node's malloc trimmer hands freed arena memory back to the kernel."""
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import sys, time
    from api.server import malloc

    def rss_mib():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

    blocks = [bytes(1000 + i % 7) for i in range(150_000)]   # ~150 MiB through malloc, not pymalloc
    kept = blocks[::50]                                        # pins scattered chunks: no top-of-heap trim
    del blocks
    before = rss_mib()
    if malloc.start_trimmer(interval_s=0.05) is None:
        print("no glibc"); sys.exit(0)
    deadline = time.monotonic() + 10
    while rss_mib() > before - 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"{before:.0f} {rss_mib():.0f} {len(kept)}")
""")


def test_the_trimmer_returns_freed_memory_that_glibc_would_keep():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True).stdout
    if out.strip() == "no glibc":
        pytest.skip("not glibc: no malloc_trim")
    before, after, _ = map(float, out.split())
    assert before > 100, out          # the freed memory was still held when the trimmer started
    assert after < before - 50, out
