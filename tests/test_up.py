"""`raftbroker up`: a local cluster of child processes, stopped together."""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from api.client import connect

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODES = 3

pytestmark = pytest.mark.slow


def _reserve_runs(count: int, length: int) -> tuple[list[int], list[socket.socket]]:
    """`count` bases of `length` consecutive free loopback ports, held bound (the caller
    closes them right before use). Below Linux's ephemeral range, so outgoing
    connections do not take them meanwhile."""
    bases, held = [], []
    for _ in range(200):
        if len(bases) == count:
            return bases, held
        base = random.randrange(20000, 32000 - length)
        socks = []
        try:
            for port in range(base, base + length):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            for s in socks:
                s.close()
            continue
        bases.append(base)
        held += socks
    for s in held:
        s.close()
    raise RuntimeError(f"found no {count} runs of {length} free ports")


class Up:
    """`python -m api.cli up` on free port bases; its and its nodes' output in `lines`."""

    def __init__(self, data: str):
        self.data = data
        (self.client, self.http, self.raft, self.nats), held = _reserve_runs(4, NODES)
        for s in held:
            s.close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "up", "--nodes", str(NODES), "--data", data,
             "--client-port", str(self.client), "--http-port", str(self.http), "--raft-port", str(self.raft),
             "--nats-port", str(self.nats), "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("RAFTBROKER_")})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.children: list[int] = []

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output()[-3000:]}")

    def find_children(self, timeout_s: float = 10.0) -> list[int]:
        """The node processes `up` started: its children, found through /proc."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            kids = []
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                if int(stat.rpartition(")")[2].split()[1]) == self.proc.pid:
                    kids.append(int(entry))
            if len(kids) == NODES:
                self.children = sorted(kids)
                return self.children
            time.sleep(0.1)
        raise AssertionError(f"`up` has children {kids}, expected {NODES}")

    def is_our_node(self, pid: int) -> bool:
        """Still running, and still one of this test's nodes (not a reused pid)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            return False
        return state != "Z" and self.data.encode() in cmdline

    def wait_children_gone(self, timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = [p for p in self.children if self.is_our_node(p)]
            if not alive:
                return []
            time.sleep(0.1)
        return alive

    def cleanup(self) -> None:
        """Only what this test started: `up`, then any node it left behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.children:
            if self.is_our_node(pid):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(5)


def _get(addr: str, path: str):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _wait_leader(http: list[str], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for i, addr in enumerate(http):
            try:
                if _get(addr, "/raftz")[1].get("role") == "leader" and _get(addr, "/healthz")[0] == 200:
                    return i
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"no leader among {http} within {timeout_s}s")


def _wait_same_digest(http: list[str], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ds = [_get(a, "/digest")[1] for a in http]
            if all(d["streams"] == ds[0]["streams"] for d in ds) and ds[0]["streams"]:
                return ds[0]
        except OSError:
            ds = None
        if time.monotonic() > deadline:
            raise AssertionError(f"digests differ: {ds}")
        time.sleep(0.2)


def _refuses(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.fixture
def up(tmp_path):
    u = Up(str(tmp_path / "data"))
    yield u
    u.cleanup()


async def test_up_prints_its_nodes_serves_a_cluster_and_ctrl_c_stops_every_node(up):
    clients = [f"127.0.0.1:{up.client + i}" for i in range(NODES)]
    http = [f"127.0.0.1:{up.http + i}" for i in range(NODES)]
    for i in range(NODES):
        m = up.wait_line(rf"^n{i + 1}: clients (\S+)\s+http (\S+)\s+raft (\S+)\s+data (\S+)", 10)
        assert m.groups() == (clients[i], http[i], f"127.0.0.1:{up.raft + i}", os.path.join(up.data, f"n{i + 1}"))
    up.wait_line(r"^connect with: servers=", 10)
    nats_urls = [f"nats://127.0.0.1:{up.nats + i}" for i in range(NODES)]
    assert up.wait_line(r"^nats-py: nats.connect\(servers=(.*)\)$", 10).group(1) == repr(nats_urls)
    up.find_children()

    await asyncio.to_thread(_wait_leader, http, 20)
    nc = await asyncio.wait_for(connect(clients), 10)
    try:
        js = nc.jetstream()
        await asyncio.wait_for(js.add_stream(name="S", subjects=["s.>"], num_replicas=3), 10)
        for i in range(5):
            ack = await asyncio.wait_for(js.publish("s.x", b"m%d" % i), 10)
            assert ack.seq == i + 1
    finally:
        await nc.close()
    digest = await asyncio.to_thread(_wait_same_digest, http, 10)
    assert digest["messages"] == {"S": 5}

    up.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(up.proc.wait, 30) == 0, up.output()[-3000:]
    assert up.wait_children_gone(5) == [], f"nodes still running after `up` ended:\n{up.output()[-3000:]}"
    assert all(_refuses(a) for a in clients)


def test_sigterm_to_up_stops_its_nodes_too(up):
    http = [f"127.0.0.1:{up.http + i}" for i in range(NODES)]
    up.wait_line(r"^connect with: servers=", 10)
    up.find_children()
    deadline = time.monotonic() + 15
    for addr in http:                 # each node is up and has its signal handlers
        while True:
            try:
                _get(addr, "/raftz")
                break
            except OSError:
                assert time.monotonic() < deadline, f"{addr} never served HTTP:\n{up.output()[-3000:]}"
                time.sleep(0.1)
    up.proc.terminate()
    assert up.proc.wait(30) == 0, up.output()[-3000:]
    assert up.wait_children_gone(5) == [], f"nodes still running after `up` ended:\n{up.output()[-3000:]}"
