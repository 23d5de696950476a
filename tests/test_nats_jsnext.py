"""The js-next tier against a real server process, driven by nats-py: push consumers'
idle heartbeats and flow control, ordered consumers, and what KV / object store need."""
import asyncio

from nats.js.api import AckPolicy, ConsumerConfig

from e2e_util import until
from test_nats_e2e import nc, nserver  # noqa: F401 - the same one-node fixtures


async def _raw(nc, subject):
    """A plain core subscription on a deliver subject: every frame, controls included."""
    got = []

    async def cb(m):
        got.append(m)
    await nc.subscribe(subject, cb=cb)
    return got


def _is_status(m, text):
    return not m.data and m.headers and m.headers.get("Status") == "100" \
        and m.headers.get("Description") == text


async def test_idle_heartbeat_carries_last_consumer_and_stream_seqs(nc):
    js = nc.jetstream()
    await js.add_stream(name="HB", subjects=["hb.>"])
    await js.publish("hb.skip", b"not for the filter")
    got = await _raw(nc, "hbin.inbox")
    await js.add_consumer("HB", ConsumerConfig(durable_name="hbc", deliver_subject="hbin.inbox", idle_heartbeat=0.1,
                                               filter_subject="hb.x", ack_policy="none"))
    for i in range(3):
        await js.publish("hb.x", str(i).encode())
    await until(lambda: sum(1 for m in got if m.data) == 3, what="three deliveries")
    n = len(got)
    hb = await until(lambda: next((m for m in got[n:] if _is_status(m, "Idle Heartbeat")), None),
                     what="a heartbeat after the deliveries")
    assert hb.reply in ("", None)
    assert hb.headers["Nats-Last-Consumer"] == "3"
    assert hb.headers["Nats-Last-Stream"] == "4"     # stream seq 1 was filtered out
    assert "Nats-Consumer-Stalled" not in hb.headers


async def test_flow_control_pauses_delivery_until_answered(nc):
    js = nc.jetstream()
    await js.add_stream(name="FC", subjects=["fc"])
    chunk = b"z" * 16 * 1024
    total = 80                  # 1.25 MiB: more than two flow-control windows of 256 KiB
    for _ in range(total):
        await js.publish("fc", chunk)
    got = await _raw(nc, "fcin.inbox")
    await js.add_consumer("FC", ConsumerConfig(durable_name="fcc", deliver_subject="fcin.inbox", idle_heartbeat=0.1,
                                               flow_control=True, ack_policy="none"))
    req = await until(lambda: next((m for m in got if _is_status(m, "FlowControl Request")), None),
                      what="a flow control request")
    assert req.reply.startswith("$JS.FC.FC.fcc.")
    # Unanswered, the consumer stalls: heartbeats name the request to answer.
    stalled = await until(lambda: next((m for m in got if _is_status(m, "Idle Heartbeat")
                                        and m.headers.get("Nats-Consumer-Stalled")), None),
                          what="a stalled heartbeat")
    assert stalled.headers["Nats-Consumer-Stalled"] == req.reply
    delivered = sum(1 for m in got if m.data)
    assert 0 < delivered < total, [i for i, m in enumerate(got) if not m.data]
    await nc.publish(req.reply, b"")

    def answered_all():
        # Answer every later request too, as a client does.
        for m in got:
            if _is_status(m, "FlowControl Request") and m.reply and m.reply not in seen:
                seen.add(m.reply)
                asyncio.ensure_future(nc.publish(m.reply, b""))
        return sum(1 for m in got if m.data) == total
    seen = {req.reply}
    await until(answered_all, what="the rest after the answer")
    seqs = [int(m.reply.split(".")[5]) for m in got if m.data]
    assert seqs == list(range(1, total + 1))


async def test_ordered_consumer_gets_everything_in_order(nc):
    js = nc.jetstream()
    await js.add_stream(name="ORD", subjects=["ord.*"], storage="memory")
    for i in range(300):
        await js.publish(f"ord.{i % 3}", b"x" * 2048 + str(i).encode())
    got = []

    async def cb(m):
        got.append(m)
    sub = await js.subscribe("ord.*", cb=cb, ordered_consumer=True, idle_heartbeat=0.2)
    await until(lambda: len(got) == 300, what="all 300 messages")
    assert [m.metadata.sequence.stream for m in got] == list(range(1, 301))
    assert [m.metadata.sequence.consumer for m in got] == list(range(1, 301))
    info = await sub.consumer_info()
    assert info.config.flow_control and info.config.ack_policy in ("none", AckPolicy.NONE)
    assert info.config.mem_storage and info.config.num_replicas == 1
    assert info.num_pending == 0
