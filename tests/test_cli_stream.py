"""`raftbroker stream ...` through its real entry point against a real node."""
import json

from cli_util import cli, cli_json, env_without_server, server  # noqa: F401 - server is the module's node


def test_stream_add_takes_every_config_field_as_a_flag(server):
    info = cli_json(server, "stream", "add", "FLAGS", "--subjects", "flags.a,flags.b.>", "--storage", "memory",
                    "--retention", "interest", "--discard", "new", "--max-msgs", "100", "--max-bytes", "1MB",
                    "--max-age", "1h", "--max-msg-size", "512", "--max-msgs-per-subject", "7", "--dupe-window",
                    "500ms", "--replicas", "1", "--allow-rollup", "--deny-delete", "--allow-direct",
                    "--description", "all flags")
    c = info["config"]
    assert c["subjects"] == ["flags.a", "flags.b.>"]
    assert (c["storage"], c["retention"], c["discard"]) == ("memory", "interest", "new")
    assert (c["max_msgs"], c["max_bytes"], c["max_msg_size"], c["max_msgs_per_subject"]) == (100, 1 << 20, 512, 7)
    assert (c["max_age"], c["duplicate_window"]) == (3600.0, 0.5)
    assert c["allow_rollup_hdrs"] and c["deny_delete"] and c["allow_direct"] and not c["deny_purge"]
    assert c["description"] == "all flags"
    assert cli_json(server, "stream", "info", "FLAGS")["config"] == c

    human = cli(server, "stream", "info", "FLAGS").stdout
    for line in ("Information for Stream FLAGS", "Subjects:   flags.a, flags.b.>", "Retention:   Memory - Interest",
                 "Maximum Age:   1h", "Duplicate Window:   500ms", "Allows Msg Delete:   false", "Messages:   0"):
        assert line in human, human


def test_stream_add_reads_config_file_and_flags_override_it(server, tmp_path):
    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps({"name": "FROMFILE", "subjects": ["file.>"], "max_msgs": 10, "max_age": 60}))
    c = cli_json(server, "stream", "add", "--config", str(cfg), "--max-msgs", "20")["config"]
    assert (c["name"], c["subjects"], c["max_msgs"], c["max_age"]) == ("FROMFILE", ["file.>"], 20, 60.0)


def test_stream_edit_changes_only_the_given_fields(server):
    cli(server, "stream", "add", "EDIT", "--subjects", "edit.>", "--max-msgs", "5", "--description", "before")
    c = cli_json(server, "stream", "edit", "EDIT", "--max-age", "1h", "--description", "after")["config"]
    assert (c["max_age"], c["description"], c["max_msgs"], c["subjects"]) == (3600.0, "after", 5, ["edit.>"])


def test_messages_published_then_read_viewed_deleted_and_purged(server):
    cli(server, "stream", "add", "MSGS", "--subjects", "msgs.>")
    acks = [json.loads(line) for line in
            cli(server, "pub", "msgs.a", "body {{Count}}", "--count", "3", "-H", "X-Kind:test", "--json")
            .stdout.splitlines()]
    assert [(a["stream"], a["seq"]) for a in acks] == [("MSGS", 1), ("MSGS", 2), ("MSGS", 3)]
    cli(server, "pub", "msgs.b", "other")

    m = cli_json(server, "stream", "get", "MSGS", "2")
    assert (m["seq"], m["subject"], m["data"], m["headers"]["X-Kind"]) == (2, "msgs.a", "body 2", "test")
    assert cli_json(server, "stream", "get", "MSGS", "--last-for", "msgs.a")["seq"] == 3
    assert "body 2" in cli(server, "stream", "get", "MSGS", "2").stdout

    assert cli_json(server, "stream", "rmm", "MSGS", "2")["deleted"]
    assert [v["seq"] for v in cli_json(server, "stream", "view", "MSGS")] == [1, 3, 4]
    assert [v["seq"] for v in cli_json(server, "stream", "view", "MSGS", "--subject", "msgs.a", "--count", "1")] == [1]
    assert cli(server, "stream", "get", "MSGS", "2", check=False).returncode == 1

    assert cli_json(server, "stream", "purge", "MSGS", "--subject", "msgs.b")["purged"] == 1
    assert cli_json(server, "stream", "purge", "MSGS")["purged"] == 2
    assert cli_json(server, "stream", "info", "MSGS")["state"]["messages"] == 0


def test_stream_ls_lists_streams_and_rm_removes_them(server):
    cli(server, "stream", "add", "LSA", "--subjects", "lsa.>")
    cli(server, "pub", "lsa.x", "x")
    listed = {i["config"]["name"]: i for i in cli_json(server, "stream", "ls")}
    assert listed["LSA"]["state"]["messages"] == 1
    assert cli_json(server, "stream", "ls", "--subject", "lsa.x") and \
        [i["config"]["name"] for i in cli_json(server, "stream", "ls", "--subject", "lsa.x")] == ["LSA"]
    assert "LSA" in cli_json(server, "stream", "ls", "--names")
    table = cli(server, "stream", "ls").stdout
    assert any("LSA" in row and "1" in row for row in table.splitlines()), table

    assert cli_json(server, "stream", "rm", "LSA") == {"stream": "LSA", "deleted": True}
    assert "LSA" not in cli_json(server, "stream", "ls", "--names")


def test_a_missing_stream_exits_1_with_a_message_naming_it(server):
    for verb in (["info", "NOSUCH"], ["rm", "NOSUCH"], ["purge", "NOSUCH"], ["get", "NOSUCH", "1"],
                 ["view", "NOSUCH"], ["edit", "NOSUCH", "--max-msgs", "1"]):
        r = cli(server, "stream", *verb, check=False)
        assert r.returncode == 1, (verb, r)
        assert "stream 'NOSUCH' not found" in r.stderr, (verb, r.stderr)
        assert r.stdout == ""


def test_usage_errors_exit_2(server):
    r = cli(server, "stream", "add", "BAD", "--max-age", "1parsec", check=False)
    assert r.returncode == 2 and "invalid duration" in r.stderr
    r = cli(server, "stream", "get", "ANY", check=False)
    assert r.returncode == 2 and "SEQ or --last-for" in r.stderr
    r = cli(server, "stream", "add", "--config", "/nonexistent.json", check=False)
    assert r.returncode == 2 and "/nonexistent.json" in r.stderr


def test_server_comes_from_the_environment_and_a_dead_one_exits_1(server):
    cli(server, "stream", "add", "ENVS")
    names = json.loads(cli(None, "stream", "ls", "--names", "--json",
                           env=env_without_server(RAFTBROKER_SERVER=server.addr)).stdout)
    assert "ENVS" in names
    r = cli(None, "stream", "ls", "--connect-timeout", "1", check=False,
            env=env_without_server(RAFTBROKER_SERVER="127.0.0.1:1"))
    assert r.returncode == 1 and "could not connect" in r.stderr


def test_stream_info_shows_mirror_and_source_origins(server):
    cli(server, "stream", "add", "ORIGIN", "--subjects", "origin.>")
    cli(server, "stream", "add", "COPY", "--mirror", "ORIGIN")
    out = cli(server, "stream", "info", "COPY").stdout
    assert "Mirror Information:" in out and "Stream Name:   ORIGIN" in out, out
    assert cli_json(server, "stream", "info", "COPY")["config"]["mirror"] == {"name": "ORIGIN"}


def test_mirror_and_source_health_is_shown_as_the_server_reports_it(capsys):
    from types import SimpleNamespace

    from api.cli.stream import show_info
    from jetstream.results import StreamInfo
    info = StreamInfo.from_dict({
        "config": {"name": "AGG", "sources": [{"name": "EU"}, {"name": "US"}]}, "state": {},
        "sources": [{"name": "EU", "lag": 12, "active": 2_000_000_000},
                    {"name": "US", "lag": 0, "error": {"description": "stream US not found"}}],
        "cluster": {"leader": "n1", "replicas": [{"name": "n2", "current": True, "active": 500_000_000}]}})
    show_info(SimpleNamespace(json=False), info)
    out = capsys.readouterr().out
    assert "Source Information:" in out and "Lag:   12" in out and "Last Seen:   2s ago" in out, out
    assert "Error:   stream US not found" in out
    assert "Leader:   n1" in out and "Replica:   n2, current, seen 500ms ago" in out
