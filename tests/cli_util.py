"""Running the `raftbroker` command line as a script would: a subprocess of `python -m api.cli`."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, ServerProcess

CLI_TIMEOUT_S = 60


def env_without_server(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTBROKER_")}
    env.update(extra)
    return env


def cli(server, *args, env=None, check=True, input=None):
    """Run one command against `server`; with check, a non-zero exit fails the test."""
    argv = [sys.executable, "-m", "api.cli", *args]
    if server is not None:
        argv += ["--server", server.addr]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                       env=env or env_without_server(), input=input)
    if check:
        assert r.returncode == 0, f"{args} exited {r.returncode}: {r.stderr}"
    return r


def cli_json(server, *args, **kw):
    return json.loads(cli(server, *args, "--json", **kw).stdout)


def json_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def start_cli(server, *args):
    """Start a long-running command (sub, reply, bench sub) in the background."""
    return subprocess.Popen([sys.executable, "-m", "api.cli", *args, "--server", server.addr], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_without_server())


def wait_ready(proc, marker: str) -> None:
    """Block until the background command prints `marker` on stderr (it is subscribed). Bounded:
    every background command in these tests has its own --timeout, after which it exits."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            return
    raise AssertionError(f"{proc.args} exited before {marker!r}: {''.join(seen)}")


def finish(proc, timeout_s: float = 30) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, out, err


def poll(pred, timeout_s: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One node for a whole module: each test uses its own stream names, and a module saves
    a server start per test."""
    s = ServerProcess(str(tmp_path_factory.mktemp("node"))).start()
    yield s
    s.stop()
