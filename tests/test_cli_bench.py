"""`raftbroker bench ...` through the real entry point: the counts it reports are the counts
the server saw, and its files are written. No test asserts a rate."""
import csv
import json

from cli_util import cli, cli_json, env_without_server, finish, poll, server, start_cli, wait_ready  # noqa: F401

LATENCY_KEYS = {"p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms", "count"}


def test_js_pub_then_fetch_and_consume_with_acks(server, tmp_path):
    out = tmp_path / "pub.csv"
    r = cli_json(server, "bench", "js", "pub", "bj.x", "--stream", "BJ", "--msgs", "400", "--size", "64",
                 "--clients", "2", "--window", "20", "--csv", str(out))
    assert r["total"]["msgs"] == 400 and [c["msgs"] for c in r["clients"]] == [200, 200]
    assert r["total"]["bytes"] == 400 * 64 and r["total"]["msgs_per_s"] > 0 and r["total"]["mb_per_s"] > 0
    assert set(r["latency"]["publish_ack"]) == LATENCY_KEYS and r["latency"]["publish_ack"]["count"] == 400
    assert cli_json(server, "stream", "info", "BJ")["state"]["messages"] == 400
    rows = list(csv.DictReader(out.open()))
    assert [row["client"] for row in rows] == ["1", "2", "total"] and rows[2]["msgs"] == "400"
    assert float(rows[2]["publish_ack_p99_ms"]) >= float(rows[2]["publish_ack_p50_ms"])

    sync = cli_json(server, "bench", "js", "pub", "bj.x", "--stream", "BJ", "--msgs", "20", "--sync")
    assert sync["total"]["msgs"] == 20

    f = cli_json(server, "bench", "js", "fetch", "bj.x", "--stream", "BJ", "--msgs", "420", "--clients", "2",
                 "--batch", "50", "--ack")
    assert f["total"]["msgs"] == 420 and f["latency"]["end_to_end"]["count"] == 420
    poll(lambda: cli_json(server, "consumer", "info", "BJ", "bench-fetch")["ack_floor"]["stream_seq"] == 420,
         what="every fetched message acked")

    c = cli_json(server, "bench", "js", "consume", "bj.x", "--stream", "BJ", "--msgs", "420", "--clients", "2",
                 "--ack")
    assert c["total"]["msgs"] == 420
    poll(lambda: cli_json(server, "consumer", "info", "BJ", "bench-consume")["ack_floor"]["stream_seq"] == 420,
         what="every consumed message acked")

    human = cli(server, "bench", "js", "pub", "bj.x", "--stream", "BJ", "--msgs", "10")
    assert "total" in human.stdout and "publish ack" in human.stdout and "p99.9" in human.stdout
    assert "10/10" in human.stderr    # the progress bar, kept off stdout


def test_core_sub_sees_every_message_of_core_pub(server):
    sub = start_cli(server, "bench", "sub", "bc.x", "--msgs", "300", "--clients", "2", "--timeout", "20s",
                    "--json", "--no-progress")
    wait_ready(sub, "waiting for messages")
    pub = cli_json(server, "bench", "pub", "bc.x", "--msgs", "300", "--no-progress")
    assert pub["total"]["msgs"] == 300
    rc, out, err = finish(sub)
    assert rc == 0, err
    r = json.loads(out)
    assert [c["msgs"] for c in r["clients"]] == [300, 300]
    assert r["latency"]["end_to_end"]["count"] == 600


def test_a_receiver_that_runs_dry_exits_1(server):
    cli(server, "stream", "add", "DRY", "--subjects", "dry.>")
    r = cli(server, "bench", "js", "fetch", "dry.x", "--stream", "DRY", "--msgs", "5", "--timeout", "300ms",
            check=False)
    assert r.returncode == 1 and "0 of 5 messages" in r.stderr
    r = cli(server, "bench", "js", "fetch", "x", "--stream", "NOBENCH", check=False)
    assert r.returncode == 1 and "stream 'NOBENCH' not found" in r.stderr


def test_histogram_is_written_with_matplotlib(server, tmp_path):
    png = tmp_path / "lat.png"
    cli(server, "bench", "js", "pub", "bh.x", "--stream", "BH", "--msgs", "50", "--histogram", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histogram_without_matplotlib_exits_2_saying_so(server, tmp_path):
    # A package that fails to import stands in for matplotlib being absent.
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    env = env_without_server(PYTHONPATH=str(shadow.parent))
    r = cli(server, "bench", "js", "pub", "bn.x", "--stream", "BN", "--msgs", "5", "--histogram",
            str(tmp_path / "x.png"), env=env, check=False)
    assert r.returncode == 2 and "matplotlib" in r.stderr and "not installed" in r.stderr
    assert not (tmp_path / "x.png").exists()
    assert "BN" not in cli_json(server, "stream", "ls", "--names")   # nothing was sent


def test_cluster_status_on_a_single_node_says_it_is_not_clustered(server):
    r = cli(server, "cluster", "status", "--json", check=False)
    assert r.returncode == 1 and "not part of a cluster" in r.stderr
