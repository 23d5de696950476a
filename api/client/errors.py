"""The client's own errors; the server's arrive as the JetStream errors of `jetstream.errors`."""
from __future__ import annotations

import asyncio


class TimeoutError(asyncio.TimeoutError):  # noqa: A001 - nats-py's name
    """A request got no answer in time; its outcome is unknown."""


class ConnectionClosedError(Exception):
    """The connection is closed (by close(), or for good after failed reconnects)."""


class ConnectionLostError(Exception):
    """The connection dropped while the request was in flight; its outcome is unknown."""


class AuthorizationError(Exception):
    pass
