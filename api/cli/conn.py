"""What every client command shares: connection flags, the environment, and `run`, which
turns a command's coroutine into an exit code scripts can trust.

Exit codes: 0 success, 1 the server or the connection said no (one line on stderr),
2 a usage error (argparse's own code, kept for our checks too).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Awaitable, Callable

from api.client import connect
from api.client.errors import AuthorizationError, ConnectionClosedError, ConnectionLostError, TimeoutError
from jetstream.errors import ConsumerNotFoundError, JSError, StreamNotFoundError

DEFAULT_SERVER = "127.0.0.1:4222"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Arguments argparse accepted but the command cannot use (exit 2)."""


class CommandError(Exception):
    """The command ran and failed in a way the server did not phrase (exit 1)."""


def add_connection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--server", "-s", default=os.environ.get("RAFTBROKER_SERVER", DEFAULT_SERVER),
                   help="comma-separated HOST:PORT list (env RAFTBROKER_SERVER; default %(default)s)")
    g.add_argument("--token", default=os.environ.get("RAFTBROKER_TOKEN"), help="auth token (env RAFTBROKER_TOKEN)")
    g.add_argument("--user", default=os.environ.get("RAFTBROKER_USER"), help="user name (env RAFTBROKER_USER)")
    g.add_argument("--password", default=os.environ.get("RAFTBROKER_PASSWORD"),
                   help="password (env RAFTBROKER_PASSWORD)")
    g.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="per-request timeout of the connection (default %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


async def open_connection(args):
    # A command line is one-shot: a server that is down should fail the command quickly,
    # not sit through the library's minute of reconnect attempts.
    return await connect(args.server.split(","), token=args.token, user=args.user, password=args.password,
                         timeout=args.connect_timeout, max_reconnect_attempts=1, name="raftbroker-cli")


def describe(err: BaseException, args) -> str:
    """One line that says what went wrong, naming the stream or consumer the server did not find
    (its own description names neither)."""
    stream, consumer = getattr(args, "stream", None), getattr(args, "consumer", None)
    if isinstance(err, StreamNotFoundError) and stream:
        return f"stream {stream!r} not found"
    if isinstance(err, ConsumerNotFoundError) and consumer:
        return f"consumer {consumer!r} not found on stream {stream!r}"
    if isinstance(err, JSError):
        return f"{err.description} (err_code {err.err_code})"
    if isinstance(err, AuthorizationError):
        return f"authorization failed: {err}"
    return str(err) or type(err).__name__


def run(args, command: Callable[..., Awaitable[int | None]]) -> int:
    """Connect, run `command(nc, args)`, close; map failures to (message, exit code)."""
    async def main():
        nc = await open_connection(args)
        try:
            return await command(nc, args)
        finally:
            await nc.close()

    try:
        rc = asyncio.run(main())
    except UsageError as e:
        print(f"raftbroker: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (JSError, CommandError, AuthorizationError, ConnectionClosedError, ConnectionLostError, TimeoutError,
            OSError) as e:
        print(f"raftbroker: {describe(e, args)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return EXIT_OK if rc is None else rc
