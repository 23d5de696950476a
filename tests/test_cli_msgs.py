"""`raftbroker pub | sub | request | reply`, and the auth flags, through the real entry point."""
import pytest

from cli_util import cli, cli_json, env_without_server, finish, json_lines, server, start_cli, wait_ready  # noqa: F401
from conftest import ServerProcess


def test_pub_stores_with_headers_and_id_dedupes(server):
    cli(server, "stream", "add", "PUBS", "--subjects", "pubs.>")
    first = json_lines(cli(server, "pub", "pubs.a", "one", "--id", "order-1", "-H", "K:V", "--json").stdout)
    again = json_lines(cli(server, "pub", "pubs.a", "one", "--id", "order-1", "--json").stdout)
    assert first[0]["seq"] == again[0]["seq"] == 1 and again[0]["duplicate"]
    m = cli_json(server, "stream", "get", "PUBS", "1")
    assert m["headers"]["K"] == "V" and m["headers"]["Nats-Msg-Id"] == "order-1"
    assert "Stored in PUBS at sequence 2" in cli(server, "pub", "pubs.b", input="", env=None).stdout
    r = cli(server, "pub", "nostream.here", "x", check=False)
    assert r.returncode == 1 and "no stream matches subject" in r.stderr
    r = cli(server, "pub", "pubs.a", "-H", "nocolon", check=False)
    assert r.returncode == 2 and "KEY:VALUE" in r.stderr


def test_sub_receives_core_publishes_in_a_queue_group(server):
    proc = start_cli(server, "sub", "core.>", "--queue", "q", "--count", "3", "--timeout", "20s", "--json")
    wait_ready(proc, "Subscribing on core.>")
    cli(server, "pub", "core.x", "hello {{Count}}", "--count", "3", "--core", "-H", "A:b")
    rc, out, err = finish(proc)
    assert rc == 0, err
    assert [(m["subject"], m["data"], m["headers"]) for m in json_lines(out)] == \
        [("core.x", f"hello {i}", {"A": "b"}) for i in (1, 2, 3)]


def test_sub_that_gets_too_few_messages_exits_1(server):
    r = cli(server, "sub", "quiet.subject", "--count", "1", "--timeout", "300ms", check=False)
    assert r.returncode == 1 and "received 0 of 1 messages on quiet.subject" in r.stderr


def test_request_gets_the_reply_of_reply(server):
    proc = start_cli(server, "reply", "svc.time", "pong", "--count", "1", "--timeout", "20s", "--json")
    wait_ready(proc, "Listening on svc.time")
    assert cli_json(server, "request", "svc.time", "ping")["data"] == "pong"
    rc, out, err = finish(proc)
    assert rc == 0 and '"answered": 1' in out, err
    r = cli(server, "request", "svc.nobody", "x", "--timeout", "300ms", check=False)
    assert r.returncode == 1 and "no reply on svc.nobody" in r.stderr


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    s = ServerProcess(str(tmp_path_factory.mktemp("auth")), "--token", "s3cret").start()
    yield s
    s.stop()


def test_token_flag_and_environment_authenticate(token_server):
    r = cli(token_server, "stream", "ls", check=False)
    assert r.returncode == 1 and "authorization" in r.stderr.lower()
    assert cli_json(token_server, "stream", "ls", "--token", "s3cret") == []
    env = env_without_server(RAFTBROKER_SERVER=token_server.addr, RAFTBROKER_TOKEN="s3cret")
    assert cli(None, "stream", "ls", "--names", env=env).returncode == 0
