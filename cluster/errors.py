"""Errors of the Raft layer."""
from __future__ import annotations

from typing import Optional

RECOVERY_HINT = ("stop the node, move its data directory aside, and restart it empty "
                 "so it rejoins through a snapshot from the leader")


class CorruptStateError(Exception):
    """Durable Raft state (log or term/vote) cannot be trusted; the node must not start.

    Starting anyway could make the node vote twice in a term or acknowledge entries
    it no longer holds, which breaks Raft's safety, so the damaged file is left
    exactly as found for inspection.
    """

    def __init__(self, path: str, problem: str, offset: Optional[int] = None):
        self.path = path
        self.problem = problem
        self.offset = offset
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"{path}: {problem}{where}. To recover: {RECOVERY_HINT}.")
