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


def test_separate_cuts_exactly_between_two_sets_and_partition_can_stay_within_one_cluster():
    # Two clusters on one network (a mirror run): a fault of one cluster, or a cut
    # between a node of one and all of the other, leaves every other pair alone.
    run_id = _run_id("s")
    with Network(run_id, ["o1", "o2", "m1", "m2"]) as net, net.prober() as p:
        net.separate(["m1"], ["o1", "o2"])
        blocked = {pair for pair, res in p.matrix().items() if res != "ok"}
        assert blocked == {("m1", "o1"), ("m1", "o2"), ("o1", "m1"), ("o2", "m1")}
        assert net.faults().startswith("separate m1 | o1,o2")
        net.partition([["o1"], ["o2"]], among=["o1", "o2"])
        blocked = {pair for pair, res in p.matrix().items() if res != "ok"}
        assert blocked == {("o1", "o2"), ("o2", "o1")}
        net.heal()
        assert set(p.matrix().values()) == {"ok"}
    assert leftovers(f"rb-{run_id}-") == []


def test_bad_shapes_and_names_are_refused():
    with pytest.raises(NetError, match="exactly once"):
        Network("x", ["n1", "n2", "n3"]).partition([["n1"], ["n2"]])
    with pytest.raises(NetError, match="exactly once"):
        Network("x", ["n1", "n2", "n3"]).partition([["n1"], ["n3"]], among=["n1", "n2"])
    with pytest.raises(NetError, match="disjoint"):
        Network("x", ["n1", "n2", "n3"]).separate(["n1"], ["n1", "n2"])
    with pytest.raises(NetError, match="unknown node"):
        Network("x", ["n1", "n2"]).isolate(CLIENT)
    with pytest.raises(NetError, match="run_id"):
        Network("bad id!", ["n1"])


_ECHO = r"""
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(8)
print("ready", flush=True)
def echo(c):
    while (d := c.recv(4096)):
        c.sendall(d)
while True:
    c, _ = srv.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"""

# One connection, opened once (as a Raft link is), a ping every 50 ms: prints each round trip.
_PINGER = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
while True:
    t = time.monotonic()
    s.sendall(b"p")
    s.recv(1)
    print(f"{(time.monotonic() - t) * 1000:.0f}", flush=True)
    time.sleep(0.05)
"""


def test_delay_proxy_holds_raft_links_back_and_partitions_still_cut_them(tmp_path):
    import queue
    import subprocess
    import sys
    import threading
    from types import SimpleNamespace

    from chaos.delay import DelayLinks

    run_id = _run_id("e")
    with Network(run_id, ["n1", "n2"]) as net:
        links = DelayLinks(net, SimpleNamespace(nodes=[SimpleNamespace(name="n1"), SimpleNamespace(name="n2")]),
                           str(tmp_path))
        procs = []
        try:
            links.start()              # before the link opens, as before the nodes start
            echo = subprocess.Popen(net.exec_prefix("n2") + [sys.executable, "-c", _ECHO, "6222"],
                                    stdout=subprocess.PIPE, text=True)
            procs.append(echo)
            assert echo.stdout.readline().strip() == "ready"
            ping = subprocess.Popen(net.exec_prefix("n1") + [sys.executable, "-c", _PINGER, net.addr("n2"), "6222"],
                                    stdout=subprocess.PIPE, text=True)
            procs.append(ping)
            rtts: queue.Queue = queue.Queue()
            threading.Thread(target=lambda: [rtts.put(int(l)) for l in ping.stdout], daemon=True).start()

            def next_rtts(n: int, timeout_s: float = 10.0) -> list[int]:
                return [rtts.get(timeout=timeout_s) for _ in range(n)]

            assert max(next_rtts(5)) < 200
            assert links.stats()["n1"]["connections"] == 1      # the link runs through n1's proxy
            links.set(["n2"], 300)                              # returns once bytes are held back
            next_rtts(2)                                        # pings already on their way
            assert min(next_rtts(3)) >= 600                     # 300 ms each way
            links.clear()
            next_rtts(2)
            assert max(next_rtts(3)) < 200
            net.isolate("n2")                                   # the proxy's own link leaves from n1's address
            with pytest.raises(queue.Empty):
                while True:
                    rtts.get(timeout=2.0)
            net.heal()
            next_rtts(1, timeout_s=30)                          # raises queue.Empty if it never comes back
        finally:
            for p in procs:
                p.kill()
                p.wait()
            links.stop()
    assert leftovers(f"rb-{run_id}-") == []
