"""Fuzzing the NATS protocol codec (api/server/nats/codec.py) and a real NATS front.

The codec is pure (bytes in, operations out), so most of this file feeds it bytes:
valid client streams in random chunk splits (the operations must not depend on how TCP
cut them), arbitrary and mutated bytes (only NatsProtocolError with a codec -ERR text,
a bounded buffer, no hang), and the server's own frames through nats-py's parser. The
last test throws a few hundred garbage frames at a real node and checks after each that
a nats-py client is still served and its stored messages are intact.
"""
import asyncio
import json
import random
import threading

import nats
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsPyClient
from nats.protocol import command as nats_cmd
from nats.protocol.parser import Parser as NatsPyParser

from api.server.nats import codec as C
from test_nats_e2e import nserver  # noqa: F401  (the fixture: one node with its NATS front)

# Errors the parser itself can raise; the rest of the ERR_* texts belong to the front.
PARSER_ERRORS = {C.ERR_UNKNOWN_OP, C.ERR_MAX_PAYLOAD, C.ERR_PARSER, C.ERR_MAX_CONTROL_LINE, C.ERR_INVALID_SUBJECT}
ALL_ERRORS = {v for k, v in vars(C).items() if k.startswith("ERR_")}
assert PARSER_ERRORS <= ALL_ERRORS

FAST = settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.too_slow])


# == strategies: what a client sends ======================================================

# A subject token: anything but ASCII/Unicode whitespace, controls and the separator.
token_chars = st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters=".*>")
token = st.text(token_chars, min_size=1, max_size=6) | st.sampled_from(["a", "orders", "$JS", "_INBOX", "x-1"])
subject = st.lists(token, min_size=1, max_size=5).map(".".join)
sub_subject = st.tuples(st.lists(token | st.just("*"), min_size=1, max_size=4), st.booleans()).map(
    lambda t: ".".join(t[0] + ([">"] if t[1] else [])))
sid = st.integers(1, 2 ** 63).map(str) | st.text("abcdefXYZ0123456789", min_size=1, max_size=8)
# Payloads with line ends and whole protocol lines inside: the parser must count, not scan.
payload = st.binary(max_size=300) | st.lists(
    st.sampled_from([b"\r\n", b"\n", b"\r", b"PING\r\n", b"PUB a 1\r\n", b"\r\n\r\n"]) | st.binary(max_size=16),
    max_size=8).map(b"".join)
header_key = st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,12}", fullmatch=True)
header_value = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
headers = st.dictionaries(header_key, header_value, max_size=5)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
connect_options = st.fixed_dictionaries(
    {}, optional={"verbose": st.booleans(), "pedantic": st.booleans(), "headers": st.booleans(),
                  "no_responders": st.booleans(), "name": st.text(max_size=10), "lang": st.just("python3"),
                  "version": st.just("2.16.0"), "protocol": st.just(1), "auth_token": st.text(max_size=10),
                  "echo": st.booleans()}) | st.dictionaries(st.text(max_size=8), json_value, max_size=4)


def _header_block(h: dict) -> bytes:
    """The header block exactly as nats-py's publish() builds it."""
    out = bytearray(b"NATS/1.0\r\n")
    for k, v in h.items():
        out += k.encode() + b": " + v.strip().translate(str.maketrans({"\r": " ", "\n": " "})).encode() + b"\r\n"
    return bytes(out + b"\r\n")


@st.composite
def client_op(draw):
    """(the operation the parser must yield, the bytes nats-py would send for it)."""
    kind = draw(st.sampled_from(["pub", "hpub", "sub", "unsub", "ping", "pong", "connect"]))
    if kind in ("pub", "hpub"):
        subj, reply, data = draw(subject), draw(st.just("") | subject), draw(payload)
        if kind == "pub":
            return C.Pub(subj, reply or None, data), nats_cmd.pub_cmd(subj, reply, data)
        block = _header_block(draw(headers))
        return C.Pub(subj, reply or None, data, block), nats_cmd.hpub_cmd(subj, reply, block, data)
    if kind == "sub":
        subj, queue, s = draw(sub_subject), draw(st.just("") | token), draw(sid)
        return C.Sub(subj, queue or None, s), nats_cmd.sub_cmd(subj, queue, s)
    if kind == "unsub":
        s, limit = draw(sid), draw(st.just(0) | st.integers(1, 10 ** 9))
        return C.Unsub(s, limit or None), nats_cmd.unsub_cmd(s, limit)
    if kind == "ping":
        return C.Ping(), b"PING\r\n"
    if kind == "pong":
        return C.Pong(), b"PONG\r\n"
    opts = draw(connect_options)
    return C.Connect(opts), b"CONNECT " + json.dumps(opts, sort_keys=True).encode() + b"\r\n"


client_stream = st.lists(client_op(), min_size=1, max_size=12)


def feed(p: C.Parser, data: bytes) -> list:
    """Every operation `data` completes (the parser pauses after a CONNECT: go on)."""
    ops = p.feed(data)
    while ops and isinstance(ops[-1], C.Connect):
        more = p.feed(b"")
        if not more:
            break
        ops += more
    return ops


def _split(data: bytes, cuts: list) -> list:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


chunk_cuts = st.lists(st.integers(0, 10 ** 6), max_size=40) | st.just(list(range(0, 5000)))  # incl. byte by byte


# == 1. round trips =======================================================================

@FAST
@given(client_stream, chunk_cuts)
def test_client_operations_parse_back_exactly_however_the_bytes_are_cut(ops, cuts):
    expected = [op for op, _ in ops]
    wire = b"".join(b for _, b in ops)
    whole = C.Parser(max_payload=1 << 20)
    assert feed(whole, wire) == expected
    chunked = C.Parser(max_payload=1 << 20)
    got = []
    for piece in _split(wire, cuts):
        got += feed(chunked, piece)
    assert got == expected
    assert len(chunked._buf) == 0 and chunked._pending is None    # nothing left half-read


@FAST
@given(headers)
def test_a_header_block_from_nats_py_decodes_to_its_headers(h):
    block = _header_block(h)
    want = {k: v.strip().translate(str.maketrans({"\r": " ", "\n": " "})).strip() for k, v in h.items()}
    assert C.decode_headers(block) == want


# == 2. garbage ===========================================================================

def _mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        what = rnd.randrange(6)
        at = rnd.randint(0, len(b))
        if what == 0 and b and at < len(b):
            b[at] = rnd.randrange(256)                                  # flip a byte
        elif what == 1:
            b[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))   # insert junk
        elif what == 2:
            del b[at:at + rnd.randint(1, 16)]                           # drop a run
        elif what == 3:
            del b[at:]                                                  # truncate
        elif what == 4:
            b[at:at] = b[rnd.randint(0, len(b)):][:rnd.randint(1, 64)]  # duplicate a slice
        else:
            b[at:at] = rnd.choice([b"\r\n", b"\n", b" ", b"\t", b"0", b"9999999999", b"-1"])
    return bytes(b)


# Hand-made nastiness random bytes rarely reach: huge numbers, deep JSON, long lines.
nasty = st.one_of(
    st.tuples(st.sampled_from([b"PUB a ", b"PUB a r ", b"HPUB a 12 ", b"HPUB a ", b"UNSUB 1 ", b"SUB a "]),
              st.integers(1, 6000)).map(lambda t: t[0] + b"9" * t[1] + b"\r\n"),
    st.integers(1, 3000).map(lambda n: b"CONNECT " + b"[" * n + b"\r\n"),
    st.integers(1, 3000).map(lambda n: b'CONNECT ' + b'{"a":' * n + b"\r\n"),
    st.integers(1, 6000).map(lambda n: b"CONNECT " + b"1" * n + b"\r\n"),
    st.sampled_from([b"CONNECT \xff\xfe\r\n", b"CONNECT []\r\n", b"CONNECT null\r\n", b"PUB \xff 1\r\nx\r\n",
                     b"HPUB a 5 4\r\n", b"HPUB a 11 11\r\n", b"PUB a -1\r\n", b"PUB a 1 2 3 4\r\n",
                     b"PUB a 3\r\nabcXY", b"   \r\n", b"\r\n\r\n", b"pub a 1\r\nx\r\n", b"PING", b"PI\r\nNG\r\n",
                     b"SUB\r\n", b"UNSUB\r\n", b"UNSUB 1 x\r\n", b"\x00\r\n", b"+OK\r\n", b"MSG a 1 1\r\nx\r\n"]),
    st.integers(1, 3000).map(lambda n: b"X" * n),
)
garbage = st.one_of(
    st.binary(max_size=3000),
    st.lists(nasty | st.binary(max_size=40) | client_op().map(lambda t: t[1]), max_size=6).map(b"".join),
    st.tuples(client_stream.map(lambda ops: b"".join(b for _, b in ops)), st.randoms(use_true_random=False))
    .map(lambda t: _mutate(*t)),
)


def _feed_all(p: C.Parser, pieces: list):
    """Feed until the parser objects; return (ops, error text or None), checking bounds after each feed."""
    ops = []
    for piece in pieces:
        try:
            ops += feed(p, piece)
        except C.NatsProtocolError as e:
            assert e.text in PARSER_ERRORS and str(e) == e.text
            return ops, e.text
        # A peer can make the parser hold at most one control line or one payload (and its CRLF).
        held = len(p._buf)
        assert held <= p.max_line + p.max_payload
        assert held <= (p.max_payload + 1 if p._pending is not None else p.max_line)
    return ops, None


@FAST
@given(garbage, chunk_cuts, st.integers(0, 512), st.integers(1, 1024) | st.just(C.MAX_LINE))
@example(b"PUB a " + b"9" * 5000 + b"\r\n", [], 512, 1024)       # once a ValueError out of int()
@example(b"CONNECT " + b"[" * 5000 + b"\r\n", [], 512, 1 << 16)  # once a RecursionError out of json
def test_garbage_only_ever_raises_a_protocol_error_and_stays_bounded(data, cuts, max_payload, max_line):
    # Anything but NatsProtocolError escaping here fails the test with that exception.
    chunked_ops, chunked_err = _feed_all(C.Parser(max_payload, max_line), _split(data, cuts))
    # Where the bytes were cut must not change the verdict. (The operations read before it
    # may be fewer: those parsed in the same feed() as the error are not returned.)
    one_ops, one_err = _feed_all(C.Parser(max_payload, max_line), [data[i:i + 1] for i in range(len(data))])
    assert chunked_err == one_err
    assert chunked_ops == one_ops[:len(chunked_ops)]
    if one_err is None:
        assert chunked_ops == one_ops


@FAST
@given(st.binary(max_size=2000) | garbage)
def test_header_blocks_of_any_shape_decode_or_raise_a_parser_error(block):
    try:
        out = C.decode_headers(block)
    except C.NatsProtocolError as e:
        assert e.text == C.ERR_PARSER
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())


@settings(max_examples=10, deadline=5000)
@given(st.sampled_from([1, 7, 1024, 65536]))
def test_a_slow_drip_of_an_endless_line_or_payload_ends_in_bounded_time(step):
    # Real limits: a control line past 64 KiB is refused, whatever the drip size.
    p = C.Parser(max_payload=1 << 20)
    junk = b"SUB " + b"a" * (C.MAX_LINE + step)
    with pytest.raises(C.NatsProtocolError) as e:
        for i in range(0, len(junk), step):
            feed(p, junk[i:i + step])
    assert e.value.text == C.ERR_MAX_CONTROL_LINE
    # A payload announced at max_payload waits for exactly its bytes and CRLF, then is one PUB.
    p = C.Parser(max_payload=1 << 20)
    body = bytes(range(256)) * 4096
    wire = b"PUB big 1048576\r\n" + body + b"\r\n"
    got = []
    for i in range(0, len(wire), max(step, 4096)):
        got += feed(p, wire[i:i + max(step, 4096)])
        assert len(p._buf) <= p.max_payload + 1
    assert got == [C.Pub("big", None, body)]


# == 3. the server's frames, read by nats-py ==============================================

class _Recorder:
    """Stands in for nats-py's Client under its Parser: records what the parser dispatches."""

    def __init__(self):
        self.events = []

    async def _process_msg(self, sid, subject, reply, data, hdr):
        self.events.append(("msg", sid, subject, reply, data, hdr))

    async def _process_err(self, text):
        self.events.append(("err", text))

    async def _process_ping(self):
        self.events.append(("ping",))

    async def _process_pong(self):
        self.events.append(("pong",))

    async def _process_info(self, info):
        self.events.append(("info", info))


def _run(coro):
    """Run a coroutine that never waits on anything (nats-py's parser over a recorder)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the coroutine suspended")


def _nats_py_headers(block: bytes) -> dict:
    got = _run(NatsPyClient()._process_headers(block)) or {}
    return {getattr(k, "value", k): v for k, v in got.items()}     # nats-py keys some by an Enum


# nats-py str.strip()s values, so no Unicode whitespace (NBSP, NEL) at their ends.
plain_value_chars = st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_categories=("Zs", "Cc"))
# Header dicts of the shapes the front sends: user headers, a bare status (no responders),
# a status with its description and extra headers (pull 404/408/409, idle heartbeats).
server_headers = st.one_of(
    st.dictionaries(header_key.filter(lambda k: k not in ("Status", "Description")),
                    st.text(plain_value_chars, max_size=12), min_size=1, max_size=4),
    st.sampled_from(["503", "404", "408"]).map(lambda s: {"Status": s}),
    st.tuples(st.sampled_from(["100", "404", "408", "409"]),
              st.sampled_from(["Idle Heartbeat", "No Messages", "Request Timeout", "Exceeded MaxWaiting",
                               "Bad Request - batch must be positive"]),
              st.dictionaries(st.sampled_from(["Nats-Pending-Messages", "Nats-Pending-Bytes", "Nats-Last-Stream"]),
                              st.integers(0, 10 ** 6).map(str), max_size=2))
    .map(lambda t: {"Status": t[0], "Description": t[1], **t[2]}),
)
server_subject = st.lists(st.text("abcxyz019-_$", min_size=1, max_size=6), min_size=1, max_size=4).map(".".join)


@st.composite
def server_frame(draw):
    """(the bytes the codec writes, the event nats-py's parser must report for them)."""
    kind = draw(st.sampled_from(["msg", "hmsg", "info", "err", "ping", "pong", "ok"]))
    if kind in ("msg", "hmsg"):
        subj, s, reply, data = draw(server_subject), draw(st.integers(1, 2 ** 32)), draw(
            st.none() | server_subject), draw(payload)
        h = draw(server_headers) if kind == "hmsg" else None
        block = C.encode_headers(h) if h else b""
        return C.msg_frame(subj, str(s), reply, data, block), ("msg", s, subj.encode(), (reply or "").encode(),
                                                               data, block or None), h
    if kind == "info":
        info = draw(st.dictionaries(st.text(max_size=8), json_value, max_size=5))
        return C.info_line(info), ("info", info), None
    if kind == "err":
        text = draw(st.sampled_from(sorted(ALL_ERRORS)))
        return C.err_line(text), ("err", f"'{text.lower()}'"), None
    if kind == "ping":
        return C.PING, ("ping",), None
    if kind == "pong":
        return C.PONG, ("pong",), None
    return C.OK, None, None                      # nats-py skips +OK without a word


@FAST
@given(st.lists(server_frame(), min_size=1, max_size=10), chunk_cuts)
def test_server_frames_are_read_by_nats_pys_own_parser(frames, cuts):
    rec = _Recorder()
    parser = NatsPyParser(rec)
    wire = b"".join(f for f, _, _ in frames)
    for piece in _split(wire, cuts):
        _run(parser.parse(piece))
    assert rec.events == [e for _, e, _ in frames if e is not None]
    assert len(parser.buf) == 0
    for (_, event, h), got in zip([f for f in frames if f[1] is not None], rec.events):
        if h:       # and nats-py reads back the headers the front meant
            assert _nats_py_headers(got[5]) == h
            assert C.decode_headers(got[5]) == h


@FAST
@given(server_subject, st.integers(1, 2 ** 32).map(str), st.none() | server_subject, payload, server_headers)
def test_a_delivered_message_reparses_as_the_publish_it_came_from(subj, s, reply, data, h):
    # MSG/HMSG and PUB/HPUB share their framing: our own parser reads a MSG turned back into a PUB.
    block = C.encode_headers(h)
    frame = C.msg_frame(subj, s, reply, data, block)
    line, _, rest = frame.partition(b"\r\n")
    verb, subj_b, _sid, *tail = line.split(b" ")
    pub = {b"MSG": b"PUB", b"HMSG": b"HPUB"}[verb] + b" " + b" ".join([subj_b, *tail]) + b"\r\n" + rest
    assert C.Parser(1 << 20).feed(pub) == [C.Pub(subj, reply, data, block or None)]


# == 4. a real node under garbage =========================================================

KEEP = "KEEPNATS"


def _e2e_garbage(rnd: random.Random) -> tuple[bytes, bool]:
    """One garbage frame and whether a CONNECT goes first (so it reaches the connected parser)."""
    subj = lambda: ".".join(rnd.choice(["a", "b", "orders", "x", "$JS.API.INFO", "_INBOX.z"]) for _ in range(2))
    valid = [b"PING\r\n", b"PONG\r\n", b"SUB " + subj().encode() + b" 1\r\n", b"UNSUB 1 3\r\n",
             nats_cmd.pub_cmd(subj(), "", rnd.randbytes(rnd.randint(0, 40))),
             nats_cmd.hpub_cmd(subj(), "r.x", _header_block({"K": "v"}), b"data"),
             b'CONNECT {"verbose":true,"headers":true}\r\n']
    kind = rnd.randrange(7)
    if kind == 0:
        data = rnd.randbytes(rnd.randint(1, 300))
    elif kind == 1:
        data = _mutate(b"".join(rnd.choices(valid, k=rnd.randint(1, 5))), rnd)
    elif kind == 2:         # a valid frame cut short: the rest never comes
        v = rnd.choice(valid)
        data = v[:rnd.randint(0, len(v) - 1)]
    elif kind == 3:         # a payload longer than announced
        data = b"PUB a 3\r\nabcdef\r\n"
    elif kind == 4:         # headers the front cannot read
        junk = rnd.choice([b"NATS/1.0\r\nno colon here\r\n\r\n", b"HTTP/1.1 200\r\n\r\n\r\n", b"NATS/1.0\r\n\r\n\r\n"])
        data = b"HPUB a %d %d\r\n" % (len(junk), len(junk) + 2) + junk + b"hi\r\n"
    elif kind == 5:         # too long, too big, too many digits, too deep
        data = rnd.choice([b"SUB " + b"a" * (C.MAX_LINE + 10) + b" 1\r\n", b"PUB a %d\r\n" % (2 ** 40),
                           b"PUB a " + b"9" * 5000 + b"\r\n", b"CONNECT " + b"[" * 5000 + b"\r\n"])
    else:
        data = rnd.choice([b"\xff\xfe\xfd\r\n", b"HPUB a 1 1\r\nx\r\n", b"MSG a 1 1\r\nx\r\n", b"-ERR 'x'\r\n",
                           b"SUB \xff 1\r\n", b"CONNECT [1]\r\n", b"\r\n" * 50])
    assert b"keep" not in data.lower()      # garbage never names the stream under watch
    return data, rnd.random() < 0.6


def _fatal_verdicts(wire: bytes) -> set:
    """The -ERR texts the front may close this connection with, by our own codec's reading:
    the first operation the front refuses (anything before CONNECT, a header block it cannot
    decode) and the parser's verdict. Either may come last: operations parsed in the same
    read as a parser error are never run."""
    p, ops, verdicts = C.Parser(1 << 20), [], set()
    try:
        for i in range(len(wire)):
            ops += feed(p, wire[i:i + 1])
    except C.NatsProtocolError as e:
        verdicts.add(e.text)
    connected = False
    for op in ops:
        if not connected and not isinstance(op, C.Connect):
            return verdicts | {C.ERR_UNKNOWN_OP}
        connected = True
        if isinstance(op, C.Pub) and op.headers:
            try:
                C.decode_headers(op.headers)
            except C.NatsProtocolError as e:
                return verdicts | {e.text}
    return verdicts


async def _throw(url: str, data: bytes) -> tuple[bytes, bool]:
    """One raw connection: read INFO, send the garbage, half-close, read to the end.
    Returns what the node said and whether it reset the connection (then the tail of
    its answer may be lost: a close with unread input sends RST)."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = await asyncio.wait_for(reader.readline(), 5)
        assert info.startswith(b"INFO ")
        try:
            writer.write(data)
            await writer.drain()
            writer.write_eof()
        except ConnectionError:
            pass            # the node already objected and closed
        try:
            # EOF from our side ends any half-read frame, so the node always closes.
            return info + await asyncio.wait_for(reader.read(), 10), False
        except ConnectionError:
            return info, True
    finally:
        writer.close()


NON_FATAL = {C.ERR_INVALID_SUBJECT.lower(), "maximum subscriptions exceeded"}     # SUB refused, connection kept


async def test_a_node_under_hundreds_of_garbage_frames_keeps_serving_nats_clients(nserver):  # noqa: F811
    log = []
    drain = threading.Thread(target=lambda: log.extend(nserver.proc.stdout), daemon=True)
    drain.start()           # the node's log pipe must not fill up and block it
    nc = await nats.connect(nserver.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(name=KEEP, subjects=["keepnats.>"])
        first = await js.publish("keepnats.first", b"stored before the storm", headers={"Nats-Msg-Id": "first"})
        rnd, checked = random.Random(12), 0
        for n in range(1, 301):
            data, connect_first = _e2e_garbage(rnd)
            wire = (b'CONNECT {"headers":true}\r\n' if connect_first else b"") + data
            answer, reset = await _throw(nserver.nats_url, wire)
            # Whatever the node said is well-formed NATS (nats-py's parser reads it) ...
            rec = _Recorder()
            _run(NatsPyParser(rec).parse(answer))
            errs = [e[1].strip("'") for e in rec.events if e[0] == "err"]
            # ... and its -ERRs are the ones our codec predicts for these bytes.
            fatal = {t.lower() for t in _fatal_verdicts(wire)}
            if not fatal:
                assert set(errs) <= NON_FATAL, (wire, errs)
            elif not reset:
                assert errs and errs[-1] in fatal and set(errs[:-1]) <= NON_FATAL, (wire, errs, fatal)
                checked += 1
            # ... and the well-behaved client is still served, its data intact.
            ack = await js.publish("keepnats.x", b"good-%d" % n)
            assert (ack.stream, ack.seq) == (KEEP, n + 1)
            raw = await nc.request(f"$JS.API.STREAM.MSG.GET.{KEEP}", json.dumps({"seq": ack.seq}).encode(), timeout=5)
            assert json.loads(raw.data)["message"]["seq"] == ack.seq
            info = await js.stream_info(KEEP)
            assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (n + 1, 1, n + 1)
        assert checked > 100        # most frames were refused, and with the predicted -ERR
        kept = await js.get_msg(KEEP, first.seq)
        assert (kept.data, kept.headers["Nats-Msg-Id"]) == (b"stored before the storm", "first")
    finally:
        await nc.close()
    nserver.stop()
    drain.join(10)
    assert not [line for line in log if "Traceback" in line or "connection failed" in line], "".join(log)
