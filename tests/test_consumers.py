"""Consumer behaviour of the storage engine, against JetStream's semantics.

Every test drives the engine through `engine` (tests/conftest.py): one Raft
entry per call and a clock only `engine.advance` moves, so timing is exact and
nothing sleeps. Error cases assert JetStream's err_code.
"""
import pytest

import jetstream.config
import storage
from storage import (
    Ack, AddConsumer, AddStream, ConsumerConfig, DeleteConsumer, DeleteMsg, Entry, JSError, NextMsgs, Publish,
    PurgeStream, StreamConfig, Sweep, Touch,
)

S = "S"


# -- helpers -------------------------------------------------------------------------------

def make_stream(engine, name=S, subjects=("s.>",), **kw):
    return engine.apply(AddStream(StreamConfig(name=name, subjects=list(subjects), **kw)))


def pub(engine, subject="s.a", data=b"x", headers=None):
    return engine.apply(Publish(subject, data, headers)).seq


def pub_n(engine, n, subject="s.a"):
    return [pub(engine, subject, f"m{i}".encode()) for i in range(n)]


def add(engine, stream=S, action="", **cfg):
    return engine.apply(AddConsumer(stream, ConsumerConfig(**cfg), action))


def durable(engine, name="C", stream=S, action="", **cfg):
    return add(engine, stream, action, durable_name=name, **cfg)


def nxt(engine, consumer="C", batch=1, max_bytes=0, stream=S):
    return engine.apply(NextMsgs(stream, consumer, batch, max_bytes))


def ack(engine, seq, kind="ack", consumer="C", delay=0.0, reason=None, stream=S):
    return engine.apply(Ack(stream, consumer, seq, kind, delay, reason))


def info(engine, consumer="C", stream=S):
    return engine.store.consumer_info(stream, consumer)


def seqs(msgs):
    return [m.stream_seq for m in msgs]


def apply_with_events(engine, *cmds):
    """Apply commands in one entry; returns (results, events)."""
    r = engine.store.apply(Entry(next(engine.index), engine.now, list(cmds)))
    return r.results, r.events


def consumer_events(events):
    return [e for e in events if e.kind in ("max_deliveries", "terminated")]


def err_code(engine, cmd) -> int:
    with pytest.raises(JSError) as ei:
        engine.apply(cmd)
    return ei.value.err_code


def add_err(engine, stream=S, action="", **cfg) -> int:
    return err_code(engine, AddConsumer(stream, ConsumerConfig(**cfg), action))


@pytest.fixture
def stream(engine):
    make_stream(engine)
    return engine


# == durable and ephemeral ===================================================================

def test_durable_consumer_has_its_durable_name_and_no_inactive_threshold(stream):
    ci = durable(stream, "D")
    assert ci.name == "D"
    assert ci.config.durable_name == "D" and ci.config.name == "D"
    assert ci.config.inactive_threshold is None
    assert stream.store.consumer_names(S) == ["D"]


def test_named_ephemeral_via_name_only_gets_default_5s_inactive_threshold(stream):
    ci = add(stream, name="E")
    assert ci.name == "E"
    assert ci.config.durable_name is None
    assert ci.config.inactive_threshold == 5.0


def test_unnamed_ephemeral_gets_deterministic_generated_name(stream, tmp_path):
    from conftest import Engine
    other = Engine(str(tmp_path / "other"), sync=False)
    try:
        make_stream(other)
        names = []
        for e in (stream, other):
            first = add(e).name
            second = add(e).name
            names.append((first, second))
        # Same log on another replica: same names; within one store: distinct names.
        assert names[0] == names[1]
        first, second = names[0]
        assert first != second
        assert jetstream.config.valid_name(first) and jetstream.config.valid_name(second)
        assert stream.store.consumer_names(S) == sorted([first, second])
        assert info(stream, first).config.inactive_threshold == 5.0
    finally:
        other.close()


def test_ephemeral_is_removed_by_sweep_after_default_inactivity(stream):
    add(stream, name="E")
    stream.advance(4.9)
    _, ev = apply_with_events(stream, Sweep())
    assert stream.store.consumer_names(S) == ["E"]
    stream.advance(0.2)   # 5.1 s without activity
    (removed,), ev = apply_with_events(stream, Sweep())
    assert removed == 1
    assert stream.store.consumer_names(S) == []
    assert [(e.kind, e.stream, e.consumer) for e in ev] == [("consumer_deleted", S, "E")]
    assert err_code(stream, NextMsgs(S, "E", 1)) == 10014


def test_ephemeral_is_kept_while_touch_nextmsgs_and_ack_keep_it_active(stream):
    pub_n(stream, 3)
    add(stream, name="E")
    for activity in (Touch(S, "E"), NextMsgs(S, "E", 1), Ack(S, "E", 1), Touch(S, "E")):
        stream.advance(4)
        stream.apply(activity)
        stream.advance(4)   # 4 s since the activity, 8 s since the one before
        assert stream.apply(Sweep()) == 0
        assert stream.store.consumer_names(S) == ["E"]
    stream.advance(1.1)     # 5.1 s since the last activity
    assert stream.apply(Sweep()) == 1
    assert stream.store.consumer_names(S) == []


def test_durable_with_inactive_threshold_is_also_removed(stream):
    durable(stream, "D", inactive_threshold=2.0)
    durable(stream, "KEEP")
    stream.advance(1.9)
    assert stream.apply(Sweep()) == 0
    stream.advance(0.2)
    assert stream.apply(Sweep()) == 1
    assert stream.store.consumer_names(S) == ["KEEP"]
    stream.advance(3600)
    assert stream.apply(Sweep()) == 0
    assert stream.store.consumer_names(S) == ["KEEP"]


# == pull vs push ============================================================================

def test_pull_consumer_defaults_max_waiting_512_and_push_keeps_it_unset(stream):
    pull = durable(stream, "PULL")
    push = durable(stream, "PUSH", deliver_subject="deliver.x")
    assert pull.config.max_waiting == 512 and not pull.config.is_push
    assert push.config.max_waiting is None and push.config.is_push
    assert push.config.deliver_subject == "deliver.x"


def test_push_consumer_with_max_waiting_is_rejected_10080(stream):
    assert add_err(stream, durable_name="C", deliver_subject="deliver.x", max_waiting=10) == 10080


def test_pull_consumer_with_rate_limit_is_rejected_10086(stream):
    assert add_err(stream, durable_name="C", rate_limit_bps=1000) == 10086


def test_pull_consumer_with_idle_heartbeat_is_rejected_10088(stream):
    assert add_err(stream, durable_name="C", idle_heartbeat=1.0) == 10088


def test_pull_consumer_with_flow_control_is_rejected_10089(stream):
    assert add_err(stream, durable_name="C", flow_control=True) == 10089


def test_push_flow_control_without_heartbeat_is_rejected_10108(stream):
    assert add_err(stream, durable_name="C", deliver_subject="deliver.x", flow_control=True) == 10108


def test_push_flow_control_with_heartbeat_is_accepted(stream):
    ci = durable(stream, "C", deliver_subject="deliver.x", flow_control=True, idle_heartbeat=1.0)
    assert ci.config.flow_control is True and ci.config.idle_heartbeat == 1.0


def test_push_heartbeat_below_100ms_is_rejected_10083(stream):
    assert add_err(stream, durable_name="C", deliver_subject="deliver.x", idle_heartbeat=0.05) == 10083
    assert durable(stream, "C", deliver_subject="deliver.x", idle_heartbeat=0.1).config.idle_heartbeat == 0.1


def test_push_wildcard_deliver_subject_is_rejected_10079(stream):
    assert add_err(stream, durable_name="C", deliver_subject="deliver.*") == 10079
    assert add_err(stream, durable_name="C", deliver_subject="deliver.>") == 10079


def test_push_deliver_subject_inside_stream_subjects_is_a_cycle_10081(stream):
    assert add_err(stream, durable_name="C", deliver_subject="s.out") == 10081


# == deliver policies ==========================================================================

def _mixed(engine):
    # seq: 1 s.a, 2 s.b, 3 s.a, 4 s.c, 5 s.b
    return [pub(engine, s) for s in ("s.a", "s.b", "s.a", "s.c", "s.b")]


def test_deliver_all_starts_at_the_first_message(stream):
    _mixed(stream)
    ci = durable(stream, deliver_policy="all")
    assert ci.num_pending == 5 and ci.delivered.stream_seq == 0
    assert seqs(nxt(stream, batch=10)) == [1, 2, 3, 4, 5]


def test_deliver_new_only_delivers_messages_stored_after_creation(stream):
    _mixed(stream)
    ci = durable(stream, deliver_policy="new")
    assert ci.num_pending == 0 and ci.delivered.stream_seq == 5
    assert nxt(stream, batch=10) == []
    pub(stream, "s.z")
    assert seqs(nxt(stream, batch=10)) == [6]


def test_deliver_last_starts_at_the_last_message_or_last_matching_filter(stream):
    _mixed(stream)
    durable(stream, "L", deliver_policy="last")
    durable(stream, "LA", deliver_policy="last", filter_subject="s.a")
    assert info(stream, "L").num_pending == 1
    assert info(stream, "LA").num_pending == 1
    assert seqs(nxt(stream, "L", batch=10)) == [5]
    assert seqs(nxt(stream, "LA", batch=10)) == [3]
    pub(stream, "s.a")
    assert seqs(nxt(stream, "LA", batch=10)) == [6]


def test_deliver_by_start_sequence_starts_at_opt_start_seq(stream):
    _mixed(stream)
    ci = durable(stream, deliver_policy="by_start_sequence", opt_start_seq=3)
    assert ci.num_pending == 3
    assert seqs(nxt(stream, batch=10)) == [3, 4, 5]


def test_deliver_by_start_time_starts_at_first_message_at_or_after_it(stream):
    t0 = stream.now
    pub(stream, "s.a")
    stream.advance(10)
    t1 = stream.now
    pub(stream, "s.b")
    pub(stream, "s.c")
    stream.advance(10)
    ci = durable(stream, deliver_policy="by_start_time", opt_start_time=t1)
    assert ci.num_pending == 2
    assert seqs(nxt(stream, batch=10)) == [2, 3]
    durable(stream, "EARLY", deliver_policy="by_start_time", opt_start_time=t0 - 1)
    assert seqs(nxt(stream, "EARLY", batch=10)) == [1, 2, 3]
    durable(stream, "LATE", deliver_policy="by_start_time", opt_start_time=stream.now)
    assert info(stream, "LATE").num_pending == 0
    assert nxt(stream, "LATE", batch=10) == []


def test_deliver_last_per_subject_delivers_latest_per_subject_then_new(stream):
    _mixed(stream)
    ci = durable(stream, deliver_policy="last_per_subject", filter_subject="s.>")
    assert ci.num_pending == 3
    msgs = nxt(stream, batch=10)
    assert seqs(msgs) == [3, 4, 5]
    assert [m.subject for m in msgs] == ["s.a", "s.c", "s.b"]
    pub(stream, "s.a")
    assert seqs(nxt(stream, batch=10)) == [6]


def test_deliver_last_per_subject_with_filter_subjects(stream):
    _mixed(stream)
    ci = durable(stream, deliver_policy="last_per_subject", filter_subjects=["s.a", "s.b"])
    assert ci.num_pending == 2
    assert seqs(nxt(stream, batch=10)) == [3, 5]


def test_deliver_last_per_subject_info_tracks_the_next_subject_to_deliver(stream):
    # JetStream's cursor sits on the next last-per-subject message, so delivered
    # and ack floor never claim a later sequence than was handed out.
    _mixed(stream)
    ci = durable(stream, deliver_policy="last_per_subject", filter_subject="s.>")
    assert (ci.delivered.consumer_seq, ci.delivered.stream_seq) == (0, 2)
    assert (ci.ack_floor.consumer_seq, ci.ack_floor.stream_seq) == (0, 2)
    (m,) = nxt(stream)
    assert m.stream_seq == 3
    ack(stream, 3)
    ci = info(stream)
    assert (ci.delivered.consumer_seq, ci.delivered.stream_seq) == (1, 3)
    assert (ci.ack_floor.consumer_seq, ci.ack_floor.stream_seq) == (1, 3)
    assert ci.num_pending == 2
    nxt(stream, batch=10)
    ci = info(stream)
    assert (ci.delivered.consumer_seq, ci.delivered.stream_seq) == (3, 5)
    assert (ci.ack_floor.consumer_seq, ci.ack_floor.stream_seq) == (1, 3)


def test_deliver_last_per_subject_requires_a_filter_10094(stream):
    assert add_err(stream, durable_name="C", deliver_policy="last_per_subject") == 10094


def test_opt_start_seq_or_time_with_wrong_deliver_policy_is_rejected_10094(stream):
    assert add_err(stream, durable_name="C", deliver_policy="all", opt_start_seq=3) == 10094
    assert add_err(stream, durable_name="C", deliver_policy="new", opt_start_time=stream.now) == 10094
    assert add_err(stream, durable_name="C", deliver_policy="last", opt_start_seq=1) == 10094
    assert add_err(stream, durable_name="C", deliver_policy="by_start_sequence") == 10094
    assert add_err(stream, durable_name="C", deliver_policy="by_start_sequence", opt_start_seq=1,
                   opt_start_time=stream.now) == 10094
    assert add_err(stream, durable_name="C", deliver_policy="by_start_time") == 10094
    assert add_err(stream, durable_name="C", deliver_policy="by_start_time", opt_start_time=stream.now,
                   opt_start_seq=2) == 10094


# == filters ====================================================================================

def test_filter_subject_delivers_only_matching_messages(stream):
    _mixed(stream)
    ci = durable(stream, filter_subject="s.a")
    assert ci.num_pending == 2
    assert seqs(nxt(stream, batch=10)) == [1, 3]
    assert info(stream).num_pending == 0
    pub(stream, "s.b")
    assert info(stream).num_pending == 0
    pub(stream, "s.a")
    assert info(stream).num_pending == 1


def test_filter_subjects_delivers_messages_matching_any_filter(stream):
    _mixed(stream)
    ci = durable(stream, filter_subjects=["s.a", "s.c"])
    assert ci.num_pending == 3
    assert seqs(nxt(stream, batch=10)) == [1, 3, 4]


def test_filter_subject_and_filter_subjects_together_are_rejected_10136(stream):
    assert add_err(stream, durable_name="C", filter_subject="s.a", filter_subjects=["s.b"]) == 10136


def test_overlapping_filter_subjects_are_rejected_10138(stream):
    assert add_err(stream, durable_name="C", filter_subjects=["s.a", "s.*"]) == 10138
    assert add_err(stream, durable_name="C", filter_subjects=["s.>", "s.a.b"]) == 10138


def test_empty_filter_subjects_entry_is_rejected_10139(stream):
    assert add_err(stream, durable_name="C", filter_subjects=["s.a", ""]) == 10139


# == ack policies ===============================================================================

def test_ack_policy_none_keeps_nothing_pending_and_ack_floor_equals_delivered(stream):
    pub_n(stream, 3)
    durable(stream, ack_policy="none")
    assert seqs(nxt(stream, batch=3)) == [1, 2, 3]
    ci = info(stream)
    assert ci.num_ack_pending == 0
    assert (ci.delivered.consumer_seq, ci.delivered.stream_seq) == (3, 3)
    assert (ci.ack_floor.consumer_seq, ci.ack_floor.stream_seq) == (3, 3)
    assert ack(stream, 2).applied is False
    stream.advance(3600)
    assert nxt(stream, batch=3) == []


def test_ack_policy_all_acks_everything_up_to_the_acked_sequence(stream):
    pub_n(stream, 4)
    durable(stream, ack_policy="all")
    assert seqs(nxt(stream, batch=4)) == [1, 2, 3, 4]
    assert info(stream).num_ack_pending == 4
    assert ack(stream, 3).applied is True
    ci = info(stream)
    assert ci.num_ack_pending == 1
    assert (ci.ack_floor.consumer_seq, ci.ack_floor.stream_seq) == (3, 3)
    stream.advance(31)
    assert seqs(nxt(stream, batch=4)) == [4]


def test_ack_policy_explicit_acks_only_the_acked_message(stream):
    pub_n(stream, 3)
    durable(stream, ack_policy="explicit", ack_wait=10)
    nxt(stream, batch=3)
    assert ack(stream, 2).applied is True
    ci = info(stream)
    assert ci.num_ack_pending == 2
    assert (ci.ack_floor.consumer_seq, ci.ack_floor.stream_seq) == (0, 0)
    assert ack(stream, 1).applied is True
    ci = info(stream)
    assert (ci.ack_floor.consumer_seq, ci.ack_floor.stream_seq) == (2, 2)
    stream.advance(10)
    assert seqs(nxt(stream, batch=3)) == [3]


def test_ack_wait_redelivers_after_the_wait_with_new_consumer_seq(stream):
    pub_n(stream, 1)
    durable(stream, ack_wait=10)
    (m,) = nxt(stream)
    assert (m.stream_seq, m.consumer_seq, m.num_delivered) == (1, 1, 1)
    stream.advance(9.9)
    assert nxt(stream) == []
    stream.advance(0.1)
    (m,) = nxt(stream)
    assert (m.stream_seq, m.consumer_seq, m.num_delivered) == (1, 2, 2)
    ci = info(stream)
    assert (ci.delivered.consumer_seq, ci.delivered.stream_seq) == (2, 1)
    assert ci.num_redelivered == 1 and ci.num_ack_pending == 1


def test_default_ack_wait_is_30_seconds(stream):
    pub_n(stream, 1)
    ci = durable(stream)
    assert ci.config.ack_wait == 30.0
    nxt(stream)
    stream.advance(29.9)
    assert nxt(stream) == []
    stream.advance(0.1)
    assert [m.num_delivered for m in nxt(stream)] == [2]


def test_backoff_schedule_redelivery_k_waits_backoff_k_minus_1_and_last_repeats(stream):
    pub_n(stream, 1)
    ci = durable(stream, backoff=[1, 5, 10], max_deliver=10)
    assert ci.config.ack_wait == 1.0
    assert [m.num_delivered for m in nxt(stream)] == [1]
    for wait, delivery in ((1, 2), (5, 3), (10, 4), (10, 5), (10, 6)):
        stream.advance(wait - 0.001)
        assert nxt(stream) == [], f"delivery {delivery} too early"
        stream.advance(0.001)
        assert [m.num_delivered for m in nxt(stream)] == [delivery]


def test_backoff_as_long_as_max_deliver_is_rejected_10116(stream):
    assert add_err(stream, durable_name="C", backoff=[1, 2, 3], max_deliver=2) == 10116
    assert add_err(stream, durable_name="C", backoff=[1, 2], max_deliver=2) == 10116
    assert durable(stream, backoff=[1, 2], max_deliver=3).config.backoff == [1.0, 2.0]
    assert durable(stream, "U", backoff=[1, 2, 3]).config.max_deliver == -1


def test_negative_backoff_is_rejected_10184(stream):
    assert add_err(stream, durable_name="C", backoff=[1, -2], max_deliver=5) == 10184


def test_negative_ack_wait_is_rejected_10183(stream):
    assert add_err(stream, durable_name="C", ack_wait=-1) == 10183


def test_max_deliver_stops_redelivery_with_one_event_from_nextmsgs(stream):
    pub_n(stream, 2)
    durable(stream, ack_wait=1, max_deliver=2)
    assert seqs(nxt(stream)) == [1]
    stream.advance(1)
    (msgs,), ev = apply_with_events(stream, NextMsgs(S, "C", 1))
    assert [(m.stream_seq, m.num_delivered) for m in msgs] == [(1, 2)]
    assert consumer_events(ev) == []
    stream.advance(1)
    (msgs,), ev = apply_with_events(stream, NextMsgs(S, "C", 1))
    # the exhausted message is not redelivered: the batch goes to the next new message
    assert seqs(msgs) == [2]
    assert [(e.kind, e.stream, e.consumer, e.stream_seq, e.deliveries) for e in consumer_events(ev)] == [
        ("max_deliveries", S, "C", 1, 2)]
    ack(stream, 2)
    stream.advance(100)
    (msgs,), ev = apply_with_events(stream, NextMsgs(S, "C", 10))
    assert msgs == [] and consumer_events(ev) == []
    (_,), ev = apply_with_events(stream, Sweep())
    assert consumer_events(ev) == []
    ci = info(stream)
    assert ci.num_ack_pending == 0
    assert ci.ack_floor.stream_seq == 2


def test_max_deliver_event_comes_once_from_sweep(stream):
    pub_n(stream, 1)
    durable(stream, ack_wait=1, max_deliver=1)
    nxt(stream)
    stream.advance(0.5)
    (_,), ev = apply_with_events(stream, Sweep())
    assert consumer_events(ev) == []
    stream.advance(0.5)
    (_,), ev = apply_with_events(stream, Sweep())
    assert [(e.kind, e.stream, e.consumer, e.stream_seq, e.deliveries) for e in consumer_events(ev)] == [
        ("max_deliveries", S, "C", 1, 1)]
    stream.advance(10)
    (msgs, _), ev = apply_with_events(stream, NextMsgs(S, "C", 5), Sweep())
    assert msgs == [] and consumer_events(ev) == []
    assert info(stream).num_ack_pending == 0


def test_nak_of_the_last_allowed_delivery_ends_redelivery_with_one_event(stream):
    pub_n(stream, 1)
    durable(stream, ack_wait=30, max_deliver=2)
    nxt(stream)
    ack(stream, 1, "nak")
    assert [m.num_delivered for m in nxt(stream)] == [2]
    ack(stream, 1, "nak")
    (msgs, _), ev = apply_with_events(stream, NextMsgs(S, "C", 1), NextMsgs(S, "C", 1))
    assert msgs == []
    assert [(e.kind, e.stream_seq, e.deliveries) for e in consumer_events(ev)] == [("max_deliveries", 1, 2)]
    assert info(stream).num_ack_pending == 0


def test_max_deliver_in_workqueue_stream_keeps_the_message_but_stops_redelivery(engine):
    make_stream(engine, retention="workqueue")
    pub_n(engine, 1)
    durable(engine, ack_wait=1, max_deliver=1)
    nxt(engine)
    engine.advance(1)
    (msgs,), ev = apply_with_events(engine, NextMsgs(S, "C", 1))
    assert msgs == []
    assert [(e.kind, e.stream_seq, e.deliveries) for e in consumer_events(ev)] == [("max_deliveries", 1, 1)]
    assert engine.store.stream_info(S).state.messages == 1
    assert info(engine).num_ack_pending == 0
    engine.advance(10)
    (msgs, _), ev = apply_with_events(engine, NextMsgs(S, "C", 1), Sweep())
    assert msgs == [] and consumer_events(ev) == []
    # a late ack still releases it
    ack(engine, 1)
    assert engine.store.stream_info(S).state.messages == 0


def test_max_ack_pending_limits_new_deliveries_until_acks(stream):
    pub_n(stream, 5)
    durable(stream, max_ack_pending=2)
    assert seqs(nxt(stream, batch=5)) == [1, 2]
    assert nxt(stream, batch=5) == []
    assert info(stream).num_pending == 3
    ack(stream, 1)
    assert seqs(nxt(stream, batch=5)) == [3]
    ack(stream, 2)
    ack(stream, 3)
    assert seqs(nxt(stream, batch=5)) == [4, 5]


def test_headers_only_delivers_empty_data_and_nats_msg_size(stream):
    pub(stream, "s.a", b"hello world", {"X-Key": "v"})
    durable(stream, headers_only=True)
    (m,) = nxt(stream)
    assert m.data == b""
    assert m.headers == {"X-Key": "v", "Nats-Msg-Size": "11"}
    # the stored message is untouched
    assert stream.store.get_msg(S, 1).data == b"hello world"


def test_rate_limit_and_replay_policy_are_stored_and_reported(stream):
    durable(stream, deliver_subject="deliver.x", rate_limit_bps=8000, replay_policy="original")
    cfg = info(stream).config
    assert cfg.rate_limit_bps == 8000
    assert cfg.replay_policy == "original"
    assert info(stream).to_dict()["config"]["replay_policy"] == "original"
    stream.reopen()
    assert (info(stream).config.rate_limit_bps, info(stream).config.replay_policy) == (8000, "original")


# == operations ===================================================================================

def test_next_batch_respects_filters_and_max_ack_pending(stream):
    for s in ("s.a", "s.b", "s.a", "s.b", "s.a", "s.a"):
        pub(stream, s)
    durable(stream, filter_subject="s.a", max_ack_pending=3)
    assert seqs(nxt(stream, batch=10)) == [1, 3, 5]
    ack(stream, 3)
    assert seqs(nxt(stream, batch=10)) == [6]


def test_next_batch_respects_batch_and_max_bytes(stream):
    pub_n(stream, 5)
    durable(stream)
    assert seqs(nxt(stream, batch=2)) == [1, 2]
    # each message is "s.a" + b"m?" = 5 bytes: room for two in 10 bytes, at least one always
    assert seqs(nxt(stream, batch=10, max_bytes=10)) == [3, 4]
    assert seqs(nxt(stream, batch=10, max_bytes=1)) == [5]


def test_redeliveries_come_before_new_messages(stream):
    pub_n(stream, 2)
    durable(stream, ack_wait=5)
    assert seqs(nxt(stream)) == [1]
    stream.advance(5)
    pub(stream)
    msgs = nxt(stream, batch=3)
    assert [(m.stream_seq, m.num_delivered, m.consumer_seq) for m in msgs] == [(1, 2, 2), (2, 1, 3), (3, 1, 4)]


def test_ack_removes_the_message_from_pending_for_good(stream):
    pub_n(stream, 1)
    durable(stream, ack_wait=1)
    nxt(stream)
    assert ack(stream, 1).applied is True
    assert ack(stream, 1).applied is False
    stream.advance(100)
    assert nxt(stream) == []
    ci = info(stream)
    assert ci.num_ack_pending == 0 and (ci.ack_floor.consumer_seq, ci.ack_floor.stream_seq) == (1, 1)


def test_nak_redelivers_immediately_at_the_same_time(stream):
    pub_n(stream, 2)
    durable(stream, ack_wait=30)
    nxt(stream)
    assert ack(stream, 1, "nak").applied is True
    msgs = nxt(stream, batch=2)
    assert [(m.stream_seq, m.num_delivered, m.consumer_seq) for m in msgs] == [(1, 2, 2), (2, 1, 3)]


def test_nak_with_delay_redelivers_only_after_the_delay(stream):
    pub_n(stream, 1)
    durable(stream, ack_wait=30)
    nxt(stream)
    stream.advance(1)
    ack(stream, 1, "nak", delay=3)
    stream.advance(2.999)
    assert nxt(stream) == []
    stream.advance(0.001)
    assert [(m.stream_seq, m.num_delivered) for m in nxt(stream)] == [(1, 2)]


def test_nak_with_delay_does_not_use_backoff(stream):
    pub_n(stream, 1)
    durable(stream, backoff=[20, 40], max_deliver=5)
    nxt(stream)
    ack(stream, 1, "nak", delay=2)
    stream.advance(2)
    assert [m.num_delivered for m in nxt(stream)] == [2]
    # plain nak: immediate, although the backoff step is 40 s
    ack(stream, 1, "nak")
    assert [m.num_delivered for m in nxt(stream)] == [3]
    # the ack timeout after a delivery still follows the backoff (last value repeats)
    stream.advance(39.9)
    assert nxt(stream) == []
    stream.advance(0.1)
    assert [m.num_delivered for m in nxt(stream)] == [4]


def test_progress_extends_the_deadline_by_a_full_ack_wait(stream):
    pub_n(stream, 1)
    durable(stream, ack_wait=10)
    nxt(stream)
    stream.advance(8)
    assert ack(stream, 1, "progress").applied is True
    stream.advance(9.9)          # 17.9 s after delivery, 9.9 s after progress
    assert nxt(stream) == []
    stream.advance(0.1)
    assert [(m.stream_seq, m.num_delivered) for m in nxt(stream)] == [(1, 2)]


def test_term_stops_redelivery_and_emits_terminated_event_with_reason(stream):
    pub_n(stream, 1)
    durable(stream, ack_wait=1)
    nxt(stream)
    (r,), ev = apply_with_events(stream, Ack(S, "C", 1, "term", reason="poison"))
    assert r.applied is True
    assert [(e.kind, e.stream, e.consumer, e.stream_seq, e.deliveries, e.reason) for e in consumer_events(ev)] == [
        ("terminated", S, "C", 1, 1, "poison")]
    stream.advance(100)
    (msgs,), ev = apply_with_events(stream, NextMsgs(S, "C", 5))
    assert msgs == [] and consumer_events(ev) == []
    assert info(stream).num_ack_pending == 0
    # limits stream: the message stays
    assert stream.store.stream_info(S).state.messages == 1


def test_term_removes_the_message_in_workqueue_streams(engine):
    make_stream(engine, retention="workqueue")
    pub_n(engine, 2)
    durable(engine)
    nxt(engine, batch=2)
    ack(engine, 1, "term", reason="bad")
    state = engine.store.stream_info(S).state
    assert (state.messages, state.first_seq) == (1, 2)
    ack(engine, 2)
    assert engine.store.stream_info(S).state.messages == 0


def test_late_ack_after_redelivery_is_honoured(stream):
    pub_n(stream, 1)
    durable(stream, ack_wait=1)
    nxt(stream)
    stream.advance(1)
    assert [m.num_delivered for m in nxt(stream)] == [2]
    # the ack of the first delivery arrives after the redelivery
    assert ack(stream, 1).applied is True
    stream.advance(100)
    assert nxt(stream) == []
    assert info(stream).num_ack_pending == 0


def test_late_ack_after_ack_wait_expired_prevents_redelivery(stream):
    pub_n(stream, 1)
    durable(stream, ack_wait=1)
    nxt(stream)
    stream.advance(5)
    assert ack(stream, 1).applied is True
    assert nxt(stream) == []


# == consumer info ================================================================================

def test_info_delivered_ack_floor_and_ack_pending(stream):
    pub_n(stream, 4)
    durable(stream, ack_wait=10)
    nxt(stream, batch=3)
    ack(stream, 1)
    ci = info(stream)
    assert (ci.delivered.consumer_seq, ci.delivered.stream_seq) == (3, 3)
    assert (ci.ack_floor.consumer_seq, ci.ack_floor.stream_seq) == (1, 1)
    assert ci.num_ack_pending == 2
    assert ci.num_pending == 1
    assert ci.num_redelivered == 0
    assert ci.stream_name == S and ci.name == "C"


def test_num_redelivered_counts_distinct_messages(stream):
    pub_n(stream, 3)
    durable(stream, ack_wait=1)
    nxt(stream, batch=3)
    ack(stream, 3)
    for _ in range(3):
        stream.advance(1)
        assert seqs(nxt(stream, batch=3)) == [1, 2]
    ci = info(stream)
    assert ci.num_redelivered == 2
    assert ci.delivered.consumer_seq == 9
    ack(stream, 1)
    assert info(stream).num_redelivered == 1


def test_num_pending_counts_matching_undelivered_messages_with_filters(stream):
    _mixed(stream)
    durable(stream, "A", filter_subject="s.a")
    durable(stream, "B", filter_subjects=["s.b", "s.c"])
    durable(stream, "ALL")
    assert [info(stream, n).num_pending for n in ("A", "B", "ALL")] == [2, 3, 5]
    nxt(stream, "A")
    nxt(stream, "B", batch=2)
    assert [info(stream, n).num_pending for n in ("A", "B", "ALL")] == [1, 1, 5]


def test_num_pending_after_purge(stream):
    _mixed(stream)
    durable(stream, "A", filter_subject="s.a")
    durable(stream, "ALL")
    nxt(stream, "ALL")
    stream.apply(PurgeStream(S, filter="s.b"))
    assert [info(stream, n).num_pending for n in ("A", "ALL")] == [2, 2]
    stream.apply(PurgeStream(S))
    ci = info(stream, "ALL")
    assert ci.num_pending == 0 and ci.num_ack_pending == 0
    assert ci.delivered.stream_seq == 5 and ci.ack_floor.stream_seq == 5
    assert info(stream, "A").num_pending == 0
    pub(stream, "s.a")
    assert [info(stream, n).num_pending for n in ("A", "ALL")] == [1, 1]
    assert seqs(nxt(stream, "A", batch=10)) == [6]


def test_num_pending_after_deleting_messages(stream):
    _mixed(stream)
    durable(stream, "A", filter_subject="s.a")
    durable(stream, "ALL")
    nxt(stream, "ALL")
    stream.apply(DeleteMsg(S, 3))   # s.a, not yet delivered to anyone
    stream.apply(DeleteMsg(S, 1))   # delivered to ALL: it is no longer pending an ack
    assert [info(stream, n).num_pending for n in ("A", "ALL")] == [0, 3]
    assert info(stream, "ALL").num_ack_pending == 0
    assert seqs(nxt(stream, "ALL", batch=10)) == [2, 4, 5]


def test_num_pending_after_limits_discard(engine):
    make_stream(engine, max_msgs=3)
    durable(engine, "A", filter_subject="s.a")
    durable(engine, "ALL")
    for s in ("s.a", "s.b", "s.a", "s.b", "s.b"):
        pub(engine, s)
    # seqs 1 and 2 were discarded: 3 (s.a), 4, 5 remain
    assert [info(engine, n).num_pending for n in ("A", "ALL")] == [1, 3]
    assert seqs(nxt(engine, "ALL", batch=10)) == [3, 4, 5]
    assert seqs(nxt(engine, "A", batch=10)) == [3]


def test_consumer_info_survives_reopen_unchanged(stream):
    _mixed(stream)
    durable(stream, ack_wait=5, filter_subjects=["s.a", "s.b"])
    add(stream, name="E", deliver_policy="last_per_subject", filter_subject="s.>")
    nxt(stream, batch=3)
    nxt(stream, "E")
    ack(stream, 2)
    stream.advance(5)
    nxt(stream)                     # redelivers 1
    before = {n: info(stream, n).to_dict() for n in ("C", "E")}
    stream.reopen()
    assert {n: info(stream, n).to_dict() for n in ("C", "E")} == before
    # and the state keeps working: 1 and 3 are due, then the last s.b
    stream.advance(5)
    assert [(m.stream_seq, m.num_delivered) for m in nxt(stream, batch=10)] == [(1, 3), (3, 2), (5, 1)]
    assert seqs(nxt(stream, "E", batch=10)) == [4, 5]


# == delivery metadata =============================================================================

def test_delivery_metadata_per_message(stream):
    t0 = stream.now
    pub(stream, "s.a", b"one")
    stream.advance(7)
    t1 = stream.now
    pub(stream, "s.b", b"two")
    pub(stream, "s.a", b"three")
    stream.advance(3)
    durable(stream, ack_wait=10)
    msgs = nxt(stream, batch=2)
    assert [(m.stream, m.consumer, m.subject, m.data) for m in msgs] == [
        (S, "C", "s.a", b"one"), (S, "C", "s.b", b"two")]
    assert [(m.stream_seq, m.consumer_seq, m.num_delivered, m.num_pending, m.time) for m in msgs] == [
        (1, 1, 1, 2, t0), (2, 2, 1, 1, t1)]
    stream.advance(10)
    msgs = nxt(stream, batch=3)
    assert [(m.stream_seq, m.consumer_seq, m.num_delivered, m.num_pending, m.time) for m in msgs] == [
        (1, 3, 2, 1, t0), (2, 4, 2, 1, t1), (3, 5, 1, 0, t1)]


# == create / update actions ========================================================================

def test_create_action_on_existing_consumer_with_same_config_is_idempotent(stream):
    first = durable(stream, action="create", ack_wait=10)
    again = durable(stream, action="create", ack_wait=10)
    assert again.to_dict() == first.to_dict()
    assert stream.store.consumer_names(S) == ["C"]


def test_create_action_on_existing_consumer_with_different_config_is_rejected_10148(stream):
    durable(stream, action="create", ack_wait=10)
    assert add_err(stream, durable_name="C", action="create", ack_wait=20) == 10148
    assert info(stream).config.ack_wait == 10.0


def test_update_action_on_missing_consumer_is_rejected_10149(stream):
    assert add_err(stream, durable_name="C", action="update") == 10149
    assert stream.store.consumer_names(S) == []


def test_update_action_changes_mutable_fields(stream):
    durable(stream, ack_wait=10, max_ack_pending=5)
    ci = durable(stream, action="update", ack_wait=20, max_ack_pending=50, description="d")
    assert (ci.config.ack_wait, ci.config.max_ack_pending, ci.config.description) == (20.0, 50, "d")


def test_updating_immutable_fields_is_rejected_10012(stream):
    durable(stream)
    assert add_err(stream, durable_name="C", action="update", deliver_policy="new") == 10012
    assert add_err(stream, durable_name="C", deliver_policy="new") == 10012
    assert add_err(stream, durable_name="C", action="update", ack_policy="all") == 10012
    assert info(stream).config.deliver_policy == "all"
    assert info(stream).config.ack_policy == "explicit"


def test_updating_filter_recomputes_num_pending(stream):
    _mixed(stream)
    durable(stream, filter_subject="s.a")
    assert info(stream).num_pending == 2
    ci = durable(stream, action="update", filter_subject="s.b")
    assert ci.num_pending == 2
    ci = durable(stream, action="update", filter_subjects=["s.b", "s.c"])
    assert ci.num_pending == 3
    assert seqs(nxt(stream, batch=10)) == [2, 4, 5]
    ci = durable(stream, action="update")
    assert ci.num_pending == 0


def test_max_consumers_on_stream_is_enforced_10026(engine):
    make_stream(engine, max_consumers=1)
    durable(engine, "A")
    assert add_err(engine, durable_name="B") == 10026
    # the existing consumer can still be re-added and updated
    durable(engine, "A")
    assert durable(engine, "A", ack_wait=9).config.ack_wait == 9.0
    engine.apply(DeleteConsumer(S, "A"))
    durable(engine, "B")


def test_consumer_on_missing_stream_is_rejected_10059(engine):
    assert add_err(engine, stream="NOPE", durable_name="C") == 10059


def test_deleting_missing_consumer_is_rejected_10014(stream):
    assert err_code(stream, DeleteConsumer(S, "NOPE")) == 10014
    durable(stream)
    assert stream.apply(DeleteConsumer(S, "C")) is True
    assert err_code(stream, DeleteConsumer(S, "C")) == 10014
