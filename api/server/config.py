"""A node's settings: command-line flags over environment variables over a TOML file.

Every setting has a flag (`--cluster-secret`), an environment variable
(`RAFTBROKER_CLUSTER_SECRET`) and a TOML key (`cluster_secret`).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from typing import Optional


class ConfigError(ValueError):
    pass


@dataclass
class NodeConfig:
    name: str = field(default="n1", metadata={"help": "node name, unique in the cluster"})
    data: str = field(default="./data", metadata={"help": "data directory"})
    listen: str = field(default="127.0.0.1:4222", metadata={"help": "client address HOST:PORT"})
    http: str = field(default="", metadata={"help": "HTTP address HOST:PORT (/varz /connz /jsz /healthz /metrics /raftz)"})
    nats_listen: str = field(default="", metadata={
        "help": "NATS-protocol address HOST:PORT (nats-py and NATS tools); off when empty"})
    raft: str = field(default="", metadata={"help": "Raft address HOST:PORT; without it, a single node"})
    peers: str = field(default="", metadata={"help": "Raft addresses of the first members, comma-separated"})
    cluster_secret: str = field(default="", metadata={"help": "shared secret nodes authenticate each other with"})
    insecure_dev_cluster: bool = field(default=False, metadata={
        "help": "allow a cluster without a secret (local development only: the Raft port unpickles input)"})
    advertise: str = field(default="", metadata={"help": "host other nodes and clients reach this node at"})
    bootstrap: bool = field(default=False, metadata={
        "help": "let a brand-new cluster elect (honoured only while every peer is reachable and empty)"})
    token: str = field(default="", metadata={"help": "require this token from clients"})
    user: str = field(default="", metadata={"help": "require this user from clients"})
    password: str = field(default="", metadata={"help": "…with this password"})
    no_sync: bool = field(default=False, metadata={
        "help": "never fsync (faster; a power loss can lose acknowledged writes)"})
    batch_max_commands: int = field(default=1000, metadata={"help": "commands group-committed into one entry"})
    batch_max_bytes: int = field(default=2 << 20, metadata={"help": "payload bytes group-committed into one entry"})
    snapshot_entries: int = field(default=20_000, metadata={
        "help": "log entries between snapshots (each entry holds up to batch_max_commands commands)"})
    election_min_s: float = field(default=1.0, metadata={"help": "election timeout, lower bound (s)"})
    election_max_s: float = field(default=2.0, metadata={"help": "election timeout, upper bound (s)"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning, error"})

    # -- derived ----------------------------------------------------------------------
    def _host_for(self, addr: str) -> str:
        host, _, port = addr.rpartition(":")
        return f"{self.advertise or host or '127.0.0.1'}:{port}"

    @property
    def client_addr(self) -> str:
        return self._host_for(self.listen)

    @property
    def http_addr(self) -> str:
        return self._host_for(self.http) if self.http else ""

    @property
    def nats_addr(self) -> str:
        return self._host_for(self.nats_listen) if self.nats_listen else ""

    @property
    def raft_addr(self) -> str:
        return self._host_for(self.raft) if self.raft else ""

    @property
    def peer_list(self) -> list[str]:
        return [p.strip() for p in self.peers.split(",") if p.strip()]

    def check(self) -> None:
        if self.raft and not self.cluster_secret and not self.insecure_dev_cluster:
            raise ConfigError(
                "a cluster node needs --cluster-secret (RAFTBROKER_CLUSTER_SECRET): nodes authenticate each other "
                "with it, and without it anyone who reaches the Raft port can run code in this process. "
                "For a local development cluster only, pass --insecure-dev-cluster.")
        for name in ("listen", "http", "raft"):
            v = getattr(self, name)
            if v and not v.rpartition(":")[2].isdigit():
                raise ConfigError(f"--{name} must be HOST:PORT, not {v!r}")
        if self.raft and not self.advertise and self.raft.rpartition(":")[0] in ("0.0.0.0", "::", "[::]", ""):
            raise ConfigError(f"--raft {self.raft} binds every interface: set --advertise to the host other nodes "
                              f"reach this one at (the node names itself by it, and it must be in --peers)")
        if self.raft and self.peer_list and self.raft_addr not in self.peer_list:
            raise ConfigError(f"this node's Raft address {self.raft_addr} is not in --peers {self.peers}: "
                              f"list every member, this one included, by the address the others use")


def _env_name(f: dataclasses.Field) -> str:
    return "RAFTBROKER_" + f.name.upper()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.environ.get("RAFTBROKER_CONFIG"), help="TOML file of settings")
    for f in dataclasses.fields(NodeConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = f"{f.metadata.get('help', '')} [{_env_name(f)}]"
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=helptext)
        else:
            p.add_argument(flag, dest=f.name, default=None, help=helptext)


def _coerce(f: dataclasses.Field, value):
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{value!r} is not a boolean (use true or false)")
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return str(value)


def resolve(args: argparse.Namespace, environ: Optional[dict] = None) -> NodeConfig:
    """Flags win over environment variables, which win over the TOML file."""
    environ = os.environ if environ is None else environ
    from_file = {}
    if getattr(args, "config", None):
        with open(args.config, "rb") as fh:
            from_file = tomllib.load(fh)
    known = {f.name for f in dataclasses.fields(NodeConfig)}
    unknown = set(from_file) - known
    if unknown:
        raise ConfigError(f"{args.config}: unknown settings {sorted(unknown)}")
    values = {}
    for f in dataclasses.fields(NodeConfig):
        for source in (getattr(args, f.name, None), environ.get(_env_name(f)), from_file.get(f.name)):
            if source is not None:
                try:
                    values[f.name] = _coerce(f, source)
                except ValueError as e:
                    raise ConfigError(f"{f.name}: {e}") from e
                break
    cfg = NodeConfig(**values)
    cfg.check()
    return cfg
