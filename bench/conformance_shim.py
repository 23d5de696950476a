"""A `nats-server` stand-in for nats-py's test harness: takes its flags, execs a raftbroker node.

nats-py's `tests/utils.py` (`NATSD.start`) runs the first `nats-server` on $PATH as

    nats-server -p PORT -m HTTP_PORT -a 127.0.0.1 [--user U --pass P] [--auth TOKEN] [-DV]
                [-js -sd=DIR] [--tls ...] [--cluster_listen URL] [--routes ... --cluster_name C]
                [--config FILE]

and SIGKILLs that pid to stop it, so this process must *exec* the node (a forking
wrapper leaves an orphan holding port 4222). bench/conformance.py puts a two-line
`nats-server` script that execs this file first on $PATH.

Two tables below carry the whole mapping, so it is easy to adjust as the NATS front
grows: NATS_FLAGS (what the harness may pass, by nats-server's own flag names) and
TO_RAFTBROKER (which raftbroker flag each setting becomes). A flag nats-server has but
raftbroker cannot honour (TLS, config files, NATS routes) and any flag not in the
table make the shim refuse to start, naming the flag: the test then fails loudly
instead of running against a server that silently ignored part of its setup.

Environment (set by bench/conformance.py):
  CONFORMANCE_LOG_DIR  the node's stdout/stderr go to nats-server-<port>.log there, and
                       every refusal is one line of refused.log
  CONFORMANCE_RUN_DIR  where data directories go when the harness passes no -sd
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
from dataclasses import dataclass, fields
from typing import Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_MODULE = ["-m", "api.cli", "server"]      # run from REPO: `python -m api.cli server ...`


class ShimError(Exception):
    """The harness asked for something this shim cannot give; the message names the flags."""


@dataclass
class ServerArgs:
    """What the harness asked nats-server for, in nats-server's terms (and its defaults)."""
    port: int = 4222
    host: str = "0.0.0.0"
    http_port: int = 0            # 0: no monitoring port, as nats-server without -m
    user: str = ""
    password: str = ""
    token: str = ""
    jetstream: bool = False
    store_dir: str = ""
    name: str = ""
    debug: bool = False


# nats-server flag (Go's flag package: one or two dashes, `-f v` or `-f=v`) -> ServerArgs field.
# kind: "int"/"str" take a value, "switch" sets True, "unsupported" refuses with the reason.
NATS_FLAGS: dict[str, tuple[str, str]] = {
    "p": ("port", "int"), "port": ("port", "int"),
    "a": ("host", "str"), "addr": ("host", "str"), "net": ("host", "str"),
    "m": ("http_port", "int"), "http_port": ("http_port", "int"),
    "user": ("user", "str"),
    "pass": ("password", "str"),
    "auth": ("token", "str"),
    "js": ("jetstream", "switch"), "jetstream": ("jetstream", "switch"),
    "sd": ("store_dir", "str"), "store_dir": ("store_dir", "str"),
    "n": ("name", "str"), "name": ("name", "str"), "server_name": ("name", "str"),
    "D": ("debug", "switch"), "V": ("debug", "switch"), "DV": ("debug", "switch"),
    "VV": ("debug", "switch"), "DVV": ("debug", "switch"), "debug": ("debug", "switch"),
    "trace": ("debug", "switch"),
    # Known to nats-server, no raftbroker equivalent (yet). Value-taking ones list "unsupported:value".
    "tls": ("TLS", "unsupported"), "tlsverify": ("TLS", "unsupported"),
    "tlscert": ("TLS", "unsupported:value"), "tlskey": ("TLS", "unsupported:value"),
    "tlscacert": ("TLS", "unsupported:value"),
    "c": ("config files (accounts, TLS, websocket, nkeys, JS limits)", "unsupported:value"),
    "config": ("config files (accounts, TLS, websocket, nkeys, JS limits)", "unsupported:value"),
    "cluster": ("NATS routes (raftbroker nodes cluster with --raft/--peers)", "unsupported:value"),
    "cluster_listen": ("NATS routes (raftbroker nodes cluster with --raft/--peers)", "unsupported:value"),
    "routes": ("NATS routes (raftbroker nodes cluster with --raft/--peers)", "unsupported:value"),
    "cluster_name": ("NATS routes (raftbroker nodes cluster with --raft/--peers)", "unsupported:value"),
}

# raftbroker `server` flag <- the ServerArgs it comes from (None: leave the flag out).
# -js has no row: every raftbroker node serves JetStream.
TO_RAFTBROKER: list[tuple[str, Callable[[ServerArgs], Optional[str]]]] = [
    ("--name", lambda a: a.name or "n1"),
    ("--nats-listen", lambda a: f"{a.host}:{a.port}"),
    ("--http", lambda a: f"{a.host}:{a.http_port}" if a.http_port else None),
    ("--token", lambda a: a.token or None),
    ("--user", lambda a: a.user or None),
    ("--password", lambda a: a.password or None),
    ("--log-level", lambda a: "debug" if a.debug else "info"),
]


def parse(argv: list[str]) -> ServerArgs:
    """nats-server's command line -> ServerArgs; ShimError lists every flag it cannot honour."""
    args = ServerArgs()
    types = {f.name: f.type for f in fields(ServerArgs)}
    unknown, unsupported = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("-") or token in ("-", "--"):
            unknown.append(token)
            continue
        name, eq, inline = token.lstrip("-").partition("=")
        if name not in NATS_FLAGS:
            unknown.append(token)
            continue
        field, kind = NATS_FLAGS[name]
        takes_value = kind in ("int", "str", "unsupported:value")
        value = inline if eq else None
        if takes_value and value is None:
            if i >= len(argv):
                raise ShimError(f"nats-server flag {token} needs a value")
            value = argv[i]
            i += 1
        if kind.startswith("unsupported"):
            unsupported.append(f"{token} ({field})")
        elif kind == "switch":
            setattr(args, field, True)
        elif types[field] in ("int", int):
            try:
                setattr(args, field, int(value))
            except ValueError:
                raise ShimError(f"nats-server flag {token} needs a number, not {value!r}") from None
        else:
            setattr(args, field, value)
    problems = []
    if unsupported:
        problems.append("no raftbroker equivalent for " + ", ".join(unsupported))
    if unknown:
        problems.append("unknown nats-server flag(s) " + ", ".join(unknown) +
                        " (add them to NATS_FLAGS in bench/conformance_shim.py)")
    if problems:
        raise ShimError("; ".join(problems))
    return args


def node_argv(args: ServerArgs, data: str, listen: str) -> list[str]:
    """The raftbroker `server` flags for ServerArgs; `listen` is the node's own (binary RPC) port."""
    argv = ["--data", data, "--listen", listen]
    for flag, value_of in TO_RAFTBROKER:
        value = value_of(args)
        if value is not None:
            argv += [flag, value]
    return argv


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _note_refusal(log_dir: str, message: str, argv: list[str]) -> None:
    with open(os.path.join(log_dir, "refused.log"), "a") as f:
        f.write(f"{message}\t{' '.join(argv)}\n")


def main(argv: list[str]) -> int:
    log_dir = os.environ.get("CONFORMANCE_LOG_DIR", "")
    try:
        args = parse(argv)
    except ShimError as e:
        print(f"nats-server (raftbroker conformance shim): refusing to start: {e}", file=sys.stderr)
        if log_dir:
            _note_refusal(log_dir, str(e), argv)
        return 2
    data = args.store_dir or tempfile.mkdtemp(prefix="node-", dir=os.environ.get("CONFORMANCE_RUN_DIR"))
    cmd = [sys.executable, *NODE_MODULE, *node_argv(args, data, f"127.0.0.1:{free_port()}")]
    if log_dir:
        # The harness sends our output to /dev/null; keep it where the runner can show it.
        fd = os.open(os.path.join(log_dir, f"nats-server-{args.port}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, f"---- nats-server {' '.join(argv)}\n---- exec {' '.join(cmd)}\n".encode())
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    os.chdir(REPO)
    os.execv(sys.executable, cmd)      # same pid: the harness's SIGKILL reaches the node


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
