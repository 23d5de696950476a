"""A cluster of real `raftbroker server` processes, for tests, benches and chaos runs.

By default every node listens on free ports of 127.0.0.1. A chaos run gives
each node its own network namespace instead (`hosts` and `exec_prefix`): the
same ports on each node's own address. Each node logs to `<dir>/<name>.log`;
the cluster only ever signals processes it started itself.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "test-cluster-secret"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class Node:
    name: str
    data: str
    client: str
    http: str
    raft: str
    log_path: str
    extra: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    exec_prefix: list[str] = field(default_factory=list)     # e.g. ["ip", "netns", "exec", ns]
    nats: str = ""                                          # NATS-protocol address, when it has one
    proc: Optional[subprocess.Popen] = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    def __init__(self, root: str, n: int = 3, secret: Optional[str] = SECRET, extra: tuple = (),
                 env: Optional[dict] = None, hosts: Optional[list[str]] = None,
                 exec_prefixes: Optional[list[list[str]]] = None, nats: bool = False,
                 names: Optional[list[str]] = None):
        """names: the nodes' names (default n1..n<n>); a run with two clusters names
        them apart (o1.., m1..) so every report says which cluster a node is in."""
        self.root = root
        self.secret = secret
        self.nodes = []
        ports = free_ports((4 if nats else 3) * n) if hosts is None else [4222, 8222, 6222] * n + [4322] * n
        nats_ports = ports[3 * n:]
        for i in range(n):
            host = hosts[i] if hosts else "127.0.0.1"
            name = names[i] if names else f"n{i + 1}"
            self.nodes.append(Node(name, os.path.join(root, name), f"{host}:{ports[3 * i]}",
                                   f"{host}:{ports[3 * i + 1]}", f"{host}:{ports[3 * i + 2]}",
                                   os.path.join(root, f"{name}.log"), list(extra), dict(env or {}),
                                   list(exec_prefixes[i]) if exec_prefixes else [],
                                   f"{host}:{nats_ports[i]}" if nats else ""))

    # -- processes ---------------------------------------------------------------------
    def command(self, node: Node, peers: Optional[list[str]] = None) -> list[str]:
        peers = peers if peers is not None else [n.raft for n in self.nodes]
        cmd = [*node.exec_prefix, sys.executable, "-m", "api.cli", "server", "--name", node.name, "--data", node.data,
               "--listen", node.client, "--http", node.http, "--raft", node.raft, "--peers", ",".join(peers),
               "--bootstrap", "--log-level", "info", *node.extra]
        if node.nats:
            cmd += ["--nats-listen", node.nats]
        if self.secret is not None:
            cmd += ["--cluster-secret", self.secret]
        return cmd

    def start(self, i: Optional[int] = None, peers: Optional[list[str]] = None, wait: bool = True) -> None:
        for node in ([self.nodes[i]] if i is not None else self.nodes):
            os.makedirs(self.root, exist_ok=True)
            logf = open(node.log_path, "a")
            logf.write(f"---- start {time.strftime('%H:%M:%S')}\n")
            logf.flush()
            node.proc = subprocess.Popen(self.command(node, peers), cwd=REPO, stdout=logf, stderr=subprocess.STDOUT,
                                         env={**os.environ, **node.env})
            logf.close()
        if wait:
            for node in ([self.nodes[i]] if i is not None else self.nodes):
                self.wait_http(node)

    def wait_http(self, node: Node, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not node.alive:
                raise RuntimeError(f"{node.name} exited with {node.proc.returncode}:\n{self.log(node)[-3000:]}")
            try:
                self.raftz(node)
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{node.name} did not serve HTTP within {timeout_s}s")

    def signal(self, i: int, sig: int) -> None:
        node = self.nodes[i]
        if node.alive:
            node.proc.send_signal(sig)

    def kill(self, i: int) -> None:
        node = self.nodes[i]
        if node.alive:
            node.proc.kill()
            node.proc.wait(10)

    def stop(self, i: Optional[int] = None, timeout_s: float = 15.0) -> None:
        for node in ([self.nodes[i]] if i is not None else self.nodes):
            if node.alive:
                node.proc.send_signal(signal.SIGCONT)
                node.proc.terminate()
        for node in ([self.nodes[i]] if i is not None else self.nodes):
            if node.proc is not None:
                try:
                    node.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    def wait_exit(self, i: int, timeout_s: float = 30.0) -> int:
        return self.nodes[i].proc.wait(timeout_s)

    def log(self, node: Node) -> str:
        with open(node.log_path, errors="replace") as f:
            return f.read()

    # -- HTTP views ----------------------------------------------------------------------
    def _get(self, node: Node, path: str, timeout: float = 2.0):
        try:
            with urllib.request.urlopen(f"http://{node.http}{path}", timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def raftz(self, node: Node) -> dict:
        return self._get(node, "/raftz")[1]

    def digest(self, node: Node) -> dict:
        return self._get(node, "/digest", timeout=60)[1]

    def healthz(self, node: Node) -> tuple[int, dict]:
        return self._get(node, "/healthz")

    def leader(self, timeout_s: float = 30.0, among: Optional[list[int]] = None) -> int:
        """Index of the node that is leader and whose peers agree, once there is one."""
        among = among if among is not None else range(len(self.nodes))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i in among:
                node = self.nodes[i]
                if not node.alive:
                    continue
                try:
                    z = self.raftz(node)
                except OSError:
                    continue
                # Healthy, and named: its announcement (name and client address) is applied,
                # so clients and status pages can name it.
                if z.get("role") == "leader" and z.get("leader") == node.name and self.healthz(node)[0] == 200:
                    return i
            time.sleep(0.1)
        raise TimeoutError("no leader elected within %ss" % timeout_s)

    def wait_named(self, timeout_s: float = 30.0) -> int:
        """Index of the leader, once its status names every member (each node's announcement
        is its own Raft entry, applied some time after the election)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            li = self.leader(timeout_s=max(0.1, deadline - time.monotonic()))
            try:
                members = self.raftz(self.nodes[li])["members"]
            except OSError:
                continue
            if all(m["name"] != m["raft"] for m in members):
                return li
            time.sleep(0.1)
        raise TimeoutError(f"the leader did not name every member within {timeout_s}s")

    def wait_healthy(self, indices: Optional[list[int]] = None, timeout_s: float = 60.0) -> None:
        indices = indices if indices is not None else range(len(self.nodes))
        deadline = time.monotonic() + timeout_s
        pending = list(indices)
        while pending and time.monotonic() < deadline:
            pending = [i for i in pending if not self._healthy(i)]
            if pending:
                time.sleep(0.1)
        if pending:
            raise TimeoutError(f"nodes {[self.nodes[i].name for i in pending]} not healthy: "
                               f"{[self.healthz(self.nodes[i]) if self.nodes[i].alive else self.death(i) for i in pending]}")

    def death(self, i: int) -> str:
        """Why a node is not running: its exit code and, when it refused its state, the reason."""
        node = self.nodes[i]
        code = node.proc.poll() if node.proc is not None else None
        refusal = [ln for ln in self.log(node).splitlines() if "refusing to start:" in ln] if node.proc else []
        return f"dead (exit {code})" + (f": {refusal[-1].split('refusing to start:', 1)[1].strip()}" if refusal else "")

    def _healthy(self, i: int) -> bool:
        try:
            return self.nodes[i].alive and self.healthz(self.nodes[i])[0] == 200
        except OSError:
            return False

    def wait_same_digest(self, indices: Optional[list[int]] = None, timeout_s: float = 60.0) -> dict:
        """Wait until the nodes report equal stream digests; returns one of them. The nodes
        are asked at once, so their digests describe nearly the same moment even when
        hashing a large stream takes seconds and entries still arrive (a mirror reports)."""
        indices = indices if indices is not None else range(len(self.nodes))
        deadline = time.monotonic() + timeout_s
        last = None
        with ThreadPoolExecutor(len(indices)) as pool:
            while time.monotonic() < deadline:
                try:
                    ds = list(pool.map(lambda i: self.digest(self.nodes[i]), indices))
                except OSError:
                    time.sleep(0.2)
                    continue
                last = ds
                if all(d["streams"] == ds[0]["streams"] for d in ds) and ds[0]["streams"]:
                    return ds[0]
                time.sleep(0.2)
        raise AssertionError(f"digests differ: {last}")

    def clients(self) -> list[str]:
        return [n.client for n in self.nodes]

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
