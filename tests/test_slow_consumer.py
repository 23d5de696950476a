"""A push subscriber that stops reading must not make the server's memory grow
without bound, and the other subscribers must keep receiving everything.

The slow subscriber is a raw socket with a tiny receive buffer that subscribes
and then never reads again. It subscribes to
  - the deliver subject of its own push consumer (SLOWC): that consumer must pause,
  - the deliver subject of another push consumer (FASTC) that a normal client also
    subscribes to: the normal client must get every message regardless,
  - the stream's subjects as a core subscriber: core copies to it are skipped.
A normal core subscriber on the stream's subjects must also get every message.

The stream is a memory stream capped at MAX_MSGS messages so that what the store
retains is bounded and small next to the published volume; RSS growth beyond it
can only come from buffering for the slow reader.
"""
import asyncio
import socket
import threading
import time

from api import protocol as P
from api.client import connect
from jetstream.config import ConsumerConfig

MSG_SIZE = 4096
TOTAL = 16_000                     # 64 MiB of payload published ...
BATCH = 250
MAX_MSGS = 1_250                   # ... of which the stream keeps ~5 MiB
RSS_BOUND = 48 * 1024 * 1024       # growth allowed: well under the 64 MiB published (8 MiB outbound cap)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def drain_log(server) -> None:
    # The fixture pipes the server's stdout; keep it from filling up and blocking the server.
    threading.Thread(target=lambda: [None for _ in server.proc.stdout], daemon=True).start()


def slow_reader(addr: str, subjects: list[str]) -> socket.socket:
    """Connect, subscribe, then never read again."""
    host, _, port = addr.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((host, int(port)))
    d = P.Decoder()
    frames: list = []

    def read_until(n):
        while len(frames) < n:
            data = sock.recv(65536)
            assert data, "server closed the slow reader during setup"
            d.feed(data)
            frames.extend(d.frames())

    read_until(1)
    assert isinstance(frames[0], P.Info)
    sock.sendall(P.encode(P.Connect(name="slow")))
    read_until(2)
    assert frames[1] == P.Response(0, {"ok": True})
    for i, s in enumerate(subjects, start=1):
        sock.sendall(P.encode(P.Request(i, "sub", {"sid": i, "subject": s})))
    read_until(2 + len(subjects))
    assert all(isinstance(f, P.Response) and f.body == {"ok": True} for f in frames[2:]), frames
    return sock


async def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_a_subscriber_that_stops_reading_does_not_grow_server_memory_and_others_keep_receiving(server):
    drain_log(server)
    nc = await connect([server.addr])
    js = nc.jetstream()
    await js.add_stream(name="FLOOD", subjects=["flood.>"], storage="memory", max_msgs=MAX_MSGS)
    # ack_policy none: no max_ack_pending limits deliveries, only back-pressure can.
    await js.add_consumer("FLOOD", durable_name="SLOWC", deliver_subject="deliver.slow", ack_policy="none")

    fast_seqs: list[int] = []
    core_count = 0

    async def on_fast(msg):
        fast_seqs.append(msg.metadata.sequence.stream)

    async def on_core(msg):
        nonlocal core_count
        core_count += 1

    await js.subscribe("flood.>", durable="FASTC", stream="FLOOD", cb=on_fast,
                       config=ConsumerConfig(deliver_subject="deliver.fast", ack_policy="none"))
    nc2 = await connect([server.addr])
    await nc2.subscribe("flood.>", cb=on_core)

    slow = slow_reader(server.addr, ["deliver.slow", "deliver.fast", "flood.>"])
    try:
        # Warm up (allocator, code paths), then measure from there.
        payload = b"x" * MSG_SIZE
        warm = 1_000
        for _ in range(warm // BATCH):
            await js.publish_batch([("flood.a", payload)] * BATCH)
        await wait_for(lambda: len(fast_seqs) >= warm and core_count >= warm, 20, "warm-up deliveries")
        await asyncio.sleep(0.5)
        before = rss(server.pid)
        peak = before
        t0 = time.monotonic()

        published = warm
        while published < TOTAL:
            acks = await js.publish_batch([("flood.b", payload)] * BATCH)
            assert all(getattr(a, "seq", None) for a in acks), acks[:3]
            published += BATCH
            # Pace to the fast subscribers so the capped stream never discards what
            # they have not been sent yet: "everything" is then well defined.
            await wait_for(lambda: len(fast_seqs) >= published - 2 * BATCH and core_count >= published - 2 * BATCH,
                           20, f"fast subscribers to keep up (at {published})")
            peak = max(peak, rss(server.pid))
        await wait_for(lambda: len(fast_seqs) >= TOTAL and core_count >= TOTAL, 20, "the last deliveries")
        await asyncio.sleep(0.5)
        peak = max(peak, rss(server.pid))
        growth = peak - before
        print(f"RSS before {before / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, growth {growth / 2**20:.1f} MiB, "
              f"publish+deliver {time.monotonic() - t0:.1f}s")

        # The others got everything, in order, exactly once.
        assert fast_seqs == list(range(1, TOTAL + 1))
        assert core_count == TOTAL
        # The slow reader's consumer paused instead of buffering everything for it.
        info = await js.consumer_info("FLOOD", "SLOWC")
        assert 0 < info.delivered.stream_seq < TOTAL // 2, info.delivered
        # And the server's memory did not follow the published volume.
        assert TOTAL * MSG_SIZE > RSS_BOUND
        assert growth < RSS_BOUND, f"server RSS grew by {growth / 2**20:.1f} MiB (from {before / 2**20:.1f} MiB)"
        assert server.proc.poll() is None

        # The server still serves everyone normally, the slow reader's connection included
        # once it reads again.
        ack = await js.publish("flood.c", b"after")
        assert ack.seq == TOTAL + 1
    finally:
        slow.close()
        await nc2.close()
        await nc.close()


async def test_a_reader_that_catches_up_gets_its_consumer_going_again(server):
    """Back-pressure pauses, it does not drop: when the slow reader starts reading,
    its consumer resumes from where it paused, without a gap."""
    drain_log(server)
    nc = await connect([server.addr])
    js = nc.jetstream()
    await js.add_stream(name="P", subjects=["p.>"], storage="memory")
    await js.add_consumer("P", durable_name="C", deliver_subject="deliver.p", ack_policy="none")
    slow = slow_reader(server.addr, ["deliver.p"])
    try:
        n = 5_000                                   # ~20 MiB: more than the 8 MiB outbound cap
        payload = b"y" * MSG_SIZE
        for i in range(n // BATCH):
            await js.publish_batch([("p.x", payload)] * BATCH)
        await asyncio.sleep(1.0)
        paused_at = (await js.consumer_info("P", "C")).delivered.stream_seq
        assert paused_at < n, "everything was pushed into the buffer of a reader that does not read"

        # Now read everything; sequences must be 1..n with no gap.
        d = P.Decoder()
        seqs: list[int] = []
        slow.setblocking(False)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + 30
        while len(seqs) < n and time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(loop.sock_recv(slow, 1 << 20), 5)
            except asyncio.TimeoutError:
                break
            assert data
            d.feed(data)
            seqs += [f.meta["stream_seq"] for f in d.frames() if isinstance(f, P.Msg) and f.meta]
        assert seqs == list(range(1, n + 1))
    finally:
        slow.close()
        await nc.close()
