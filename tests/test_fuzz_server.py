"""Fuzzing a real server process with random, truncated and oversized frames.

Each example opens a raw TCP connection, optionally completes the handshake,
throws a sequence of chunks at the server (valid frames, random msgpack
bodies, random bytes, truncated frames, oversized length prefixes) and reads
what comes back. The server must answer with ERROR frames or close that
connection, never crash, and a well-behaved client on another connection must
keep working after every example.
"""
import asyncio
import socket
import struct
import threading
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import protocol as P
from api.client import connect

MAX_FRAME = P.DEFAULT_MAX_FRAME
KEEP = "KEEPER9F3A"            # the well-behaved client's stream; fuzz bodies never name it
OPS = ["stream.add", "stream.update", "stream.delete", "stream.info", "stream.names", "stream.list",
       "stream.purge", "msg.get", "msg.delete", "pub", "pub.batch", "consumer.add", "consumer.delete",
       "consumer.info", "consumer.names", "consumer.list", "fetch", "ack", "ack.next", "sub", "unsub", "cpub"]
FIELDS = ["name", "stream", "consumer", "subject", "subjects", "seq", "batch", "expires", "no_wait", "max_bytes",
          "data", "headers", "sid", "queue", "config", "action", "kind", "delay", "reason", "filter", "keep",
          "last_by_subj", "next_by_subj", "msgs", "reply", "durable_name", "deliver_subject", "no_erase",
          "retention", "storage", "max_msgs", "max_age", "ack_wait", "idle_heartbeat", "max_waiting"]


# == strategies ==========================================================================

leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
    st.sampled_from([0, 1, -1, 5, 1000, 2 ** 32]),
    st.floats(),                                             # NaN and infinities included
    st.sampled_from(["S", "T", "c1", "a.b", "a.*", ">", "*", "", "ack", "nak", "term", "progress",
                     "memory", "file", "workqueue", "interest", "nan", "inf", "-1"]),
    st.text(max_size=12), st.binary(max_size=32),
)
value = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=5)), max_leaves=10)
body = st.one_of(st.dictionaries(st.sampled_from(FIELDS), value, max_size=6), value)


def _names_keep(v) -> bool:
    if isinstance(v, str):
        return KEEP.lower() in v.lower() or "keeper" in v.lower()
    if isinstance(v, (list, tuple)):
        return any(_names_keep(x) for x in v)
    if isinstance(v, dict):
        return any(_names_keep(k) or _names_keep(x) for k, x in v.items())
    return False


ids = st.integers(min_value=0, max_value=2 ** 64 - 1) | st.integers(min_value=0, max_value=20)
valid_frames = st.one_of(
    st.builds(P.Request, id=ids, op=st.sampled_from(OPS) | st.text(max_size=10), body=body),
    st.builds(P.Request, id=ids, op=st.sampled_from(OPS), body=body),
    st.just(P.Ping()), st.just(P.Pong()),
    st.builds(P.Connect, name=st.none() | st.text(max_size=8), token=st.none() | st.text(max_size=8)),
    st.builds(P.Info, server_id=st.text(max_size=8)),
    st.builds(P.Response, id=ids, body=value),
    st.builds(P.Error, id=ids, code=st.integers(0, 999), err_code=st.integers(0, 20000),
              description=st.text(max_size=10)),
    st.builds(P.Msg, sid=ids, subject=st.text(max_size=10), data=st.binary(max_size=64)),
).filter(lambda f: not _names_keep(getattr(f, "body", None)))


def _frame_bytes(f) -> bytes:
    return P.encode(f)


def _raw(obj) -> bytes:
    b = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(b)) + b


chunk = st.one_of(
    valid_frames.map(_frame_bytes),
    # a well-delimited msgpack array with a (mostly) plausible frame type and junk fields
    st.tuples(st.integers(-3, 12), st.lists(value, max_size=6)).map(lambda t: _raw([t[0]] + t[1]))
    .filter(lambda b: KEEP.encode() not in b),
    # well-delimited garbage body
    st.binary(min_size=1, max_size=64).map(lambda b: struct.pack(">I", len(b)) + b),
    # an empty frame
    st.just(b"\x00\x00\x00\x00"),
    # random bytes (desynchronises the stream)
    st.binary(min_size=1, max_size=64),
    # a truncated valid frame (the rest never comes, or is taken as the next header)
    st.tuples(valid_frames.map(_frame_bytes), st.floats(0.0, 0.99)).map(lambda t: t[0][:int(len(t[0]) * t[1])]),
    # an oversized declared length, with a little of its "body"
    st.tuples(st.integers(MAX_FRAME + 1, 2 ** 32 - 1), st.binary(max_size=32))
    .map(lambda t: struct.pack(">I", t[0]) + t[1]),
)


# == helpers =============================================================================

def _host_port(addr: str):
    host, _, port = addr.rpartition(":")
    return host, int(port)


def _recv_all(sock: socket.socket, idle_s: float, total_s: float) -> tuple[bytes, str]:
    """Read until EOF ("eof"), a reset ("reset") or `idle_s` without data ("idle")."""
    out = bytearray()
    deadline = time.monotonic() + total_s
    sock.settimeout(idle_s)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return bytes(out), "idle"
        except (ConnectionResetError, BrokenPipeError):
            return bytes(out), "reset"
        if not data:
            return bytes(out), "eof"
        out += data
    return bytes(out), "idle"


def _server_frames(data: bytes) -> list:
    d = P.Decoder(MAX_FRAME)
    d.feed(data)
    out = []
    while True:
        f = d.next()                     # the server must never send an undecodable frame
        if f is None:
            return out
        out.append(f)


def _expected_connection_errors(sent: bytes, connected: bool, eof: bool) -> tuple[list, bool]:
    """What the server must say about the connection (ERROR frames with id 0, and the
    handshake's RESPONSE 0) for these bytes, and whether it must close the connection
    before reaching their end. Mirrors the documented protocol, with our own decoder."""
    d = P.Decoder(MAX_FRAME)
    d.feed(sent)
    out = []
    while True:
        try:
            f = d.next()
        except P.ProtocolError as e:
            out.append(("error", e.err_code))
            if e.fatal:
                return out, True
            continue
        if f is None:                        # (EOF before CONNECT: closed without a word)
            return out, False
        if not connected:
            if isinstance(f, P.Connect):
                out.append(("accepted", 0))
                connected = True
                continue
            out.append(("error", P.ERR_NOT_CONNECTED))
            return out, True
        if isinstance(f, (P.Request, P.Ping, P.Pong)):
            continue
        out.append(("error", P.ERR_UNKNOWN_FRAME))


def _connection_level(frames: list) -> list:
    out = []
    for f in frames:
        if isinstance(f, P.Error) and f.id == 0:
            out.append(("error", f.err_code))
        elif isinstance(f, P.Response) and f.id == 0:
            out.append(("accepted", 0))
    return out


class GoodClient:
    """A well-behaved client on its own event loop; check() publishes and reads back."""

    def __init__(self, addr: str):
        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(connect([addr], timeout=5))
        self.js = self.nc.jetstream()
        self.loop.run_until_complete(self.js.add_stream(name=KEEP, subjects=["keeper9f3a.>"]))
        self.n = 0

    def check(self) -> None:
        async def go():
            self.n += 1
            payload = f"good-{self.n}".encode()
            ack = await self.js.publish("keeper9f3a.x", payload)
            assert ack.stream == KEEP
            msg = await self.js.get_msg(KEEP, seq=ack.seq)
            assert msg.data == payload
            info = await self.js.stream_info(KEEP)
            assert info.state.messages == self.n
        self.loop.run_until_complete(asyncio.wait_for(go(), 10))

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


def _open(addr: str, connect_first: bool) -> tuple[socket.socket, list]:
    sock = socket.create_connection(_host_port(addr), timeout=5)
    d = P.Decoder()
    frames = []
    sock.settimeout(5)
    while not frames:
        data = sock.recv(65536)
        assert data, "server closed before INFO"
        d.feed(data)
        frames = d.frames()
    assert isinstance(frames[0], P.Info), frames
    if connect_first:
        sock.sendall(P.encode(P.Connect(name="fuzz")))
        while len(frames) < 2:
            data = sock.recv(65536)
            assert data
            d.feed(data)
            frames += d.frames()
        assert frames[1] == P.Response(0, {"ok": True})
    return sock, frames


def _drain_log(server) -> list:
    """Keep reading the server's stdout: the fixture pipes it, and a full pipe would
    block the server's logging (and with it the whole server) under a flood of errors."""
    lines: list = []

    def run():
        for line in server.proc.stdout:
            lines.append(line.rstrip())

    threading.Thread(target=run, daemon=True).start()
    return lines


# == the fuzz test =======================================================================

@pytest.mark.slow
def test_fuzzed_frames_never_crash_the_server_and_a_good_client_keeps_working(server):
    log_lines = _drain_log(server)
    good = GoodClient(server.addr)
    t0 = time.monotonic()
    stats = {"eof": 0, "reset": 0, "idle": 0}

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(chunks=st.lists(chunk, min_size=1, max_size=8), connect_first=st.booleans(), half_close=st.booleans())
    def one(chunks, connect_first, half_close):
        sent = b"".join(chunks)
        expected, must_close = _expected_connection_errors(sent, connect_first, half_close)
        sock, _ = _open(server.addr, connect_first)
        try:
            try:
                sock.sendall(sent)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)   # EOF: the server must finish and close
            except (BrokenPipeError, ConnectionResetError):
                pass                                 # it already closed on us (fatal error)
            waits = half_close or must_close
            data, how = _recv_all(sock, idle_s=3.0 if waits else 0.15, total_s=10)
        finally:
            sock.close()
        stats[how] += 1
        frames = _server_frames(data)               # decodes, or this raises
        assert all(isinstance(f, (P.Response, P.Error, P.Msg, P.Pong)) for f in frames), frames
        got = _connection_level(frames)
        # Everything the server said about the connection is what the protocol says it
        # must say, in order (a reset may cut the tail off) ...
        assert got == expected[:len(got)], (got, expected)
        if waits:
            # ... it closes the connection when the stream is out of sync, or at EOF ...
            assert how in ("eof", "reset"), "the server kept a connection it should have closed"
            if how == "eof":
                assert got == expected, (got, expected)
        else:
            # ... and keeps it otherwise.
            assert how == "idle", "the server closed a connection that was still in sync"
        assert server.proc.poll() is None, "the server process died"
        good.check()

    try:
        one()
    finally:
        good.close()
    assert server.proc.poll() is None
    # Internal errors are answered (500 / 10999), not crashes; show them with -s.
    internal = [ln for ln in log_lines if ln and not ln.startswith(" ") and "Error" in ln]
    print(f"connections ended: {stats}; server log lines: {len(log_lines)}; errors logged: {internal[:5]}")
    assert time.monotonic() - t0 < 60, "fuzz run too slow"


# == targeted cases ======================================================================

def _expect_close(sock, idle=5.0):
    data, how = _recv_all(sock, idle_s=idle, total_s=idle)
    return _server_frames(data), how


def test_oversize_length_prefix_gets_an_error_frame_and_the_connection_closed(server):
    sock, _ = _open(server.addr, connect_first=True)
    sock.sendall(struct.pack(">I", MAX_FRAME + 1) + b"x" * 100)
    frames, how = _expect_close(sock)
    sock.close()
    assert frames == [P.Error(0, 400, P.ERR_FRAME_TOO_LARGE, frames[0].description)]
    assert how in ("eof", "reset")
    assert server.proc.poll() is None


def test_bad_frame_before_connect_is_refused_and_closed(server):
    sock, _ = _open(server.addr, connect_first=False)
    sock.sendall(P.encode(P.Request(1, "stream.names", {})))
    frames, how = _expect_close(sock)
    sock.close()
    assert [(f.id, f.err_code) for f in frames] == [(0, P.ERR_NOT_CONNECTED)]
    assert how == "eof"


def test_malformed_frame_after_connect_gets_an_error_and_the_connection_stays_usable(server):
    sock, _ = _open(server.addr, connect_first=True)
    sock.sendall(_raw([77, 1]) + _raw([P.REQUEST, "x", "pub"]) + b"\x00\x00\x00\x02\xc1\xc1"
                 + P.encode(P.Request(9, "stream.names", {})) + P.encode(P.Ping()))
    d = P.Decoder()
    frames = []
    sock.settimeout(5)
    while len(frames) < 5:
        data = sock.recv(65536)
        assert data
        d.feed(data)
        frames += d.frames()
    sock.close()
    errs = [f for f in frames if isinstance(f, P.Error)]
    assert [(e.id, e.err_code) for e in errs] == [(0, P.ERR_UNKNOWN_FRAME), (0, P.ERR_MALFORMED),
                                                 (0, P.ERR_MALFORMED)]
    assert P.Response(9, {"streams": []}) in frames and P.Pong() in frames


def test_request_errors_carry_the_request_id(server):
    sock, _ = _open(server.addr, connect_first=True)
    sock.sendall(P.encode(P.Request(3, "no.such.op", {})) + P.encode(P.Request(4, "stream.info", [1]))
                 + P.encode(P.Request(5, "stream.info", {"name": "NOPE"}))
                 + P.encode(P.Request(6, "fetch", {"stream": "S", "consumer": "c", "expires": float("nan")})))
    d = P.Decoder()
    frames = []
    sock.settimeout(5)
    while len(frames) < 4:
        data = sock.recv(65536)
        assert data
        d.feed(data)
        frames += d.frames()
    sock.close()
    by_id = {f.id: f for f in frames}
    assert by_id[3].err_code == P.ERR_UNKNOWN_OP
    assert by_id[4].err_code == 10003
    assert (by_id[5].code, by_id[5].err_code) == (404, 10059)
    assert by_id[6].err_code == 10003          # NaN expires is refused, not waited on forever


async def test_payload_over_max_payload_is_refused_and_the_connection_stays_usable(server):
    nc = await connect([server.addr])
    js = nc.jetstream()
    await js.add_stream(name="BIG", subjects=["big.>"])
    with pytest.raises(Exception) as e:
        await js.publish("big.x", b"x" * (nc.info.max_payload + 1))
    assert getattr(e.value, "err_code", None) == 10054
    ack = await js.publish("big.x", b"small")
    assert ack.seq == 1
    await nc.close()


async def test_max_subs_per_connection_is_enforced(server):
    nc = await connect([server.addr])
    for i in range(nc.info.max_subs):
        await nc._request("sub", {"sid": i + 1, "subject": f"s.{i}"})
    with pytest.raises(Exception) as e:
        await nc._request("sub", {"sid": 999_999, "subject": "s.over"})
    assert e.value.err_code == P.ERR_TOO_MANY_SUBS
    await nc._request("unsub", {"sid": 1})
    await nc._request("sub", {"sid": 999_999, "subject": "s.over"})   # room again
    await nc.close()


def test_max_inflight_per_connection_is_enforced(server):
    async def setup():
        nc = await connect([server.addr])
        js = nc.jetstream()
        await js.add_stream(name="W", subjects=["w.>"])
        await js.add_consumer("W", durable_name="c", max_waiting=5000)
        limit = nc.info.max_inflight
        await nc.close()
        return limit
    limit = asyncio.run(setup())
    sock, _ = _open(server.addr, connect_first=True)
    n = limit + 50
    reqs = b"".join(P.encode(P.Request(i + 1, "fetch", {"stream": "W", "consumer": "c", "expires": 3.0}))
                    for i in range(n))
    sock.sendall(reqs)
    d = P.Decoder()
    frames = []
    sock.settimeout(10)
    while len(frames) < n:
        data = sock.recv(65536)
        assert data
        d.feed(data)
        frames += d.frames()
    sock.close()
    too_many = [f for f in frames if isinstance(f, P.Error) and f.err_code == P.ERR_TOO_MANY_INFLIGHT]
    empty = [f for f in frames if isinstance(f, P.Response) and f.body == {"msgs": []}]
    assert len(too_many) == 50 and all(f.code == 429 and f.id > limit for f in too_many)
    assert len(empty) == limit
