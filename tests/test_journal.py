"""RaftJournal: pysyncobj's Raft log and term/vote store, durable and checksummed."""
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pysyncobj.syncobj
import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.journal import MemoryJournal

from cluster import journal as journal_mod
from cluster.errors import CorruptStateError
from cluster.journal import (LOG_HEADER_SIZE, _REC_HEADER, RaftJournal, _record_crc,
                             install_journal_factory)

RECOVERY = "move its data directory aside"


def entries(n, first_idx=1, term=1):
    return [(b"cmd-%d-" % i + b"x" * (i % 7), i, term) for i in range(first_idx, first_idx + n)]


def fill(j, items):
    for e in items:
        j.add(*e)


def reopen(path, **kw):
    return RaftJournal(str(path), **kw)


def test_entries_survive_reopen_as_tuples(tmp_path):
    j = reopen(tmp_path)
    assert len(j) == 0 and j.first_index() is None and j.last_index() is None
    fill(j, entries(5))
    j.sync()
    j.close()
    j = reopen(tmp_path)
    assert list(j[:]) == entries(5)
    assert j[0] == entries(5)[0] and isinstance(j[0], tuple)
    assert j[-1] == entries(5)[-1] and j[1:3] == entries(5)[1:3] and j[10:] == []
    assert (j.first_index(), j.last_index(), j.path) == (1, 5, str(tmp_path / "raft.log"))
    j.close()


def test_truncated_suffix_stays_truncated_after_reopen(tmp_path):
    j = reopen(tmp_path)
    fill(j, entries(5))
    j.deleteEntriesFrom(2)
    assert j.synced_size == os.path.getsize(j.path)
    j.add(b"new", 3, 2)
    j.close()
    j = reopen(tmp_path)
    assert j[:] == entries(2) + [(b"new", 3, 2)]
    j.close()


def test_compaction_keeps_the_tail_and_survives_reopen(tmp_path):
    j = reopen(tmp_path)
    fill(j, entries(6))
    j.deleteEntriesTo(4)
    assert j[:] == entries(6)[4:] and j.first_index() == 5
    j.add(b"after", 7, 1)
    j.close()
    j = reopen(tmp_path)
    assert j[:] == entries(6)[4:] + [(b"after", 7, 1)]
    j.clear()
    assert len(j) == 0
    j.add(b"snap-prev", 41, 3)
    j.add(b"snap-last", 42, 3)
    j.close()
    j = reopen(tmp_path)
    assert j[:] == [(b"snap-prev", 41, 3), (b"snap-last", 42, 3)]
    j.close()


def test_compaction_makes_the_snapshot_dir_durable_before_replacing_the_log(tmp_path, monkeypatch):
    snap_dir = tmp_path / "snap"
    snap_dir.mkdir()
    snap_file = snap_dir / "dump.bin"
    snap_file.write_bytes(b"snapshot")
    j = RaftJournal(str(tmp_path / "raft"), also_sync_dirs=[str(snap_dir)], also_sync_files=[str(snap_file)])
    fill(j, entries(4))
    events = []
    real_replace = os.replace
    monkeypatch.setattr(journal_mod, "fsync_dir", lambda p: events.append(("fsync", p)))
    monkeypatch.setattr(journal_mod.os, "replace", lambda a, b: (events.append(("replace", b)), real_replace(a, b)))
    j.deleteEntriesTo(2)
    assert events[:3] == [("fsync", str(snap_file)), ("fsync", str(snap_dir)), ("replace", j.path)]
    j.close()


def test_interrupted_compaction_keeps_the_old_log_and_removes_only_its_own_tmp(tmp_path):
    j = reopen(tmp_path)
    fill(j, entries(4))
    j.close()
    (tmp_path / "raft.log.tmp").write_bytes(b"half a rewrite")
    (tmp_path / "raft.meta.tmp").write_bytes(b"half a meta")
    (tmp_path / "snapshot.bin.tmp").write_bytes(b"someone else's")
    j = reopen(tmp_path)
    assert j[:] == entries(4)
    assert not (tmp_path / "raft.log.tmp").exists() and not (tmp_path / "raft.meta.tmp").exists()
    assert (tmp_path / "snapshot.bin.tmp").read_bytes() == b"someone else's"
    j.close()


@pytest.mark.parametrize("tail", [b"\x00" * 100, b"\x00" * 5, "partial-header", "partial-record"])
def test_torn_tail_is_cut_with_a_warning(tmp_path, caplog, tail):
    j = reopen(tmp_path)
    fill(j, entries(3))
    j.close()
    good_size = os.path.getsize(j.path)
    # What a 4th record looks like on disk, cut short the way a crash cuts a write.
    scratch = reopen(tmp_path / "scratch")
    fill(scratch, entries(4))
    scratch.close()
    record = Path(scratch.path).read_bytes()[scratch._offsets[3]:]
    if tail == "partial-header":
        tail = record[:10]
    elif tail == "partial-record":
        tail = record[:-3]
    with open(j.path, "ab") as f:
        f.write(tail)
    with caplog.at_level(logging.WARNING, logger="raftbroker.journal"):
        j = reopen(tmp_path)
    assert j[:] == entries(3)
    assert os.path.getsize(j.path) == good_size
    assert "torn tail" in caplog.text
    j.add(*entries(4)[3])   # appends where the good records end
    j.close()
    assert reopen(tmp_path)[:] == entries(4)


FIELDS = {"length": (0, 4), "crc": (4, 8), "idx": (8, 16), "term": (16, 24), "command": (24, 27)}


@pytest.mark.parametrize("which", ["middle", "last"])
@pytest.mark.parametrize("field", FIELDS)
def test_flipped_byte_in_any_record_field_refuses_to_open(tmp_path, which, field):
    j = reopen(tmp_path / "orig")
    fill(j, entries(4))
    j.close()
    rec_off = j._offsets[1 if which == "middle" else 3]
    original = Path(j.path).read_bytes()
    lo, hi = FIELDS[field]
    for pos in range(rec_off + lo, rec_off + hi):
        for mask in (0x01, 0x80, 0xFF):
            d = tmp_path / f"case-{pos}-{mask}"
            shutil.copytree(tmp_path / "orig", d)
            damaged = bytearray(original)
            damaged[pos] ^= mask
            (d / "raft.log").write_bytes(damaged)
            with pytest.raises(CorruptStateError) as exc:
                reopen(d)
            assert RECOVERY in str(exc.value) and "raft.log" in str(exc.value)
            assert (d / "raft.log").read_bytes() == damaged      # left exactly as found


def test_bad_header_or_broken_sequence_refuses_to_open(tmp_path):
    j = reopen(tmp_path / "orig")
    fill(j, entries(3))
    j.close()
    original = Path(j.path).read_bytes()

    def opens_with(data, name):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(tmp_path / "orig" / "raft.meta", d / "raft.meta")
        (d / "raft.log").write_bytes(data)
        return reopen(d)

    with pytest.raises(CorruptStateError, match="magic"):
        opens_with(b"X" + original[1:], "magic")
    with pytest.raises(CorruptStateError, match="format version"):
        opens_with(original[:8] + b"\x09" + original[9:], "version")
    with pytest.raises(CorruptStateError, match="shorter than its"):
        opens_with(b"", "empty")
    # Well-formed records out of order: idx jumps, then term goes down.
    for name, bad in (("gap", [(b"a", 1, 1), (b"b", 3, 1)]), ("term", [(b"a", 1, 2), (b"b", 2, 1)])):
        blob = bytearray(original[:LOG_HEADER_SIZE])     # forged: add() itself refuses such sequences
        for cmd, idx, term in bad:
            blob += _REC_HEADER.pack(len(cmd), _record_crc(len(cmd), idx, term, cmd), idx, term) + cmd
        with pytest.raises(CorruptStateError, match="does not follow" if name == "gap" else "below the previous"):
            opens_with(bytes(blob), name)


def test_add_refuses_an_entry_the_reader_would_reject(tmp_path):
    j = reopen(tmp_path)
    fill(j, entries(2, term=3))
    with pytest.raises(ValueError):
        j.add(b"gap", 4, 3)
    with pytest.raises(ValueError):
        j.add(b"old term", 3, 2)
    j.close()
    assert reopen(tmp_path)[:] == entries(2, term=3)


def test_term_vote_commit_index_and_extra_survive_reopen(tmp_path):
    j = reopen(tmp_path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (0, None, 1)
    fill(j, entries(5))
    j.setCurrentTerm(7, "127.0.0.1:4001")
    j.set_extra("voter", True)
    j.setRaftCommitIndex(4)
    j.onOneSecondTimer()
    with pytest.raises(ValueError):
        j.setCurrentTerm(6, None)
    j.close()
    j = reopen(tmp_path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (7, "127.0.0.1:4001", 4)
    assert j.get_extra("voter") is True and j.get_extra("missing", 5) == 5
    j.close()


def test_flipped_byte_anywhere_in_meta_refuses_to_open(tmp_path):
    j = reopen(tmp_path / "orig")
    fill(j, entries(2))
    j.setCurrentTerm(3, "127.0.0.1:4002")
    j.close()
    meta = (tmp_path / "orig" / "raft.meta").read_bytes()
    for pos in range(len(meta)):
        d = tmp_path / f"case-{pos}"
        shutil.copytree(tmp_path / "orig", d)
        damaged = bytearray(meta)
        damaged[pos] ^= 0x01
        (d / "raft.meta").write_bytes(damaged)
        with pytest.raises(CorruptStateError, match="raft.meta"):
            reopen(d)
        assert (d / "raft.meta").read_bytes() == damaged


def test_missing_meta_is_a_fresh_node_only_when_the_log_is_empty(tmp_path):
    j = reopen(tmp_path / "empty")
    j.close()
    os.unlink(tmp_path / "empty" / "raft.meta")
    j = reopen(tmp_path / "empty")
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), len(j)) == (0, None, 0)
    j.close()

    j = reopen(tmp_path / "used")
    fill(j, entries(2))
    j.close()
    os.unlink(tmp_path / "used" / "raft.meta")
    with pytest.raises(CorruptStateError, match="term and vote are unknown"):
        reopen(tmp_path / "used")


def test_missing_log_next_to_a_used_meta_refuses_to_open(tmp_path):
    j = reopen(tmp_path)
    j.setCurrentTerm(2, None)
    j.close()
    os.unlink(tmp_path / "raft.log")
    with pytest.raises(CorruptStateError, match="raft.log: missing"):
        reopen(tmp_path)


def test_power_cut_with_sync_loses_only_what_was_never_synced(tmp_path):
    j = reopen(tmp_path)
    fill(j, entries(3))
    j.sync()
    j.setCurrentTerm(4, "127.0.0.1:4003")
    j.add(*entries(4)[3])       # appended, never synced
    assert j.synced_size < os.path.getsize(j.path)
    j.power_cut()
    with pytest.raises(RuntimeError):
        j.add(*entries(4)[3])
    j = reopen(tmp_path)
    assert j[:] == entries(3)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (4, "127.0.0.1:4003")
    j.close()


def test_power_cut_without_sync_loses_everything_since_the_last_compaction(tmp_path):
    j = reopen(tmp_path, sync=False)
    fill(j, entries(3))
    j.setCurrentTerm(1, None)
    j.deleteEntriesTo(1)                            # compaction: durable even with sync=False
    fill(j, entries(2, first_idx=4))
    j.sync()                                        # reaches the OS, not the disk
    j.setCurrentTerm(5, "127.0.0.1:4004")
    j.power_cut()
    j = reopen(tmp_path, sync=False)
    assert j[:] == entries(3)[1:]
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (1, None)
    j.close()


def test_a_directory_is_opened_by_one_journal_at_a_time(tmp_path):
    j = reopen(tmp_path)
    with pytest.raises(RuntimeError, match="in use"):
        reopen(tmp_path)
    j.close()
    reopen(tmp_path).close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Counter(SyncObj):
    def __init__(self, port, journal, **conf_kw):
        conf = SyncObjConf(journalFile=journal, autoTick=True, autoTickPeriod=0.005, appendEntriesPeriod=0.01,
                           raftMinTimeout=0.04, raftMaxTimeout=0.08, connectionTimeout=0.5, **conf_kw)
        super().__init__(f"127.0.0.1:{port}", [], conf)
        self.value = 0

    @replicated
    def inc(self, by):
        self.value += by
        return self.value


def test_pysyncobj_replays_its_log_from_our_journal_after_restart(tmp_path):
    install_journal_factory()
    install_journal_factory()   # idempotent
    assert isinstance(pysyncobj.syncobj.createJournal(None), MemoryJournal)
    port = _free_port()
    j = RaftJournal(str(tmp_path))
    node = Counter(port, j)
    for by in (1, 2, 3):
        assert node.inc(by, sync=True, timeout=5) in (1, 3, 6)
    node.destroy_synchronous()
    assert j.closed

    j = RaftJournal(str(tmp_path))
    commands = [e for e in j[:] if e[2] >= 1 and len(e[0]) > 1]
    assert len(commands) == 3 and j.last_index() == 5    # no-op at 1, leader's no-op at 2, then the three
    assert j.getCurrentTerm() >= 1 and j.getVotedForNodeId() == f"127.0.0.1:{port}"
    assert j.getRaftCommitIndex() == 5
    node = Counter(port, j)
    deadline = time.monotonic() + 3
    while node.value != 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert node.value == 6
    node.destroy_synchronous()


def test_pysyncobj_compaction_drops_entries_through_our_journal(tmp_path):
    install_journal_factory()
    j = RaftJournal(str(tmp_path))
    node = Counter(_free_port(), j, logCompactionMinEntries=4)   # in-memory snapshots, no fullDumpFile
    for by in range(1, 11):
        node.inc(by, sync=True, timeout=5)
    deadline = time.monotonic() + 3
    while j.first_index() == 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert j.first_index() > 1
    node.destroy_synchronous()
    j = RaftJournal(str(tmp_path))
    assert [e[1] for e in j[:]] == list(range(j.first_index(), 13))
    j.close()


def test_only_the_newest_commands_stay_in_memory_and_older_ones_read_back_as_written(tmp_path):
    import random
    rng = random.Random(7)
    j = reopen(tmp_path, cache_bytes=64)
    model: list = []
    for step in range(600):
        op = rng.random()
        if op < 0.8 or not model:
            idx = model[-1][1] + 1 if model else 1
            e = (os.urandom(rng.randrange(1, 40)), idx, 1)
            j.add(*e)
            model.append(e)
        elif op < 0.9:
            pos = rng.randrange(len(model))
            j.deleteEntriesFrom(pos)
            del model[pos:]
        else:
            pos = rng.randrange(len(model) + 1)
            j.deleteEntriesTo(pos)
            del model[:pos]
        assert j._cache_size <= 64 + 40 and j._cache_pos + len(j._cache) == len(model)
        if step % 50 == 0:
            assert j[:] == model and len(j) == len(model)
    assert j[:] == model and [j[i] for i in range(-len(model), 0)] == model
    assert j._cache_pos > 0            # most of the log is no longer held in memory
    j.sync()
    j.close()
    j = reopen(tmp_path, cache_bytes=64)
    assert j[:] == model and j._cache == []


def test_a_record_changed_on_disk_after_it_left_the_cache_is_refused_not_returned(tmp_path):
    j = reopen(tmp_path, cache_bytes=16)
    fill(j, entries(10))
    j.sync()
    assert j[0] == entries(10)[0]
    with open(j.path, "r+b") as f:
        f.seek(j._offsets[2] + _REC_HEADER.size)
        f.write(b"X")
    with pytest.raises(CorruptStateError, match="idx 3 no longer reads back as written"):
        j[2]
    assert j[-1] == entries(10)[-1]    # still cached
    j.close()


def test_a_slice_is_a_view_read_only_as_far_as_it_is_used(tmp_path, monkeypatch):
    j = reopen(tmp_path, cache_bytes=0)
    fill(j, entries(50))
    reads = []
    real = j._read_command
    monkeypatch.setattr(j, "_read_command", lambda pos: reads.append(pos) or real(pos))
    view = j[10:]
    assert len(view) == 40 and reads == []
    assert view[:2] == entries(50)[10:12] and reads == [10, 11]
    j.close()


def test_opening_a_big_journal_does_not_map_it_all_into_memory(tmp_path):
    j = reopen(tmp_path, sync=False)
    blob = os.urandom(200_000)
    for i in range(1, 401):            # ~80 MiB of log
        j.add(blob, i, 1)
    j.close()
    child = ("import resource, sys; from cluster.journal import RaftJournal; "
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
             f"j = RaftJournal({str(tmp_path)!r}, sync=False); "
             "print(len(j), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=True,
                         cwd=repo).stdout
    entries, grew_mib = map(int, out.split())
    assert entries == 400
    assert grew_mib < 40, out          # mapping the whole file grew it by ~80 MiB
