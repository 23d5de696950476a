import itertools
import time

import pytest

import storage
from storage import Entry, Store, StoreOptions


class Engine:
    """Drives a Store the way the Raft layer will: one entry per call, a clock it controls."""

    def __init__(self, path, **opts):
        self.path = path
        self.opts = StoreOptions(**opts)
        self.store = Store.open(path, self.opts)
        self.index = itertools.count(self.store.applied_index + 1)
        self.now = 1_700_000_000 * 10**9

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 10**9)

    def apply_all(self, *commands):
        """Apply commands in one entry; returns the raw results (errors included)."""
        return self.store.apply(Entry(next(self.index), self.now, list(commands))).results

    def apply(self, command):
        """Apply one command; raises its JSError, returns its result otherwise."""
        (r,) = self.apply_all(command)
        if isinstance(r, storage.JSError):
            raise r
        return r

    def reopen(self):
        self.store.close()
        self.store = Store.open(self.path, self.opts)
        self.index = itertools.count(self.store.applied_index + 1)

    def close(self):
        self.store.close()


@pytest.fixture
def engine(tmp_path):
    e = Engine(str(tmp_path / "store"), sync=False)
    yield e
    e.close()


import os
import re
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ServerProcess:
    """A real `raftbroker server` child process on a free loopback port."""

    def __init__(self, data_dir: str, *extra: str):
        self.data_dir = data_dir
        self.extra = extra
        self.proc = None
        self.addr = None

    def start(self, timeout_s: float = 20.0) -> "ServerProcess":
        listen = self.addr or "127.0.0.1:0"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "server", "--data", self.data_dir, "--listen", listen,
             "--log-level", "warning", *self.extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"clients on (\S+?),? ", line) or re.search(r"clients on (\S+)", line)
            if m:
                self.addr = m.group(1).rstrip(",")
                n = re.search(r"nats on (\S+?),", line)
                self.nats_url = f"nats://{n.group(1)}" if n else None
                return self
        self.stop()
        raise RuntimeError("server did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(tmp_path):
    s = ServerProcess(str(tmp_path / "node")).start()
    yield s
    s.stop()
