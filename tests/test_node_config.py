"""A node's settings: flags over RAFTBROKER_* environment variables over a TOML file."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from api.server.config import ConfigError, NodeConfig, add_arguments, resolve
from cluster_util import free_ports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resolve(argv: list[str], env: dict | None = None) -> NodeConfig:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return resolve(p.parse_args(argv), environ=env or {})


def _toml(tmp_path, text: str) -> str:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return str(path)


def test_flag_beats_environment_beats_toml_beats_default(tmp_path):
    conf = _toml(tmp_path, 'name = "from-toml"\nlisten = "127.0.0.1:5000"\nlog_level = "debug"\n')
    env = {"RAFTBROKER_NAME": "from-env", "RAFTBROKER_LISTEN": "127.0.0.1:6000"}
    cfg = _resolve(["--config", conf, "--name", "from-flag"], env)
    assert cfg.name == "from-flag"               # flag over env and file
    assert cfg.listen == "127.0.0.1:6000"        # env over file
    assert cfg.log_level == "debug"              # file over default
    assert cfg.data == NodeConfig().data         # nothing anywhere: the default
    assert _resolve(["--config", conf], {}).name == "from-toml"
    assert _resolve([], {}).name == NodeConfig().name


def test_config_file_can_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RAFTBROKER_CONFIG", _toml(tmp_path, 'name = "from-toml"\n'))
    assert _resolve([], {}).name == "from-toml"


@pytest.mark.parametrize("raw, expected", [("true", True), ("1", True), ("TRUE", True), ("yes", True),
                                           ("false", False), ("0", False), ("", False)])
def test_booleans_from_the_environment(raw, expected):
    cfg = _resolve([], {"RAFTBROKER_BOOTSTRAP": raw, "RAFTBROKER_NO_SYNC": raw})
    assert cfg.bootstrap is expected and cfg.no_sync is expected


def test_boolean_flag_and_toml_boolean(tmp_path):
    assert _resolve(["--bootstrap"], {}).bootstrap is True
    assert _resolve(["--config", _toml(tmp_path, "bootstrap = true\n")], {}).bootstrap is True
    assert _resolve([], {}).bootstrap is False


def test_numbers_from_the_environment_and_bad_numbers_rejected():
    cfg = _resolve([], {"RAFTBROKER_ELECTION_MIN_S": "0.5", "RAFTBROKER_BATCH_MAX_COMMANDS": "64"})
    assert cfg.election_min_s == 0.5 and cfg.batch_max_commands == 64
    with pytest.raises(ConfigError, match="batch_max_commands"):
        _resolve([], {"RAFTBROKER_BATCH_MAX_COMMANDS": "many"})


def test_unknown_toml_key_is_rejected(tmp_path):
    conf = _toml(tmp_path, 'name = "n1"\nclustr_secret = "typo"\n')
    with pytest.raises(ConfigError, match="clustr_secret"):
        _resolve(["--config", conf], {})


def test_cluster_node_without_a_secret_is_rejected():
    with pytest.raises(ConfigError) as e:
        _resolve(["--raft", "127.0.0.1:6222"], {})
    assert "--cluster-secret" in str(e.value) and "--insecure-dev-cluster" in str(e.value)


def test_cluster_node_accepts_a_secret_from_any_source_or_the_dev_opt_out(tmp_path):
    assert _resolve(["--raft", "127.0.0.1:6222", "--cluster-secret", "s"], {}).cluster_secret == "s"
    assert _resolve(["--raft", "127.0.0.1:6222"], {"RAFTBROKER_CLUSTER_SECRET": "s"}).cluster_secret == "s"
    conf = _toml(tmp_path, 'cluster_secret = "s"\n')
    assert _resolve(["--raft", "127.0.0.1:6222", "--config", conf], {}).cluster_secret == "s"
    assert _resolve(["--raft", "127.0.0.1:6222", "--insecure-dev-cluster"], {}).insecure_dev_cluster
    assert _resolve(["--raft", "127.0.0.1:6222"], {"RAFTBROKER_INSECURE_DEV_CLUSTER": "1"}).insecure_dev_cluster
    # A single node has no Raft port to protect.
    assert _resolve([], {}).raft == ""


def test_address_without_a_port_is_rejected():
    with pytest.raises(ConfigError, match="--listen"):
        _resolve(["--listen", "localhost"], {})


def test_advertise_replaces_the_host_of_every_address_and_keeps_its_port():
    env = {"RAFTBROKER_LISTEN": "0.0.0.0:4222", "RAFTBROKER_HTTP": "0.0.0.0:8222",
           "RAFTBROKER_RAFT": "0.0.0.0:6222", "RAFTBROKER_ADVERTISE": "n2",
           "RAFTBROKER_PEERS": "n1:6222, n2:6222,n3:6222", "RAFTBROKER_CLUSTER_SECRET": "s"}
    cfg = _resolve([], env)
    assert (cfg.client_addr, cfg.http_addr, cfg.raft_addr) == ("n2:4222", "n2:8222", "n2:6222")
    assert cfg.peer_list == ["n1:6222", "n2:6222", "n3:6222"]
    # The node's Raft identity is its advertised address: it must be one of the peers.
    assert cfg.raft_addr in cfg.peer_list


def test_without_advertise_the_bound_host_is_advertised():
    cfg = _resolve(["--listen", "10.0.0.5:4222", "--raft", "10.0.0.5:6222", "--insecure-dev-cluster"], {})
    assert (cfg.client_addr, cfg.raft_addr, cfg.http_addr) == ("10.0.0.5:4222", "10.0.0.5:6222", "")
    assert _resolve(["--listen", ":4222"], {}).client_addr == "127.0.0.1:4222"


def test_server_without_a_cluster_secret_exits_with_the_reason(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTBROKER_")}
    (port,) = free_ports(1)
    proc = subprocess.run(
        [sys.executable, "-m", "api.cli", "server", "--raft", f"127.0.0.1:{port}", "--data", str(tmp_path / "d")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--cluster-secret" in proc.stderr and "--insecure-dev-cluster" in proc.stderr, proc.stderr
    assert not (tmp_path / "d").exists()          # refused before touching the data directory
