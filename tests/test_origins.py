"""Mirror and source copies in the storage engine: what a pipeline proposes (SourceCopy)
is stored exactly once, in origin order, with the origin's numbering for a mirror, and
the per-origin state lands in the same entry (reference: jetstream.md A.7)."""
import pytest

from storage import (
    AddStream, AssignSource, JSError, Publish, SourceCopy, StreamConfig, UpdateStream,
)

T0 = 1_700_000_000 * 10**9


def msg(oseq, subject="orders.new", data=None, headers=None, ts=None):
    return [oseq, subject, headers, data if data is not None else f"m{oseq}".encode(), ts or T0 + oseq]


@pytest.fixture
def mirror(engine):
    engine.apply(AddStream(StreamConfig(name="M", mirror={"name": "ORDERS"})))
    engine.apply(AssignSource("M", "ORDERS", "n2"))
    return engine


def copy(engine, msgs=(), stream="M", origin="ORDERS", runner="n2", created=7, **kw):
    return engine.apply(SourceCopy(stream, origin, runner, created, [list(m) for m in msgs], **kw))


def stored(engine, name="M"):
    st = engine.store._find(name)
    from storage.kv import Tx
    return [(seq, m) for seq, m in st.scan(Tx(engine.store._part(st).backend), st.first_seq)]


def test_a_mirror_keeps_the_origins_sequences_timestamps_and_skips_gaps(mirror):
    copy(mirror, [msg(1), msg(2), msg(5)], lag=3)
    rows = stored(mirror)
    assert [s for s, _ in rows] == [1, 2, 5]
    assert rows[2][1] == ["orders.new", None, b"m5", T0 + 5]     # no header added to a mirror
    info = mirror.store.stream_info("M")
    assert (info.state.first_seq, info.state.last_seq, info.state.messages, info.state.num_deleted) == (1, 5, 3, 2)
    assert info.mirror.lag == 3 and info.mirror.error is None and info.mirror.active == 0


def test_a_replayed_or_overlapping_batch_stores_nothing_twice(mirror):
    copy(mirror, [msg(1), msg(2), msg(3)])
    state = copy(mirror, [msg(2), msg(3), msg(4)])
    assert state["last"] == 4
    assert [s for s, _ in stored(mirror)] == [1, 2, 3, 4]
    copy(mirror, [msg(1), msg(2), msg(3), msg(4)])
    assert mirror.store.stream_info("M").state.messages == 4


def test_skip_to_keeps_numbering_aligned_over_deleted_origin_tail(mirror):
    copy(mirror, [msg(1)], skip_to=4)
    info = mirror.store.stream_info("M")
    assert (info.state.last_seq, info.state.messages) == (4, 1)
    copy(mirror, [msg(5)])
    assert [s for s, _ in stored(mirror)] == [1, 5]


def test_only_the_assigned_runner_may_copy(mirror):
    with pytest.raises(JSError) as e:
        copy(mirror, [msg(1)], runner="n3")
    assert "not the runner" in e.value.description and e.value.err_code == 10029
    assert mirror.store.stream_info("M").state.messages == 0
    mirror.apply(AssignSource("M", "ORDERS", "n3"))
    copy(mirror, [msg(1)], runner="n3")
    assert mirror.store.stream_info("M").state.messages == 1


def test_a_recreated_origin_is_reported_and_not_copied(mirror):
    copy(mirror, [msg(1)], created=7)
    state = copy(mirror, [msg(1, data=b"other"), msg(2)], created=8)
    assert "deleted and created again" in state["error"]["description"]
    info = mirror.store.stream_info("M")
    assert info.state.messages == 1 and info.mirror.error["err_code"] == 10029


def test_a_pipeline_error_shows_in_stream_info_until_progress(mirror):
    err = {"code": 503, "err_code": 10029, "description": "origin ORDERS not found"}
    copy(mirror, error=err)
    assert mirror.store.stream_info("M").mirror.error == err
    copy(mirror, [msg(1)])
    assert mirror.store.stream_info("M").mirror.error is None


def test_before_any_report_stream_info_says_nothing_reached_the_origin(engine):
    engine.apply(AddStream(StreamConfig(name="M", mirror={"name": "ORDERS"})))
    engine.apply(AssignSource("M", "ORDERS", "n2"))
    err = engine.store.stream_info("M").mirror.error
    assert err["err_code"] == 10029 and "assigned to n2" in err["description"]


def test_sources_renumber_transform_and_carry_the_source_header(engine):
    engine.apply(AddStream(StreamConfig(name="ALL", sources=[
        {"name": "ORDERS", "filter_subject": "orders.>"},
        {"name": "INVENTORY", "subject_transforms": [{"src": "inv.*", "dest": "all.inv.$1"}]}])))
    for o in ("ORDERS", "INVENTORY"):
        engine.apply(AssignSource("ALL", o, "n2"))
    copy(engine, [msg(10, "orders.new")], stream="ALL", origin="ORDERS")
    copy(engine, [msg(3, "inv.widget")], stream="ALL", origin="INVENTORY")
    copy(engine, [msg(11, "orders.paid")], stream="ALL", origin="ORDERS")
    rows = stored(engine, "ALL")
    assert [(s, m[0]) for s, m in rows] == [(1, "orders.new"), (2, "all.inv.widget"), (3, "orders.paid")]
    assert rows[1][1][1] == {"Nats-Stream-Source": "INVENTORY 3 inv.* all.inv.$1 all.inv.widget"}
    assert rows[0][1][3] == engine.now    # a source stamps its own time
    infos = {s.name: s for s in engine.store.stream_info("ALL").sources}
    assert infos["ORDERS"].filter_subject == "orders.>" and infos["INVENTORY"].subject_transforms[0].dest == "all.inv.$1"


def test_a_destination_limit_stops_the_copy_and_says_so(engine):
    engine.apply(AddStream(StreamConfig(name="ALL", sources=[{"name": "ORDERS"}], max_msgs=2, discard="new")))
    engine.apply(AssignSource("ALL", "ORDERS", "n2"))
    state = copy(engine, [msg(1), msg(2), msg(3)], stream="ALL")
    assert state["last"] == 2 and "maximum messages exceeded" in state["error"]["description"]
    assert engine.store.stream_info("ALL").state.messages == 2


def test_origin_state_survives_a_restart_and_follows_config_changes(engine):
    engine.apply(AddStream(StreamConfig(name="ALL", sources=[{"name": "ORDERS"}])))
    engine.apply(AssignSource("ALL", "ORDERS", "n2"))
    copy(engine, [msg(1), msg(2)], stream="ALL")
    engine.reopen()
    assert copy(engine, [msg(2), msg(3)], stream="ALL")["last"] == 3
    engine.apply(UpdateStream(StreamConfig(name="ALL", sources=[{"name": "ORDERS"}, {"name": "SHIPPING"}])))
    assert sorted(engine.store._find("ALL").origins) == ["ORDERS", "SHIPPING"]
    engine.apply(UpdateStream(StreamConfig(name="ALL", sources=[{"name": "SHIPPING"}])))
    assert sorted(engine.store._find("ALL").origins) == ["SHIPPING"]


def test_mirror_rules_have_jetstreams_codes(engine):
    def code(cfg):
        with pytest.raises(JSError) as e:
            engine.apply(AddStream(cfg))
        return e.value.err_code
    assert code(StreamConfig(name="M", mirror={"name": "O"}, subjects=["x"])) == 10034
    assert code(StreamConfig(name="M", mirror={"name": "O"}, sources=[{"name": "P"}])) == 10031
    assert code(StreamConfig(name="M", mirror={"name": "O", "opt_start_seq": 2, "opt_start_time": 5})) == 10032
    assert code(StreamConfig(name="A", sources=[{"name": "O"}, {"name": "O"}])) == 10140
    assert code(StreamConfig(name="A", sources=[{"name": "bad.name"}])) == 10141
    engine.apply(AddStream(StreamConfig(name="M", mirror={"name": "O"})))
    with pytest.raises(JSError) as e:
        engine.apply(UpdateStream(StreamConfig(name="M", mirror={"name": "P"})))
    assert e.value.err_code == 10055
    # Removing the mirror promotes it to a normal stream that takes publishes.
    engine.apply(UpdateStream(StreamConfig(name="M", subjects=["m.>"])))
    assert engine.apply(Publish("m.x", b"1")).seq == 1
