"""The pure parts of the conformance runner (bench/conformance.py) and its nats-server shim:
flag translation, junit parsing, tier selection. No network, no processes."""
import importlib.util
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _load(name):
    # By path: bench/ on sys.path would shadow the `cluster` package with bench/cluster.py.
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


shim = _load("conformance_shim")
runner = _load("conformance")


def test_shim_translates_the_jetstream_harness_command_line_into_a_node_command_line():
    args = shim.parse(["-p", "4222", "-m", "8222", "-a", "127.0.0.1", "-js", "-sd=/tmp/x", "-DV"])
    assert (args.port, args.http_port, args.host, args.jetstream, args.store_dir, args.debug) == \
        (4222, 8222, "127.0.0.1", True, "/tmp/x", True)
    argv = shim.node_argv(args, "/tmp/x", "127.0.0.1:5000")
    assert argv == ["--data", "/tmp/x", "--listen", "127.0.0.1:5000", "--name", "n1",
                    "--nats-listen", "127.0.0.1:4222", "--http", "127.0.0.1:8222", "--log-level", "debug"]


def test_shim_maps_user_password_and_token_and_takes_go_style_flag_spellings():
    args = shim.parse(["--port=4223", "--user", "foo", "--pass", "bar", "-auth", "tok", "--name", "x"])
    argv = shim.node_argv(args, "/d", "127.0.0.1:1")
    assert argv[argv.index("--user") + 1] == "foo"
    assert argv[argv.index("--password") + 1] == "bar"
    assert argv[argv.index("--token") + 1] == "tok"
    assert argv[argv.index("--nats-listen") + 1] == "0.0.0.0:4223"       # nats-server's default host
    assert argv[argv.index("--name") + 1] == "x"
    assert "--http" not in argv                                             # no -m: no monitoring port


def test_shim_refuses_flags_without_a_raftbroker_equivalent_naming_each():
    with pytest.raises(shim.ShimError) as e:
        shim.parse(["-p", "4224", "--tls", "--tlscert", "c.pem", "--config", "x.conf", "--routes", "a,b"])
    text = str(e.value)
    for flag in ("--tls", "--tlscert", "--config", "--routes"):
        assert flag in text
    assert "unknown" not in text          # each flag's value was taken as its value, not as a stray word


def test_shim_refuses_unknown_flags_listing_them():
    with pytest.raises(shim.ShimError, match=r"unknown nats-server flag\(s\) --bogus, stray"):
        shim.parse(["-p", "4222", "--bogus", "stray"])
    with pytest.raises(shim.ShimError, match="needs a number"):
        shim.parse(["-p", "x"])
    with pytest.raises(shim.ShimError, match="needs a value"):
        shim.parse(["-m"])


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_js.PublishTest" name="test_publish" time="0.1" />
<testcase classname="tests.test_js.PublishTest" name="test_publish_msg_ttl" time="0.1">
  <skipped type="pytest.skip" message="per-message TTL requires nats-server v2.11.0 or later">x.py:4: ...</skipped>
</testcase>
<testcase classname="tests.test_js.PullSubscribeTest" name="test_fetch_headers" time="0.1">
  <failure message="nats.errors.BadHeaderError: nats: invalid header&#10;  second line">trace</failure>
</testcase>
<testcase classname="tests.test_js.JSMTest" name="test_stream_management" time="0.1">
  <error message="failed on setup with &quot;ConnectionRefusedError: refused&quot;">trace</error>
</testcase>
</testsuite></testsuites>"""


def test_junit_results_count_version_skips_as_skipped_and_setup_errors_as_failed():
    outcomes = runner.parse_junit(JUNIT)
    assert outcomes["test_js.PublishTest::test_publish"] == runner.Outcome("passed")
    assert outcomes["test_js.PublishTest::test_publish_msg_ttl"] == \
        runner.Outcome("skipped", "per-message TTL requires nats-server v2.11.0 or later")
    assert outcomes["test_js.PullSubscribeTest::test_fetch_headers"] == \
        runner.Outcome("failed", "nats.errors.BadHeaderError: nats: invalid header")
    assert outcomes["test_js.JSMTest::test_stream_management"].status == "failed"
    assert runner.total_line(outcomes) == "1 passed, 2 failed, 1 skipped"
    assert runner.by_class(outcomes)["test_js.PublishTest"] == {"passed": 1, "skipped": 1}
    lines = runner.report(outcomes)
    assert any("test_fetch_headers  -- nats.errors.BadHeaderError" in line for line in lines)


def test_side_by_side_lists_what_passes_on_nats_server_only():
    ref = {"A::t1": runner.Outcome("passed"), "A::t2": runner.Outcome("passed"), "A::t3": runner.Outcome("failed")}
    ours = {"A::t1": runner.Outcome("passed"), "A::t2": runner.Outcome("skipped", "needs 2.11")}
    lines = runner.side_by_side(ref, ours)
    assert "passed on nats-server, not on raftbroker: 1" in lines[-2]
    assert lines[-1].strip() == "A::t2  -- skipped: needs 2.11"


def test_tiers_select_the_reference_classes_by_node_id():
    core = runner.selection("core", [])
    assert "tests/test_client.py::ClientTest" in core
    assert "tests/test_micro_service.py::MicroServiceTest" in core
    assert not any("Reconnect" in n or "TLS" in n or "Cluster" in n for n in core)   # single-server only
    js_core = runner.selection("js-core", [])
    assert {n.split("::")[1] for n in js_core} == {
        "PublishTest", "PullSubscribeTest", "JSMTest", "SubscribeTest", "AckPolicyTest",
        "DiscardPolicyTest", "ConsumerReplicasTest", "BadStreamNamesTest"}
    assert runner.selection("all", []) == core + js_core + runner.selection("js-next", [])
    assert runner.selection(None, ["test_js.py", "test_client.py"]) == ["tests/test_js.py", "tests/test_client.py"]
