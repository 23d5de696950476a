"""Raft settings: pysyncobj's knobs, with defaults that survive a loaded 2-core machine."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RaftSettings:
    election_min_s: float = 1.0        # pysyncobj's 0.4 s elects needlessly when a core is busy
    election_max_s: float = 2.0
    heartbeat_s: float = 0.1
    leader_fallback_s: float = 2.5     # a leader cut off from a majority steps down after this (pysyncobj: 30 s)
    connection_timeout_s: float = 3.5
    connection_retry_s: float = 0.5
    append_batch_bytes: int = 8 << 20  # above any entry: pysyncobj's chunked path for bigger ones is broken
    compaction_min_entries: int = 20_000
    # ...or once the journal is this big. The journal keeps only its newest commands in
    # memory, so this bounds disk and replay, not RSS; and every snapshot reads and packs
    # the whole store, so it is not small: at 64 MiB a 2M-message soak spent a fifth of
    # its time snapshotting.
    compaction_max_bytes: int = 256 << 20
    compaction_min_s: float = 600.0
    snapshot_chunk_bytes: int = 1 << 20
    commands_queue: int = 20_000
    commit_timeout_s: float = 10.0     # pysyncobj's async calls have no timeout of their own
    sync: bool = True                  # False: nothing is fsynced (see README: what a power loss loses)

    def check(self, max_entry_bytes: int) -> None:
        if max_entry_bytes * 2 > self.append_batch_bytes:
            raise ValueError(f"append_batch_bytes ({self.append_batch_bytes}) must be at least twice the largest "
                             f"entry ({max_entry_bytes}): pysyncobj's chunked transfer of big entries is broken")
        if self.heartbeat_s * 3 >= self.election_min_s:
            raise ValueError("heartbeat_s must be under a third of election_min_s")
        if self.election_max_s <= self.election_min_s:
            raise ValueError("election_max_s must be above election_min_s")

    @property
    def leader_lost_s(self) -> tuple[float, float]:
        """A follower whose connection to the leader closes (the leader's process died and
        its kernel closed the socket) stands for election after a delay drawn from this
        range instead: a failover then takes about half a second, not one to two. The
        range is wide so that two followers rarely split the vote, and starts above two
        heartbeats so a leader that is still alive and reconnects in time keeps its place
        (its heartbeat postpones the election)."""
        return 0.2 * self.election_min_s, 0.6 * self.election_min_s

    def syncobj_conf(self, **extra):
        from pysyncobj import SyncObjConf
        return SyncObjConf(
            raftMinTimeout=self.election_min_s, raftMaxTimeout=self.election_max_s,
            appendEntriesPeriod=self.heartbeat_s, autoTickPeriod=min(0.05, self.heartbeat_s / 2),
            leaderFallbackTimeout=self.leader_fallback_s,
            connectionTimeout=max(self.connection_timeout_s, self.election_max_s),
            connectionRetryTime=self.connection_retry_s,
            appendEntriesUseBatch=False, appendEntriesBatchSizeBytes=self.append_batch_bytes,
            logCompactionMinEntries=self.compaction_min_entries, logCompactionMinTime=self.compaction_min_s,
            logCompactionBatchSize=self.snapshot_chunk_bytes, logCompactionSplit=False,
            commandsQueueSize=self.commands_queue, commandsWaitLeader=False,
            dynamicMembershipChange=True, **extra)
