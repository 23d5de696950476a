"""Replay: entries a partition already holds are not applied again, and a
restarted process rebuilds its memory streams by re-applying the journal."""
import random

import pytest

from storage import (
    ACK, NAK, PROGRESS, TERM, Ack, AddConsumer, AddStream, ConsumerConfig, DeleteConsumer, DeleteMsg, DeleteStream,
    Entry, JSError, NextMsgs, Publish, PurgeStream, Store, StoreOptions, StreamConfig, StreamInfo, Sweep,
    UpdateStream, decode, encode,
)

T0 = 1_700_000_000 * 10**9
FILE, MEM, ANY = "file", "mem", "any"


class Journal:
    """Entries as the Raft log keeps them (encoded), with which partition each command is for."""

    def __init__(self):
        self.items: list[tuple[int, int, bytes, list[str]]] = []
        self.now = T0

    def add(self, *tagged, dt: float = 0.25) -> None:
        self.now += int(dt * 10**9)
        cmds = [c for c, _ in tagged]
        self.items.append((len(self.items) + 1, self.now, encode(cmds), [t for _, t in tagged]))

    def entries(self, lo: int = 1, hi: int | None = None):
        for index, now, blob, _tags in self.items[lo - 1:hi]:
            yield Entry(index, now, decode(blob))   # decoded afresh each time, as from the log

    def tags(self, index: int) -> list[str]:
        return self.items[index - 1][3]

    def __len__(self):
        return len(self.items)


def norm(r):
    """A result in comparable form (StreamInfo.ts is the store's clock at reply time)."""
    if isinstance(r, JSError):
        return ("error", r.to_wire())
    if isinstance(r, list):
        return [norm(x) for x in r]
    if isinstance(r, StreamInfo):
        d = r.to_dict()
        d.pop("ts", None)
        return d
    if hasattr(r, "to_dict"):
        return r.to_dict()
    return r


def state(store: Store) -> dict:
    out = {"digest": store.digest(), "applied": store.applied_index, "names": store.stream_names()}
    for name in store.stream_names():
        info = store.stream_info(name).to_dict()
        info.pop("ts", None)
        out[f"stream {name}"] = info
        out[f"subjects {name}"] = store.stream_subjects(name)
        for c in store.consumer_names(name):
            out[f"consumer {name}/{c}"] = store.consumer_info(name, c).to_dict()
    return out


def apply_all(store: Store, journal: Journal, lo: int = 1, hi: int | None = None) -> list:
    return [store.apply(e) for e in journal.entries(lo, hi)]


def open_store(path) -> Store:
    return Store.open(str(path), StoreOptions(sync=False))


def mixed_journal(seed: int, n_entries: int = 150) -> Journal:
    """File and memory streams side by side, the commands of both interleaved in the same entries."""
    rng = random.Random(seed)
    j = Journal()
    j.add((AddStream(StreamConfig(name="F", subjects=["f.>"], max_msgs_per_subject=30, max_age=60.0)), FILE),
          (AddStream(StreamConfig(name="M", subjects=["m.>"], storage="memory", max_msgs=200, max_age=40.0)), MEM),
          (AddStream(StreamConfig(name="W", subjects=["w.>"], retention="workqueue")), FILE),
          (AddStream(StreamConfig(name="MI", subjects=["i.>"], storage="memory", retention="interest")), MEM))
    consumers = {
        ("F", "fc"): ConsumerConfig(durable_name="fc", ack_wait=2.0, max_deliver=3),
        ("F", "fall"): ConsumerConfig(durable_name="fall", ack_policy="all", filter_subject="f.1"),
        ("F", "fnone"): ConsumerConfig(durable_name="fnone", ack_policy="none"),
        ("M", "mc"): ConsumerConfig(durable_name="mc", ack_wait=1.0, max_deliver=2),
        ("M", "mlast"): ConsumerConfig(durable_name="mlast", deliver_policy="last_per_subject",
                                       filter_subject="m.*"),
        ("W", "wc"): ConsumerConfig(durable_name="wc", ack_wait=1.5),
        ("MI", "ic"): ConsumerConfig(durable_name="ic", filter_subject="i.a", ack_wait=1.0),
    }
    tag = {"F": FILE, "W": FILE, "M": MEM, "MI": MEM}
    j.add(*[(AddConsumer(s, cfg), tag[s]) for (s, _c), cfg in consumers.items() if _c != "mlast"])
    prefixes = {"F": "f", "W": "w", "M": "m", "MI": "i"}
    for i in range(n_entries):
        cmds = []
        for _ in range(rng.randint(1, 8)):
            stream = rng.choice(["F", "W", "M", "MI"])
            t = tag[stream]
            k = rng.random()
            if k < 0.45:
                headers = {"Nats-Msg-Id": f"id{rng.randint(0, 40)}"} if rng.random() < 0.2 else None
                subject = f"{prefixes[stream]}.{rng.choice('abc123')}"
                cmds.append((Publish(subject, rng.randbytes(rng.randint(0, 64)), headers), t))
            elif k < 0.65:
                (s, c) = rng.choice([key for key in consumers if key[0] == stream])
                cmds.append((NextMsgs(s, c, batch=rng.randint(1, 6)), t))
            elif k < 0.85:
                (s, c) = rng.choice([key for key in consumers if key[0] == stream])
                kind = rng.choice([ACK, ACK, ACK, NAK, PROGRESS, TERM])
                cmds.append((Ack(s, c, rng.randint(1, 12 + 4 * i), kind, delay=rng.choice([0, 0.5])), t))
            elif k < 0.87:
                cmds.append((PurgeStream(stream, filter=rng.choice([None, f"{prefixes[stream]}.a"]),
                                         keep=rng.choice([None, 3])), t))
            elif k < 0.93:
                cmds.append((DeleteMsg(stream, rng.randint(1, 4 * i + 5)), t))
            else:
                cmds.append((Sweep(), ANY))
        if i == n_entries // 3:
            cmds.append((AddConsumer("M", consumers[("M", "mlast")]), MEM))
            cmds.append((AddConsumer("M", ConsumerConfig(inactive_threshold=1.0)), MEM))   # ephemeral
        if i == n_entries // 2:
            cmds.append((UpdateStream(StreamConfig(name="M", subjects=["m.>"], storage="memory", max_msgs=50,
                                                      max_age=30.0)),
                         MEM))
            cmds.append((DeleteConsumer("F", "fnone"), FILE))
        # The leader's clock mostly moves on, sometimes jumps, now and then goes back a little.
        j.add(*cmds, dt=rng.choice([0.1, 0.3, 1.2, 2.5, -0.2]))
    j.add((Sweep(), ANY))
    return j


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_applying_entries_again_is_a_no_op(tmp_path, seed):
    journal = mixed_journal(seed)
    store = open_store(tmp_path / "a")
    first = apply_all(store, journal)
    assert all(r.applied for r in first)
    assert any(isinstance(x, JSError) for r in first for x in r.results)      # errors replay too
    once = state(store)
    assert once["applied"] == len(journal) and store.memory_applied_index == len(journal)
    assert set(once["names"]) == {"F", "M", "W", "MI"}

    again = apply_all(store, journal)
    for r in again:
        assert r.applied is False
        assert r.results == [None] * len(r.results)
        assert r.events == []
    assert state(store) == once

    # The same journal applied once to a fresh store lands in the same state.
    fresh = open_store(tmp_path / "b")
    apply_all(fresh, journal)
    assert state(fresh) == once
    fresh.close()

    # After a restart: the file partition holds every entry, so only the memory
    # streams are rebuilt; the file streams are not touched again.
    store.close()
    store = open_store(tmp_path / "a")
    assert store.applied_index == len(journal) and store.memory_applied_index == 0
    assert sorted(store.stream_names()) == ["F", "W"]
    file_digest = store.digest()
    replayed = apply_all(store, journal)
    for r0, r in zip(first, replayed):
        for tag, x0, x in zip(journal.tags(r.index), r0.results, r.results):
            if tag == FILE:
                assert x is None
            elif tag == MEM:
                assert norm(x) == norm(x0), (r.index, x0, x)
    assert state(store) == once
    assert {k: v for k, v in store.digest().items() if k in file_digest} == file_digest
    # ... and once more after that: nothing left to apply anywhere.
    assert all(r.applied is False and set(r.results) <= {None} for r in apply_all(store, journal))
    assert state(store) == once
    store.close()


def test_memory_stream_rebuilt_by_replay_file_stream_untouched(tmp_path):
    j = Journal()
    j.add((AddStream(StreamConfig(name="FILE", subjects=["file.>"])), FILE),
          (AddStream(StreamConfig(name="MEM", subjects=["mem.>"], storage="memory")), MEM))
    j.add((AddConsumer("FILE", ConsumerConfig(durable_name="d", ack_wait=1.0)), FILE),
          (AddConsumer("MEM", ConsumerConfig(durable_name="d", ack_wait=1.0)), MEM))
    for i in range(60):
        j.add((Publish(f"file.{i % 3}", b"f%d" % i), FILE), (Publish(f"mem.{i % 3}", b"m%d" % i), MEM),
              (Publish(f"mem.x", b"mx%d" % i, {"Nats-Msg-Id": f"k{i // 2}"}), MEM),
              (Publish(f"file.x", b"fx%d" % i), FILE))
        if i % 5 == 4:
            j.add((NextMsgs("MEM", "d", batch=4), MEM), (NextMsgs("FILE", "d", batch=4), FILE),
                  (Ack("MEM", "d", i, ACK), MEM), (Ack("FILE", "d", i, ACK), FILE), dt=0.7)
        if i == 30:
            j.add((PurgeStream("MEM", filter="mem.1"), MEM), (PurgeStream("FILE", keep=50), FILE))
    j.add((Sweep(), ANY), dt=5)
    j.add((NextMsgs("MEM", "d", batch=10), MEM), (NextMsgs("FILE", "d", batch=10), FILE))

    store = open_store(tmp_path / "s")
    first = apply_all(store, j)
    before = state(store)
    digests = store.digest()
    file_info = store.stream_info("FILE").state
    assert store.stream_info("MEM").state.messages > 0 and file_info.messages > 0
    store.close()

    store = open_store(tmp_path / "s")
    assert store.memory_applied_index == 0 and store.applied_index == len(j)
    assert store.stream_names() == ["FILE"]
    replayed = apply_all(store, j)
    assert all(r.applied for r in replayed)
    for r0, r in zip(first, replayed):
        for tag, x0, x in zip(j.tags(r.index), r0.results, r.results):
            if tag == FILE:
                assert x is None
            elif tag == MEM:
                assert norm(x) == norm(x0), (r.index, x0, x)
    assert store.digest()["MEM"] == digests["MEM"]          # rebuilt exactly
    assert store.digest()["FILE"] == digests["FILE"]        # not applied twice
    assert store.stream_info("FILE").state == file_info
    assert state(store) == before
    assert store.memory_applied_index == store.applied_index == len(j)
    store.close()


def test_replay_from_a_memory_image_midway(tmp_path):
    """A memory image taken at entry k: replay starts after k and reaches the same state."""
    journal = mixed_journal(7, 80)
    store = open_store(tmp_path / "s")
    k = 40
    apply_all(store, journal, 1, k)
    image = store.memory_image()
    apply_all(store, journal, k + 1)
    before = state(store)
    store.close()
    store = Store.open(str(tmp_path / "s"), StoreOptions(sync=False), memory_image=image)
    assert store.memory_applied_index == k
    res = apply_all(store, journal)
    assert [r.applied for r in res] == [False] * k + [True] * (len(journal) - k)
    assert state(store) == before
    store.close()


def test_cross_partition_verdicts_are_replayed(tmp_path):
    """Whether a memory stream may be created depends on the file streams of that
    moment; a replay sees the file streams of later, so it must reach the verdict
    recorded at the time, in both directions."""
    j = Journal()
    # 1: a file stream on g.>; 2: a memory stream on g.> is refused (overlap) ...
    j.add((AddStream(StreamConfig(name="FG", subjects=["g.>"])), FILE))
    j.add((AddStream(StreamConfig(name="M1", subjects=["g.a"], storage="memory")), MEM),
          (AddStream(StreamConfig(name="FG", storage="memory", subjects=["zz"])), MEM),   # file name taken
          (Publish("g.a", b"to the file stream"), FILE))
    # 3: ... the file stream goes away, 4: now the memory stream is accepted.
    j.add((DeleteStream("FG"), FILE))
    j.add((AddStream(StreamConfig(name="M2", subjects=["g.>"], storage="memory")), MEM),
          (Publish("g.b", b"to the memory stream"), MEM))
    # 5: a memory stream on h.> while no file stream has h, 6: it is deleted,
    # 7: a file stream takes h.>, so a replay would (wrongly) see M3 overlap it.
    j.add((AddStream(StreamConfig(name="M3", subjects=["h.>"], storage="memory")), MEM),
          (Publish("h.1", b"m3 message"), MEM))
    j.add((AddStream(StreamConfig(name="FH", subjects=["h.>"])), FILE),            # refused: M3 has h.>
          (Publish("h.2", b"m3 again"), MEM),
          (DeleteStream("M3"), MEM))
    j.add((AddStream(StreamConfig(name="FH", subjects=["h.>"])), FILE),
          (Publish("h.3", b"to FH"), FILE))
    # 8: a memory stream updated to overlap a file stream is refused; the replay agrees.
    j.add((UpdateStream(StreamConfig(name="M2", subjects=["g.>", "h.x"], storage="memory")), MEM),
          (UpdateStream(StreamConfig(name="M2", subjects=["g.>", "k.>"], storage="memory")), MEM),
          (Publish("k.1", b"via update"), MEM))

    store = open_store(tmp_path / "s")
    first = apply_all(store, j)
    r = [x.results for x in first]
    assert isinstance(r[1][0], JSError) and r[1][0].err_code == 10065       # subject overlap
    assert isinstance(r[1][1], JSError) and r[1][1].err_code == 10058       # name in use
    assert r[1][2].stream == "FG"
    assert isinstance(r[3][0], StreamInfo) and r[3][1].stream == "M2"
    assert isinstance(r[4][0], StreamInfo) and r[4][1].stream == "M3"
    assert isinstance(r[5][0], JSError) and r[5][0].err_code == 10065
    assert r[5][1].stream == "M3" and r[5][2] is True
    assert isinstance(r[6][0], StreamInfo) and r[6][1].stream == "FH"
    assert isinstance(r[7][0], JSError) and r[7][0].err_code == 10065
    assert isinstance(r[7][1], StreamInfo) and r[7][2].stream == "M2"
    before = state(store)
    assert sorted(before["names"]) == ["FH", "M2"]
    store.close()

    store = open_store(tmp_path / "s")
    replayed = apply_all(store, j)
    for r0, rr in zip(first, replayed):
        for tag, x0, x in zip(j.tags(rr.index), r0.results, rr.results):
            if tag == FILE:
                assert x is None
            else:
                assert norm(x) == norm(x0), (rr.index, x0, x)
    assert state(store) == before
    store.close()


def test_missing_verdict_is_reported_not_guessed(tmp_path):
    """With the verdicts pruned, a replay that needs one refuses to rebuild the memory streams."""
    from storage import StoreCorruptError
    j = Journal()
    j.add((AddStream(StreamConfig(name="M", subjects=["m.>"], storage="memory")), MEM))
    store = open_store(tmp_path / "s")
    apply_all(store, j)
    store.prune_verdicts(len(j))
    store.close()
    store = open_store(tmp_path / "s")
    with pytest.raises(StoreCorruptError):
        apply_all(store, j)
    assert store.memory_applied_index == 0
    store.close()
