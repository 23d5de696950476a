"""Unit tests of the pure frame codec (api/protocol.py): no sockets, no server."""
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import protocol as P

SAMPLES = [
    P.Info(server_id="n1", max_frame=1 << 20, max_payload=1 << 19, max_inflight=7, max_subs=9,
           auth_required=True, leader="n1@127.0.0.1:4222", leader_addr="127.0.0.1:4222"),
    P.Info(server_id="n2"),
    P.Connect(name="c", token="t", user="u", password="p"),
    P.Connect(),
    P.Request(1, "pub", {"subject": "a.b", "data": b"\x00\xff", "headers": {"K": "v"}}),
    P.Request(0, "ack", None),
    P.Response(1, {"stream": "S", "seq": 3}),
    P.Response(0, {"ok": True}),
    P.Error(5, 404, 10059, "stream not found", None),
    P.Error(0, 400, P.ERR_MALFORMED, "bad", "127.0.0.1:4222"),
    P.Msg(1, "a.b", "_INBOX.x", {"H": "1"}, b"payload", {"stream": "S", "stream_seq": 1}),
    P.Msg(2, "x", None, None, b"", None),
    P.Ping(),
    P.Pong(),
]


def decode_all(data: bytes, max_frame: int = P.DEFAULT_MAX_FRAME) -> list:
    d = P.Decoder(max_frame)
    d.feed(data)
    return d.frames()


def raw_frame(obj) -> bytes:
    """A frame whose body is any msgpack object (for building bad frames)."""
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


# == round trips =========================================================================

@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: type(f).__name__)
def test_every_frame_type_round_trips(frame):
    data = P.encode(frame)
    (n,) = struct.unpack(">I", data[:4])
    assert n == len(data) - 4
    assert decode_all(data) == [frame]


def test_encoding_is_a_type_tagged_msgpack_array_in_field_order():
    data = P.encode(P.Request(7, "stream.info", {"name": "S"}))
    assert msgpack.unpackb(data[4:], raw=False) == [P.REQUEST, 7, "stream.info", {"name": "S"}]
    data = P.encode(P.Msg(3, "s", None, None, b"d", None))
    assert msgpack.unpackb(data[4:], raw=False) == [P.MSG, 3, "s", None, None, b"d", None]
    assert [P.INFO, P.CONNECT, P.REQUEST, P.RESPONSE, P.ERROR, P.MSG, P.PING, P.PONG] == list(range(1, 9))


def test_trailing_fields_may_be_omitted_and_take_their_defaults():
    # A client in another language may send a short CONNECT / MSG.
    assert decode_all(raw_frame([P.CONNECT])) == [P.Connect()]
    assert decode_all(raw_frame([P.MSG, 1, "s"])) == [P.Msg(1, "s")]
    assert decode_all(raw_frame([P.REQUEST, 4, "stream.names"])) == [P.Request(4, "stream.names", None)]


def test_many_frames_in_one_buffer_decode_in_order():
    data = b"".join(P.encode(f) for f in SAMPLES)
    assert decode_all(data) == SAMPLES


def test_incremental_decoding_byte_by_byte():
    data = b"".join(P.encode(f) for f in SAMPLES)
    d = P.Decoder()
    out = []
    for i in range(len(data)):
        d.feed(data[i:i + 1])
        f = d.next()
        if f is not None:
            out.append(f)
            assert d.next() is None
    assert out == SAMPLES
    assert d.buffered == 0


def test_partial_header_and_partial_body_need_more_bytes():
    data = P.encode(P.Request(1, "pub", {"data": b"x" * 100}))
    d = P.Decoder()
    d.feed(data[:3])
    assert d.next() is None
    d.feed(data[3:50])
    assert d.next() is None and d.buffered == 50
    d.feed(data[50:])
    assert isinstance(d.next(), P.Request)


# == errors ==============================================================================

def test_oversize_declared_length_is_fatal_before_the_body_arrives():
    d = P.Decoder(max_frame=1024)
    d.feed(struct.pack(">I", 1025))          # only the header: the body never needs to arrive
    with pytest.raises(P.ProtocolError) as e:
        d.next()
    assert e.value.fatal and e.value.err_code == P.ERR_FRAME_TOO_LARGE


def test_frame_at_exactly_max_frame_is_accepted():
    frame = P.Request(1, "pub", {"data": b""})
    body_len = len(P.encode(frame)) - 4
    assert decode_all(P.encode(frame), max_frame=body_len) == [frame]
    with pytest.raises(P.ProtocolError) as e:
        decode_all(P.encode(frame), max_frame=body_len - 1)
    assert e.value.fatal


def test_huge_length_prefix_is_fatal_not_a_memory_problem():
    d = P.Decoder()
    d.feed(b"\xff\xff\xff\xff" + b"x" * 10)
    with pytest.raises(P.ProtocolError) as e:
        d.next()
    assert e.value.fatal and e.value.err_code == P.ERR_FRAME_TOO_LARGE


BAD_BODIES = [
    ("not msgpack", b"\xc1", P.ERR_MALFORMED),                       # 0xc1 is never used in msgpack
    ("truncated msgpack", msgpack.packb([P.REQUEST, 1, "pub"])[:-2], P.ERR_MALFORMED),
    ("extra data", msgpack.packb([P.PING]) + b"\x01", P.ERR_MALFORMED),
    ("not an array", msgpack.packb({"type": 1}), P.ERR_MALFORMED),
    ("empty array", msgpack.packb([]), P.ERR_MALFORMED),
    ("type not int", msgpack.packb(["REQUEST", 1, "pub"]), P.ERR_MALFORMED),
    ("unknown type", msgpack.packb([99, 1, 2]), P.ERR_UNKNOWN_FRAME),
    ("type zero", msgpack.packb([0]), P.ERR_UNKNOWN_FRAME),
    ("negative type", msgpack.packb([-3]), P.ERR_UNKNOWN_FRAME),
    ("too many fields", msgpack.packb([P.PING, 1]), P.ERR_MALFORMED),
    ("missing fields", msgpack.packb([P.REQUEST, 1]), P.ERR_MALFORMED),
    ("missing info server_id", msgpack.packb([P.INFO]), P.ERR_MALFORMED),
    ("id not int", msgpack.packb([P.REQUEST, "1", "pub", {}]), P.ERR_MALFORMED),
    ("op not str", msgpack.packb([P.REQUEST, 1, 5, {}]), P.ERR_MALFORMED),
    ("response id not int", msgpack.packb([P.RESPONSE, None, {}]), P.ERR_MALFORMED),
    ("error id not int", msgpack.packb([P.ERROR, [], 1, 2, "x"]), P.ERR_MALFORMED),
    ("msg data not bytes", msgpack.packb([P.MSG, 1, "s", None, None, "text", None], use_bin_type=True),
     P.ERR_MALFORMED),
    ("msg subject not str", msgpack.packb([P.MSG, 1, b"s", None, None, b"", None], use_bin_type=True),
     P.ERR_MALFORMED),
    ("msg sid not int", msgpack.packb([P.MSG, "1", "s", None, None, b"", None], use_bin_type=True),
     P.ERR_MALFORMED),
]


@pytest.mark.parametrize("name,body,err_code", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_body_is_non_fatal_and_the_next_frame_still_decodes(name, body, err_code):
    d = P.Decoder()
    d.feed(struct.pack(">I", len(body)) + body + P.encode(P.Ping()))
    with pytest.raises(P.ProtocolError) as e:
        d.next()
    assert not e.value.fatal
    assert e.value.err_code == err_code
    assert e.value.description
    assert d.next() == P.Ping()
    assert d.buffered == 0


def test_empty_frame_is_non_fatal():
    d = P.Decoder()
    d.feed(b"\x00\x00\x00\x00" + P.encode(P.Pong()))
    with pytest.raises(P.ProtocolError) as e:
        d.next()
    assert not e.value.fatal and e.value.err_code == P.ERR_MALFORMED
    assert d.next() == P.Pong()


def test_frames_method_raises_on_the_bad_frame_then_continues():
    d = P.Decoder()
    d.feed(P.encode(P.Ping()) + raw_frame([42]) + P.encode(P.Pong()))
    with pytest.raises(P.ProtocolError):
        d.frames()          # the Ping before it was consumed by this call and lost to the caller
    assert d.frames() == [P.Pong()]


def test_protocol_error_carries_code_description_and_fatal_flag():
    e = P.ProtocolError(P.ERR_MALFORMED, "why", fatal=False)
    assert (e.err_code, e.description, e.fatal, str(e)) == (P.ERR_MALFORMED, "why", False, "why")


# == property tests ======================================================================

@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.integers(min_value=1, max_value=64))
def test_random_bytes_raise_nothing_but_protocol_error(data, chunk):
    d = P.Decoder(max_frame=4096)
    for i in range(0, len(data), chunk):
        d.feed(data[i:i + chunk])
        while True:
            try:
                f = d.next()
            except P.ProtocolError as e:
                assert isinstance(e.err_code, int) and isinstance(e.description, str)
                if e.fatal:
                    return
                continue
            if f is None:
                break


msgpack_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
                         st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20))
msgpack_value = st.recursive(msgpack_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


@settings(max_examples=500)
@given(st.lists(msgpack_value, max_size=8), st.integers(min_value=-2, max_value=12))
def test_well_delimited_random_arrays_never_desync_the_decoder(fields, t):
    # Any well-delimited body decodes to a frame or is a non-fatal ProtocolError,
    # and the frame after it always decodes.
    d = P.Decoder()
    d.feed(raw_frame([t] + fields) + P.encode(P.Ping()))
    try:
        f = d.next()
        assert f is not None
        assert type(f) in P._TYPE_OF
    except P.ProtocolError as e:
        assert not e.fatal
    assert d.next() == P.Ping()


ids = st.integers(min_value=0, max_value=2 ** 63 - 1)
texts = st.text(max_size=30)
opt_texts = st.none() | texts
headers = st.none() | st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=4)
bodies = st.none() | st.dictionaries(st.text(max_size=10), msgpack_value, max_size=5)

frames = st.one_of(
    st.builds(P.Info, server_id=texts, version=st.integers(0, 100), max_frame=st.integers(0, 2 ** 32),
              max_payload=st.integers(0, 2 ** 32), max_inflight=st.integers(0, 10 ** 6),
              max_subs=st.integers(0, 10 ** 6), auth_required=st.booleans(), leader=opt_texts,
              leader_addr=opt_texts),
    st.builds(P.Connect, version=st.integers(0, 100), name=opt_texts, token=opt_texts, user=opt_texts,
              password=opt_texts),
    st.builds(P.Request, id=ids, op=texts, body=bodies),
    st.builds(P.Response, id=ids, body=msgpack_value),
    st.builds(P.Error, id=ids, code=st.integers(0, 999), err_code=st.integers(0, 99999), description=texts,
              leader_addr=opt_texts),
    st.builds(P.Msg, sid=ids, subject=texts, reply=opt_texts, headers=headers, data=st.binary(max_size=200),
              meta=st.none() | st.dictionaries(st.text(max_size=10), msgpack_leaf, max_size=6)),
    st.just(P.Ping()),
    st.just(P.Pong()),
)


@settings(max_examples=300)
@given(st.lists(frames, min_size=1, max_size=6), st.integers(min_value=1, max_value=97))
def test_generated_frames_round_trip_through_any_chunking(fs, chunk):
    data = b"".join(P.encode(f) for f in fs)
    d = P.Decoder()
    out = []
    for i in range(0, len(data), chunk):
        d.feed(data[i:i + chunk])
        out.extend(d.frames())
    assert out == fs
    assert d.buffered == 0
