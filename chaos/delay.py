"""Delay on the Raft links of a chaos run: one delay proxy per node namespace
(see `delay_proxy.py`), the NAT rules that route Raft connections through them,
and the control that turns delay on and off for chosen nodes."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from . import delay_proxy as DP

PROXY_PORT = 6299


class DelayLinks:
    def __init__(self, net, cluster, work: str, raft_port: int = 6222):
        self.net = net
        self.c = cluster
        self.work = work
        self.raft_port = raft_port
        self.control = os.path.join(work, "delay-control.json")
        self._procs: dict[str, subprocess.Popen] = {}

    def _stats_path(self, name: str) -> str:
        return os.path.join(self.work, f"delay-{name}.stats.json")

    def start(self) -> None:
        """Before the nodes start: every Raft connection then runs through a proxy."""
        DP.write_control(self.control, [], 0)
        for node in self.c.nodes:
            ip = self.net.addr(node.name)
            log = open(os.path.join(self.work, f"delay-{node.name}.log"), "w")
            self._procs[node.name] = subprocess.Popen(
                [*self.net.exec_prefix(node.name), sys.executable, "-m", "chaos.delay_proxy", "--self-ip", ip,
                 "--port", str(PROXY_PORT), "--control", self.control, "--stats", self._stats_path(node.name)],
                stdout=log, stderr=subprocess.STDOUT,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            log.close()
        deadline = time.monotonic() + 10
        while not all(os.path.exists(self._stats_path(n)) for n in self._procs):
            dead = [n for n, p in self._procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"delay proxies did not start ({dead or 'timeout'}); see delay-*.log")
            time.sleep(0.1)
        self.net.redirect(self.raft_port, PROXY_PORT, DP.MARK)

    def _held(self) -> int:
        return sum(DP.read_stats(self._stats_path(n)).get("delayed_bytes", 0) for n in self._procs)

    def set(self, names: list[str], ms: int, verify_s: float = 10.0) -> None:
        """Delay every link of these nodes by `ms`; return once Raft bytes are
        really being held back, else raise (a fault asked for is never skipped)."""
        before = self._held()
        DP.write_control(self.control, [self.net.addr(n) for n in names], ms)
        deadline = time.monotonic() + verify_s
        while self._held() <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"delay {ms} ms on {names} held no Raft traffic back within {verify_s}s")
            time.sleep(0.1)

    def clear(self) -> None:
        DP.write_control(self.control, [], 0)

    def stats(self) -> dict[str, dict]:
        return {n: DP.read_stats(self._stats_path(n)) for n in self._procs}

    def stop(self) -> None:
        for p in self._procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self._procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs.clear()

