"""The leader's clock, with a test-only offset for the chaos suite's clock jumps.

RAFTBROKER_TEST_CLOCK_OFFSET_FILE names a file holding an offset in seconds
(may be negative); the clock reads it at most every 0.2 s. Without it, the
clock is `time.time_ns`.
"""
from __future__ import annotations

import os
import time
from typing import Callable


def node_clock() -> Callable[[], int]:
    path = os.environ.get("RAFTBROKER_TEST_CLOCK_OFFSET_FILE")
    if not path:
        return time.time_ns
    state = {"read_at": 0.0, "offset_ns": 0}

    def clock() -> int:
        now = time.monotonic()
        if now - state["read_at"] > 0.2:
            state["read_at"] = now
            try:
                with open(path) as f:
                    state["offset_ns"] = int(float(f.read().strip() or 0) * 1e9)
            except (OSError, ValueError):
                pass
        return time.time_ns() + state["offset_ns"]
    return clock
