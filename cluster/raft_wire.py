"""The Raft port's cipher: AES-256-GCM in place of pysyncobj's Fernet.

pysyncobj encrypts and authenticates every message between nodes with a Fernet
key derived from the cluster secret. Fernet (AES-CBC, HMAC-SHA256, base64, all
driven from Python) costs about 55 us a message each way here, and a committed
entry takes a dozen messages; measured, the secret alone added 1.5 ms to a
publish's p50. AES-GCM does the same job (confidentiality and integrity, one
AEAD call) in about 2 us.

`RaftCipher` has the three methods pysyncobj's connections call on their
encryptor (`encrypt_at_time`, `extract_timestamp`, `decrypt`), and
`install_raft_wire()` makes pysyncobj build one wherever it would build a Fernet:
in SyncObj (the Raft port) and in TcpUtility (the bootstrap probe). What
pysyncobj builds around the encryptor stays as it is: the 32 random bytes
exchanged per connection, carried inside every message, and the non-decreasing
timestamps per connection, which together refuse replays.

Token: version (1 byte) | timestamp (u64, little endian) | nonce (12 bytes) |
ciphertext and GCM tag. The version and timestamp are authenticated as the
associated data. A nonce is this process's random 8-byte prefix and a 4-byte
counter; a new prefix is drawn before the counter wraps, so no (key, nonce)
pair repeats across the nodes that share the secret (the chance of two
processes drawing the same prefix is about n^2 / 2^65 for n prefixes).

pysyncobj pickles every entry and every message with protocol 2, which has no
bytes opcode: each bytes object becomes a latin-1 str and back (1.6 ms per
130 KB of binary payload each way, against 10 us with protocol 5), paid once for
the journal and again for every append. `install_raft_wire()` raises the
protocol to 5; every reader in pysyncobj calls `pickle.loads`, which reads any
protocol, so a node still accepts protocol-2 journals and snapshots.

pysyncobj still deflates every message (zlib level 3) before encrypting it.
Writing stored blocks instead was tried and did not pay (the windowed publish
rate fell from 11-12k to 6k msgs/s, measured before the protocol change).

All nodes of a cluster must run this cipher: a node with pysyncobj's Fernet
cannot talk to one with this (the first message fails to authenticate and the
connection is dropped), and neither can pysyncobj's `syncobj_admin`.
"""
from __future__ import annotations

import hashlib
import os
import struct
import threading
from functools import lru_cache

import pysyncobj.pickle
import pysyncobj.syncobj
import pysyncobj.utility
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
_HEADER = struct.Struct("<BQ")          # version, timestamp
_NONCE_BYTES = 12
_PREFIX_BYTES = 8
_COUNTER_LIMIT = 1 << 32
_TAG_BYTES = 16
# Fixed, as pysyncobj's is: every node must derive the same key from the secret.
_SALT = b"raftbroker raft port, AES-256-GCM, v1"
_KDF_ITERATIONS = 100_000


class InvalidToken(Exception):
    pass


class RaftCipher:
    def __init__(self, key: bytes):
        self._aead = AESGCM(key)
        self._lock = threading.Lock()
        self._prefix = os.urandom(_PREFIX_BYTES)
        self._counter = 0

    def _nonce(self) -> bytes:
        with self._lock:
            if self._counter == _COUNTER_LIMIT:
                self._prefix, self._counter = os.urandom(_PREFIX_BYTES), 0
            n = self._counter
            self._counter += 1
            return self._prefix + n.to_bytes(4, "little")

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        header = _HEADER.pack(VERSION, current_time)
        nonce = self._nonce()
        return header + nonce + self._aead.encrypt(nonce, data, header)

    def extract_timestamp(self, token: bytes) -> int:
        """The token's timestamp, not yet authenticated (decrypt checks it)."""
        if len(token) < _HEADER.size + _NONCE_BYTES + _TAG_BYTES:
            raise InvalidToken("token too short")
        version, ts = _HEADER.unpack_from(token)
        if version != VERSION:
            raise InvalidToken(f"unknown token version {version}")
        return ts

    def decrypt(self, token: bytes) -> bytes:
        self.extract_timestamp(token)
        start = _HEADER.size + _NONCE_BYTES
        # Raises cryptography's InvalidTag on any change to header, nonce or body.
        return self._aead.decrypt(token[_HEADER.size:start], token[start:], token[:_HEADER.size])


@lru_cache(maxsize=8)
def _key(password: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password, _SALT, _KDF_ITERATIONS, dklen=32)


def cipher_for(password) -> RaftCipher:
    """pysyncobj's `getEncryptor(password)`, with this cipher (the key derivation is
    cached: the bootstrap probe opens a connection per peer and round)."""
    if not isinstance(password, bytes):
        password = str(password).encode()
    return RaftCipher(_key(password))


def install_raft_wire() -> None:
    """Make pysyncobj build a RaftCipher wherever it builds its Fernet, and pickle
    with protocol 5 (idempotent)."""
    # A module global, not a class attribute: the double underscore is not mangled.
    setattr(pysyncobj.pickle, "__protocol", 5)
    pysyncobj.syncobj.getEncryptor = cipher_for
    pysyncobj.utility.getEncryptor = cipher_for
