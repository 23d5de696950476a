"""What a connection and a node count for the monitoring endpoints: traffic, activity, usage."""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field


@dataclass
class Traffic:
    in_msgs: int = 0
    in_bytes: int = 0
    out_msgs: int = 0
    out_bytes: int = 0
    last_activity: float = field(default_factory=time.time)

    def got(self, nbytes: int) -> None:
        self.in_msgs += 1
        self.in_bytes += nbytes
        self.last_activity = time.time()

    def sent(self, nbytes: int) -> None:
        self.out_msgs += 1
        self.out_bytes += nbytes
        self.last_activity = time.time()

    def add(self, other: "Traffic") -> None:
        self.in_msgs += other.in_msgs
        self.in_bytes += other.in_bytes
        self.out_msgs += other.out_msgs
        self.out_bytes += other.out_bytes


@dataclass
class ConnRow:
    """One client connection as /connz shows it (nats-server's field names)."""
    cid: int
    kind: str                 # "nats" or "rpc": which front it came through
    ip: str
    port: int
    start: float
    traffic: Traffic
    pending_bytes: int
    subscriptions: int
    name: str = ""
    lang: str = ""
    version: str = ""


class ProcessUsage:
    """RSS and CPU of this process; CPU as a percentage of one core since the last look,
    as nats-server's /varz reports it."""

    def __init__(self):
        self._last = (time.monotonic(), self._cpu_s())
        self.cpu_percent = 0.0

    @staticmethod
    def _cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def sample(self) -> tuple[int, float]:
        now, cpu = time.monotonic(), self._cpu_s()
        wall = now - self._last[0]
        if wall >= 0.5:
            self.cpu_percent = round(100.0 * (cpu - self._last[1]) / wall, 1)
            self._last = (now, cpu)
        return rss_bytes(), self.cpu_percent


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
