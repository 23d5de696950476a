"""The binary RPC codec: bytes in, typed frames out, and back. No sockets here.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack:
an array whose first element is the frame type. See docs/protocol.md.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Optional, Union

import msgpack

VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024

# Frame types (first element of the msgpack array).
INFO, CONNECT, REQUEST, RESPONSE, ERROR, MSG, PING, PONG = range(1, 9)


class ProtocolError(Exception):
    """A frame that cannot be decoded. `fatal` means the byte stream is out of sync
    and the connection must be closed after the error frame is sent."""

    def __init__(self, err_code: int, description: str, fatal: bool):
        super().__init__(description)
        self.err_code = err_code
        self.description = description
        self.fatal = fatal


# Connection-level error codes (JetStream codes are used for operation errors).
ERR_FRAME_TOO_LARGE = 10900
ERR_MALFORMED = 10901
ERR_UNKNOWN_FRAME = 10902
ERR_AUTH = 10903
ERR_TOO_MANY_INFLIGHT = 10904
ERR_TOO_MANY_SUBS = 10905
ERR_PAYLOAD_TOO_LARGE = 10906
ERR_NOT_CONNECTED = 10907
ERR_UNKNOWN_OP = 10908
ERR_NOT_LEADER = 10009


@dataclass
class Info:
    server_id: str
    version: int = VERSION
    max_frame: int = DEFAULT_MAX_FRAME
    max_payload: int = 8 * 1024 * 1024
    max_inflight: int = 1024
    max_subs: int = 1024
    auth_required: bool = False
    leader: Optional[str] = None          # "name@host:port" of the current leader, if known
    leader_addr: Optional[str] = None     # its client address
    max_pub_batch: int = 1000             # messages in one pub.batch request


@dataclass
class Connect:
    version: int = VERSION
    name: Optional[str] = None
    token: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = None


@dataclass
class Request:
    id: int
    op: str
    body: Any = None


@dataclass
class Response:
    id: int
    body: Any = None


@dataclass
class Error:
    id: int                     # 0: about the connection, not one request
    code: int
    err_code: int
    description: str
    leader_addr: Optional[str] = None


@dataclass
class Msg:
    sid: int
    subject: str
    reply: Optional[str] = None
    headers: Optional[dict] = None
    data: bytes = b""
    meta: Optional[dict] = None  # JetStream delivery metadata for consumer deliveries


@dataclass
class Ping:
    pass


@dataclass
class Pong:
    pass


Frame = Union[Info, Connect, Request, Response, Error, Msg, Ping, Pong]

_TYPE_OF = {Info: INFO, Connect: CONNECT, Request: REQUEST, Response: RESPONSE, Error: ERROR, Msg: MSG,
            Ping: PING, Pong: PONG}
_FIELDS = {t: [f for f in cls.__dataclass_fields__] for cls, t in _TYPE_OF.items()}
_CLASS_OF = {t: cls for cls, t in _TYPE_OF.items()}


def encode(frame: Frame) -> bytes:
    t = _TYPE_OF[type(frame)]
    body = msgpack.packb([t] + [getattr(frame, f) for f in _FIELDS[t]], use_bin_type=True)
    return HEADER.pack(len(body)) + body


def _decode_body(body: bytes) -> Frame:
    try:
        arr = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError(ERR_MALFORMED, f"frame is not valid msgpack: {e}", fatal=False) from None
    if not isinstance(arr, list) or not arr or not isinstance(arr[0], int):
        raise ProtocolError(ERR_MALFORMED, "frame must be an array starting with its type", fatal=False)
    cls = _CLASS_OF.get(arr[0])
    if cls is None:
        raise ProtocolError(ERR_UNKNOWN_FRAME, f"unknown frame type {arr[0]}", fatal=False)
    fields = _FIELDS[arr[0]]
    values = arr[1:]
    if len(values) > len(fields):
        raise ProtocolError(ERR_MALFORMED, f"too many fields for frame type {arr[0]}", fatal=False)
    try:
        frame = cls(*values)
    except TypeError as e:
        raise ProtocolError(ERR_MALFORMED, f"missing fields for frame type {arr[0]}: {e}", fatal=False) from None
    _check_types(frame)
    return frame


def _check_types(frame: Frame) -> None:
    bad = None
    if isinstance(frame, (Request, Response, Error)) and not isinstance(frame.id, int):
        bad = "id must be an integer"
    elif isinstance(frame, Request) and not isinstance(frame.op, str):
        bad = "op must be a string"
    elif isinstance(frame, Msg) and not (isinstance(frame.subject, str) and isinstance(frame.data, bytes)
                                         and isinstance(frame.sid, int)):
        bad = "msg needs an integer sid, a string subject and bytes data"
    if bad:
        raise ProtocolError(ERR_MALFORMED, bad, fatal=False)


class Decoder:
    """Incremental decoder: feed bytes as they arrive, take whole frames out.

    A frame whose declared length exceeds `max_frame` cannot be skipped safely
    (we would have to trust its length), so it is fatal; a well-delimited frame
    with a bad body is not: the next frame starts right after it."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0     # start of the first undecoded byte in _buf

    def feed(self, data: bytes) -> None:
        # Drop consumed bytes once per feed, not once per frame: deleting from the
        # front of the buffer after every frame moves the rest of it each time.
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next(self) -> Optional[Frame]:
        """The next whole frame, None if more bytes are needed; raises ProtocolError."""
        pos = self._pos
        if len(self._buf) - pos < HEADER.size:
            return None
        (n,) = HEADER.unpack_from(self._buf, pos)
        if n > self.max_frame:
            raise ProtocolError(ERR_FRAME_TOO_LARGE, f"frame of {n} bytes exceeds max_frame {self.max_frame}",
                                fatal=True)
        if n == 0:
            self._pos = pos + HEADER.size
            raise ProtocolError(ERR_MALFORMED, "empty frame", fatal=False)
        end = pos + HEADER.size + n
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[pos + HEADER.size:end])
        self._pos = end
        return _decode_body(body)

    def frames(self) -> list[Frame]:
        out = []
        while True:
            f = self.next()
            if f is None:
                return out
            out.append(f)
