"""`raftbroker consumer ...` and `sub --ack` through the real entry point against a real node."""
import json

from cli_util import cli, cli_json, finish, json_lines, poll, server, start_cli  # noqa: F401


def _stream(server, name, n):
    cli(server, "stream", "add", name, "--subjects", f"{name.lower()}.>")
    cli(server, "pub", f"{name.lower()}.x", "m{{Count}}", "--count", str(n))


def test_consumer_add_takes_every_config_field_as_a_flag(server):
    _stream(server, "CADD", 0)
    info = cli_json(server, "consumer", "add", "CADD", "work", "--filter", "cadd.x", "--ack", "explicit",
                    "--deliver", "3", "--max-deliver", "4", "--ack-wait", "45s", "--max-pending", "50",
                    "--backoff", "1s,10s", "--description", "d", "--replay", "instant")
    c = info["config"]
    assert (info["name"], c["durable_name"], c["filter_subject"], c["ack_policy"]) == ("work", "work", "cadd.x",
                                                                                        "explicit")
    assert (c["deliver_policy"], c["opt_start_seq"], c["max_deliver"], c["max_ack_pending"]) == \
        ("by_start_sequence", 3, 4, 50)
    assert c["backoff"] == [1.0, 10.0] and c["description"] == "d"
    push = cli_json(server, "consumer", "add", "CADD", "--durable", "push", "--deliver-subject", "to.push",
                    "--deliver-group", "grp", "--ack", "none", "--deliver", "new")["config"]
    assert (push["deliver_subject"], push["deliver_group"], push["ack_policy"], push["deliver_policy"]) == \
        ("to.push", "grp", "none", "new")
    human = cli(server, "consumer", "info", "CADD", "work").stdout
    for line in ("Information for Consumer CADD > work", "Filter Subject:   cadd.x", "Maximum Deliveries:   4",
                 "Backoff:   1s, 10s", "Unprocessed Messages:"):
        assert line in human, human


def test_consumer_add_from_config_file_and_edit(server, tmp_path):
    _stream(server, "CFILE", 0)
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"durable_name": "fromfile", "ack_policy": "explicit", "max_deliver": 2}))
    assert cli_json(server, "consumer", "add", "CFILE", "--config", str(f))["config"]["max_deliver"] == 2
    c = cli_json(server, "consumer", "edit", "CFILE", "fromfile", "--max-deliver", "9", "--description", "x")["config"]
    assert (c["max_deliver"], c["description"], c["ack_policy"]) == (9, "x", "explicit")


def test_consumer_next_fetches_prints_and_acks(server):
    _stream(server, "CNEXT", 3)
    cli(server, "consumer", "add", "CNEXT", "proc", "--ack", "explicit")
    got = json_lines(cli(server, "consumer", "next", "CNEXT", "proc", "--count", "2", "--ack", "--json").stdout)
    assert [(m["stream_seq"], m["data"], m["acked"]) for m in got] == [(1, "m1", True), (2, "m2", True)]
    info = cli_json(server, "consumer", "info", "CNEXT", "proc")
    assert info["ack_floor"]["stream_seq"] == 2 and info["num_pending"] == 1

    out = cli(server, "consumer", "next", "CNEXT", "proc").stdout
    assert "CNEXT#3" in out and "m3" in out
    r = cli(server, "consumer", "next", "CNEXT", "proc", "--count", "5", "--timeout", "300ms", "--json", check=False)
    assert r.returncode == 1 and "of 5 messages" in r.stderr


def test_consumer_ls_and_rm(server):
    _stream(server, "CLS", 1)
    cli(server, "consumer", "add", "CLS", "one")
    cli(server, "consumer", "add", "CLS", "two")
    assert sorted(i["name"] for i in cli_json(server, "consumer", "ls", "CLS")) == ["one", "two"]
    assert "one" in cli(server, "consumer", "ls", "CLS").stdout
    assert cli_json(server, "consumer", "rm", "CLS", "one")["deleted"]
    assert [i["name"] for i in cli_json(server, "consumer", "ls", "CLS")] == ["two"]


def test_missing_consumer_or_stream_exits_1_naming_it(server):
    _stream(server, "CMISS", 0)
    for verb in (["info", "CMISS", "ghost"], ["rm", "CMISS", "ghost"], ["next", "CMISS", "ghost"],
                 ["edit", "CMISS", "ghost", "--max-deliver", "1"]):
        r = cli(server, "consumer", *verb, check=False)
        assert r.returncode == 1 and "consumer 'ghost' not found on stream 'CMISS'" in r.stderr, (verb, r.stderr)
    r = cli(server, "consumer", "ls", "NOSTREAM", check=False)
    assert r.returncode == 1 and "stream 'NOSTREAM' not found" in r.stderr
    r = cli(server, "consumer", "add", "NOSTREAM", "c", check=False)
    assert r.returncode == 1 and "stream 'NOSTREAM' not found" in r.stderr


def test_sub_acks_push_deliveries(server):
    _stream(server, "CPUSH", 2)
    cli(server, "consumer", "add", "CPUSH", "pusher", "--deliver-subject", "deliver.cpush", "--ack", "explicit")
    proc = start_cli(server, "sub", "deliver.cpush", "--ack", "--count", "2", "--timeout", "20s", "--json")
    rc, out, err = finish(proc)
    assert rc == 0, err
    msgs = json_lines(out)
    assert [(m["stream"], m["stream_seq"], m["acked"]) for m in msgs] == [("CPUSH", 1, True), ("CPUSH", 2, True)]
    poll(lambda: cli_json(server, "consumer", "info", "CPUSH", "pusher")["ack_floor"]["stream_seq"] == 2,
         what="ack floor 2")
