"""The NATS client protocol as a pure codec: bytes in, typed operations out, and the
server's lines back to bytes. No sockets; the front feeds it what it reads.

Lines are bounded (`max_line`), payloads by `max_payload`: a peer can make the parser
hold at most one line plus one payload. Errors carry nats-server's exact -ERR texts,
since nats-py matches some of them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Union

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


Op = Union[Connect, Ping, Pong, Pub, Sub, Unsub]
_AGAIN = object()       # a line consumed that is no operation by itself (a blank line, a PUB's head)


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
        self._buf = bytearray()
        self._pos = 0
        # A PUB/HPUB whose payload has not fully arrived: (subject, reply, header bytes, total bytes).
        self._pending: Optional[tuple[str, Optional[str], int, int]] = None

    def feed(self, data: bytes) -> list[Op]:
        self._buf += data
        ops: list[Op] = []
        while True:
            op = self._next()
            if op is None:
                break
            if op is not _AGAIN:
                ops.append(op)
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        return ops

    def _next(self):
        buf = self._buf
        if self._pending is not None:
            subject, reply, hdr_len, total = self._pending
            end = self._pos + total
            if len(buf) < end + 2:
                return None
            if buf[end:end + 2] != CRLF:
                raise NatsProtocolError(ERR_PARSER)
            body = bytes(buf[self._pos:end])
            self._pos = end + 2
            self._pending = None
            if hdr_len:
                return Pub(subject, reply, body[hdr_len:], body[:hdr_len])
            return Pub(subject, reply, body)
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
        raise NatsProtocolError(ERR_UNKNOWN_OP)

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
            if hdr_len > total or hdr_len < len(HEADER_LINE) + 4:
                raise NatsProtocolError(ERR_PARSER)
        else:
            hdr_len, total = 0, _int(args[-1])
        if total > self.max_payload:
            raise NatsProtocolError(ERR_MAX_PAYLOAD)
        self._pending = (subject, reply, hdr_len, total)
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


def msg_frame(subject: str, sid: str, reply: Optional[str], payload: bytes,
              header_block: bytes = b"") -> bytes:
    r = f" {reply}" if reply else ""
    if header_block:
        return (f"HMSG {subject} {sid}{r} {len(header_block)} {len(header_block) + len(payload)}\r\n".encode()
                + header_block + payload + CRLF)
    return f"MSG {subject} {sid}{r} {len(payload)}\r\n".encode() + payload + CRLF
