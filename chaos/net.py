"""A private network for one chaos run: every node in its own namespace, faults by iptables.

Layout (Jepsen's, on one Linux machine)::

    rb-<run>-hub   bridge br0, one veth end per member
    rb-<run>-n1    eth0 = <subnet>.10/24      (node i gets <subnet>.<10+i>)
    rb-<run>-n2    eth0 = <subnet>.11/24
    ...
    rb-<run>-c     eth0 = <subnet>.2/24       (clients and the workload)

Why one namespace per node: inside a single namespace every connection to
127.0.0.x leaves from 127.0.0.1 unless the program binds its source address
(pysyncobj does not), so a rule by source address could not tell nodes apart.
With a namespace each, a node's packets always carry its own address.

Faults are iptables rules inside the *node* namespaces, in two dedicated chains
jumped to from INPUT, so healing is a flush and nothing else is ever touched:

- ``RBCHAOS-PART``: partitions (``partition``, ``isolate``, ``bridge``,
  ``separate``). Each
  call replaces the previous partition, like a Jepsen nemesis start.
- ``RBCHAOS-LOSS``: random packet loss (``loss``), also replaced per call, and
  independent of the partition, so the two compose.

Rules drop by source address on INPUT. Dropping in both peers' INPUT chains cuts
both directions (a SYN never arrives; neither does anything on an established
connection). Only node addresses are ever matched, so the client namespace
always reaches every node: Jepsen partitions the servers from each other, not
from the clients.

Everything a run makes lives inside its own namespaces (the veth pairs are
created straight into them, never in the root namespace), so ``teardown`` is
"kill what runs in them, delete the namespaces". ``leftovers`` lets a run
assert that nothing stayed behind.
"""
from __future__ import annotations

import atexit
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Union

CHAIN_PART = "RBCHAOS-PART"
CHAIN_LOSS = "RBCHAOS-LOSS"
CLIENT = "c"                 # member name of the client namespace
HUB = "hub"
BRIDGE_IF = "br0"
MEMBER_IF = "eth0"
NODE_HOST_BASE = 10          # node i is <subnet>.<10+i>
CLIENT_HOST = 2
MAX_NODES = 200              # keeps node hosts within .10 .. .209 of a /24
MAX_RUN_ID_LEN = 40          # namespace names are files in /run/netns; keep them readable
IFNAMSIZ = 15                # Linux interface names: at most 15 characters
CMD_TIMEOUT_S = 20.0         # any single ip/iptables command
SELF_TEST_PORT = 7999
PROBE_TIMEOUT_S = 1.0        # a dropped SYN shows up as a connect timeout of this length
AGENT_START_TIMEOUT_S = 10.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MEMBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")


class NetError(RuntimeError):
    """The chaos network could not be built, changed, verified or removed."""


# --------------------------------------------------------------------------- helpers

def _run(args: Sequence[str], *, input: Optional[str] = None, check: bool = True,
         timeout_s: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(args), input=input, capture_output=True, text=True,
                              timeout=timeout_s)
    except FileNotFoundError as e:
        raise NetError(f"{args[0]} not found: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise NetError(f"timed out after {timeout_s}s: {' '.join(args)}") from e
    if check and proc.returncode != 0:
        raise NetError(f"command failed (rc={proc.returncode}): {' '.join(args)}: "
                       f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def check_prerequisites() -> None:
    """Raise NetError saying exactly what to install or run; never skip silently."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces and iptables need CAP_NET_ADMIN): "
                        "run the chaos suite with sudo or as root")
    if shutil.which("ip") is None:
        problems.append("`ip` not found: apt-get install -y iproute2")
    if shutil.which("iptables") is None or shutil.which("iptables-restore") is None:
        problems.append("`iptables`/`iptables-restore` not found: apt-get install -y iptables")
    if sys.platform != "linux":
        problems.append(f"network namespaces need Linux (this is {sys.platform})")
    if problems:
        raise NetError("chaos network unavailable: " + "; ".join(problems))


def _netns_list() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    # Lines look like "rb-x-n1 (id: 3)" or just "rb-x-n1".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _root_veths() -> list[str]:
    out = _run(["ip", "-o", "link", "show", "type", "veth"]).stdout
    names = []
    for line in out.splitlines():
        # "7: rb-1a2b3c4d@if6: <BROADCAST,...> ..."
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def leftovers(prefix: str = "rb-") -> list[str]:
    """Namespaces and root-namespace veths whose names start with `prefix`.

    Returns descriptions like ``"netns rb-t1-hub"`` / ``"veth rb-1a2b3c4d"``; empty
    means nothing is left behind. Our veth names also start with "rb-", but they
    are only ever created inside our namespaces, so one in the root namespace is
    a stray from some other code path or an interrupted manual setup.
    """
    check_prerequisites()
    found = [f"netns {n}" for n in _netns_list() if n.startswith(prefix)]
    found += [f"veth {n}" for n in _root_veths() if n.startswith(prefix)]
    return sorted(found)


def _veth_name(run_id: str, member: str) -> str:
    # Hub-side veth end. Namespace names can be long; interface names cannot (15 chars).
    digest = hashlib.sha1(f"{run_id}/{member}".encode()).hexdigest()[:8]
    name = f"rb-{digest}"
    assert len(name) <= IFNAMSIZ
    return name


# --------------------------------------------------------------------------- probing

# Runs inside one namespace for the length of a self test: listens on the port
# (accept, close) and answers probe requests from stdin, connecting to every
# target in parallel. One long-lived agent per namespace keeps a round of checks
# at one connect timeout instead of one Python start-up per ordered pair.
_AGENT = r"""
import json, socket, sys, threading
from concurrent.futures import ThreadPoolExecutor
port = int(sys.argv[1])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(256)
def serve():
    while True:
        try:
            c, _ = srv.accept()
            c.close()
        except OSError:
            return
threading.Thread(target=serve, daemon=True).start()
def probe(addr, timeout):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        return "ok"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return "error: " + str(e)
    finally:
        s.close()
print("ready", flush=True)
pool = ThreadPoolExecutor(64)
for line in sys.stdin:
    req = json.loads(line)
    res = list(pool.map(lambda a: probe(a, req["timeout"]), req["targets"]))
    print(json.dumps(res), flush=True)
"""


class Prober:
    """One agent per member namespace; `matrix()` checks every ordered pair at once."""

    def __init__(self, net: "Network", port: int = SELF_TEST_PORT,
                 timeout_s: float = PROBE_TIMEOUT_S):
        self.net = net
        self.port = port
        self.timeout_s = timeout_s
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> "Prober":
        try:
            for m in self.net.members:
                self.procs[m] = subprocess.Popen(
                    self.net.exec_prefix(m) + [sys.executable, "-c", _AGENT, str(self.port)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True, bufsize=1)
                self.net._pids.add(self.procs[m].pid)
            deadline = time.monotonic() + AGENT_START_TIMEOUT_S
            for m, p in self.procs.items():
                line = _readline(p, deadline - time.monotonic())
                if line.strip() != "ready":
                    raise NetError(f"probe agent in {self.net.ns(m)} did not start: "
                                   f"{line!r} {_drain_stderr(p)}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in self.procs.values():
            _stop_proc(p)
            self.net._pids.discard(p.pid)
        self.procs.clear()

    def __enter__(self) -> "Prober":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def matrix(self) -> dict[tuple[str, str], str]:
        """{(src, dst): "ok" | "timeout" | "refused" | "error: ..."} for every
        node -> other node and client -> node."""
        plan = {m: [n for n in self.net.nodes if n != m] for m in self.net.members}
        for m, targets in plan.items():
            req = {"targets": [self.net.addr(t) for t in targets], "timeout": self.timeout_s}
            self.procs[m].stdin.write(json.dumps(req) + "\n")
            self.procs[m].stdin.flush()
        result = {}
        deadline = time.monotonic() + self.timeout_s + AGENT_START_TIMEOUT_S
        for m, targets in plan.items():
            line = _readline(self.procs[m], deadline - time.monotonic())
            try:
                answers = json.loads(line)
            except ValueError:
                raise NetError(f"probe agent in {self.net.ns(m)} answered {line!r} "
                               f"{_drain_stderr(self.procs[m])}") from None
            for t, a in zip(targets, answers):
                result[(m, t)] = a
        return result


def _readline(p: subprocess.Popen, timeout_s: float) -> str:
    # Popen pipes have no read timeout; a helper thread gives one without
    # leaving the caller blocked forever if an agent hangs.
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(p.stdout.readline)
        try:
            return fut.result(timeout=max(0.0, timeout_s))
        except Exception:
            # Killing the agent gives the reader thread EOF, so leaving this block
            # (which joins it) cannot hang; files are closed later by _stop_proc.
            try:
                p.kill()
            except ProcessLookupError:
                pass
            raise NetError(f"probe agent (pid {p.pid}) did not answer in {timeout_s:.1f}s") from None


def _drain_stderr(p: subprocess.Popen) -> str:
    if p.poll() is None:
        return ""
    try:
        return (p.stderr.read() or "").strip()[-500:]
    except Exception:
        return ""


def _stop_proc(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            p.kill()
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for f in (p.stdin, p.stdout, p.stderr):
        try:
            if f:
                f.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- the network

@dataclass
class _Shape:
    """A fault shape for the self test: what to apply and who should reach whom."""
    name: str
    apply: Callable[["Network"], None]
    can: Callable[[str, str], bool]     # may src reach dst (nodes only)


class Network:
    """A bridge, one namespace per node and one for clients; faults by iptables.

    Use as a context manager (creates; always tears down), or call `create()` /
    `teardown()` yourself. `teardown()` is also registered with atexit.
    """

    def __init__(self, run_id: str, nodes: list[str], subnet: str = "10.77.0"):
        if not _NAME_RE.match(run_id) or len(run_id) > MAX_RUN_ID_LEN:
            raise NetError(f"run_id {run_id!r}: use letters, digits, '_', '.', '-' "
                           f"(at most {MAX_RUN_ID_LEN} characters)")
        if not nodes:
            raise NetError("need at least one node")
        if len(nodes) > MAX_NODES:
            raise NetError(f"at most {MAX_NODES} nodes on one /24 (got {len(nodes)})")
        if len(set(nodes)) != len(nodes):
            raise NetError(f"duplicate node names: {nodes}")
        for n in nodes:
            if not _MEMBER_RE.match(n) or n in (CLIENT, HUB):
                raise NetError(f"node name {n!r}: short alphanumeric names like 'n1' "
                               f"('{CLIENT}' and '{HUB}' are reserved)")
        try:
            ipaddress.IPv4Network(f"{subnet}.0/24")
        except ValueError as e:
            raise NetError(f"subnet {subnet!r} must be three octets like '10.77.0': {e}") from None
        self.run_id = run_id
        self.nodes = list(nodes)
        self.subnet = subnet
        self.members = self.nodes + [CLIENT]
        self._addrs = {n: f"{subnet}.{NODE_HOST_BASE + i}" for i, n in enumerate(self.nodes)}
        self._addrs[CLIENT] = f"{subnet}.{CLIENT_HOST}"
        self._by_addr = {a: m for m, a in self._addrs.items()}
        self._created: list[str] = []       # namespaces we made, in order
        self._pids: set[int] = set()        # our own helper processes (probe agents)
        self._partition_desc = ""
        self._loss_desc = ""

    # ---- naming

    def ns(self, member: str) -> str:
        """Namespace of a node name, "c" (client) or "hub"."""
        if member != HUB:
            self._check_member(member)
        return f"rb-{self.run_id}-{member}"

    def addr(self, member: str) -> str:
        """IPv4 address of a node or of the client namespace ("c")."""
        self._check_member(member)
        return self._addrs[member]

    def exec_prefix(self, member: str) -> list[str]:
        """argv prefix that runs a command inside the member's namespace."""
        return ["ip", "netns", "exec", self.ns(member)]

    def _check_member(self, member: str) -> None:
        if member not in self._addrs:
            raise NetError(f"unknown member {member!r}: nodes are {self.nodes}, client is '{CLIENT}'")

    def __repr__(self) -> str:
        return f"Network({self.run_id!r}, {self.nodes!r}, subnet={self.subnet!r})"

    # ---- lifecycle

    def create(self) -> "Network":
        check_prerequisites()
        taken = set(_netns_list())
        wanted = [self.ns(HUB)] + [self.ns(m) for m in self.members]
        clash = [n for n in wanted if n in taken]
        if clash:
            raise NetError(f"namespaces already exist: {clash}; a previous run left them "
                           f"behind or another run uses run_id {self.run_id!r} "
                           f"(remove with: ip netns del NAME)")
        atexit.register(self.teardown)
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def _add_ns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        hub = self.ns(HUB)
        self._add_ns(hub)
        _run(["ip", "-n", hub, "link", "add", BRIDGE_IF, "type", "bridge"])
        _run(["ip", "-n", hub, "link", "set", BRIDGE_IF, "up"])
        for m in self.members:
            ns = self.ns(m)
            self._add_ns(ns)
            veth = _veth_name(self.run_id, m)
            # Both ends are born inside our namespaces, never in the root one, so
            # an interrupted create cannot strand an interface in the root namespace.
            _run(["ip", "-n", hub, "link", "add", veth, "type", "veth",
                  "peer", "name", MEMBER_IF, "netns", ns])
            _run(["ip", "-n", hub, "link", "set", veth, "master", BRIDGE_IF])
            _run(["ip", "-n", hub, "link", "set", veth, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.addr(m)}/24", "dev", MEMBER_IF])
            _run(["ip", "-n", ns, "link", "set", MEMBER_IF, "up"])
        for n in self.nodes:
            self._restore(n, [f":{CHAIN_PART} - [0:0]", f":{CHAIN_LOSS} - [0:0]",
                              f"-A INPUT -j {CHAIN_PART}", f"-A INPUT -j {CHAIN_LOSS}"])

    def teardown(self) -> None:
        """Delete everything this network made. Idempotent; never raises.

        Safe from finally, atexit and signal handlers. Processes still running
        inside our namespaces (nodes started with `exec_prefix`, probe agents) are
        SIGKILLed first: a namespace with a live process survives `ip netns del`
        and keeps its veth pair (and the hub's bridge port) alive.
        """
        for pid in list(self._pids):
            _kill(pid)
        self._pids.clear()
        # Only what this object made: a clashing run's namespaces are not ours.
        names = list(reversed(self._created))
        if not names:
            self._unregister()
            return
        try:
            existing = set(_netns_list())
        except Exception:
            existing = set(names)
        for name in names:
            if name not in existing:
                continue
            try:
                pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
            except Exception:
                pids = []
            for pid in pids:
                if pid.isdigit() and int(pid) != os.getpid():
                    _kill(int(pid))
            try:
                _run(["ip", "netns", "del", name], check=False)
            except Exception:
                pass
        self._created.clear()
        self._partition_desc = self._loss_desc = ""
        self._unregister()

    def _unregister(self) -> None:
        try:
            atexit.unregister(self.teardown)
        except Exception:
            pass

    def __enter__(self) -> "Network":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.teardown()

    # ---- faults

    def _restore(self, node: str, lines: list[str]) -> None:
        # One iptables-restore per node: the chain is replaced atomically, and a
        # 5-node partition costs 5 commands rather than 20.
        text = "*filter\n" + "".join(l + "\n" for l in lines) + "COMMIT\n"
        _run(self.exec_prefix(node) + ["iptables-restore", "--noflush", "-w", "5"], input=text)

    def _set_chain(self, chain: str, drops: dict[str, list[str]]) -> None:
        """drops: node -> list of iptables match fragments (one DROP rule each)."""
        for n in self.nodes:
            rules = [f"-F {chain}"] + [f"-A {chain} {m} -j DROP" for m in drops.get(n, [])]
            self._restore(n, rules)

    def _check_nodes(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        for n in names:
            if n not in self.nodes:
                raise NetError(f"unknown node {n!r} (nodes: {self.nodes}); "
                               f"faults apply between nodes, never to the client")
        return names

    def _apply_blocked(self, blocked: set[tuple[str, str]], desc: str) -> None:
        # (a, b) in blocked: b drops everything from a. Shapes put both (a, b) and
        # (b, a) in, which is what cuts both directions.
        drops: dict[str, list[str]] = {}
        for src, dst in sorted(blocked):
            drops.setdefault(dst, []).append(f"-s {self.addr(src)}/32")
        self._set_chain(CHAIN_PART, drops)
        self._partition_desc = desc

    def partition(self, groups: list[list[str]], among: Optional[list[str]] = None) -> None:
        """Nodes in different groups cannot reach each other; within a group and
        from the client everything works. Every node of `among` (default: every
        node) must be in exactly one group; nodes outside `among` are left alone,
        so one cluster of a multi-cluster network can be split without touching
        the others. Replaces any previous partition (loss stays)."""
        among = self._check_nodes(among if among is not None else self.nodes)
        seen: list[str] = []
        for g in groups:
            seen += self._check_nodes(g)
        if sorted(seen) != sorted(among):
            raise NetError(f"partition groups {groups} must name every node exactly once "
                           f"(nodes: {among})")
        group_of = {n: i for i, g in enumerate(groups) for n in g}
        blocked = {(a, b) for a in among for b in among if group_of[a] != group_of[b]}
        self._apply_blocked(blocked, "partition " + " | ".join(",".join(g) for g in groups))

    def isolate(self, node: str) -> None:
        """Cut one node off from every other node (clients still reach it)."""
        self._check_nodes([node])
        self.partition([[node], [n for n in self.nodes if n != node]])

    def separate(self, left: list[str], right: list[str]) -> None:
        """`left` and `right` cannot talk to each other (both directions); every
        other pair, and the client, is untouched. Replaces any previous partition."""
        self._check_disjoint(left, right)
        self._separate(left, right, f"separate {','.join(left)} | {','.join(right)}")

    def bridge(self, left: list[str], right: list[str], shared: Union[str, list[str]],
               among: Optional[list[str]] = None) -> None:
        """`left` and `right` cannot talk to each other; `shared` talks to both
        (Jepsen's bridge: a majority-straddling node sees two minorities). The three
        must name every node of `among` (default: every node) exactly once."""
        shared_l = [shared] if isinstance(shared, str) else list(shared)
        among = self._check_nodes(among if among is not None else self.nodes)
        every = self._check_nodes(left) + self._check_nodes(right) + self._check_nodes(shared_l)
        if sorted(every) != sorted(among):
            raise NetError(f"bridge left={left} right={right} shared={shared_l} must name "
                           f"every node exactly once (nodes: {among})")
        self._separate(left, right, f"bridge {','.join(left)} <-{','.join(shared_l)}-> {','.join(right)}")

    def _check_disjoint(self, left: list[str], right: list[str]) -> None:
        self._check_nodes(left + right)
        if not left or not right or set(left) & set(right):
            raise NetError(f"separate needs two non-empty disjoint sets of nodes, got {left} and {right}")

    def _separate(self, left: list[str], right: list[str], desc: str) -> None:
        blocked = {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
        self._apply_blocked(blocked, desc)

    def loss(self, nodes: list[str], probability: float) -> None:
        """Drop each packet with `probability` on all node-to-node traffic that
        involves any of `nodes` (both directions). Client traffic is untouched.
        Replaces any previous loss (the partition stays); probability 0 removes it."""
        lossy = set(self._check_nodes(nodes))
        if not 0.0 <= probability <= 1.0:
            raise NetError(f"loss probability must be within [0, 1], got {probability}")
        drops: dict[str, list[str]] = {}
        if probability > 0:
            for src in self.nodes:
                for dst in self.nodes:
                    if src != dst and (src in lossy or dst in lossy):
                        match = f"-s {self.addr(src)}/32"
                        if probability < 1.0:
                            match += f" -m statistic --mode random --probability {probability:.6f}"
                        drops.setdefault(dst, []).append(match)
        self._set_chain(CHAIN_LOSS, drops)
        self._loss_desc = (f"loss {probability:g} on {','.join(sorted(lossy))}"
                           if probability > 0 else "")

    def redirect(self, port: int, to_port: int, unless_mark: int) -> None:
        """In every node namespace, new connections to `port` on the subnet go to
        127.0.0.1:`to_port` there instead (the delay proxy), except connections
        whose socket carries `unless_mark` (the proxy's own). Not a fault: `heal`
        leaves it, and it goes with the namespaces."""
        rule = (f"-A OUTPUT -p tcp -d {self.subnet}.0/24 --dport {port} -m mark ! --mark {unless_mark:#x} "
                f"-j REDIRECT --to-ports {to_port}")
        for n in self.nodes:
            _run(self.exec_prefix(n) + ["iptables-restore", "--noflush", "-w", "5"],
                 input=f"*nat\n{rule}\nCOMMIT\n")

    def heal(self) -> None:
        """Flush every fault: partitions and loss."""
        for n in self.nodes:
            self._restore(n, [f"-F {CHAIN_PART}", f"-F {CHAIN_LOSS}"])
        self._partition_desc = self._loss_desc = ""

    def rules(self) -> dict[str, list[str]]:
        """The installed rules of our chains, per node, as `iptables -S` prints them."""
        out = {}
        for n in self.nodes:
            lines = []
            for chain in (CHAIN_PART, CHAIN_LOSS):
                s = _run(self.exec_prefix(n) + ["iptables", "-w", "5", "-S", chain]).stdout
                lines += [l for l in s.splitlines() if l.startswith("-A ")]
            out[n] = lines
        return out

    def faults(self) -> str:
        """What is in force, read back from the kernel (not from our own notes)."""
        lines = []
        for n, rules in self.rules().items():
            parts = []
            for r in rules:
                m = re.search(r"-s (\S+?)(?:/32)? ", r + " ")
                who = self._by_addr.get(m.group(1), m.group(1)) if m else "?"
                p = re.search(r"--probability (\S+)", r)
                parts.append(f"drops {float(p.group(1)):.0%} from {who}" if p
                             else f"drops all from {who}")
            if parts:
                lines.append(f"{n}: " + ", ".join(parts))
        if not lines:
            return "no faults"
        head = "; ".join(d for d in (self._partition_desc, self._loss_desc) if d)
        return (head + "\n" if head else "") + "\n".join(lines)

    # ---- self test

    def prober(self, port: int = SELF_TEST_PORT, timeout_s: float = PROBE_TIMEOUT_S) -> Prober:
        """Agents in every namespace for connectivity checks (use as a context manager)."""
        return Prober(self, port, timeout_s)

    def _shapes(self) -> list[_Shape]:
        ns = self.nodes
        shapes = []
        if len(ns) >= 2:
            lone = ns[-1]
            shapes.append(_Shape(f"isolate {lone}", lambda net: net.isolate(lone),
                                 lambda a, b: lone not in (a, b)))
            k = len(ns) // 2
            minority, majority = ns[:k], ns[k:]
            shapes.append(_Shape(f"split {','.join(minority)} | {','.join(majority)}",
                                 lambda net: net.partition([minority, majority]),
                                 lambda a, b: (a in minority) == (b in minority)))
        if len(ns) >= 3:
            h = (len(ns) - 1) // 2
            left, shared, right = ns[:h], ns[h], ns[h + 1:]
            shapes.append(_Shape(f"bridge {','.join(left)} <-{shared}-> {','.join(right)}",
                                 lambda net: net.bridge(left, right, shared),
                                 lambda a, b: not ((a in left and b in right) or
                                                   (a in right and b in left))))
        return shapes

    def self_test(self, port: int = SELF_TEST_PORT, timeout_s: float = PROBE_TIMEOUT_S) -> str:
        """Prove each partition shape blocks exactly what it should and nothing else.

        For healthy, isolate, majority/minority split, bridge and healed-again,
        every ordered node pair and client -> node is connected to (in parallel,
        `timeout_s` each). An allowed pair must connect; a blocked pair must time
        out (a DROP, not a refusal or a routing error). Returns a report; raises
        NetError on the first mismatching shape with every mismatch in it.
        """
        if not self._created:
            raise NetError("self_test needs a created network (call create() first)")
        report = [f"self test of {self!r}, {len(self.nodes)} nodes, port {port}"]
        t0 = time.monotonic()
        healthy = _Shape("healthy", lambda net: net.heal(), lambda a, b: True)
        healed = _Shape("healed", lambda net: net.heal(), lambda a, b: True)
        with self.prober(port, timeout_s) as p:
            for shape in [healthy] + self._shapes() + [healed]:
                t = time.monotonic()
                shape.apply(self)
                got = p.matrix()
                bad = []
                for (src, dst), res in sorted(got.items()):
                    want_ok = src == CLIENT or shape.can(src, dst)
                    if want_ok and res != "ok":
                        bad.append(f"{src}->{dst} should connect, got {res}")
                    elif not want_ok and res != "timeout":
                        bad.append(f"{src}->{dst} should be dropped, got {res}")
                n_blocked = sum(1 for r in got.values() if r != "ok")
                line = (f"{shape.name}: {len(got)} checks, {n_blocked} blocked, "
                        f"{time.monotonic() - t:.2f}s")
                if bad:
                    rules = self._safe_faults()
                    self.heal()
                    raise NetError("self test failed at " + line + ":\n  " + "\n  ".join(bad)
                                   + "\nrules were:\n" + rules)
                report.append(line + " ok")
        report.append(f"all shapes as expected in {time.monotonic() - t0:.2f}s")
        return "\n".join(report)

    def _safe_faults(self) -> str:
        try:
            return self.faults()
        except Exception as e:
            return f"(could not read rules: {e})"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
