"""`--cluster` mode of bench/conformance.py: each server nats-py's harness starts is a
3-node raftbroker cluster, and the tests talk to a follower; or, for the nats-server
target, three real nats-servers routed into one JetStream cluster (NatsClusterProcess),
so the same tests show what any JetStream cluster does differently from one server.

nats-py's `NATSD.start()` builds a nats-server command line and hands it to
`subprocess.Popen`; `NATSD.stop()` SIGKILLs `proc.pid` and calls `proc.wait()`.
`install(tests.utils)` swaps the `subprocess` that module sees for one whose Popen
starts a cluster from that same command line (translated by conformance_shim) and
returns a ClusterProcess: its pid is the node on the harness's ports, and its
`wait()` also kills and reaps the two others, so every node is gone (ports free,
files closed) before the harness removes the store directory or starts the next
server. The harness's code runs unchanged.

Which node the tests reach is not left to the election: n1 (the harness's client and
monitoring ports) starts without --bootstrap, so it neither stands for election nor
votes until it has caught up; n2 and n3 bootstrap and elect one of themselves. n1 is
then a follower, and every JetStream request it gets has to reach the leader.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request

import conformance_shim as shim

SECRET = "conformance-cluster-secret"
READY_TIMEOUT_S = 30.0


class ClusterProcess:
    """Stands in for the Popen of one nats-server: three raftbroker nodes, n1 first."""

    def __init__(self, argv: list[str], root: str, log_dir: str):
        args = shim.parse(argv[1:])       # ShimError for flags the harness passed that we cannot honour
        data_root = args.store_dir or tempfile.mkdtemp(prefix="cluster-", dir=root)
        # n1 keeps the harness's ports (it always gets an HTTP port: readiness is read there).
        nodes = [dataclasses.replace(args, name="n1", http_port=args.http_port or shim.free_port())]
        nodes += [dataclasses.replace(args, name=f"n{i}", host="127.0.0.1", port=shim.free_port(),
                                      http_port=shim.free_port()) for i in (2, 3)]
        raft = [f"127.0.0.1:{shim.free_port()}" for _ in nodes]
        self.http = [f"127.0.0.1:{n.http_port}" for n in nodes]
        self.procs: list[subprocess.Popen] = []
        log_path = os.path.join(log_dir, f"cluster-{args.port}.log")
        with open(log_path, "a") as log:
            log.write(f"---- nats-server {' '.join(argv[1:])}\n")
            for i, node in enumerate(nodes):
                cmd = [sys.executable, *shim.NODE_MODULE,
                       *shim.node_argv(node, os.path.join(data_root, node.name), f"127.0.0.1:{shim.free_port()}"),
                       "--raft", raft[i], "--peers", ",".join(raft), "--cluster-secret", SECRET]
                if i > 0:
                    cmd.append("--bootstrap")      # n1 must not lead: see the module docstring
                log.write(f"---- {node.name}: {' '.join(cmd)}\n")
                log.flush()
                self.procs.append(subprocess.Popen(cmd, cwd=shim.REPO, stdout=log, stderr=subprocess.STDOUT))
        self.pid = self.procs[0].pid
        self.ready_error = self._wait_ready()
        if self.ready_error:
            with open(log_path, "a") as log:
                log.write(f"---- not ready: {self.ready_error}\n")

    @property
    def returncode(self):
        return self.procs[0].poll()

    def poll(self):
        return self.procs[0].poll()

    def wait(self, timeout=None):
        code = self.procs[0].wait(timeout)
        for p in self.procs[1:]:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        return code

    def _wait_ready(self) -> str:
        """'' once `_not_ready` finds nothing missing; else what was missing."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer yet"
        while time.monotonic() < deadline:
            dead = [f"n{i + 1} exited with {p.poll()}" for i, p in enumerate(self.procs) if p.poll() is not None]
            if dead:
                return ", ".join(dead)
            try:
                last = self._not_ready([_get_json(f"http://{h}/healthz")[0] for h in self.http])
                if not last:
                    return ""
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        return f"cluster not ready within {READY_TIMEOUT_S}s: {last}"

    def _not_ready(self, health: list[int]) -> str:
        """What is missing, given every node's /healthz status: every node healthy, and n1
        following a leader."""
        role = _get_json(f"http://{self.http[0]}/raftz")[1].get("role")
        return "" if all(code == 200 for code in health) and role == "follower" else f"healthz {health}, n1 is {role}"


class NatsClusterProcess(ClusterProcess):
    """Stands in for the Popen of one nats-server: three nats-servers of one JetStream
    cluster, n1 on the harness's ports and with its flags. Which server leads the meta
    group, and holds an R1 stream, is nats-server's choice, as in any NATS cluster."""

    def __init__(self, argv: list[str], root: str, log_dir: str):
        binary, flags = argv[0], argv[1:]
        asked = shim.parse(flags)
        routes = [shim.free_port() for _ in range(3)]
        http = [shim.free_port() for _ in range(2)]
        route_urls = ",".join(f"nats://127.0.0.1:{p}" for p in routes)
        n1_http = asked.http_port or shim.free_port()
        if not asked.http_port:
            flags = [*flags, "-m", str(n1_http)]
        self.http = [f"127.0.0.1:{n1_http}"] + [f"127.0.0.1:{p}" for p in http]
        cmds = [[binary, *flags]] + [[binary, "-a", "127.0.0.1", "-p", str(shim.free_port()), "-m", str(http[i]), "-js",
                                      "-sd", tempfile.mkdtemp(prefix="nats-cluster-", dir=root)] for i in range(2)]
        self.procs = []
        with open(os.path.join(log_dir, f"nats-cluster-{asked.port}.log"), "a") as log:
            for i, cmd in enumerate(cmds):
                cmd += ["--server_name", f"n{i + 1}", "--cluster_name", "conformance",
                        "--cluster", f"nats://127.0.0.1:{routes[i]}", "--routes", route_urls]
                log.write(f"---- n{i + 1}: {' '.join(cmd)}\n")
                log.flush()
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        self.pid = self.procs[0].pid
        self.ready_error = self._wait_ready()

    def _not_ready(self, health: list[int]) -> str:
        """Every server's /healthz must be 200 (503 until JetStream has a meta leader)."""
        return "" if all(code == 200 for code in health) else f"healthz {health}"


def _get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}


def process_class(target: str) -> type:
    return NatsClusterProcess if target == "nats-server" else ClusterProcess


def install(utils_module, root: str, log_dir: str, target: str = "raftbroker") -> None:
    """Make nats-py's harness (its `tests.utils` module) start clusters instead of one server."""
    real = subprocess
    cls = process_class(target)

    def popen(cmd, **_kw):
        try:
            return cls([str(c) for c in cmd], root, log_dir)
        except shim.ShimError as e:
            with open(os.path.join(log_dir, "refused.log"), "a") as f:
                f.write(f"{e}\t{' '.join(map(str, cmd[1:]))}\n")
            # As the shim does: a server that refused to start and exited.
            return real.Popen([sys.executable, "-c", "raise SystemExit(2)"])

    utils_module.subprocess = types.SimpleNamespace(**{**vars(real), "Popen": popen})
