"""`RaftNode`: the store behind a Raft log kept by (hardened) pysyncobj.

The leader group-commits proposals into one entry (see `commit.py`), stamps it
with its clock and hands it to pysyncobj; every node applies committed entries
in log order to its own store, in pysyncobj's tick thread. A proposal's future
resolves only once its entry is committed on a majority and applied here.

Data directory: `store/` (the store), `raft/raft.log` and `raft/raft.meta`
(our journal, see `journal.py`), `raft/snapshot` (the last snapshot).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import msgpack
from pysyncobj import FAIL_REASON
from pysyncobj.config import SERIALIZER_STATE

from jetstream.errors import ClusterUnavailableError, NotLeaderError
from jetstream.results import ClusterInfo, PeerInfo
from storage import Announce, Entry, Store, StoreCorruptError, StoreOptions
from storage.commands import Command, from_wire

from . import snapshots
from .raft_wire import install_raft_wire
from .commit import BatchBounds, GroupCommitNode, NodeBusyError
from .errors import CorruptStateError
from .hardened import HardenedSyncObj
from .journal import RaftJournal, crash_point, install_journal_factory
from .settings import RaftSettings

log = logging.getLogger("raftbroker.raft")

EXIT_FATAL = 70          # the process ends rather than apply, serve or replicate bad state
CLOCK_JUMP_NS = 60 * 10**9


@dataclass
class NodeIdentity:
    name: str
    raft: str                      # the Raft address others reach this node at (its pysyncobj id)
    client: str                    # the client address others reach it at
    http: str = ""
    nats: str = ""                 # the NATS-protocol address, when the node has one
    raft_bind: str = ""            # where the Raft port binds, when it differs from `raft`
    peers: list[str] = field(default_factory=list)   # Raft addresses of the first member list


def _fatal(msg: str, *args) -> None:
    log.critical(msg, *args, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_FATAL)


class RaftNode(GroupCommitNode):
    def __init__(self, ident: NodeIdentity, data_dir: str, secret: Optional[str], settings: RaftSettings,
                 bounds: BatchBounds, store_options: StoreOptions, bootstrap: bool,
                 clock: Callable[[], int] = time.time_ns):
        super().__init__(bounds, clock)
        # The synced journal is what makes an entry durable here; the store's write
        # batches need no fsync and no write-ahead log of their own (the log cost 3-5 us
        # of CPU per message). After a crash or a power loss RocksDB holds a prefix of
        # them (what it last flushed, with the applied index in each), and the journal
        # re-applies the rest; a snapshot's checkpoint flushes the store before the
        # journal is compacted, so the store is never behind what the journal still holds.
        store_options = dataclasses.replace(store_options, sync=False, wal=False)
        self.ident = ident
        self.name = ident.name
        self.data_dir = data_dir
        self.settings = settings
        self.store_options = store_options
        self.bootstrap_requested = bootstrap
        self._secret = secret
        self._lock = threading.Lock()           # the store: tick-thread applies vs. reads
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="read")
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._tasks: list[asyncio.Task] = []
        self.last_snapshot: Optional[dict] = None
        self.snapshots_installed = 0            # snapshots received from a leader and installed
        self.snapshots_taken = 0
        self.bootstrap_state = "not requested"

        raft_dir = os.path.join(data_dir, "raft")
        os.makedirs(raft_dir, exist_ok=True)
        snapshots.recover_dirs(data_dir)
        self.snapshot_path = os.path.join(raft_dir, "snapshot")
        if snapshots.settle_packing(self.snapshot_path):
            log.info("removed the placeholder of a first snapshot that was never packed; "
                     "the journal still holds every entry")
        self._pack: Optional[_Packing] = None
        # pysyncobj renames snapshot files into place without syncing them; the journal
        # syncs the file and the directory before it drops entries the snapshot covers.
        self.journal = RaftJournal(raft_dir, sync=settings.sync, also_sync_dirs=[raft_dir],
                                   also_sync_files=[self.snapshot_path])
        snap_index = 0
        image = None
        if os.path.exists(self.snapshot_path):
            try:
                manifest, raft_data = snapshots.read(self.snapshot_path)
            except StoreCorruptError as e:
                raise CorruptStateError(self.snapshot_path, str(e)) from e
            snap_index = raft_data[0][1]
            self.last_snapshot = {"index": snap_index, "applied_index": manifest["applied_index"], "taken": None}
            image = snapshots.memory_image(self.snapshot_path)
        try:
            store = Store.open(os.path.join(data_dir, "store"), store_options)
        except StoreCorruptError as e:
            raise CorruptStateError(os.path.join(data_dir, "store"), str(e)) from e
        if image is not None and store.applied_index >= self.last_snapshot["applied_index"]:
            # The file partition is at or past the snapshot; the memory one restarts
            # from the snapshot's image, and the journal replays the rest.
            store.load_memory_image(image)
        last_log = self.journal.last_index() or 0
        if store.applied_index > max(last_log, snap_index):
            store.close()
            raise CorruptStateError(
                os.path.join(data_dir, "store"),
                f"the store claims applied index {store.applied_index}, beyond both the journal (last index "
                f"{last_log}) and the snapshot (index {snap_index}): entries it was built from are lost")
        self.store = store
        self._fresh = (last_log <= 1 and self.journal.getCurrentTerm() == 0 and store.applied_index == 0
                       and not snap_index)
        self._directory: dict[str, dict] = store.nodes()

        members = self.journal.get_extra("members", None) or sorted(set(ident.peers) | {ident.raft})
        partners = [m for m in members if m != ident.raft]
        max_entry = max(bounds.max_bytes, store_options.max_payload + 4096) + 4096
        settings.check(max_entry)
        conf = settings.syncobj_conf(
            password=secret, bindAddress=ident.raft_bind or ident.raft, journalFile=self.journal,
            fullDumpFile=self.snapshot_path, serializer=self._serialize, deserializer=self._deserialize,
            serializeChecker=self._packing_state)
        install_journal_factory()
        install_raft_wire()
        self.sync = HardenedSyncObj(ident.raft, partners, conf, self.journal, self._apply,
                                    voter=bool(self.journal.get_extra("voter", False)),
                                    on_voter=self._on_voter, on_members=self._on_members,
                                    compact_bytes=settings.compaction_max_bytes,
                                    leader_lost_s=settings.leader_lost_s)
        log.info("raft node started", extra={"node": ident.name, "raft": ident.raft, "members": members,
                                             "voter": self.sync.voter, "applied_index": store.applied_index})

    # == the replicated apply (tick thread) ==============================================
    def _apply(self, index: int, blob: bytes):
        try:
            time_ns, wire = msgpack.unpackb(blob, raw=False)
            commands = [from_wire(w) for w in wire]
            with self._lock:
                store = self.store
                if time_ns and store.time_ns and time_ns - store.time_ns > CLOCK_JUMP_NS:
                    log.warning("leader clock jumped forward", extra={"index": index,
                                                                       "by_s": (time_ns - store.time_ns) / 1e9})
                res = store.apply(Entry(index, time_ns, commands))
                if any(isinstance(c, Announce) for c in commands):
                    self._directory = store.nodes()
        except Exception:
            # The store could not apply (I/O error, damage): never skip an entry, never
            # acknowledge it, never wedge the tick loop retrying it. End the process.
            _fatal("cannot apply entry %d; stopping the node", index)
        if res.events and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._emit, res.events)
            except RuntimeError:
                pass        # the event loop is closed: shutting down, nobody listens
        return res.results

    # == snapshots (tick thread) =========================================================
    # A snapshot of a big store takes seconds to verify, digest and pack; in the tick
    # thread that would stall heartbeats and commits. Here only the capture runs (a
    # RocksDB checkpoint of hard links, the memory image); a thread packs it, and the
    # checker pysyncobj polls every tick puts it into place. pysyncobj drops journal
    # entries only after the checker reports success, so until then the old snapshot
    # plus the whole journal still hold everything.
    def _serialize(self, tmp_path: str, raft_data) -> None:
        t0 = time.monotonic()
        pack = _Packing(raft_data[0][1], t0)
        self._pack = pack
        # Never raise here: pysyncobj would then wait forever for a checker that
        # reports neither success nor failure, and never compact again.
        try:
            with self._lock:
                cap = snapshots.capture(self.store, self.snapshot_path, raft_data)
            pack.capture_ms = (time.monotonic() - t0) * 1000
            pack.thread = threading.Thread(target=pack.run, args=(cap, self.snapshot_path), name="snapshot-pack",
                                           daemon=True)
            pack.thread.start()
        except Exception as e:  # noqa: BLE001 - reported by the checker
            pack.error = e
        snapshots.stand_in(self.snapshot_path, tmp_path)

    def _packing_state(self) -> int:
        pack = self._pack
        if pack is None:
            return SERIALIZER_STATE.NOT_SERIALIZING
        if pack.thread is not None and pack.thread.is_alive():
            return SERIALIZER_STATE.SERIALIZING
        self._pack = None
        if pack.error is not None or pack.stale:
            snapshots.discard_partial(self.snapshot_path)
            if pack.error is not None:
                log.error("snapshot not taken: %s", pack.error, extra={"index": pack.index})
            return SERIALIZER_STATE.FAILED
        crash_point("snapshot-packed")      # test-only: a kill with the stand-in still in place
        try:
            snapshots.place(self.snapshot_path)
        except OSError as e:
            log.error("snapshot not placed: %s", e, extra={"index": pack.index})
            return SERIALIZER_STATE.FAILED
        self.last_snapshot = {"index": pack.index, "applied_index": pack.manifest["applied_index"],
                              "taken": time.time()}
        self.snapshots_taken += 1
        log.info("snapshot taken", extra={"index": pack.index, "capture_ms": round(pack.capture_ms),
                                          "ms": round((time.monotonic() - pack.started) * 1000)})
        return SERIALIZER_STATE.SUCCESS

    def _deserialize(self, path: str):
        # pysyncobj swallows a failed load and still acknowledges the snapshot; a node
        # whose state is unknown must not carry on, so any failure ends the process.
        try:
            if self._pack is not None:
                self._pack.stale = True         # older than what is being installed now
            manifest, raft_data = snapshots.read(path)
            with self._lock:
                if manifest["applied_index"] > self.store.applied_index:
                    self.store = snapshots.install(self.data_dir, self.store, path, self.store_options)
                    self._directory = self.store.nodes()
                    self.snapshots_installed += 1
            self.last_snapshot = {"index": raft_data[0][1], "applied_index": manifest["applied_index"],
                                  "taken": None}
            return raft_data
        except Exception:
            _fatal("cannot load snapshot %s; move the data directory aside and restart the node empty "
                   "so it rejoins from the leader", path)

    # == voter and membership bookkeeping (tick thread) ====================================
    def _on_voter(self) -> None:
        self.journal.set_extra("voter", True)

    def _on_members(self, members: list[str]) -> None:
        self.journal.set_extra("members", members)
        log.info("members changed", extra={"members": members})

    # == the interface the server uses ===================================================
    @property
    def is_leader(self) -> bool:
        return self.sync._isLeader()

    def _name_of(self, raft_addr: str) -> tuple[str, Optional[str]]:
        for name, d in self._directory.items():
            if d.get("raft") == raft_addr:
                return name, d.get("client") or None
        return raft_addr, None

    @property
    def leader(self) -> tuple[str, Optional[str]]:
        node = self.sync._getLeader()
        if node is None:
            return "", None
        return self._name_of(node.id)

    def _not_leader(self) -> NotLeaderError:
        name, addr = self.leader
        err = NotLeaderError(f"not the leader; the leader is {name} at {addr}" if name else
                             "not the leader, and no leader is known yet")
        err.leader_addr = addr
        return err

    async def read(self, fn: Callable[[Store], object], fresh: bool = False):
        """fn(store) in a reader thread. `fresh`: only on the leader, after a read
        barrier, so a leader cut off from the others never answers with stale state."""
        if fresh:
            await self.barrier()
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._locked, fn)

    def _locked(self, fn):
        with self._lock:
            return fn(self.store)

    def _check_open(self, n: int) -> None:
        if not self.is_leader:
            raise self._not_leader()
        super()._check_open(n)

    async def _commit(self, time_ns: int, commands: list[Command]) -> tuple[list, list]:
        if not self.is_leader:
            raise self._not_leader()
        blob = msgpack.packb([time_ns, [c.to_wire() for c in commands]], use_bin_type=True)
        results = await self._submit(blob)
        return results, []     # events reach listeners from the apply, on every node

    async def _submit(self, blob: bytes):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def settle(res, err):
            if fut.done():
                return
            if err == FAIL_REASON.SUCCESS:
                fut.set_result(res)
            elif err in (FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER):
                fut.set_exception(self._not_leader())
            elif err == FAIL_REASON.QUEUE_FULL:
                fut.set_exception(NodeBusyError("the Raft queue is full; try again"))
            else:
                fut.set_exception(ClusterUnavailableError(f"entry not confirmed ({_reason(err)})"))

        self.sync.apply_entry(blob, callback=lambda res, err: loop.call_soon_threadsafe(settle, res, err))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.settings.commit_timeout_s)
        except asyncio.TimeoutError:
            raise ClusterUnavailableError(f"entry not confirmed within {self.settings.commit_timeout_s} s") from None

    # == cluster views ======================================================================
    def cluster_info(self) -> ClusterInfo:
        """JetStream's `cluster` block: the leader, and each other replica's state."""
        leader_name, _ = self.leader
        out = ClusterInfo(name="raftbroker", leader=leader_name)
        if not self.is_leader:
            return out
        last = self.sync.raftCommitIndex
        match, contact = self.sync.match_index(), self.sync.last_contact()
        for member in self.sync.members():
            if member == self.ident.raft:
                continue
            lag = max(0, last - match.get(member, 0))
            active_s = contact.get(member)
            out.replicas.append(PeerInfo(
                name=self._name_of(member)[0],
                current=lag == 0 and active_s is not None and active_s < self.settings.election_min_s,
                offline=active_s is None or active_s >= self.settings.election_min_s,
                active=None if active_s is None else int(active_s * 1e9), lag=lag))
        return out

    def status(self) -> dict:
        st = self.sync.getStatus()
        match, contact = self.sync.match_index(), self.sync.last_contact()
        leader_name, leader_client = self.leader
        members = []
        for m in self.sync.members():
            name, client = self._name_of(m)
            row = {"name": name, "raft": m, "client": client, "self": m == self.ident.raft}
            if self.is_leader and m != self.ident.raft:
                row.update(match_index=match.get(m, 0), lag=max(0, st["commit_idx"] - match.get(m, 0)),
                           last_contact_s=contact.get(m))
            members.append(row)
        return {"name": self.name, "role": {0: "follower", 1: "candidate", 2: "leader"}[st["state"]],
                "term": st["raft_term"], "leader": leader_name, "leader_client": leader_client,
                "commit_index": st["commit_idx"], "applied_index": st["last_applied"],
                "leader_commit_index": st["leader_commit_idx"], "store_applied_index": self.store.applied_index,
                "log_len": st["log_len"], "voter": self.sync.voter, "bootstrap": self.bootstrap_state,
                "members": members, "last_snapshot": self.last_snapshot,
                "snapshots_installed": self.snapshots_installed, "snapshots_taken": self.snapshots_taken,
                "leader_changes": self.sync.leader_changes, "elections": self.sync.elections}

    def health(self) -> tuple[bool, str]:
        if self.sync._getLeader() is None:
            return False, "no known leader"
        if not self.sync.voter:
            return False, "catching up: not a voter yet"
        target = self.sync.raftCommitIndex if self.is_leader else self.sync.leader_commit_index()
        if self.sync.raftLastApplied < target:
            return False, f"applying: {self.sync.raftLastApplied} of {target}"
        if self._directory.get(self.name) != self._announcement():
            # Until then the other nodes know it by its Raft address only (stream info's
            # replicas, cluster status, where clients are sent).
            return False, "announcing its name and addresses"
        return True, "ok"

    # == admin ============================================================================
    async def _admin(self, call) -> None:
        if not self.is_leader:
            raise self._not_leader()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        call(lambda res, err: loop.call_soon_threadsafe(
            lambda: fut.done() or (fut.set_result(None) if err == FAIL_REASON.SUCCESS else
                                   fut.set_exception(ClusterUnavailableError(f"refused: {_reason(err)}")))))
        await asyncio.wait_for(fut, self.settings.commit_timeout_s)

    async def add_peer(self, raft_addr: str) -> None:
        await self._admin(lambda cb: self.sync.addNodeToCluster(raft_addr, callback=cb))

    async def remove_peer(self, raft_addr: str) -> None:
        await self._admin(lambda cb: self.sync.removeNodeFromCluster(raft_addr, callback=cb))

    async def step_down(self) -> None:
        """Hand leadership to a caught-up follower (pysyncobj's transferLeadership). It
        refuses while no follower holds the whole log, so new entries are held back
        (they wait in the queue) until one does and the transfer is sent."""
        held = 0
        try:
            for _ in range(self.bounds.max_inflight):
                await self._inflight.acquire()
                held += 1
            deadline = time.monotonic() + self.settings.commit_timeout_s
            while True:
                try:
                    await self._admin(lambda cb: self.sync.call_in_tick(
                        lambda: self.sync.transfer_leadership(cb)))
                    return
                except ClusterUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            for _ in range(held):
                self._inflight.release()

    # == lifecycle ==========================================================================
    def start(self) -> None:
        super().start()
        self._loop = asyncio.get_running_loop()
        self._tasks.append(self._loop.create_task(self._announce_loop()))
        if self.bootstrap_requested and not self.sync.voter:
            self._tasks.append(self._loop.create_task(self._bootstrap()))

    def _announcement(self) -> dict:
        return {"raft": self.ident.raft, "client": self.ident.client, "http": self.ident.http, "nats": self.ident.nats}

    async def _announce_loop(self) -> None:
        me = self._announcement()
        while True:
            await asyncio.sleep(0.5)
            if self.sync._getLeader() is None or self._directory.get(self.name) == me:
                continue
            cmd = Announce(self.name, **me)
            blob = msgpack.packb([0, [cmd.to_wire()]], use_bin_type=True)
            try:
                await self._submit(blob)      # from a follower, pysyncobj forwards it to the leader
            except Exception as e:  # noqa: BLE001 - retried on the next round
                log.debug("announce not confirmed: %s", e)

    async def _bootstrap(self) -> None:
        """Let a brand-new cluster elect: only while this node and every member in
        --peers are reachable and report an empty log. A node that finds any member
        with history stays a non-voter until it has caught up from the leader."""
        from .bootstrap import probe_all
        if not self._fresh:
            self.bootstrap_state = "refused: this node has state; it becomes a voter once caught up"
            return
        peers = [p for p in self.sync.members() if p != self.ident.raft]
        while not self.sync.voter:
            verdict = await asyncio.get_running_loop().run_in_executor(
                None, probe_all, peers, self._secret, 1.0)
            self.bootstrap_state = verdict
            if verdict == "empty":
                self.sync.call_in_tick(lambda: self.sync.make_voter("bootstrap: every member is empty"))
                return
            if verdict.startswith("history"):
                return
            await asyncio.sleep(0.5)

    def power_cut(self) -> None:
        """Test-only (RAFTBROKER_TEST_POWER_CUT=1, on SIGUSR1): lose every write not
        yet synced, as a power loss would, and die at once. The journal and meta go
        back to what was fsynced, and RocksDB's write-ahead log (never synced) is cut
        to nothing. Snapshot files are always synced before they are renamed into
        place, so they stay."""
        self.journal.power_cut()
        rocks = os.path.join(self.data_dir, "store", "rocks")
        for n in os.listdir(rocks):
            if n.endswith(".log"):
                os.truncate(os.path.join(rocks, n), 0)
        os._exit(137)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        try:
            await self._stop_commits()
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self.sync.destroy_synchronous)
            pack = self._pack
            if pack is not None and pack.thread is not None:
                pack.thread.join()      # a node started next in this directory must not meet its files
            with self._lock:
                self.store.close()
            self.journal._destroy()
            self._executor.shutdown(wait=True)


class _Packing:
    """One snapshot being packed in its own thread."""

    def __init__(self, index: int, started: float):
        self.index = index
        self.started = started
        self.capture_ms = 0.0
        self.thread: Optional[threading.Thread] = None
        self.manifest: Optional[dict] = None
        self.error: Optional[BaseException] = None
        self.stale = False

    def run(self, cap, path: str) -> None:
        try:
            self.manifest = snapshots.pack(cap, path)
        except Exception as e:  # noqa: BLE001 - reported by the checker, in the tick thread
            self.error = e


def _reason(err) -> str:
    for k, v in vars(FAIL_REASON).items():
        if v == err and not k.startswith("_"):
            return k
    return str(err)
