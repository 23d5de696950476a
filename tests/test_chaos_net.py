"""The chaos network: namespaces per node, partitions and loss by iptables.

These need root and iptables. They fail (never skip) when either is missing:
`Network.create()` raises NetError saying what to install or run. CI runs as root
with iptables installed.
"""
import os
import time

import pytest

from chaos.net import CLIENT, Network, NetError, leftovers


def _run_id(tag: str) -> str:
    # Unique per test process, so concurrent runs on one machine never collide.
    return f"t{os.getpid()}{tag}"


def test_three_node_network_blocks_exactly_what_each_partition_shape_says():
    run_id = _run_id("a")
    t0 = time.monotonic()
    with Network(run_id, ["n1", "n2", "n3"]) as net:
        assert net.addr("n1") == "10.77.0.10"
        assert net.addr("n3") == "10.77.0.12"
        assert net.addr(CLIENT) == "10.77.0.2"
        assert net.exec_prefix("n2") == ["ip", "netns", "exec", f"rb-{run_id}-n2"]
        assert leftovers(f"rb-{run_id}-") == sorted(
            f"netns rb-{run_id}-{m}" for m in ["hub", "n1", "n2", "n3", "c"])
        report = net.self_test()
        print(report)
        for shape in ("healthy", "isolate n3", "split n1 | n2,n3", "bridge n1 <-n2-> n3", "healed"):
            assert shape in report
        assert net.faults() == "no faults"
    assert leftovers(f"rb-{run_id}-") == []
    assert time.monotonic() - t0 < 15


def test_nothing_is_left_behind_when_the_run_raises():
    run_id = _run_id("b")
    with pytest.raises(ZeroDivisionError):
        with Network(run_id, ["n1", "n2", "n3"]) as net:
            net.isolate("n1")
            assert "n1: drops all from n2, drops all from n3" in net.faults()
            1 / 0
    assert leftovers(f"rb-{run_id}-") == []
    net.teardown()      # idempotent after the context manager already tore down
    assert leftovers(f"rb-{run_id}-") == []


def test_five_node_network_creates_and_tears_down_cleanly():
    run_id = _run_id("c")
    net = Network(run_id, [f"n{i}" for i in range(1, 6)])
    try:
        net.create()
        assert len(leftovers(f"rb-{run_id}-")) == 7          # hub, 5 nodes, client
        assert net.addr("n5") == "10.77.0.14"
        net.bridge(["n1", "n2"], ["n4", "n5"], "n3")
        rules = net.rules()
        assert len(rules["n1"]) == 2 and len(rules["n3"]) == 0
        net.heal()
        assert net.faults() == "no faults"
    finally:
        net.teardown()
        net.teardown()
    assert leftovers(f"rb-{run_id}-") == []


def test_total_loss_cuts_nodes_apart_but_clients_still_reach_every_node():
    run_id = _run_id("d")
    with Network(run_id, ["n1", "n2", "n3"]) as net:
        net.loss(["n1", "n2", "n3"], 1.0)
        with net.prober(timeout_s=0.5) as p:
            got = p.matrix()
            for (src, dst), res in got.items():
                assert res == ("ok" if src == CLIENT else "timeout"), (src, dst, res)
            net.loss(["n1"], 0.25)
            assert "drops 25% from n1" in net.faults()
            net.heal()
            assert set(p.matrix().values()) == {"ok"}
    assert leftovers(f"rb-{run_id}-") == []


def test_bad_shapes_and_names_are_refused():
    with pytest.raises(NetError, match="exactly once"):
        Network("x", ["n1", "n2", "n3"]).partition([["n1"], ["n2"]])
    with pytest.raises(NetError, match="unknown node"):
        Network("x", ["n1", "n2"]).isolate(CLIENT)
    with pytest.raises(NetError, match="run_id"):
        Network("bad id!", ["n1"])
