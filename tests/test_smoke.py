from storage import AddStream, Publish, StreamConfig


def test_published_message_is_counted_in_stream_state(engine):
    engine.apply(AddStream(StreamConfig(name="S", subjects=["s.>"])))
    ack = engine.apply(Publish("s.a", b"x"))
    assert (ack.stream, ack.seq) == ("S", 1)
    assert engine.store.stream_info("S").state.messages == 1
