from api.client import connect


async def test_ack_next_acks_the_message_and_returns_the_next_one(server):
    nc = await connect([server.addr])
    js = nc.jetstream()
    await js.add_stream(name="Q", subjects=["q.>"])
    for i in range(3):
        await js.publish("q.x", str(i).encode())
    sub = await js.pull_subscribe("q.>", durable="w", stream="Q")
    (first,) = await sub.fetch(batch=1, timeout=1)
    nxt = await first.ack_next(batch=2, timeout=1)
    assert [m.metadata.sequence.stream for m in nxt] == [2, 3]
    info = await js.consumer_info("Q", "w")
    assert info.ack_floor.stream_seq == 1 and info.num_ack_pending == 2
    assert await nxt[-1].ack_next(batch=1, timeout=0) == []
    await nc.close()
