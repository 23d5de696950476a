"""The chaos checker catches every anomaly in hand-made histories and passes clean ones."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos import checker
from chaos.checker import check
from chaos.history import FAIL, INFO, OK, FinalState, Op


# -- builders ------------------------------------------------------------------------
def pub(value, invoke, complete, seq=None, outcome=OK, process="publisher-0"):
    return Op(kind="publish", process=process, invoke=invoke, complete=complete, outcome=outcome,
              value=value, msg_id=f"id-{value}", seq=seq)


def deliver(consumer, seq, value, t, delivered=1, complete=None):
    return Op(kind="deliver", process="puller-0", invoke=t, complete=t if complete is None else complete,
              outcome=OK, consumer=consumer, seq=seq, value=value, delivered=delivered)


def ack(consumer, seq, invoke, complete, outcome=OK):
    return Op(kind="ack", process="puller-0", invoke=invoke, complete=complete, outcome=outcome,
              consumer=consumer, seq=seq)


def sequential(n, start=0.0):
    """n sequential ok publishes v1..vn acked at seqs 1..n, and the stream holding them."""
    ops = [pub(f"v{i}", start + i, start + i + 0.5, seq=i) for i in range(1, n + 1)]
    return ops, [(i, f"v{i}") for i in range(1, n + 1)]


def anomalies(v):
    return {k: n for k, n in v.counts.items() if n}


def drained_consumer(stream, name="C", t0=100.0):
    """Deliveries and confirmed acks of every stored message, and the honest final counters."""
    ops = []
    for i, (seq, value) in enumerate(stream):
        t = t0 + i
        ops += [deliver(name, seq, value, t), ack(name, seq, t + 0.1, t + 0.2)]
    last = stream[-1][0] if stream else 0
    info = {"drained": True, "num_pending": 0, "num_ack_pending": 0, "ack_floor": {"stream_seq": last}}
    return ops, info


# -- clean ---------------------------------------------------------------------------
def test_clean_history_with_drained_consumer_passes():
    ops, stream = sequential(10)
    cops, info = drained_consumer(stream)
    digests = {n: {"applied_index": 40 + i, "streams": {"S": "abc"}} for i, n in enumerate(["n1", "n2", "n3"])}
    final = FinalState(stream=stream, digests=digests, node_streams={n: list(stream) for n in digests},
                       consumers={"C": info})
    v = check(ops + cops, final)
    assert v.ok, v.summary()
    assert v.summary().splitlines()[0].startswith("PASS")
    assert v.lost == 0 and v.stats.publish_ok == 10 and v.stats.ack_ok == 10


def test_unacknowledged_publishes_may_be_absent_or_present():
    ops, stream = sequential(3)
    ops += [pub("gone-info", 10, 11, outcome=INFO), pub("gone-fail", 12, 13, outcome=FAIL),
            pub("kept-info", 14, 15, outcome=INFO), pub("hung", 16, None, outcome=INFO)]
    stream += [(4, "kept-info"), (5, "hung")]
    v = check(ops, FinalState(stream=stream))
    assert v.ok, v.summary()
    assert (v.stats.publish_info, v.stats.publish_fail) == (3, 1)


def test_retry_of_a_failed_publish_that_was_then_stored_is_fine():
    ops = [pub("a", 0, 1, outcome=FAIL), pub("a", 2, 3, outcome=INFO)]
    assert check(ops, FinalState(stream=[(1, "a")])).ok


def test_deduplicated_retry_acked_twice_with_the_same_seq_is_fine():
    ops = [pub("a", 0, 1, seq=1), pub("a", 2, 3, seq=1), pub("b", 4, 5, seq=2)]
    v = check(ops, FinalState(stream=[(1, "a"), (2, "b")]))
    assert v.ok, v.summary()


# -- lost ----------------------------------------------------------------------------
def test_lost_prefix_middle_and_postfix_are_told_apart():
    ops, stream = sequential(9)
    kept = [m for m in stream if m[0] not in (1, 2, 5, 8, 9)]
    v = check(ops, FinalState(stream=kept))
    assert anomalies(v) == {"lost-prefix": 2, "lost-middle": 1, "lost-postfix": 2}
    assert [e["value"] for e in v.examples["lost-middle"]] == ["v5"]
    assert [e["value"] for e in v.examples["lost-prefix"]] == ["v1", "v2"]
    first = v.summary().splitlines()[0]
    assert first.startswith("FAIL") and "lost=5" in first and "middle=1" in first


def test_losing_everything_counts_as_prefix():
    ops, _ = sequential(4)
    v = check(ops, FinalState(stream=[]))
    assert anomalies(v) == {"lost-prefix": 4}


def test_lost_classification_follows_acked_seq_not_invoke_time():
    # b was invoked first but acked at the later seq; losing a makes it the prefix.
    ops = [pub("b", 0, 5, seq=2), pub("a", 1, 2, seq=1), pub("c", 6, 7, seq=3)]
    v = check(ops, FinalState(stream=[(1, "b"), (2, "c")]))
    assert v.counts["lost-prefix"] == 1 and v.examples["lost-prefix"][0]["value"] == "a"


# -- stored wrongly ------------------------------------------------------------------
def test_duplicate_is_caught():
    ops, stream = sequential(3)
    v = check(ops, FinalState(stream=stream + [(4, "v2")]))
    assert anomalies(v) == {"duplicated": 1}
    assert v.examples["duplicated"][0]["seqs"] == [2, 4]


def test_wrong_seq_is_caught():
    ops, _ = sequential(3)
    v = check(ops, FinalState(stream=[(1, "v1"), (2, "v3"), (3, "v2")]))
    assert anomalies(v) == {"wrong-seq": 2}


def test_unexpected_and_failed_present_values_are_caught():
    ops, stream = sequential(2)
    ops.append(pub("refused", 5, 6, outcome=FAIL))
    v = check(ops, FinalState(stream=stream + [(3, "never-sent"), (4, "refused")]))
    assert anomalies(v) == {"unexpected": 1, "failed-present": 1}


# -- real-time order -----------------------------------------------------------------
def test_realtime_reorder_is_caught():
    # a completes at 1.0, b is invoked at 2.0, yet a got the higher seq.
    ops = [pub("a", 0.0, 1.0, seq=2), pub("b", 2.0, 3.0, seq=1)]
    v = check(ops, FinalState(stream=[(1, "b"), (2, "a")]))
    assert anomalies(v) == {"realtime-order": 1}
    ex = v.examples["realtime-order"][0]
    assert (ex["earlier_value"], ex["later_value"]) == ("a", "b")


def test_concurrent_publishes_may_land_in_either_order():
    for seqs in ((1, 2), (2, 1)):
        ops = [pub("a", 0.0, 2.0, seq=seqs[0]), pub("b", 1.0, 3.0, seq=seqs[1])]
        stream = sorted([(seqs[0], "a"), (seqs[1], "b")])
        assert check(ops, FinalState(stream=stream)).ok, seqs


def test_realtime_order_compares_against_every_earlier_completion():
    # c completes first with the highest seq; much later d gets a lower one.
    ops = [pub("c", 0, 1, seq=3), pub("a", 2, 3, seq=1), pub("b", 4, 5, seq=2), pub("d", 6, 7, seq=4)]
    stream = [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    v = check(ops, FinalState(stream=stream))
    assert v.counts["realtime-order"] == 2        # a and b both follow c's completion


# -- divergence ----------------------------------------------------------------------
def test_divergent_digests_are_caught():
    ops, stream = sequential(2)
    digests = {"n1": {"streams": {"S": "aaa"}}, "n2": {"streams": {"S": "aaa"}}, "n3": {"streams": {"S": "bbb"}}}
    v = check(ops, FinalState(stream=stream, digests=digests))
    assert anomalies(v) == {"divergent-digest": 1}


def test_node_missing_a_stream_diverges():
    digests = {"n1": {"S": "aaa"}, "n2": {}}
    assert check([], FinalState(digests=digests)).counts["divergent-digest"] == 1


def test_divergent_replica_contents_are_caught():
    ops, stream = sequential(3)
    nodes = {"n1": list(stream), "n2": list(stream), "n3": [(1, "v1"), (2, "v3")]}
    v = check(ops, FinalState(stream=stream, node_streams=nodes))
    assert anomalies(v) == {"divergent-replica": 1}
    assert v.examples["divergent-replica"][0]["seq"] == 2


def test_lagging_replica_is_not_divergent_contents():
    ops, stream = sequential(3)
    nodes = {"n1": list(stream), "n2": stream[:2]}
    assert check(ops, FinalState(stream=stream, node_streams=nodes)).ok


# -- consumers -----------------------------------------------------------------------
def test_redelivery_after_a_confirmed_ack_is_caught():
    ops, stream = sequential(2)
    cops, info = drained_consumer(stream)
    cops.append(deliver("C", 1, "v1", t=200.0, delivered=2))
    v = check(ops + cops, FinalState(stream=stream, consumers={"C": info}))
    assert anomalies(v) == {"redelivered-after-ack": 1}


def test_redelivery_after_a_failed_or_unknown_ack_is_allowed():
    ops, stream = sequential(2)
    cops = [deliver("C", 1, "v1", 10.0), ack("C", 1, 10.1, 10.2, outcome=FAIL),
            deliver("C", 2, "v2", 11.0), ack("C", 2, 11.1, 15.0, outcome=INFO),
            deliver("C", 1, "v1", 20.0, delivered=2), deliver("C", 2, "v2", 21.0, delivered=2),
            ack("C", 1, 22.0, 22.1), ack("C", 2, 23.0, 23.1)]
    info = {"drained": True, "num_pending": 0, "num_ack_pending": 0, "ack_floor": 2}
    v = check(ops + cops, FinalState(stream=stream, consumers={"C": info}))
    assert v.ok, v.summary()


def test_delivery_racing_a_confirmed_ack_is_allowed():
    # The fetch was invoked before the ack was confirmed; the message may come back.
    ops, stream = sequential(1)
    cops = [deliver("C", 1, "v1", 10.0), ack("C", 1, 10.1, 12.0), deliver("C", 1, "v1", 11.0, delivered=2,
                                                                         complete=12.5)]
    assert check(ops + cops, FinalState(stream=stream)).ok


def test_deliver_slack_forgives_a_redelivery_that_was_in_flight_during_the_ack():
    ops, stream = sequential(1)
    # Arrival times, as a push callback records them: both redeliveries left the
    # server before the ack was confirmed, and reached two workers out of order.
    cops = [deliver("C", 1, "v1", 10.0, delivered=1), ack("C", 1, 10.1, 10.2),
            deliver("C", 1, "v1", 10.4, delivered=3), deliver("C", 1, "v1", 10.6, delivered=2)]
    final = FinalState(stream=stream)
    assert anomalies(check(ops + cops, final)) == {"redelivered-after-ack": 2, "delivered-count-decreased": 1}
    assert check(ops + cops, final, deliver_slack_s=0.5).ok


def test_undelivered_message_of_a_drained_consumer_is_caught():
    ops, stream = sequential(3)
    cops, info = drained_consumer(stream[:2])
    info["ack_floor"] = 2
    v = check(ops + cops, FinalState(stream=stream, consumers={"C": info}))
    assert anomalies(v) == {"undelivered": 1}
    assert v.examples["undelivered"][0]["seq"] == 3


def test_undrained_consumer_need_not_see_everything():
    ops, stream = sequential(3)
    cops = [deliver("C", 1, "v1", 10.0)]
    info = {"num_pending": 2, "num_ack_pending": 1, "ack_floor": 0}
    assert check(ops + cops, FinalState(stream=stream, consumers={"C": info})).ok


def test_delivered_count_going_backwards_is_caught():
    ops, stream = sequential(1)
    cops = [deliver("C", 1, "v1", 10.0, delivered=1), deliver("C", 1, "v1", 20.0, delivered=3),
            deliver("C", 1, "v1", 30.0, delivered=2)]
    v = check(ops + cops, FinalState(stream=stream))
    assert anomalies(v) == {"delivered-count-decreased": 1}


def test_delivery_of_a_value_the_log_later_lost_is_caught():
    ops = [pub("a", 0, 1, seq=1, outcome=INFO)]           # unknown publish, later gone
    cops = [deliver("C", 1, "a", 5.0)]
    v = check(ops + cops, FinalState(stream=[]))
    assert anomalies(v) == {"delivery-mismatch": 1}


def test_bad_final_consumer_counts_are_caught():
    ops, stream = sequential(3)
    cops, info = drained_consumer(stream)
    for bad, rule in [({"num_pending": 1}, "num_pending"), ({"num_ack_pending": 1}, "num_ack_pending"),
                      ({"ack_floor": {"stream_seq": 2}}, "ack_floor"), ({"ack_floor": 7}, "ack_floor")]:
        v = check(ops + cops, FinalState(stream=stream, consumers={"C": {**info, **bad}}))
        assert set(anomalies(v)) == {"consumer-state"}, (bad, v.summary())
        assert all(rule in e["rule"] for e in v.examples["consumer-state"]), bad


def test_confirmed_acks_bound_counters_of_an_undrained_consumer():
    ops, stream = sequential(4)
    cops = [deliver("C", s, v, 10.0 + s) for s, v in stream]
    cops += [ack("C", 1, 20, 21), ack("C", 2, 22, 23)]
    good = {"num_pending": 0, "num_ack_pending": 2, "ack_floor": 2}
    assert check(ops + cops, FinalState(stream=stream, consumers={"C": good})).ok
    lost_acks = {"num_pending": 0, "num_ack_pending": 3, "ack_floor": 1}
    v = check(ops + cops, FinalState(stream=stream, consumers={"C": lost_acks}))
    assert v.counts["consumer-state"] == 2, v.summary()


# -- availability --------------------------------------------------------------------
def test_availability_stats_and_recovery_times():
    fault = Op(kind="fault", process="nemesis", invoke=10.0, complete=20.0, outcome=OK, value="kill", node="n1")
    ops = [pub("a", 1, 2, seq=1), pub("b", 11, 12, outcome=INFO), pub("c", 13, 14, outcome=FAIL),
           pub("d", 19, 21, outcome=INFO), pub("e", 22, 23.5, seq=2), fault]
    v = check(ops, FinalState(stream=[(1, "a"), (2, "e")]), majority_windows=[(0.0, 9.0), (21.5, 30.0)])
    assert v.ok
    s = v.stats
    assert (s.publishes, s.publish_ok, s.publish_fail, s.publish_info) == (5, 2, 1, 2)
    assert s.ok_fraction == 0.4
    assert (s.majority_publishes, s.majority_ok, s.majority_ok_fraction) == (2, 2, 1.0)
    (r,) = s.recoveries
    assert (r.fault, r.node, r.end_s) == ("kill", "n1", 20.0) and abs(r.recovery_s - 3.5) < 1e-9
    assert "recovered in 3.500s" in v.summary()


def test_examples_are_capped_but_counts_are_exact():
    ops, stream = sequential(50)
    v = check(ops, FinalState(stream=stream[:10]))
    assert v.counts["lost-postfix"] == 40 and len(v.examples["lost-postfix"]) == checker.MAX_EXAMPLES


def test_a_large_history_is_checked_quickly():
    import time
    ops, stream = sequential(100_000)
    t = time.monotonic()
    assert check(ops, FinalState(stream=stream)).ok
    assert time.monotonic() - t < 5


# -- properties ----------------------------------------------------------------------
@st.composite
def clean_histories(draw):
    """Sequential ok publishes from a few processes, with increasing seqs, all stored."""
    n = draw(st.integers(1, 60))
    gaps = draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))
    durations = draw(st.lists(st.floats(0.001, 1.0), min_size=n, max_size=n))
    ops, stream, t = [], [], 0.0
    for i in range(n):
        t += gaps[i]
        end = t + durations[i]
        ops.append(pub(f"p{i % 3}-{i}", t, end, seq=i + 1, process=f"publisher-{i % 3}"))
        stream.append((i + 1, f"p{i % 3}-{i}"))
        t = end
    extra = draw(st.lists(st.sampled_from([INFO, FAIL]), max_size=5))
    ops += [pub(f"x{j}", t + j, t + j + 1, outcome=o) for j, o in enumerate(extra)]
    return draw(st.permutations(ops)), stream


@settings(max_examples=200, deadline=None)
@given(clean_histories())
def test_clean_histories_always_pass(history):
    ops, stream = history
    v = check(ops, FinalState(stream=stream))
    assert v.ok, v.summary()


@settings(max_examples=200, deadline=None)
@given(clean_histories(), st.data())
def test_deleting_one_acked_value_yields_exactly_one_lost(history, data):
    ops, stream = history
    i = data.draw(st.integers(0, len(stream) - 1))
    v = check(ops, FinalState(stream=stream[:i] + stream[i + 1:]))
    assert v.lost == 1 and sum(v.counts.values()) == 1, v.summary()
    kind = "lost-prefix" if i == 0 else "lost-postfix" if i == len(stream) - 1 else "lost-middle"
    if len(stream) > 1:
        assert v.counts[kind] == 1


# -- mirrors -------------------------------------------------------------------------
def stored(n, gap_at=None):
    """An origin of n messages at seqs 1..n (one seq skipped at `gap_at`: a deleted message)."""
    seqs = [s for s in range(1, n + 2) if s != gap_at][:n]
    return [checker.StoredMsg(s, "orders.v", (("Nats-Msg-Id", f"id-{s}"),), f"v{s}".encode(),
                              f"2026-01-01T00:00:{s:02d}Z") for s in seqs]


def test_an_exact_mirror_passes_even_with_gaps_the_origin_has():
    origin = stored(8, gap_at=4)
    v = checker.check_mirror(origin, list(origin))
    assert v.ok and v.line() == ("mirror: origin 8 messages, mirror 8; "
                                 "lost=0 duplicated=0 misnumbered=0 altered=0 unexpected=0")


def test_a_duplicated_a_missing_and_a_misnumbered_message_are_each_caught():
    import dataclasses
    origin = stored(10)
    mirror = list(origin)
    mirror.append(dataclasses.replace(origin[2], seq=11))       # v3 again at a seq of its own
    del mirror[4]                                               # v5 never copied
    mirror[6] = dataclasses.replace(mirror[6], seq=7)           # v8 stored at seq 7 (seq 8 empty)
    v = checker.check_mirror(origin, mirror)
    assert not v.ok
    assert {k: n for k, n in v.counts.items() if n} == {"duplicated": 1, "lost": 1, "misnumbered": 1}, v.examples
    assert v.examples["lost"][0]["seq"] == 5
    assert v.examples["misnumbered"][0] == {"origin_seq": 8, "mirror_seqs": [7], "subject": "orders.v"}


def test_a_changed_header_or_time_and_a_message_the_origin_never_had_are_caught():
    import dataclasses
    origin = stored(5)
    mirror = list(origin)
    mirror[1] = dataclasses.replace(mirror[1], headers=())                  # header dropped
    mirror[3] = dataclasses.replace(mirror[3], time="2026-01-01T00:09:00Z")  # timestamp rewritten
    mirror.append(checker.StoredMsg(6, "orders.v", (), b"never published", "t"))
    v = checker.check_mirror(origin, mirror)
    assert {k: n for k, n in v.counts.items() if n} == {"altered": 2, "unexpected": 1}, v.examples


def test_a_broken_mirror_fails_the_runs_verdict_line():
    from chaos.runner import RunResult, _verdict_text
    ops, stream = sequential(3)
    origin = stored(3)
    clean = RunResult(final=FinalState(stream=stream), final_read=True, mirrors=[checker.check_mirror(origin, origin)])
    assert _verdict_text(check(ops, clean.final), clean).startswith("PASS")
    broken = RunResult(final=FinalState(stream=stream), final_read=True,
                       mirrors=[checker.check_mirror(origin, origin[:2])])
    text = _verdict_text(check(ops, broken.final), broken)
    assert text.splitlines()[0] == "FAIL mirror-lost=1", text
    assert "mirror: origin 3 messages, mirror 2; lost=1" in text and "mirror-lost: seq=3" in text


def test_a_broken_backlog_mirror_fails_the_run_though_the_first_mirror_is_clean():
    from chaos.runner import RunResult, _verdict_text
    ops, stream = sequential(3)
    origin = stored(3)
    res = RunResult(final=FinalState(stream=stream), final_read=True, mirrors=[
        checker.check_mirror(origin, origin), checker.check_mirror(origin, origin + origin[2:], "mirror BACKLOG_DR")])
    text = _verdict_text(check(ops, res.final), res)
    assert text.splitlines()[0] == "FAIL mirror-duplicated=1", text
    lines = text.splitlines()
    assert lines[1].startswith("mirror: origin 3 messages, mirror 3; lost=0 duplicated=0"), text
    assert lines[2].startswith("mirror BACKLOG_DR: origin 3 messages, mirror 4; lost=0 duplicated=1"), text
