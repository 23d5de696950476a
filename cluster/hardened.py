"""pysyncobj 0.3.17, hardened at its seams (never by copying its source).

`HardenedSyncObj` subclasses `SyncObj` and overrides a few of its methods by
their mangled names. Each override fixes one defect recorded in
`../shared/reference/pysyncobj.md` (§8.2, §10.3); `tests/test_hardened.py`
reproduces each defect on the plain class and shows it gone here.

- Durability: the journal is synced before the leader counts itself toward a
  commit (the start of every tick, before the commit computation) and before a
  follower reports entries appended (`__sendNextNodeIdx`). Votes are synced by
  the journal's meta store. The leader also syncs right after sending new
  entries, so its fsync runs while the followers do theirs.
- Fewer messages: the append pysyncobj sends after each apply, only to carry
  the commit index, is skipped when queued commands will carry it this tick.
- `nextIndex` never goes backwards on a successful reply (followers otherwise
  truncate entries they applied, and can wedge).
- A follower drops an append that would truncate entries it already applied;
  Raft never needs that, so such a message is stale.
- Compaction never deletes up to an index that is no longer in the log.
- Failover: a follower whose connection to the leader closes stands for election
  after `leader_lost_s` (a fraction of the election timeout) rather than the whole
  timeout; pysyncobj only notices a dead leader by its silence.
- A node that is not a voter (wiped, new, or not yet bootstrapped) neither
  stands for election nor grants votes: it cannot prove what it acknowledged.
- The replicated method never raises (see `RaftNode._apply`), so no entry can
  wedge the apply loop; a failed snapshot load ends the process (see
  `cluster/snapshots.py`) instead of being acknowledged.
"""
from __future__ import annotations

import collections
import logging
import os
import random
import time
from typing import Optional

from pysyncobj import FAIL_REASON, SyncObj, replicated

log = logging.getLogger("raftbroker.raft")

_FAR_FUTURE = 1e12

# Test-only switches (RAFTBROKER_TEST_BROKEN) that break the guarantees on purpose, so the
# chaos suite can show it catches what they break: the leader counts every entry as
# replicated as soon as it is in its own log; or nothing is synced before an ack.
KEEPALIVE = "rb_keepalive"
BROKEN_ACK_BEFORE_COMMIT = "ack-before-commit"
BROKEN_SKIP_SYNC = "skip-sync"


class HardenedSyncObj(SyncObj):
    def __init__(self, self_addr: str, partners: list[str], conf, journal, apply_fn, voter: bool,
                 on_voter=None, on_members=None, compact_bytes: int = 0,
                 leader_lost_s: Optional[tuple[float, float]] = None):
        self._journal = journal
        self._apply_fn = apply_fn
        self.voter = voter
        self._on_voter = on_voter
        self._on_members = on_members
        self._compact_bytes = compact_bytes     # snapshot once the journal holds this much
        self._leader_lost_s = leader_lost_s     # election delay once the leader's connection closes
        self.heard_leader = False
        self.broken = os.environ.get("RAFTBROKER_TEST_BROKEN", "")
        if self.broken:
            log.critical("TEST BUILD, DELIBERATELY BROKEN: %s", self.broken)
        self._tick_calls: collections.deque = collections.deque()
        # Tick-thread state. All of it is set before SyncObj.__init__, which starts the
        # tick thread: a first tick must not find an attribute missing.
        self._known_members: Optional[list[str]] = None   # None: not seen yet (the first tick records it)
        self._last_role = (0, None)
        self.leader_changes = 0     # for /metrics: how often this node saw a new leader
        self.elections = 0          # ...and a new term (each new term is one election)
        self._last_keepalive = 0.0
        self._last_forced = 0.0
        self._hold_until = 0.0
        super().__init__(self_addr, partners, conf)

    def call_in_tick(self, fn) -> None:
        """Run fn() in the tick thread, which owns all Raft state."""
        self._tick_calls.append(fn)

    # -- the one replicated method ------------------------------------------------------
    @replicated
    def apply_entry(self, blob: bytes):
        return self._apply_fn(self.raftLastApplied + 1, blob)

    # -- durability and the voter guard, each tick ----------------------------------------
    def _onTick(self, timeToWait=0.0):
        while self._tick_calls:
            self._tick_calls.popleft()()
        self._sync_journal()
        if self.broken == BROKEN_ACK_BEFORE_COMMIT and self._isLeader():
            last = self._SyncObj__raftLog[-1][1]
            for n in list(self._SyncObj__raftMatchIndex):
                self._SyncObj__raftMatchIndex[n] = last
        self._log_role()
        self._keepalive()
        if self._compact_bytes and self._journal.size_bytes() > self._compact_bytes \
                and time.monotonic() - self._last_forced > 5.0:
            self._last_forced = time.monotonic()
            self.forceLogCompaction()
        members = self.members()
        if members != self._known_members:
            first, self._known_members = self._known_members is None, members
            if not first and self._on_members:
                self._on_members(members)
        if not self.voter:
            self._SyncObj__raftElectionDeadline = time.monotonic() + _FAR_FUTURE
            self._maybe_become_voter()
        super()._onTick(timeToWait)

    def _SyncObj__sendNextNodeIdx(self, node, reset=False, nextNodeIdx=None, success=False):
        self._sync_journal()
        super()._SyncObj__sendNextNodeIdx(node, reset=reset, nextNodeIdx=nextNodeIdx, success=success)

    def _log_role(self) -> None:
        leader = self._getLeader()
        role = (self.raftCurrentTerm, leader.id if leader is not None else None)
        if role != self._last_role:
            if role[0] != self._last_role[0]:
                self.elections += 1
            if role[1] is not None and role[1] != self._last_role[1]:
                self.leader_changes += 1
            self._last_role = role
            log.info("term %d: leader %s", role[0], role[1] or "unknown",
                     extra={"term": role[0], "leader": role[1], "self_leader": self._isLeader()})

    def _keepalive(self) -> None:
        """pysyncobj drops a connection that has received nothing for its connection
        timeout. While a leader lives, its followers never talk to each other, so the
        first vote request after the leader dies closes their link and is lost, and the
        election takes a second round. A small message each second keeps them open."""
        now = time.monotonic()
        if now - self._last_keepalive < 1.0:
            return
        self._last_keepalive = now
        transport = self._SyncObj__transport
        for node in list(self._SyncObj__connectedNodes):
            transport.send(node, {"type": KEEPALIVE})

    def _SyncObj__onNodeConnected(self, node):
        log.info("peer connected", extra={"peer": node.id})
        super()._SyncObj__onNodeConnected(node)

    def _SyncObj__onNodeDisconnected(self, node):
        # pysyncobj reports every failed reconnect attempt too; say it once.
        was_connected = node in self._SyncObj__connectedNodes
        if was_connected:
            log.warning("peer lost", extra={"peer": node.id})
        super()._SyncObj__onNodeDisconnected(node)
        leader = self._getLeader()
        if was_connected and self._leader_lost_s and self.voter and leader is not None \
                and leader.id == node.id and not self._isLeader():
            soon = time.monotonic() + random.uniform(*self._leader_lost_s)
            if soon < self._SyncObj__raftElectionDeadline:
                self._SyncObj__raftElectionDeadline = soon
                log.info("leader connection closed: election in %.2f s unless it reconnects", soon - time.monotonic(),
                         extra={"peer": node.id})

    def _sync_journal(self) -> None:
        if self.broken != BROKEN_SKIP_SYNC:
            self._journal.sync()

    def _maybe_become_voter(self) -> None:
        # Caught up with a leader heard in this process: everything it had committed
        # when it last spoke is applied here, so this node's log now proves what it acks.
        leader_commit = self._SyncObj__leaderCommitIndex
        if (self.heard_leader and leader_commit is not None and leader_commit > 1
                and self.raftLastApplied >= leader_commit):
            self.make_voter("caught up with the leader at index %d" % leader_commit)

    def transfer_leadership(self, callback) -> None:
        """transferLeadership, and no new entries until the election it starts is over:
        an entry appended meanwhile leaves the chosen follower behind, it loses, and
        this node is elected again."""
        def done(res, err):
            if err == FAIL_REASON.SUCCESS:
                self._hold_until = time.monotonic() + self._SyncObj__conf.raftMaxTimeout
            callback(res, err)
        self.transferLeadership(callback=done)

    def _checkCommandsToApply(self):
        if time.monotonic() < self._hold_until:
            return
        super()._checkCommandsToApply()
        # The entries just appended are on their way to the followers already
        # (appendEntriesUseBatch=False sends each at once). Syncing them now overlaps this
        # node's fsync with the followers'; left to the next tick's start it would only
        # begin once their replies had arrived.
        self._sync_journal()

    def _SyncObj__applyLogEntries(self):
        need_send = super()._SyncObj__applyLogEntries()
        # After applying, pysyncobj sends every follower an append only to tell it the new
        # commit index. With commands waiting, the append that carries them goes out later
        # in this same tick and tells the same; skip the extra round of messages.
        if need_send and self._isLeader() and time.monotonic() >= self._hold_until \
                and len(self._SyncObj__commandsQueue._FastQueue__queue):
            return False
        return need_send

    def make_voter(self, why: str) -> None:
        if self.voter:
            return
        self.voter = True
        self._SyncObj__raftElectionDeadline = time.monotonic() + self._SyncObj__generateRaftTimeout()
        log.info("node is now a voter: %s", why)
        if self._on_voter:
            self._on_voter()

    # -- message guards -----------------------------------------------------------------------
    def _SyncObj__onMessageReceived(self, node, message):
        mtype = message.get("type") if isinstance(message, dict) else None
        if mtype == KEEPALIVE:
            return
        if mtype in ("request_vote", "timeout_now") and not self.voter:
            return      # a non-voter must not help elect anyone, nor stand itself
        if mtype == "append_entries":
            if self._would_truncate_applied(message):
                log.warning("dropped a stale append that would truncate applied entries",
                            extra={"prev_log_idx": message.get("prevLogIdx"), "applied": self.raftLastApplied})
                return
            if message.get("term", -1) >= self.raftCurrentTerm:
                self.heard_leader = True
        if mtype == "request_vote" and self._isLeader() and message.get("term", -1) > self.raftCurrentTerm:
            # A leader deposed by a higher term keeps the election deadline it set long
            # ago, so pysyncobj makes it a candidate on its very next tick, often before
            # the node it handed leadership to can win: give that node a full timeout.
            super()._SyncObj__onMessageReceived(node, message)
            if not self._isLeader():
                self._SyncObj__raftElectionDeadline = time.monotonic() + self._SyncObj__generateRaftTimeout()
            return
        if mtype == "next_node_idx" and message.get("success") and self._isLeader():
            before = self._SyncObj__raftNextIndex.get(node)
            super()._SyncObj__onMessageReceived(node, message)
            after = self._SyncObj__raftNextIndex.get(node)
            if before is not None and after is not None and after < before and not message.get("reset"):
                # Several appends are in flight; a reply to an older one must not move
                # nextIndex back (pysyncobj does, and followers then truncate).
                self._SyncObj__raftNextIndex[node] = before
            return
        super()._SyncObj__onMessageReceived(node, message)

    def _would_truncate_applied(self, message) -> bool:
        """Is this append stale: would pysyncobj's cut (everything after prevLogIdx,
        then the message's entries) drop entries no leader could want dropped?"""
        prev = message.get("prevLogIdx")
        if prev is None or "transmission" in message or message.get("term", -1) < self.raftCurrentTerm:
            return False
        log_ = self._SyncObj__raftLog
        if not len(log_):
            return False
        last = log_[-1][1]
        new = message.get("entries") or []
        covered = prev + len(new)
        if last <= covered:
            return False
        # Applied entries are committed, and no leader conflicts with them.
        if self.raftLastApplied > covered:
            return True
        # Entries after the message's that this same leader sent (its term) may already
        # count toward a commit: a leader never rewrites its own entries, so cutting
        # them is never needed. Raft cuts only on a real conflict.
        first = log_[0][1]
        for _cmd, idx, term in new:
            pos = idx - first
            if 0 <= pos < len(log_) and log_[pos][2] != term:
                return False            # a real conflict: let pysyncobj replace them
        term = message["term"]
        return all(log_[pos][2] == term for pos in range(covered + 1 - first, len(log_)))

    # -- compaction guard ---------------------------------------------------------------------
    def _SyncObj__deleteEntriesTo(self, toIDx):
        log_ = self._SyncObj__raftLog
        if not len(log_) or not (log_[0][1] <= toIDx <= log_[-1][1]):
            log.warning("compaction skipped: index %s is no longer in the log", toIDx)
            return
        super()._SyncObj__deleteEntriesTo(toIDx)

    # -- views for status pages (read-only, racy by a tick at most) ----------------------------
    def last_contact(self) -> dict[str, float]:
        now = time.monotonic()
        return {n.id: now - t for n, t in dict(self._SyncObj__lastResponseTime).items()}

    def match_index(self) -> dict[str, int]:
        return {n.id: i for n, i in dict(self._SyncObj__raftMatchIndex).items()}

    def members(self) -> list[str]:
        return sorted([n.id for n in set(self._SyncObj__otherNodes)] + [self.selfNode.id])

    def leader_commit_index(self) -> int:
        return self._SyncObj__leaderCommitIndex or 0
