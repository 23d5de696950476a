"""The route verbs of the NATS codec (api/server/nats/codec.py): parsed only once a
connection has proved it is a route, and round-trip whatever the byte boundaries."""
import pytest

from api.server.nats import codec as C

HDR = C.encode_headers({"K": "v", "Nats-Msg-Id": "x1"})
FRAMES = [
    (C.route_sub_line("orders.*", None, True), C.RouteSub("orders.*", None, True)),
    (C.route_sub_line("work", "workers", False), C.RouteSub("work", "workers", False)),
    (C.route_msg_frame("_INBOX.a.*", None, "orders.new", "$JS.ACK.S.C.1.2.3.4.5", b"data", HDR),
     C.RouteMsg("_INBOX.a.*", None, "orders.new", "$JS.ACK.S.C.1.2.3.4.5", b"data", HDR)),
    (C.route_msg_frame("work", "workers", "work", None, b""), C.RouteMsg("work", "workers", "work", None, b"")),
    (C.route_pub_frame("$JS.API.STREAM.INFO.S", "_INBOX.r", True, b"{}"),
     C.RoutePub(C.Pub("$JS.API.STREAM.INFO.S", "_INBOX.r", b"{}"), True)),
    (C.route_pub_frame("orders.x", None, False, b"p", HDR), C.RoutePub(C.Pub("orders.x", None, b"p", HDR), False)),
]


def test_route_frames_parse_back_in_one_piece_and_byte_by_byte():
    wire = b"".join(f for f, _ in FRAMES)
    whole = C.Parser(1 << 20)
    whole.routes = True
    assert whole.feed(wire) == [op for _, op in FRAMES]
    split = C.Parser(1 << 20)
    split.routes = True
    got = []
    for i in range(len(wire)):
        got += split.feed(wire[i:i + 1])
    assert got == [op for _, op in FRAMES]


@pytest.mark.parametrize("frame", [f for f, _ in FRAMES])
def test_a_client_connection_cannot_speak_route_verbs(frame):
    with pytest.raises(C.NatsProtocolError) as e:
        C.Parser(1 << 20).feed(frame)
    assert e.value.text == C.ERR_UNKNOWN_OP


def test_route_payloads_are_bounded_like_client_ones():
    p = C.Parser(100)
    p.routes = True
    with pytest.raises(C.NatsProtocolError) as e:
        p.feed(b"RMSG a - a - 0 101\r\n")
    assert e.value.text == C.ERR_MAX_PAYLOAD


def test_parsing_pauses_after_connect_so_what_follows_can_be_read_as_a_route():
    p = C.Parser(1 << 20)
    wire = b'CONNECT {"route":"n2"}\r\n' + C.route_sub_line("a.>", None, True)
    assert p.feed(wire) == [C.Connect({"route": "n2"})]
    p.routes = True
    assert p.feed(b"") == [C.RouteSub("a.>", None, True)]
