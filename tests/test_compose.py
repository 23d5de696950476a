"""docker-compose.cluster.yml and the Dockerfile: the file is valid, and the very
command and environment it gives each service form a working cluster.

No Docker daemon is needed: the second test runs each service's entrypoint and
environment as a local process, changing only host names, ports and the data
directory (n1/n2/n3 and 0.0.0.0 become 127.0.0.1 on free ports; /data a temp dir).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib

import nats
import pytest
import yaml   # a dev dependency (pyproject.toml): the compose file is always checked

from api.client import connect
from api.server.config import resolve
from cluster_util import Cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE = os.path.join(REPO, "docker-compose.cluster.yml")
DOCKERFILE = os.path.join(REPO, "Dockerfile")
SERVICES = ("n1", "n2", "n3")
SECRET_VAR = "RAFTBROKER_CLUSTER_SECRET"
TEST_SECRET = "compose-test-secret"
# Every node setting the brief's cluster needs, given through the environment only.
REQUIRED_ENV = ("RAFTBROKER_NAME", "RAFTBROKER_DATA", "RAFTBROKER_LISTEN", "RAFTBROKER_HTTP",
                "RAFTBROKER_RAFT", "RAFTBROKER_ADVERTISE", "RAFTBROKER_PEERS", SECRET_VAR,
                "RAFTBROKER_BOOTSTRAP")
DATA_MOUNT = "/data"
HOST_SETTINGS = {"RAFTBROKER_ADVERTISE"}     # settings whose whole value is a host name


# -- reading the files the way Docker does ------------------------------------------------
class InterpolationError(ValueError):
    pass


_VAR = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value, env: dict):
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}; applied to every string value, never to keys."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4)
        have = env.get(name)
        missing = have is None or (have == "" and op and op.startswith(":"))
        if op and op.endswith("?") and missing:
            raise InterpolationError(f"required variable {name} is missing a value: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return have or ""

    return _VAR.sub(sub, value)


def load_compose(env: dict | None = None) -> dict:
    with open(COMPOSE) as f:
        raw = yaml.safe_load(f)            # resolves the file's anchors and `<<` merges
    return interpolate(raw, {SECRET_VAR: TEST_SECRET} if env is None else env)


def service_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):              # the KEY=VALUE list form
        env = dict(e.split("=", 1) for e in env)
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    out, buf = [], ""
    with open(DOCKERFILE) as f:
        for line in f:
            s = line.strip()
            if not buf and (not s or s.startswith("#")):
                continue
            if s.endswith("\\"):
                buf += s[:-1] + " "
                continue
            buf += s
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def dockerfile_entrypoint() -> list[str]:
    (ep,) = [json.loads(a) for i, a in dockerfile_instructions() if i == "ENTRYPOINT"]
    return ep


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instr, args in dockerfile_instructions():
        if instr == "ENV":
            env.update(kv.split("=", 1) for kv in shlex.split(args))
    return env


def _volume_target(v) -> tuple[str, str]:
    if isinstance(v, dict):
        return v.get("source", ""), v["target"]
    source, _, rest = v.partition(":")
    return source, rest.split(":")[0]


def _published(p) -> tuple[int, int]:
    """(host port, container port) of a `ports` entry."""
    if isinstance(p, dict):
        return int(p["published"]), int(p["target"])
    parts = str(p).split("/")[0].split(":")
    return int(parts[-2]), int(parts[-1])


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


# -- (a) the file is valid ------------------------------------------------------------------
def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        try:
            r = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            return None
        if r.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_config_accepts_the_file_when_docker_compose_is_installed():
    """Docker's own validation where it exists; test_compose_file_describes_the_cluster
    checks the same file with PyYAML on every machine, so one of the two always runs."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker-compose / `docker compose` here; the structural test checks the file")
    base = {k: v for k, v in os.environ.items() if k != SECRET_VAR}
    ok = subprocess.run([*cli, "-f", COMPOSE, "config", "--quiet"], cwd=REPO, capture_output=True, text=True,
                        env={**base, SECRET_VAR: TEST_SECRET}, timeout=60)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run([*cli, "-f", COMPOSE, "config", "--quiet"], cwd=REPO, capture_output=True,
                             text=True, env=base, timeout=60)
    assert missing.returncode != 0 and SECRET_VAR in missing.stderr, missing.stderr


def test_compose_file_describes_the_cluster():
    compose = load_compose()
    services = compose["services"]
    assert sorted(services) == list(SERVICES)
    first = services[SERVICES[0]]
    declared_volumes = set(compose.get("volumes") or {})
    data_volumes, host_ports = set(), set()
    for name in SERVICES:
        svc = services[name]
        # One image, one command: a node differs only by its environment.
        for key in ("image", "build", "entrypoint", "command", "healthcheck"):
            assert svc.get(key) == first.get(key), f"{name}: {key} differs from {SERVICES[0]}'s"
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"
        env = service_env(svc)
        assert not set(REQUIRED_ENV) - set(env), f"{name}: missing {set(REQUIRED_ENV) - set(env)}"
        assert env["RAFTBROKER_NAME"] == name and env["RAFTBROKER_ADVERTISE"] == name
        assert env["RAFTBROKER_DATA"] == DATA_MOUNT
        assert env["RAFTBROKER_PEERS"] == ",".join(f"{s}:{_port(env['RAFTBROKER_RAFT'])}" for s in SERVICES)
        assert env[SECRET_VAR] == TEST_SECRET and env["RAFTBROKER_BOOTSTRAP"] == "true"
        # The settings resolve, and the node's Raft identity (advertised host + Raft
        # port) is spelled exactly as in the peer list, or it would be a fourth member.
        args = type("Args", (), {"config": None})()
        cfg = resolve(args, environ=env)
        assert cfg.raft_addr == f"{name}:6222" and cfg.raft_addr in cfg.peer_list
        assert (cfg.client_addr, cfg.http_addr) == (f"{name}:4222", f"{name}:8222")
        mounts = dict(_volume_target(v)[::-1] for v in svc.get("volumes") or [])
        assert mounts.get(DATA_MOUNT) in declared_volumes, f"{name}: /data is not a declared named volume"
        data_volumes.add(mounts[DATA_MOUNT])
        test = svc["healthcheck"]["test"]
        line = " ".join(test) if isinstance(test, list) else test
        assert "/healthz" in line and "curl" not in line and "python" in line
        published = dict(_published(p) for p in svc.get("ports") or [])
        assert _port(cfg.listen) in published.values(), f"{name}: client port not published"
        host_ports |= {h for h, c in published.items() if c == _port(cfg.listen)}
    assert len(data_volumes) == 3, "each node needs its own data volume"
    assert host_ports == {4222, 4223, 4224}
    # Without the secret the file does not even interpolate.
    with pytest.raises(InterpolationError, match=SECRET_VAR):
        load_compose(env={})


def test_dockerfile_installs_the_package_and_runs_the_server():
    instr = dockerfile_instructions()
    assert instr[0] == ("FROM", "python:3.11-slim")
    assert dockerfile_entrypoint() == ["raftbroker", "server"]
    assert any(i == "RUN" and "pip install ." in a for i, a in instr)
    assert any(i == "VOLUME" and DATA_MOUNT in a.replace('"', " ").split() for i, a in instr)
    exposed = {int(p.split("/")[0]) for i, a in instr if i == "EXPOSE" for p in a.split()}
    assert exposed >= {4222, 8222, 6222}
    # `pip install .` needs every package pyproject.toml lists, and its readme.
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    copied = {os.path.normpath(src) for i, a in instr if i == "COPY" for src in a.split()[:-1]}
    # The include patterns name top-level packages ("api*" takes api and its subpackages).
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", project["project"]["readme"], *packages}
    assert needed <= copied | {"."}, f"not copied into the image: {needed - copied}"
    for path in needed:
        assert os.path.exists(os.path.join(REPO, path)), path
    # The command the image runs exists: `raftbroker` is the package's script.
    assert project["project"]["scripts"]["raftbroker"] == "api.cli:main"


# -- (b) the services' commands form a working cluster ---------------------------------------
class ComposeCluster(Cluster):
    """The compose services as local processes: entrypoint, command and environment
    verbatim, but for host names, ports and the data directory."""

    def __init__(self, root: str, compose: dict):
        super().__init__(root, n=len(SERVICES), secret=None, nats=True)
        self.compose = compose
        self.argv: dict[str, list[str]] = {}
        image_env = dockerfile_env()
        entry = dockerfile_entrypoint()
        assert entry[0] == "raftbroker"
        # Container port -> this node's local address, per service.
        self.addr: dict[str, dict[int, str]] = {}
        envs = {n.name: {**image_env, **service_env(compose["services"][n.name])} for n in self.nodes}
        for node in self.nodes:
            env = envs[node.name]
            self.addr[node.name] = {_port(env["RAFTBROKER_LISTEN"]): node.client,
                                    _port(env["RAFTBROKER_HTTP"]): node.http,
                                    _port(env["RAFTBROKER_RAFT"]): node.raft,
                                    _port(env["RAFTBROKER_NATS_LISTEN"]): node.nats}
        for node in self.nodes:
            svc = compose["services"][node.name]
            node.env = {k: self.localize(node.name, v, host=k in HOST_SETTINGS)
                        for k, v in envs[node.name].items()}
            command = svc.get("command") or []
            command = shlex.split(command) if isinstance(command, str) else list(command)
            self.argv[node.name] = [sys.executable, "-m", "api.cli", *entry[1:],
                                    *(self.localize(node.name, a) for a in command)]

    def localize(self, service: str, value: str, host: bool = False) -> str:
        """`host`: the value is a bare host name (not, say, the node's name)."""
        if value == DATA_MOUNT:
            return os.path.join(self.root, service)
        if host and value in SERVICES:
            return "127.0.0.1"

        def sub(m: re.Match) -> str:
            host, port = m.group(1), int(m.group(2))
            return self.addr[service if host == "0.0.0.0" else host][port]

        hosts = "|".join([*map(re.escape, SERVICES), r"0\.0\.0\.0"])
        return re.sub(rf"\b({hosts}):(\d+)\b", sub, value)

    def command(self, node, peers=None) -> list[str]:
        return self.argv[node.name]


def _healthcheck_passes(compose: dict, node) -> bool:
    """Run the service's own healthcheck command against the local node."""
    test = compose["services"][node.name]["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD" and test[1] == "python"
    r = subprocess.run([sys.executable, *test[2:]], env={**os.environ, **node.env}, capture_output=True,
                       timeout=10)
    return r.returncode == 0


def _agreed_views(cluster: Cluster, leader, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        views = [cluster.raftz(n) for n in cluster.nodes]
        if all((v["leader"], v["leader_client"]) == (leader.name, leader.client) for v in views):
            return views
        if time.monotonic() > deadline:
            raise AssertionError(f"nodes do not agree that {leader.name} at {leader.client} leads: {views}")
        time.sleep(0.1)


@pytest.mark.slow
async def test_compose_services_form_a_working_cluster(tmp_path, monkeypatch):
    for k in list(os.environ):
        if k.startswith("RAFTBROKER_"):
            monkeypatch.delenv(k)            # a container sees only the file's environment
    compose = load_compose()
    cluster = ComposeCluster(str(tmp_path / "c"), compose)
    try:
        cluster.start()
        li = cluster.leader(timeout_s=20)
        leader = cluster.nodes[li]
        # Every node names the one leader by its RAFTBROKER_NAME, and its advertised
        # client address (where followers send clients), once the nodes have announced.
        views = await asyncio.to_thread(_agreed_views, cluster, leader, 10)
        assert [v["role"] for v in views].count("leader") == 1
        # Each node identified itself by the address in RAFTBROKER_PEERS: three members, no more.
        peers = cluster.nodes[0].env["RAFTBROKER_PEERS"].split(",")
        assert sorted(m["raft"] for m in views[li]["members"]) == sorted(peers)

        nc = await asyncio.wait_for(connect(cluster.clients()), 10)
        try:
            js = nc.jetstream()
            await asyncio.wait_for(js.add_stream(name="S", subjects=["s.>"], num_replicas=3), 10)
            for i in range(100):
                await asyncio.wait_for(js.publish("s.x", b"m%03d" % i), 10)
            assert (await asyncio.wait_for(js.stream_info("S"), 10)).state.messages == 100
        finally:
            await nc.close()
        digest = await asyncio.to_thread(cluster.wait_same_digest, None, 10)
        assert digest["messages"] == {"S": 100}
        await asyncio.to_thread(cluster.wait_healthy, None, 10)
        for node in cluster.nodes:
            assert _healthcheck_passes(compose, node), f"{node.name}: the compose healthcheck fails"
            nats_client = await asyncio.wait_for(nats.connect(f"nats://{node.nats}", allow_reconnect=False), 10)
            try:     # RAFTBROKER_NATS_LISTEN turns the NATS front on
                assert nats_client._server_info["server_name"] == node.name
            finally:
                await nats_client.close()
    except BaseException:
        for node in cluster.nodes:
            if os.path.exists(node.log_path):
                print(f"---- {node.name}\n{cluster.log(node)[-3000:]}")
        raise
    finally:
        cluster.stop(timeout_s=10)
    assert all(not n.alive for n in cluster.nodes)
    assert not _healthcheck_passes(compose, cluster.nodes[0]), "the healthcheck passes on a stopped node"
