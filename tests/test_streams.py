"""Stream behaviour of the storage engine, checked against JetStream's semantics
(reference: jetstream.md A.1, A.4, A.6 and the nats-server error table).

Every test drives the store through the `engine` fixture: one Raft entry per
command, with a clock the test moves by hand (never the wall clock).
"""
import pytest

from storage import (
    Ack, AddConsumer, AddStream, ConsumerConfig, DeleteConsumer, DeleteMsg, DeleteStream, Entry, JSError, NextMsgs,
    PubAck, Publish, PurgeStream, StreamConfig, Sweep, UpdateStream,
)
from jetstream.config import check_stream_update, normalize_stream_config
from storage.stream import msg_size

STORAGES = ["file", "memory"]


# == helpers =========================================================================
@pytest.fixture(params=STORAGES)
def storage_type(request):
    return request.param


def add(engine, name="S", subjects=("s.>",), **kw):
    return engine.apply(AddStream(StreamConfig(name=name, subjects=list(subjects) if subjects else None, **kw)))


def update(engine, name="S", subjects=("s.>",), **kw):
    return engine.apply(UpdateStream(StreamConfig(name=name, subjects=list(subjects) if subjects else None, **kw)))


def pub(engine, subject="s.a", data=b"x", headers=None):
    return engine.apply(Publish(subject, data, headers))


def fails(engine, cmd) -> JSError:
    with pytest.raises(JSError) as ei:
        engine.apply(cmd)
    return ei.value


def state(engine, name="S"):
    return engine.store.stream_info(name).state


def info_dict(engine, name="S"):
    d = engine.store.stream_info(name).to_dict()
    d.pop("ts", None)
    return d


def consumer(engine, stream, name, **kw):
    return engine.apply(AddConsumer(stream, ConsumerConfig(durable_name=name, **kw)))


def fetch_and_ack(engine, stream, cons, batch=10):
    msgs = engine.apply(NextMsgs(stream, cons, batch=batch))
    for m in msgs:
        engine.apply(Ack(stream, cons, m.stream_seq))
    return [m.stream_seq for m in msgs]


def seqs(engine, name="S"):
    st = engine.store.stream_info(name).state
    out = []
    for s in range(st.first_seq, st.last_seq + 1):
        try:
            engine.store.get_msg(name, seq=s)
            out.append(s)
        except JSError:
            pass
    return out


# == subjects, names, create ===========================================================
def test_star_and_gt_wildcard_subjects_are_captured(engine, storage_type):
    add(engine, subjects=["orders.*", "events.>"], storage=storage_type)
    assert pub(engine, "orders.new").seq == 1
    assert pub(engine, "events.a").seq == 2
    assert pub(engine, "events.a.b.c").seq == 3
    # `*` is exactly one token, `>` at least one.
    assert fails(engine, Publish("orders.new.x", b"")).err_code == 10161
    assert fails(engine, Publish("orders", b"")).err_code == 10161
    assert fails(engine, Publish("events", b"")).err_code == 10161
    assert state(engine).messages == 3
    assert engine.store.stream_subjects("S") == {"orders.new": 1, "events.a": 1, "events.a.b.c": 1}


@pytest.mark.parametrize("other", ["a.b", "a.*", "a.>", "*.b", ">"])
def test_subjects_overlapping_another_stream_are_rejected_with_10065(engine, other):
    add(engine, name="S1", subjects=["a.*"])
    e = fails(engine, AddStream(StreamConfig(name="S2", subjects=[other])))
    assert e.err_code == 10065
    assert engine.store.stream_names() == ["S1"]


def test_subjects_overlapping_a_memory_stream_from_a_file_stream_are_rejected_with_10065(engine):
    add(engine, name="M", subjects=["a.>"], storage="memory")
    assert fails(engine, AddStream(StreamConfig(name="F", subjects=["a.b"]))).err_code == 10065
    assert fails(engine, AddStream(StreamConfig(name="M2", subjects=["a.b"], storage="memory"))).err_code == 10065
    add(engine, name="F", subjects=["b.>"])
    assert fails(engine, AddStream(StreamConfig(name="M3", subjects=["b.x"], storage="memory"))).err_code == 10065


def test_disjoint_subjects_in_two_streams_are_accepted(engine):
    add(engine, name="S1", subjects=["a.*"])
    add(engine, name="S2", subjects=["a.b.c", "b.>"])
    assert pub(engine, "a.x").stream == "S1"
    assert pub(engine, "a.b.c").stream == "S2"


@pytest.mark.parametrize("subjects", [["a.*", "a.b"], ["a.>", "a.b.c"], ["x", "x"], ["*.b", "a.*"]])
def test_overlapping_subjects_inside_one_stream_are_rejected_with_10052(engine, subjects):
    e = fails(engine, AddStream(StreamConfig(name="S", subjects=subjects)))
    assert e.err_code == 10052
    assert engine.store.stream_names() == []


@pytest.mark.parametrize("name", ["a.b", "a*", "a>", "a/b", "a\\b", "a b", "a\tb", "a\nb", "", "x" * 256])
def test_invalid_stream_name_is_rejected_with_10052(engine, name):
    e = fails(engine, AddStream(StreamConfig(name=name, subjects=["s.>"])))
    assert e.err_code == 10052
    assert engine.store.stream_names() == []


def test_stream_name_of_max_length_255_is_accepted(engine):
    name = "x" * 255
    add(engine, name=name)
    assert engine.store.stream_names() == [name]


def test_empty_subjects_default_to_the_stream_name(engine, storage_type):
    info = engine.apply(AddStream(StreamConfig(name="ORDERS", storage=storage_type)))
    assert info.config.subjects == ["ORDERS"]
    assert pub(engine, "ORDERS").seq == 1
    assert fails(engine, Publish("ORDERS.x", b"")).err_code == 10161


def test_creating_the_same_stream_twice_with_same_config_is_a_noop(engine, storage_type):
    first = add(engine, storage=storage_type, max_msgs=10)
    pub(engine)
    pub(engine)
    engine.advance(1)
    # An explicit default (duplicate_window 120 s) normalises to the same config.
    again = add(engine, storage=storage_type, max_msgs=10, duplicate_window=120.0)
    assert again.config == first.config
    assert again.created == first.created
    assert (again.state.messages, again.state.last_seq) == (2, 2)
    assert state(engine).messages == 2


def test_creating_the_same_stream_with_different_config_is_rejected_with_10058(engine, storage_type):
    add(engine, storage=storage_type, max_msgs=10)
    pub(engine)
    before = info_dict(engine)
    e = fails(engine, AddStream(StreamConfig(name="S", subjects=["s.>"], storage=storage_type, max_msgs=11)))
    assert e.err_code == 10058
    assert info_dict(engine) == before


def test_creating_a_stream_whose_name_exists_in_the_other_storage_is_rejected_with_10058(engine):
    add(engine, name="S", subjects=["a"], storage="file")
    e = fails(engine, AddStream(StreamConfig(name="S", subjects=["b"], storage="memory")))
    assert e.err_code == 10058


def test_num_replicas_above_one_on_a_single_node_is_rejected_with_10074_at_create(engine):
    e = fails(engine, AddStream(StreamConfig(name="S", subjects=["s.>"], num_replicas=3)))
    assert e.err_code == 10074
    assert engine.store.stream_names() == []


# == publish ==========================================================================
def test_publish_returns_pub_ack_with_stream_and_consecutive_seqs(engine, storage_type):
    add(engine, storage=storage_type)
    assert pub(engine) == PubAck(stream="S", seq=1)
    assert pub(engine, "s.b") == PubAck(stream="S", seq=2)
    ack = pub(engine, "s.c")
    assert (ack.stream, ack.seq, ack.duplicate) == ("S", 3, None)


def test_published_headers_and_data_are_returned_by_get_msg(engine, storage_type):
    add(engine, storage=storage_type)
    pub(engine, "s.a", b"payload", {"X-Key": "v1", "Other": "v2"})
    m = engine.store.get_msg("S", seq=1)
    assert (m.stream, m.subject, m.seq, m.data) == ("S", "s.a", 1, b"payload")
    assert m.headers == {"X-Key": "v1", "Other": "v2"}
    pub(engine, "s.a", b"nohdr")
    assert engine.store.get_msg("S", seq=2).headers is None


def test_message_timestamps_come_from_the_entry_clock_not_the_wall_clock(engine, storage_type):
    engine.now = 1_000 * 10**9      # far from the wall clock
    info = add(engine, storage=storage_type)
    assert info.created == engine.now
    t1 = engine.now
    pub(engine)
    engine.advance(7.5)
    t2 = engine.now
    pub(engine)
    assert engine.store.get_msg("S", seq=1).time == t1
    assert engine.store.get_msg("S", seq=2).time == t2
    st = state(engine)
    assert (st.first_ts, st.last_ts) == (t1, t2)


def test_publish_to_a_subject_no_stream_captures_raises_no_stream_for_subject(engine):
    add(engine)
    e = fails(engine, Publish("other.a", b"x"))
    assert type(e).__name__ == "NoStreamForSubjectError"
    assert e.err_code == 10161
    assert state(engine).last_seq == 0


def test_publish_with_no_streams_at_all_raises_no_stream_for_subject(engine):
    assert fails(engine, Publish("s.a", b"x")).err_code == 10161


# == retention: interest ==============================================================
def test_interest_message_is_removed_once_every_matching_consumer_acked_it(engine, storage_type):
    add(engine, retention="interest", storage=storage_type)
    consumer(engine, "S", "A")
    consumer(engine, "S", "B")
    consumer(engine, "S", "OTHER", filter_subject="s.other")   # does not match s.a: holds nothing
    assert pub(engine, "s.a").seq == 1
    assert fetch_and_ack(engine, "S", "A") == [1]
    assert state(engine).messages == 1
    assert engine.store.get_msg("S", seq=1).subject == "s.a"
    assert fetch_and_ack(engine, "S", "B") == [1]
    st = state(engine)
    assert (st.messages, st.first_seq, st.last_seq) == (0, 2, 1)
    assert fails_get(engine, seq=1) == 10037


def fails_get(engine, name="S", **kw):
    with pytest.raises(JSError) as ei:
        engine.store.get_msg(name, **kw)
    return ei.value.err_code


def test_interest_with_no_matching_consumer_at_publish_keeps_nothing_but_uses_the_seq(engine, storage_type):
    add(engine, retention="interest", storage=storage_type)
    engine.advance(1)
    assert pub(engine) == PubAck(stream="S", seq=1)
    consumer(engine, "S", "F", filter_subject="s.only")
    assert pub(engine, "s.a") == PubAck(stream="S", seq=2)     # filter does not match
    st = state(engine)
    assert (st.messages, st.bytes, st.last_seq, st.first_seq) == (0, 0, 2, 3)
    assert state(engine).last_ts == engine.now
    engine.advance(1)
    assert pub(engine, "s.only").seq == 3
    st = state(engine)
    assert (st.messages, st.first_seq, st.last_seq) == (1, 3, 3)


def test_interest_deleting_the_last_interested_consumer_removes_the_messages_it_held(engine, storage_type):
    add(engine, retention="interest", storage=storage_type)
    consumer(engine, "S", "A")
    consumer(engine, "S", "B")
    for _ in range(3):
        pub(engine)
    fetch_and_ack(engine, "S", "A")
    engine.apply(NextMsgs("S", "B", batch=1))      # delivered, not acked
    assert state(engine).messages == 3
    engine.apply(DeleteConsumer("S", "A"))
    assert state(engine).messages == 3               # B still needs them
    engine.apply(DeleteConsumer("S", "B"))
    st = state(engine)
    assert (st.messages, st.consumer_count, st.first_seq, st.last_seq) == (0, 0, 4, 3)


def test_interest_deleting_one_of_two_consumers_keeps_messages_the_other_still_needs(engine):
    add(engine, retention="interest")
    consumer(engine, "S", "A", filter_subject="s.a")
    consumer(engine, "S", "B", filter_subject="s.b")
    pub(engine, "s.a")
    pub(engine, "s.b")
    engine.apply(DeleteConsumer("S", "A"))
    assert seqs(engine) == [2]


# == retention: workqueue =============================================================
def test_workqueue_message_is_removed_on_ack(engine, storage_type):
    add(engine, retention="workqueue", storage=storage_type)
    consumer(engine, "S", "W")
    pub(engine)
    pub(engine)
    got = engine.apply(NextMsgs("S", "W", batch=2))
    assert [m.stream_seq for m in got] == [1, 2]
    assert state(engine).messages == 2                # delivered is not acked
    engine.apply(Ack("S", "W", 1))
    st = state(engine)
    assert (st.messages, st.first_seq, st.last_seq) == (1, 2, 2)
    assert fails_get(engine, seq=1) == 10037
    engine.apply(Ack("S", "W", 2))
    assert (state(engine).messages, state(engine).first_seq) == (0, 3)


def test_workqueue_consumer_with_ack_policy_not_explicit_is_rejected_with_10098(engine):
    add(engine, retention="workqueue")
    assert fails(engine, AddConsumer("S", ConsumerConfig(durable_name="W", ack_policy="all"))).err_code == 10098
    push_none = ConsumerConfig(durable_name="P", ack_policy="none", deliver_subject="dlv")
    assert fails(engine, AddConsumer("S", push_none)).err_code == 10098
    assert state(engine).consumer_count == 0


def test_workqueue_pull_consumer_with_ack_none_is_rejected_with_10084(engine):
    add(engine, retention="workqueue")
    assert fails(engine, AddConsumer("S", ConsumerConfig(durable_name="W", ack_policy="none"))).err_code == 10084


def test_workqueue_second_unfiltered_consumer_is_rejected_with_10099(engine):
    add(engine, retention="workqueue")
    consumer(engine, "S", "W1")
    assert fails(engine, AddConsumer("S", ConsumerConfig(durable_name="W2"))).err_code == 10099
    # A filtered one next to an unfiltered one is refused too (the unfiltered takes everything).
    assert fails(engine, AddConsumer("S", ConsumerConfig(durable_name="W3", filter_subject="s.a"))).err_code \
        == 10099
    assert state(engine).consumer_count == 1


def test_workqueue_consumers_with_overlapping_filters_are_rejected_with_10100(engine):
    add(engine, retention="workqueue")
    consumer(engine, "S", "W1", filter_subject="s.a.*")
    e = fails(engine, AddConsumer("S", ConsumerConfig(durable_name="W2", filter_subject="s.a.b")))
    assert e.err_code == 10100
    consumer(engine, "S", "W3", filter_subject="s.b.*")          # disjoint: fine
    assert state(engine).consumer_count == 2


def test_workqueue_consumer_with_deliver_policy_not_all_is_rejected_with_10101(engine):
    add(engine, retention="workqueue")
    for dp in ("last", "new"):
        e = fails(engine, AddConsumer("S", ConsumerConfig(durable_name="W", deliver_policy=dp)))
        assert e.err_code == 10101


# == limits ===========================================================================
def test_max_msgs_with_discard_old_evicts_the_oldest(engine, storage_type):
    add(engine, storage=storage_type, max_msgs=3)
    for i in range(5):
        assert pub(engine, data=b"%d" % i).seq == i + 1
    st = state(engine)
    assert (st.messages, st.first_seq, st.last_seq) == (3, 3, 5)
    assert engine.store.get_msg("S", seq=3).data == b"2"
    assert fails_get(engine, seq=2) == 10037


def test_max_bytes_with_discard_old_evicts_the_oldest(engine, storage_type):
    size = msg_size("s.a", None, b"0123456789", storage_type)
    add(engine, storage=storage_type, max_bytes=3 * size)
    for _ in range(5):
        pub(engine, "s.a", b"0123456789")
    st = state(engine)
    assert (st.messages, st.bytes, st.first_seq, st.last_seq) == (3, 3 * size, 3, 5)


def test_max_age_messages_are_expired_by_a_sweep_carrying_a_later_time(engine, storage_type):
    add(engine, storage=storage_type, max_age=10.0)
    pub(engine)
    pub(engine)
    engine.advance(5)
    pub(engine)
    engine.advance(6)                                  # seqs 1, 2 are now 11 s old, seq 3 is 6 s old
    assert state(engine).messages == 3                 # nothing happens without an entry
    engine.apply(Sweep())
    st = state(engine)
    assert (st.messages, st.first_seq, st.last_seq) == (1, 3, 3)
    engine.advance(10)
    engine.apply(Sweep())
    st = state(engine)
    assert (st.messages, st.first_seq, st.last_seq, st.bytes) == (0, 4, 3, 0)


def test_max_age_messages_are_expired_on_publish(engine, storage_type):
    add(engine, storage=storage_type, max_age=10.0)
    pub(engine)
    engine.advance(11)
    assert pub(engine).seq == 2
    st = state(engine)
    assert (st.messages, st.first_seq, st.last_seq) == (1, 2, 2)


def test_max_age_expired_messages_do_not_count_against_discard_new_limits(engine, storage_type):
    add(engine, storage=storage_type, max_age=10.0, discard="new", max_msgs=1)
    pub(engine)
    engine.advance(11)                                 # seq 1 is past max_age; no Sweep ran
    assert pub(engine).seq == 2
    st = state(engine)
    assert (st.messages, st.first_seq, st.last_seq) == (1, 2, 2)
    assert fails(engine, Publish("s.a", b"x")).description == "maximum messages exceeded"


def test_max_age_expired_message_is_not_the_last_of_its_subject_for_expectations(engine, storage_type):
    add(engine, storage=storage_type, max_age=10.0)
    pub(engine, "s.a")
    engine.advance(11)
    assert pub(engine, "s.a", headers={"Nats-Expected-Last-Subject-Sequence": "0"}).seq == 2


def test_max_msgs_per_subject_evicts_the_oldest_of_that_subject_only(engine, storage_type):
    add(engine, storage=storage_type, max_msgs_per_subject=2)
    for s in ["s.a", "s.b", "s.a", "s.a", "s.a"]:
        pub(engine, s)
    assert engine.store.stream_subjects("S") == {"s.a": 2, "s.b": 1}
    assert seqs(engine) == [2, 4, 5]
    st = state(engine)
    assert (st.messages, st.first_seq, st.num_subjects, st.num_deleted) == (3, 2, 2, 1)


def test_max_msg_size_exceeded_is_rejected_with_10054(engine, storage_type):
    add(engine, storage=storage_type, max_msg_size=10)
    assert pub(engine, data=b"x" * 10).seq == 1
    before = info_dict(engine)
    assert fails(engine, Publish("s.a", b"x" * 11)).err_code == 10054
    # Headers count towards the size.
    assert fails(engine, Publish("s.a", b"x", {"H": "v"})).err_code == 10054
    assert info_dict(engine) == before


def test_max_consumers_reached_is_rejected_with_10026(engine, storage_type):
    add(engine, storage=storage_type, max_consumers=2)
    consumer(engine, "S", "A")
    consumer(engine, "S", "B")
    assert fails(engine, AddConsumer("S", ConsumerConfig(durable_name="C"))).err_code == 10026
    assert state(engine).consumer_count == 2
    # Updating an existing one is not a new consumer.
    consumer(engine, "S", "A", description="changed")
    engine.apply(DeleteConsumer("S", "B"))
    consumer(engine, "S", "C")
    assert engine.store.consumer_names("S") == ["A", "C"]


def test_discard_new_max_msgs_rejects_with_10077_maximum_messages_exceeded(engine, storage_type):
    add(engine, storage=storage_type, max_msgs=2, discard="new")
    pub(engine)
    pub(engine)
    before = info_dict(engine)
    e = fails(engine, Publish("s.a", b"x"))
    assert (e.err_code, e.code, e.description) == (10077, 503, "maximum messages exceeded")
    assert info_dict(engine) == before
    assert seqs(engine) == [1, 2]


def test_discard_new_max_bytes_rejects_with_10077_maximum_bytes_exceeded(engine, storage_type):
    size = msg_size("s.a", None, b"0123456789", storage_type)
    add(engine, storage=storage_type, max_bytes=3 * size + size // 2, discard="new")
    for _ in range(3):
        pub(engine, "s.a", b"0123456789")
    before = info_dict(engine)
    e = fails(engine, Publish("s.a", b"0123456789"))
    assert (e.err_code, e.description) == (10077, "maximum bytes exceeded")
    assert info_dict(engine) == before
    assert state(engine).messages == 3


def test_discard_new_per_subject_rejects_with_10077_maximum_messages_per_subject_exceeded(engine, storage_type):
    add(engine, storage=storage_type, discard="new", max_msgs_per_subject=1, discard_new_per_subject=True)
    pub(engine, "s.a")
    e = fails(engine, Publish("s.a", b"y"))
    assert (e.err_code, e.description) == (10077, "maximum messages per subject exceeded")
    assert pub(engine, "s.b").seq == 2
    assert seqs(engine) == [1, 2]
    assert engine.store.get_msg("S", seq=1).data == b"x"


def test_discard_new_without_per_subject_flag_replaces_the_oldest_of_a_subject_at_its_limit(engine):
    # At the per-subject limit the new message replaces the subject's oldest, so
    # max_msgs does not refuse it (JetStream's `asl`).
    add(engine, discard="new", max_msgs=2, max_msgs_per_subject=1)
    pub(engine, "s.a")
    pub(engine, "s.b")
    assert pub(engine, "s.a").seq == 3
    assert seqs(engine) == [2, 3]
    assert fails(engine, Publish("s.c", b"x")).description == "maximum messages exceeded"


@pytest.mark.parametrize("kw", [dict(discard="old", max_msgs_per_subject=1),
                                dict(discard="new"),
                                dict(discard="new", max_msgs_per_subject=0)])
def test_discard_new_per_subject_requires_discard_new_and_max_msgs_per_subject_else_10052(engine, kw):
    e = fails(engine, AddStream(StreamConfig(name="S", subjects=["s.>"], discard_new_per_subject=True, **kw)))
    assert e.err_code == 10052
    assert engine.store.stream_names() == []


# == dedupe ===========================================================================
def test_duplicate_msg_id_inside_window_returns_original_seq_and_stores_nothing(engine, storage_type):
    add(engine, storage=storage_type)
    assert pub(engine, data=b"one", headers={"Nats-Msg-Id": "m1"}) == PubAck("S", 1)
    pub(engine, "s.b")
    engine.advance(60)
    before = info_dict(engine)
    ack = pub(engine, data=b"other", headers={"Nats-Msg-Id": "m1"})
    assert (ack.stream, ack.seq, ack.duplicate) == ("S", 1, True)
    assert info_dict(engine) == before
    assert pub(engine).seq == 3


def test_duplicate_msg_id_after_the_window_passed_is_stored_again(engine, storage_type):
    add(engine, storage=storage_type, duplicate_window=30.0)
    pub(engine, headers={"Nats-Msg-Id": "m1"})
    engine.advance(29)
    assert pub(engine, headers={"Nats-Msg-Id": "m1"}).duplicate is True
    engine.advance(2)
    ack = pub(engine, headers={"Nats-Msg-Id": "m1"})
    assert (ack.seq, ack.duplicate) == (2, None)
    assert state(engine).messages == 2
    # The re-stored id starts a new window.
    assert pub(engine, headers={"Nats-Msg-Id": "m1"}) == PubAck("S", 2, duplicate=True)


def test_duplicate_msg_id_after_a_sweep_past_the_window_is_stored_again(engine):
    add(engine)
    pub(engine, headers={"Nats-Msg-Id": "m1"})
    engine.advance(121)
    engine.apply(Sweep())
    assert pub(engine, headers={"Nats-Msg-Id": "m1"}) == PubAck("S", 2)


def dedupe_keys(engine, storage_type="file") -> list[bytes]:
    part = engine.store.mem if storage_type == "memory" else engine.store.file
    return [k for k, _ in part.backend.scan(b"D", b"F")]


def test_a_sweep_removes_expired_dedupe_entries_from_the_store(engine, storage_type):
    # The window is kept in the store only (nothing per id in memory), so pruning must
    # really delete what expired, and only that.
    add(engine, storage=storage_type, duplicate_window=30.0)
    pub(engine, headers={"Nats-Msg-Id": "old"})
    engine.advance(20)
    pub(engine, headers={"Nats-Msg-Id": "new"})
    assert len(dedupe_keys(engine, storage_type)) == 4          # an id key and a time key each
    engine.advance(15)
    engine.apply(Sweep())
    left = dedupe_keys(engine, storage_type)
    assert len(left) == 2 and all(k.endswith(b"new") for k in left)
    assert pub(engine, headers={"Nats-Msg-Id": "new"}).duplicate is True
    assert pub(engine, headers={"Nats-Msg-Id": "old"}).duplicate is None


def test_one_time_key_lists_every_id_of_an_entry_and_a_sweep_prunes_them_all(engine, storage_type):
    add(engine, storage=storage_type, duplicate_window=30.0)
    acks = engine.apply_all(*[Publish("s.a", b"x", {"Nats-Msg-Id": f"m{i}"}) for i in range(5)],
                            Publish("s.a", b"x", {"Nats-Msg-Id": "m2"}))
    assert [a.seq for a in acks] == [1, 2, 3, 4, 5, 3] and acks[-1].duplicate is True
    keys = dedupe_keys(engine, storage_type)
    assert len([k for k in keys if k.startswith(b"D")]) == 5
    assert len([k for k in keys if k.startswith(b"E")]) == 1
    engine.advance(20)
    pub(engine, headers={"Nats-Msg-Id": "later"})
    engine.advance(15)
    engine.apply(Sweep())
    left = dedupe_keys(engine, storage_type)
    assert len(left) == 2 and all(k.endswith(b"later") for k in left)
    assert all(pub(engine, headers={"Nats-Msg-Id": f"m{i}"}).duplicate is None for i in range(5))


def test_an_id_stored_again_after_expiring_survives_the_prune_of_its_first_record(engine):
    add(engine, duplicate_window=30.0)
    pub(engine, headers={"Nats-Msg-Id": "m1"})
    engine.advance(31)
    assert pub(engine, headers={"Nats-Msg-Id": "m1"}) == PubAck("S", 2)   # expired, not yet swept
    engine.apply(Sweep())                                                # prunes the first record
    engine.advance(10)
    assert pub(engine, headers={"Nats-Msg-Id": "m1"}) == PubAck("S", 2, duplicate=True)


def test_duplicate_window_defaults_to_120s_and_zero_means_default(engine):
    assert add(engine, name="A", subjects=["a"]).config.duplicate_window == 120.0
    assert add(engine, name="B", subjects=["b"], duplicate_window=0).config.duplicate_window == 120.0
    assert add(engine, name="C", subjects=["c"], duplicate_window=5.0).config.duplicate_window == 5.0
    pub(engine, "a", headers={"Nats-Msg-Id": "x"})
    engine.advance(119)
    assert pub(engine, "a", headers={"Nats-Msg-Id": "x"}).duplicate is True
    engine.advance(2)
    assert pub(engine, "a", headers={"Nats-Msg-Id": "x"}).duplicate is None


def test_duplicate_window_is_capped_by_max_age_below_120s(engine):
    assert add(engine, name="A", subjects=["a"], max_age=30.0).config.duplicate_window == 30.0
    assert add(engine, name="B", subjects=["b"], max_age=300.0).config.duplicate_window == 120.0


def test_duplicate_window_larger_than_max_age_is_rejected_with_10052(engine):
    e = fails(engine, AddStream(StreamConfig(name="S", subjects=["s"], max_age=30.0, duplicate_window=60.0)))
    assert e.err_code == 10052
    assert engine.store.stream_names() == []


def test_dedupe_survives_reopen(engine):
    add(engine)
    pub(engine, headers={"Nats-Msg-Id": "m1"})
    pub(engine, headers={"Nats-Msg-Id": "m2"})
    engine.reopen()
    assert pub(engine, headers={"Nats-Msg-Id": "m1"}) == PubAck("S", 1, duplicate=True)
    assert pub(engine, headers={"Nats-Msg-Id": "m2"}) == PubAck("S", 2, duplicate=True)
    assert pub(engine, headers={"Nats-Msg-Id": "m3"}) == PubAck("S", 3)
    # and the window still runs from the original publish time
    engine.advance(121)
    assert pub(engine, headers={"Nats-Msg-Id": "m1"}) == PubAck("S", 4)


# == expectation headers ==============================================================
def test_expected_stream_mismatch_is_rejected_with_10060(engine, storage_type):
    add(engine, storage=storage_type)
    e = fails(engine, Publish("s.a", b"x", {"Nats-Expected-Stream": "OTHER"}))
    assert e.err_code == 10060
    assert state(engine).last_seq == 0
    assert pub(engine, headers={"Nats-Expected-Stream": "S"}).seq == 1


def test_expected_last_sequence_mismatch_is_rejected_with_10071_and_current_seq(engine, storage_type):
    add(engine, storage=storage_type)
    assert pub(engine, headers={"Nats-Expected-Last-Sequence": "0"}).seq == 1
    pub(engine)
    e = fails(engine, Publish("s.a", b"x", {"Nats-Expected-Last-Sequence": "1"}))
    assert (e.err_code, e.description) == (10071, "wrong last sequence: 2")
    assert state(engine).last_seq == 2
    assert pub(engine, headers={"Nats-Expected-Last-Sequence": "2"}).seq == 3


def test_expected_last_subject_sequence_checks_the_last_seq_of_that_subject(engine, storage_type):
    add(engine, storage=storage_type)
    # 0 means: no message on this subject yet.
    assert pub(engine, "s.a", headers={"Nats-Expected-Last-Subject-Sequence": "0"}).seq == 1
    pub(engine, "s.b")
    assert pub(engine, "s.b", headers={"Nats-Expected-Last-Subject-Sequence": "2"}).seq == 3
    assert pub(engine, "s.a", headers={"Nats-Expected-Last-Subject-Sequence": "1"}).seq == 4
    e = fails(engine, Publish("s.a", b"x", {"Nats-Expected-Last-Subject-Sequence": "1"}))
    assert (e.err_code, e.description) == (10071, "wrong last sequence: 4")
    e = fails(engine, Publish("s.a", b"x", {"Nats-Expected-Last-Subject-Sequence": "0"}))
    assert e.err_code == 10071
    e = fails(engine, Publish("s.c", b"x", {"Nats-Expected-Last-Subject-Sequence": "4"}))
    assert (e.err_code, e.description) == (10071, "wrong last sequence: 0")
    assert state(engine).last_seq == 4


def test_expected_last_msg_id_mismatch_is_rejected_with_10070(engine, storage_type):
    add(engine, storage=storage_type)
    pub(engine, headers={"Nats-Msg-Id": "a"})
    assert pub(engine, headers={"Nats-Expected-Last-Msg-Id": "a", "Nats-Msg-Id": "b"}).seq == 2
    e = fails(engine, Publish("s.a", b"x", {"Nats-Expected-Last-Msg-Id": "a"}))
    assert (e.err_code, e.description) == (10070, "wrong last msg ID: b")
    assert state(engine).last_seq == 2


def test_empty_expected_stream_and_expected_last_msg_id_headers_expect_nothing(engine):
    add(engine)
    pub(engine, headers={"Nats-Msg-Id": "a"})
    assert pub(engine, headers={"Nats-Expected-Stream": "", "Nats-Expected-Last-Msg-Id": ""}).seq == 2


# == deny_delete, deny_purge, sealed, rollup ============================================
def test_deny_delete_makes_delete_fail_with_10057(engine, storage_type):
    add(engine, storage=storage_type, deny_delete=True)
    pub(engine)
    assert fails(engine, DeleteMsg("S", 1)).err_code == 10057
    assert state(engine).messages == 1


def test_deny_purge_makes_purge_fail_with_10110(engine, storage_type):
    add(engine, storage=storage_type, deny_purge=True)
    pub(engine)
    assert fails(engine, PurgeStream("S")).err_code == 10110
    assert fails(engine, PurgeStream("S", filter="s.a")).err_code == 10110
    assert state(engine).messages == 1


def test_sealed_is_refused_at_create_with_10052(engine):
    e = fails(engine, AddStream(StreamConfig(name="S", subjects=["s.>"], sealed=True)))
    assert e.err_code == 10052
    assert engine.store.stream_names() == []


def test_sealing_via_update_blocks_publish_with_10109_and_forces_deny_delete_and_purge(engine, storage_type):
    add(engine, storage=storage_type, max_age=3600.0, allow_rollup_hdrs=True)
    pub(engine)
    info = update(engine, storage=storage_type, max_age=3600.0, allow_rollup_hdrs=True, sealed=True)
    c = info.config
    assert (c.sealed, c.deny_delete, c.deny_purge, c.allow_rollup_hdrs, c.discard, c.max_age) == \
        (True, True, True, False, "new", 0.0)
    before = info_dict(engine)
    assert fails(engine, Publish("s.a", b"x")).err_code == 10109
    assert fails(engine, DeleteMsg("S", 1)).err_code == 10109
    assert fails(engine, PurgeStream("S")).err_code == 10109
    assert info_dict(engine) == before
    assert engine.store.get_msg("S", seq=1).data == b"x"


def test_sealed_stream_cannot_be_unsealed_10052(engine):
    add(engine)
    update(engine, sealed=True)
    e = fails(engine, UpdateStream(StreamConfig(name="S", subjects=["s.>"], deny_delete=True, deny_purge=True)))
    assert e.err_code == 10052
    assert engine.store.stream_info("S").config.sealed is True


def test_rollup_sub_keeps_only_the_new_message_of_that_subject(engine, storage_type):
    add(engine, storage=storage_type, allow_rollup_hdrs=True)
    for s in ["s.a", "s.b", "s.a", "s.a"]:
        pub(engine, s)
    assert pub(engine, "s.a", b"rolled", {"Nats-Rollup": "sub"}).seq == 5
    assert seqs(engine) == [2, 5]
    assert engine.store.stream_subjects("S") == {"s.a": 1, "s.b": 1}
    assert engine.store.get_msg("S", last_by_subj="s.a").data == b"rolled"
    st = state(engine)
    assert (st.messages, st.first_seq, st.last_seq) == (2, 2, 5)


def test_rollup_all_keeps_only_the_new_message(engine, storage_type):
    add(engine, storage=storage_type, allow_rollup_hdrs=True)
    for s in ["s.a", "s.b", "s.c"]:
        pub(engine, s)
    assert pub(engine, "s.d", b"all", {"Nats-Rollup": "all"}).seq == 4
    st = state(engine)
    assert (st.messages, st.first_seq, st.last_seq, st.num_subjects) == (1, 4, 4, 1)
    assert engine.store.get_msg("S", seq=4).data == b"all"


def test_rollup_without_permission_is_rejected_with_10111(engine, storage_type):
    add(engine, storage=storage_type)
    pub(engine)
    before = info_dict(engine)
    for v in ("sub", "all"):
        assert fails(engine, Publish("s.a", b"x", {"Nats-Rollup": v})).err_code == 10111
    assert info_dict(engine) == before


def test_rollup_with_deny_purge_is_refused_at_create_with_10052(engine):
    e = fails(engine, AddStream(StreamConfig(name="S", subjects=["s.>"], allow_rollup_hdrs=True, deny_purge=True)))
    assert e.err_code == 10052


# == get, delete, purge ================================================================
@pytest.fixture
def five(engine, storage_type):
    """S with s.a@1, s.b@2, s.a@3, s.c.x@4, s.b@5."""
    add(engine, storage=storage_type)
    for i, s in enumerate(["s.a", "s.b", "s.a", "s.c.x", "s.b"], 1):
        pub(engine, s, b"m%d" % i)
    return engine


def test_get_message_by_seq(five):
    m = five.store.get_msg("S", seq=3)
    assert (m.subject, m.seq, m.data) == ("s.a", 3, b"m3")


def test_get_last_message_by_literal_subject(five):
    m = five.store.get_msg("S", last_by_subj="s.a")
    assert (m.seq, m.data) == (3, b"m3")
    assert five.store.get_msg("S", last_by_subj="s.c.x").seq == 4


def test_get_last_message_by_wildcard_subject(five):
    assert five.store.get_msg("S", last_by_subj="s.*").seq == 5
    assert five.store.get_msg("S", last_by_subj="s.c.*").seq == 4
    assert five.store.get_msg("S", last_by_subj="s.>").seq == 5


def test_get_next_message_by_subject_from_seq(five):
    assert five.store.get_msg("S", next_by_subj="s.a").seq == 1
    assert five.store.get_msg("S", next_by_subj="s.a", seq=2).seq == 3
    assert five.store.get_msg("S", next_by_subj="s.a", seq=3).seq == 3      # inclusive
    assert five.store.get_msg("S", next_by_subj="s.*", seq=4).seq == 5


def test_get_missing_message_fails_with_10037(five):
    assert fails_get(five, seq=6) == 10037
    assert fails_get(five, last_by_subj="s.zzz") == 10037
    assert fails_get(five, last_by_subj="t.*") == 10037
    assert fails_get(five, next_by_subj="s.a", seq=4) == 10037
    five.apply(DeleteMsg("S", 2))
    assert fails_get(five, seq=2) == 10037


def test_get_message_on_unknown_stream_fails_with_10059(five):
    assert fails_get(five, "NOPE", seq=1) == 10059


def test_delete_message_leaves_a_gap_counted_in_num_deleted(five):
    assert five.apply(DeleteMsg("S", 3)) is True
    st = state(five)
    assert (st.messages, st.first_seq, st.last_seq, st.num_deleted) == (4, 1, 5, 1)
    assert five.store.get_msg("S", last_by_subj="s.a").seq == 1
    five.apply(DeleteMsg("S", 1))
    st = state(five)
    assert (st.messages, st.first_seq, st.num_deleted) == (3, 2, 1)   # seq 3 is still a gap
    assert st.first_ts == five.store.get_msg("S", seq=2).time


def test_delete_missing_message_fails_with_10043(five):
    assert fails(five, DeleteMsg("S", 99)).err_code == 10043
    five.apply(DeleteMsg("S", 2))
    assert fails(five, DeleteMsg("S", 2)).err_code == 10043
    assert state(five).messages == 4


def test_purge_all_empties_the_stream_and_first_seq_is_last_seq_plus_one(five):
    r = five.apply(PurgeStream("S"))
    assert (r.success, r.purged) == (True, 5)
    st = state(five)
    assert (st.messages, st.bytes, st.first_seq, st.last_seq, st.num_subjects, st.num_deleted, st.first_ts) == \
        (0, 0, 6, 5, 0, 0, 0)
    assert five.store.stream_subjects("S") == {}
    assert pub(five).seq == 6
    assert (state(five).first_seq, state(five).messages) == (6, 1)


def test_purge_by_subject_filter_removes_only_matching(five):
    assert five.apply(PurgeStream("S", filter="s.b")).purged == 2
    assert seqs(five) == [1, 3, 4]
    assert five.apply(PurgeStream("S", filter="s.*")).purged == 2
    assert seqs(five) == [4]
    assert state(five).num_subjects == 1


def test_purge_keep_n_keeps_the_newest_n(five):
    assert five.apply(PurgeStream("S", keep=2)).purged == 3
    assert seqs(five) == [4, 5]
    assert state(five).first_seq == 4
    assert five.apply(PurgeStream("S", keep=10)).purged == 0


def test_purge_with_filter_and_keep_keeps_the_newest_n_of_that_subject(five):
    assert five.apply(PurgeStream("S", filter="s.a", keep=1)).purged == 1
    assert seqs(five) == [2, 3, 4, 5]


def test_purge_up_to_seq_is_exclusive(five):
    assert five.apply(PurgeStream("S", seq=3)).purged == 2
    assert seqs(five) == [3, 4, 5]
    assert state(five).first_seq == 3
    assert five.apply(PurgeStream("S", filter="s.b", seq=6)).purged == 1
    assert seqs(five) == [3, 4]


def test_purge_with_seq_and_keep_together_is_rejected_with_10003(five):
    before = info_dict(five)
    assert fails(five, PurgeStream("S", seq=3, keep=1)).err_code == 10003
    assert info_dict(five) == before


def test_stream_info_state_fields(engine, storage_type):
    add(engine, storage=storage_type)
    consumer(engine, "S", "C1")
    t0 = engine.now
    pub(engine, "s.a", b"12345")
    engine.advance(1)
    pub(engine, "s.b", b"", {"K": "V"})
    engine.advance(1)
    t2 = engine.now
    pub(engine, "s.a", b"1")
    pub(engine, "s.c", b"1")
    engine.apply(DeleteMsg("S", 2))
    st = state(engine)
    expected_bytes = msg_size("s.a", None, b"12345", storage_type) + 2 * msg_size("s.a", None, b"1", storage_type)
    assert st.to_dict() == dict(messages=3, bytes=expected_bytes, first_seq=1, first_ts=t0, last_seq=4,
                                last_ts=t2, num_subjects=2, num_deleted=1, consumer_count=1)


# == update ===========================================================================
def test_update_cannot_change_storage_10052(engine):
    add(engine, storage="file")
    assert fails(engine, UpdateStream(StreamConfig(name="S", subjects=["s.>"], storage="memory"))).err_code \
        == 10052
    assert engine.store.stream_info("S").config.storage == "file"


def test_update_cannot_change_max_consumers_10052(engine):
    add(engine, max_consumers=2)
    assert fails(engine, UpdateStream(StreamConfig(name="S", subjects=["s.>"], max_consumers=3))).err_code \
        == 10052


def test_update_cannot_change_name_10052():
    old = normalize_stream_config(StreamConfig(name="A", subjects=["s"]))
    new = normalize_stream_config(StreamConfig(name="B", subjects=["s"]))
    with pytest.raises(JSError) as ei:
        check_stream_update(old, new)
    assert ei.value.err_code == 10052


def test_update_of_unknown_stream_fails_with_10059(engine):
    add(engine)
    assert fails(engine, UpdateStream(StreamConfig(name="T", subjects=["t"]))).err_code == 10059


@pytest.mark.parametrize("old,new", [("limits", "workqueue"), ("workqueue", "limits"),
                                     ("interest", "workqueue"), ("workqueue", "interest")])
def test_update_cannot_change_retention_to_or_from_workqueue_10052(engine, old, new):
    add(engine, retention=old)
    e = fails(engine, UpdateStream(StreamConfig(name="S", subjects=["s.>"], retention=new)))
    assert e.err_code == 10052
    assert engine.store.stream_info("S").config.retention == old


def test_update_between_limits_and_interest_is_allowed(engine):
    add(engine, retention="limits")
    assert update(engine, retention="interest").config.retention == "interest"
    assert update(engine, retention="limits").config.retention == "limits"


def test_update_lowering_max_msgs_trims_the_oldest(engine, storage_type):
    add(engine, storage=storage_type)
    for _ in range(5):
        pub(engine)
    info = update(engine, storage=storage_type, max_msgs=2)
    assert info.config.max_msgs == 2
    assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (2, 4, 5)
    assert pub(engine).seq == 6
    assert seqs(engine) == [5, 6]


def test_update_lowering_max_bytes_and_max_msgs_per_subject_trims_the_oldest(engine, storage_type):
    add(engine, storage=storage_type)
    for s in ["s.a", "s.a", "s.a", "s.b", "s.b"]:
        pub(engine, s, b"0123456789")
    update(engine, storage=storage_type, max_msgs_per_subject=1)
    assert seqs(engine) == [3, 5]
    size = msg_size("s.a", None, b"0123456789", storage_type)
    info = update(engine, storage=storage_type, max_msgs_per_subject=1, max_bytes=size)
    assert (info.state.messages, info.state.bytes, info.state.first_seq) == (1, size, 5)


def test_update_subjects_changes_what_is_captured_and_keeps_stored_messages(engine, storage_type):
    add(engine, storage=storage_type)
    pub(engine, "s.a")
    update(engine, subjects=["t.>"], storage=storage_type)
    assert fails(engine, Publish("s.a", b"x")).err_code == 10161
    assert pub(engine, "t.x").seq == 2
    assert seqs(engine) == [1, 2]


def test_update_subjects_overlapping_another_stream_is_rejected_with_10065(engine):
    add(engine, name="A", subjects=["a.>"])
    add(engine, name="B", subjects=["b.>"])
    assert fails(engine, UpdateStream(StreamConfig(name="B", subjects=["b.>", "a.x"]))).err_code == 10065
    assert engine.store.stream_info("B").config.subjects == ["b.>"]


def test_update_cannot_cancel_deny_delete_or_deny_purge_10052(engine):
    add(engine, deny_delete=True, deny_purge=True)
    assert fails(engine, UpdateStream(StreamConfig(name="S", subjects=["s.>"], deny_purge=True))).err_code == 10052
    assert fails(engine, UpdateStream(StreamConfig(name="S", subjects=["s.>"], deny_delete=True))).err_code == 10052


def test_update_num_replicas_above_one_on_a_single_node_is_rejected(engine):
    add(engine)
    e = fails(engine, UpdateStream(StreamConfig(name="S", subjects=["s.>"], num_replicas=3)))
    assert e.err_code == 10074
    assert engine.store.stream_info("S").config.num_replicas == 1


def test_file_stream_state_messages_and_dedupe_survive_reopen(engine):
    add(engine, max_msgs=10)
    consumer(engine, "S", "C")
    for i in range(4):
        pub(engine, "s.%d" % (i % 2), b"m%d" % i, {"Nats-Msg-Id": str(i)})
    engine.apply(DeleteMsg("S", 2))
    before = info_dict(engine)
    engine.reopen()
    assert info_dict(engine) == before
    assert engine.store.get_msg("S", seq=3).data == b"m2"
    assert engine.store.stream_subjects("S") == {"s.0": 2, "s.1": 1}
    assert pub(engine, "s.0").seq == 5


# == delete stream =====================================================================
def test_delete_stream_removes_everything_and_a_recreated_stream_starts_empty_at_seq_1(engine, storage_type):
    add(engine, storage=storage_type)
    consumer(engine, "S", "C")
    for _ in range(3):
        pub(engine, headers={"Nats-Msg-Id": "same"} if _ == 0 else None)
    assert engine.apply(DeleteStream("S")) is True
    assert engine.store.stream_names() == []
    with pytest.raises(JSError) as ei:
        engine.store.stream_info("S")
    assert ei.value.err_code == 10059
    assert fails(engine, Publish("s.a", b"x")).err_code == 10161
    add(engine, storage=storage_type)
    st = state(engine)
    assert (st.messages, st.bytes, st.first_seq, st.last_seq, st.consumer_count, st.num_subjects) == \
        (0, 0, 0, 0, 0, 0)
    assert engine.store.stream_subjects("S") == {}
    # dedupe state is gone too: the same msg id is a new message
    assert pub(engine, headers={"Nats-Msg-Id": "same"}) == PubAck("S", 1)
    assert (state(engine).first_seq, state(engine).messages) == (1, 1)
    assert fails_get(engine, seq=2) == 10037


def test_delete_unknown_stream_fails_with_10059(engine):
    assert fails(engine, DeleteStream("NOPE")).err_code == 10059


def test_deleted_stream_subjects_can_be_taken_by_another_stream(engine):
    add(engine, name="A", subjects=["s.>"])
    engine.apply(DeleteStream("A"))
    add(engine, name="B", subjects=["s.a"])
    assert pub(engine, "s.a").stream == "B"


# == bad commands ======================================================================
@pytest.mark.parametrize("cmd", [
    DeleteMsg("NOPE", 1), PurgeStream("NOPE"), DeleteStream("NOPE"),
    UpdateStream(StreamConfig(name="NOPE", subjects=["nope"])),
    AddConsumer("NOPE", ConsumerConfig(durable_name="C")),
])
def test_commands_on_unknown_stream_fail_with_10059_and_change_nothing(engine, cmd):
    add(engine)
    pub(engine)
    before = info_dict(engine)
    assert fails(engine, cmd).err_code == 10059
    assert info_dict(engine) == before
    assert engine.store.stream_names() == ["S"]


@pytest.mark.parametrize("cmd", [
    Publish("s.a", "not bytes"),
    Publish("s.a", None),
    Publish("s.a", b"x", {"k": 1}),
    Publish("s.a", b"x", {1: "v"}),
    Publish("s.a", b"x", ["k", "v"]),
    Publish("s.>.a", b"x"),
    Publish("s..a", b"x"),
    PurgeStream("S", filter="s..x"),
])
def test_bad_commands_fail_with_10003_and_leave_state_untouched(engine, storage_type, cmd):
    add(engine, storage=storage_type)
    pub(engine, headers={"Nats-Msg-Id": "m"})
    before = info_dict(engine)
    assert fails(engine, cmd).err_code == 10003
    assert info_dict(engine) == before
    assert pub(engine).seq == 2


def test_a_failing_command_does_not_undo_the_others_in_its_entry(engine):
    add(engine)
    results = engine.apply_all(Publish("s.a", b"1"), Publish("s.a", "bad"), Publish("s.b", b"2"))
    assert results[0] == PubAck("S", 1)
    assert isinstance(results[1], JSError) and results[1].err_code == 10003
    assert results[2] == PubAck("S", 2)
    assert state(engine).messages == 2



def test_a_digest_view_hashes_the_state_it_was_taken_at_not_later_writes(engine, storage_type):
    # /digest takes the view under the apply lock and hashes it outside, while entries apply.
    add(engine, storage=storage_type)
    for i in range(5):
        pub(engine, f"s.{i}", b"x%d" % i)
    engine.apply(DeleteMsg("S", 2))
    engine.apply(AddConsumer("S", ConsumerConfig(durable_name="c")))
    before = engine.store.digest()
    view = engine.store.digest_view()
    pub(engine, "s.late", b"late")
    engine.apply(DeleteMsg("S", 3))
    engine.apply(NextMsgs("S", "c", batch=2))
    assert view() == before
    assert engine.store.digest() != before


def test_a_wildcard_token_in_a_published_subject_is_a_literal_and_a_rollup_on_it_purges_what_it_matches(engine):
    # nats-server stores "k.*" as it is; nats-py's KV purge("hello.*") is such a rollup.
    add(engine, subjects=["k.>"], allow_rollup_hdrs=True)
    for s in ("k.a", "k.b", "k.*", "k.>"):
        pub(engine, s, s.encode())
    assert [engine.store.get_msg("S", seq=q).subject for q in (1, 2, 3, 4)] == ["k.a", "k.b", "k.*", "k.>"]
    assert engine.store.get_msg("S", last_by_subj="k.a").seq == 1
    pub(engine, "k.*", b"purge", {"Nats-Rollup": "sub"})
    assert state(engine).messages == 1
    assert engine.store.get_msg("S", seq=5).subject == "k.*"


# == 2.10 stream features (nats-py's V210FeaturesTest and KV republish) =================
def test_first_seq_numbers_the_first_message(engine, storage_type):
    add(engine, storage=storage_type, first_seq=1000)
    assert (state(engine).first_seq, state(engine).last_seq) == (1000, 999)
    assert [pub(engine).seq for _ in range(3)] == [1000, 1001, 1002]
    assert (state(engine).first_seq, state(engine).last_seq, state(engine).messages) == (1000, 1002, 3)


def test_mirror_direct_needs_a_mirror_and_a_mirror_no_first_seq(engine):
    err = fails(engine, AddStream(StreamConfig(name="M", mirror_direct=True)))
    assert (err.err_code, err.description) == (10052, "stream has no mirror but does have mirror direct")
    assert fails(engine, AddStream(StreamConfig(name="M", mirror={"name": "O"}, first_seq=5))).err_code == 10143


def test_compression_is_none_or_s2(engine):
    assert add(engine).config.compression == "none"
    assert add(engine, name="Z", subjects=["z"], compression="s2").config.compression == "s2"
    assert fails(engine, AddStream(StreamConfig(name="X", subjects=["x"], compression="s3"))).err_code == 10052


def test_consumer_limits_fill_what_a_consumer_leaves_unset(engine):
    add(engine, consumer_limits={"inactive_threshold": 3600.0, "max_ack_pending": 1000})
    c = engine.apply(AddConsumer("S", ConsumerConfig(durable_name="c"))).config
    assert (c.max_ack_pending, c.inactive_threshold) == (1000, 3600.0)
    own = engine.apply(AddConsumer("S", ConsumerConfig(durable_name="d", max_ack_pending=7))).config
    assert own.max_ack_pending == 7


def test_a_stream_subject_transform_stores_the_transformed_subject(engine):
    add(engine, subjects=["test", "foo"], subject_transform={"src": ">", "dest": "transformed.>"})
    assert pub(engine, "test").seq == 1
    assert engine.store.get_msg("S", seq=1).subject == "transformed.test"
    assert engine.apply(AddConsumer("S", ConsumerConfig(durable_name="c", filter_subject="transformed.test"))
                        ).num_pending == 1


def test_overlapping_source_filters_fail_with_10147(engine):
    src = {"name": "O", "subject_transforms": [{"src": ">", "dest": "a.>"}, {"src": ">", "dest": "b.>"}]}
    assert fails(engine, AddStream(StreamConfig(name="AGG", sources=[src]))).err_code == 10147


def test_republish_announces_each_stored_message_for_the_leader_to_send(engine):
    add(engine, subjects=["k.>"], republish={"src": "k.*", "dest": "bar.{{wildcard(1)}}", "headers_only": True})
    res = engine.store.apply(Entry(next(engine.index), engine.now, [Publish("k.a", b"twelve bytes", {"h": "v"}),
                                                                    Publish("k.a.deep", b"not matched")]))
    (ev,) = [e for e in res.events if e.kind == "republish"]
    assert (ev.subject, ev.data, ev.stream_seq, ev.time) == ("bar.a", b"", 1, engine.now)
    assert ev.headers == {"h": "v", "Nats-Stream": "S", "Nats-Subject": "k.a", "Nats-Sequence": "1",
                          "Nats-Last-Sequence": "0", "Nats-Msg-Size": "12"}
    cycle = fails(engine, AddStream(StreamConfig(name="C", subjects=["c.>"], republish={"dest": "c.x"})))
    assert cycle.description == "stream configuration for republish destination forms a cycle"
