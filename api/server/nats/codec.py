"""The NATS client protocol as a pure codec: bytes in, typed operations out, and the
server's lines back to bytes. No sockets; the front feeds it what it reads.

Lines are bounded (`max_line`), payloads by `max_payload`: a peer can make the parser
hold at most one line plus one payload. Errors carry nats-server's exact -ERR texts,
since nats-py matches some of them.

Routes between the cluster's nodes (routes.py) speak three more verbs, parsed only once
a connection has proved it is a route (`Parser.routes`):

    RS+ <pattern> [<queue>]        the sender's clients took an interest in pattern (queue)
    RS- <pattern> [<queue>]        ... and dropped it
    RMSG <pattern> <queue|-> <subject> <reply|-> <hdr_len> <total_len>
                                   deliver to the receiver's own subscriptions on exactly
                                   pattern (one member of queue, or every plain one)
    RPUB <subject> <reply|-> <n|-> <hdr_len> <total_len>
                                   a client's publish the receiver (the leader) handles as
                                   its own; n: the client wants no-responders statuses
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Optional, Union

CRLF = b"\r\n"
MAX_LINE = 64 * 1024        # a control line (CONNECT with a JWT is the longest nats-py sends)
HEADER_LINE = b"NATS/1.0"

ERR_UNKNOWN_OP = "Unknown Protocol Operation"
ERR_MAX_PAYLOAD = "Maximum Payload Violation"
ERR_PARSER = "Parser Error"
ERR_MAX_CONTROL_LINE = "Maximum Control Line Exceeded"
ERR_INVALID_SUBJECT = "Invalid Subject"
ERR_AUTH = "Authorization Violation"
ERR_AUTH_TIMEOUT = "Authentication Timeout"
ERR_SLOW_CONSUMER = "Slow Consumer"
ERR_STALE = "Stale Connection"


class NatsProtocolError(Exception):
    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclass
class Connect:
    options: dict


@dataclass
class Ping:
    pass


@dataclass
class Pong:
    pass


@dataclass
class Pub:
    subject: str
    reply: Optional[str]
    payload: bytes
    headers: Optional[bytes] = None     # the raw header block, NATS/1.0 line included


@dataclass
class Sub:
    subject: str
    queue: Optional[str]
    sid: str


@dataclass
class Unsub:
    sid: str
    max_msgs: Optional[int]


@dataclass
class RouteSub:
    pattern: str
    queue: Optional[str]
    add: bool


@dataclass
class RouteMsg:
    pattern: str
    queue: Optional[str]
    subject: str
    reply: Optional[str]
    payload: bytes
    headers: Optional[bytes] = None


@dataclass
class RoutePub:
    pub: Pub
    no_responders: bool


Op = Union[Connect, Ping, Pong, Pub, Sub, Unsub, RouteSub, RouteMsg, RoutePub]
_AGAIN = object()       # a line consumed that is no operation by itself (a blank line, a PUB's head)


def _opt(token: str) -> Optional[str]:
    return None if token == "-" else token


def _int(token: bytes) -> int:
    if not token.isdigit():
        raise NatsProtocolError(ERR_PARSER)
    try:
        return int(token)
    except ValueError:      # more digits than sys.get_int_max_str_digits() (4300) allows
        raise NatsProtocolError(ERR_PARSER) from None


class Parser:
    """Feed bytes, take operations. After an error the connection is closed by the front,
    so the parser need not resynchronise."""

    def __init__(self, max_payload: int, max_line: int = MAX_LINE):
        self.max_payload = max_payload
        self.max_line = max_line
        self.routes = False         # a proven route: RS+/RS-/RMSG/RPUB are operations too
        self._buf = bytearray()
        self._pos = 0
        # An operation whose payload has not fully arrived: (make(payload, header block), header
        # bytes, total bytes).
        self._pending: Optional[tuple[Callable[[bytes, Optional[bytes]], Op], int, int]] = None

    def feed(self, data: bytes) -> list[Op]:
        """The operations `data` completes. A CONNECT ends the list (what follows it may
        parse differently once it is handled: a route's verbs); feed b"" for the rest."""
        self._buf += data
        ops: list[Op] = []
        while True:
            op = self._next()
            if op is None:
                break
            if op is not _AGAIN:
                ops.append(op)
                if isinstance(op, Connect):
                    break
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        return ops

    def _next(self):
        buf = self._buf
        if self._pending is not None:
            make, hdr_len, total = self._pending
            end = self._pos + total
            if len(buf) < end + 2:
                return None
            if buf[end:end + 2] != CRLF:
                raise NatsProtocolError(ERR_PARSER)
            body = bytes(buf[self._pos:end])
            self._pos = end + 2
            self._pending = None
            if hdr_len:
                return make(body[hdr_len:], body[:hdr_len])
            return make(body, None)
        nl = buf.find(b"\n", self._pos)
        if nl < 0:
            if len(buf) - self._pos > self.max_line:
                raise NatsProtocolError(ERR_MAX_CONTROL_LINE)
            return None
        if nl - self._pos > self.max_line:
            raise NatsProtocolError(ERR_MAX_CONTROL_LINE)
        line = bytes(buf[self._pos:nl]).rstrip(b"\r")
        self._pos = nl + 1
        return self._line(line)

    def _line(self, line: bytes):
        verb, _, rest = line.partition(b" ")
        if not verb and rest:
            verb, _, rest = rest.lstrip().partition(b" ")
        verb = verb.upper()
        if verb == b"PING":
            return Ping()
        if verb == b"PONG":
            return Pong()
        if verb == b"PUB" or verb == b"HPUB":
            return self._pub(verb == b"HPUB", rest.split())
        if verb == b"SUB":
            args = rest.split()
            if len(args) == 2:
                return Sub(self._subject(args[0]), None, args[1].decode("ascii", "replace"))
            if len(args) == 3:
                return Sub(self._subject(args[0]), args[1].decode("utf-8", "replace"),
                           args[2].decode("ascii", "replace"))
            raise NatsProtocolError(ERR_PARSER)
        if verb == b"UNSUB":
            args = rest.split()
            if len(args) == 1:
                return Unsub(args[0].decode("ascii", "replace"), None)
            if len(args) == 2:
                return Unsub(args[0].decode("ascii", "replace"), _int(args[1]))
            raise NatsProtocolError(ERR_PARSER)
        if verb == b"CONNECT":
            try:
                options = json.loads(rest or b"{}")
            except (ValueError, RecursionError):    # RecursionError: `[[[[...` nested past ~1000
                raise NatsProtocolError(ERR_PARSER) from None
            if not isinstance(options, dict):
                raise NatsProtocolError(ERR_PARSER)
            return Connect(options)
        if not verb and not rest:
            return _AGAIN       # a blank line between operations
        if self.routes:
            return self._route_line(verb, rest.split())
        raise NatsProtocolError(ERR_UNKNOWN_OP)

    def _route_line(self, verb: bytes, args: list[bytes]):
        if verb in (b"RS+", b"RS-") and len(args) in (1, 2):
            queue = args[1].decode("utf-8", "replace") if len(args) == 2 else None
            return RouteSub(self._subject(args[0]), queue, verb == b"RS+")
        if verb == b"RMSG" and len(args) == 6:
            pattern, queue, subject, reply = (self._subject(a) for a in args[:4])
            self._expect(_int(args[4]), _int(args[5]), lambda data, hdr: RouteMsg(
                pattern, _opt(queue), subject, _opt(reply), data, hdr))
            return _AGAIN
        if verb == b"RPUB" and len(args) == 5:
            subject, reply = self._subject(args[0]), self._subject(args[1])
            no_responders = args[2] == b"n"
            self._expect(_int(args[3]), _int(args[4]), lambda data, hdr: RoutePub(
                Pub(subject, _opt(reply), data, hdr), no_responders))
            return _AGAIN
        raise NatsProtocolError(ERR_UNKNOWN_OP)

    def _expect(self, hdr_len: int, total: int, make) -> None:
        """The payload of the operation just read comes next: `total` bytes, the first
        `hdr_len` of them a header block."""
        if hdr_len > total or (hdr_len and hdr_len < len(HEADER_LINE) + 4):
            raise NatsProtocolError(ERR_PARSER)
        if total > self.max_payload:
            raise NatsProtocolError(ERR_MAX_PAYLOAD)
        self._pending = (make, hdr_len, total)

    @staticmethod
    def _subject(token: bytes) -> str:
        try:
            return token.decode("utf-8")
        except UnicodeDecodeError:
            raise NatsProtocolError(ERR_INVALID_SUBJECT) from None

    def _pub(self, with_headers: bool, args: list[bytes]):
        want = 3 if with_headers else 2
        if len(args) not in (want, want + 1):
            raise NatsProtocolError(ERR_PARSER)
        subject = self._subject(args[0])
        reply = self._subject(args[1]) if len(args) == want + 1 else None
        if with_headers:
            hdr_len, total = _int(args[-2]), _int(args[-1])
            if hdr_len < len(HEADER_LINE) + 4:
                raise NatsProtocolError(ERR_PARSER)
        else:
            hdr_len, total = 0, _int(args[-1])
        self._expect(hdr_len, total, lambda data, hdr: Pub(subject, reply, data, hdr))
        return _AGAIN


# == the server's side ======================================================================
def info_line(info: dict) -> bytes:
    return b"INFO " + json.dumps(info, separators=(",", ":")).encode() + CRLF


def err_line(text: str) -> bytes:
    return b"-ERR '" + text.encode() + b"'" + CRLF


PING = b"PING\r\n"
PONG = b"PONG\r\n"
OK = b"+OK\r\n"


def encode_headers(headers: Optional[dict]) -> bytes:
    """A header block; `Status` and `Description` become the status line, as nats-py reads it."""
    if not headers:
        return b""
    status = headers.get("Status")
    line = HEADER_LINE
    if status:
        line += b" " + str(status).encode()
        desc = headers.get("Description")
        if desc:
            line += b" " + str(desc).encode()
    parts = [line]
    for k, v in headers.items():
        if k in ("Status", "Description") and status:
            continue
        values = v if isinstance(v, list) else [v]
        for one in values:
            parts.append(f"{k}: {one}".encode())
    return CRLF.join(parts) + CRLF + CRLF


def decode_headers(block: bytes) -> dict:
    """The header block of an HPUB as a dict (last value of a repeated name wins, as in
    nats-py); a status line becomes `Status` and `Description`."""
    lines = block.split(CRLF)
    if not lines or not lines[0].startswith(HEADER_LINE):
        raise NatsProtocolError(ERR_PARSER)
    out: dict = {}
    status = lines[0][len(HEADER_LINE):].strip()
    if status:
        code, _, desc = status.partition(b" ")
        out["Status"] = code.decode("ascii", "replace")
        if desc:
            out["Description"] = desc.decode("utf-8", "replace")
    for raw in lines[1:]:
        if not raw:
            continue
        name, sep, value = raw.partition(b":")
        if not sep:
            raise NatsProtocolError(ERR_PARSER)
        out[name.decode("utf-8", "replace").strip()] = value.decode("utf-8", "replace").strip()
    return out


ACK_PREFIX = "$JS.ACK."


def ack_subject(meta) -> str:
    """The reply subject a consumer's message carries (a DeliveredMsg's): nats-py reads the
    message's metadata from it, and acks to it."""
    return (f"{ACK_PREFIX}{meta.stream}.{meta.consumer}.{meta.num_delivered}.{meta.stream_seq}."
            f"{meta.consumer_seq}.{meta.time}.{meta.num_pending}")


def msg_frame(subject: str, sid: str, reply: Optional[str], payload: bytes,
              header_block: bytes = b"") -> bytes:
    r = f" {reply}" if reply else ""
    if header_block:
        return (f"HMSG {subject} {sid}{r} {len(header_block)} {len(header_block) + len(payload)}\r\n".encode()
                + header_block + payload + CRLF)
    return f"MSG {subject} {sid}{r} {len(payload)}\r\n".encode() + payload + CRLF


# == between the cluster's nodes (routes.py) ==================================================
def route_sub_line(pattern: str, queue: Optional[str], add: bool) -> bytes:
    return f"RS{'+' if add else '-'} {pattern}{' ' + queue if queue else ''}\r\n".encode()


def route_msg_frame(pattern: str, queue: Optional[str], subject: str, reply: Optional[str], payload: bytes,
                    header_block: bytes = b"") -> bytes:
    hl = len(header_block)
    return (f"RMSG {pattern} {queue or '-'} {subject} {reply or '-'} {hl} {hl + len(payload)}\r\n".encode()
            + header_block + payload + CRLF)


def route_pub_frame(subject: str, reply: Optional[str], no_responders: bool, payload: bytes,
                    header_block: bytes = b"") -> bytes:
    hl = len(header_block)
    return (f"RPUB {subject} {reply or '-'} {'n' if no_responders else '-'} {hl} {hl + len(payload)}\r\n".encode()
            + header_block + payload + CRLF)
