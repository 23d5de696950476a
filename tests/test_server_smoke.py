from api.client import connect


async def test_client_publishes_and_fetches_through_a_real_server(server):
    nc = await connect([server.addr])
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    ack = await js.publish("orders.created", b"hello", msg_id="ord-1")
    assert (ack.stream, ack.seq) == ("ORDERS", 1)
    sub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    msgs = await sub.fetch(batch=5, timeout=1)
    assert [m.data for m in msgs] == [b"hello"]
    await msgs[0].ack_sync()
    info = await js.consumer_info("ORDERS", "proc")
    assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == 1
    await nc.close()
