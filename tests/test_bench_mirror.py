"""`python bench/mirror.py --quick` end to end (issue 10): the counts it reports add up and
every figure is printed. No test asserts a rate or a CPU share: the machines are shared."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_mirror_bench_copies_every_message_and_prints_the_figures():
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "mirror.py"), "--quick", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    r = json.loads(out.strip().splitlines()[-1])

    # Every acknowledged publish is in the origin, and the mirror ends with all of them.
    assert r["windowed"]["acked"] == 5000 and not r["windowed"]["errors"]
    assert r["cpu_without"]["nodes"] and r["steady"]["publish"]["acked"] == 3000
    published = r["windowed"]["acked"] + 2 * 3000          # windowed, then two paced spans
    assert r["origin_messages"] == published == r["mirror_messages"]
    assert r["backlog"]["messages"] == 5000 + 3000 and r["backlog"]["rate"] > 0

    # The lag series starts with the backlog copied (publishing starts with it, so the
    # origin may be a few ahead), ends caught up, and the catch-up time was measured.
    s = r["steady"]["samples"]
    assert len(s) >= 4 and s[0]["mirror_last"] == 8000 <= s[0]["origin_last"]
    assert s[-1]["origin_last"] == s[-1]["mirror_last"] == published
    assert r["steady"]["lag_zero_s"] is not None

    # The pipeline runs on a follower; roles are named in the CPU table.
    assert r["runner"] != r["leader"]
    roles = {n["name"]: n["role"] for n in r["steady"]["cpu"]["nodes"]}
    assert roles[r["leader"]] == "leader" and roles[r["runner"]] == "pipeline"
    for text in ("lag over time", "CPU, % of one core", "backlog copy throughput", "copy / windowed publish",
                 "lag 0 after the last ack", "leader CPU", "complete"):
        assert text in out, text
