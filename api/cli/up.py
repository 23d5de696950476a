"""`raftbroker up`: a local cluster of child processes on 127.0.0.1."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def up(args) -> int:
    """A local cluster of child processes on 127.0.0.1, stopped together on Ctrl-C
    or SIGTERM. Node i (from 0) uses the base ports + i: clients, NATS, HTTP and Raft."""
    n = args.nodes
    client = [f"127.0.0.1:{args.client_port + i}" for i in range(n)]
    http = [f"127.0.0.1:{args.http_port + i}" for i in range(n)]
    raft = [f"127.0.0.1:{args.raft_port + i}" for i in range(n)]
    nats = [f"127.0.0.1:{args.nats_port + i}" for i in range(n)] if args.nats_port else []

    def on_signal(*_):
        raise KeyboardInterrupt     # `kill` stops the children too, as Ctrl-C does

    # SIGINT explicitly as well: a shell starts `raftbroker up &` with SIGINT ignored,
    # and Python then never turns it into KeyboardInterrupt.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    procs = []
    failed = False
    try:
        for i in range(n):
            name = f"n{i + 1}"
            cmd = [sys.executable, "-m", "api.cli", "server", "--name", name,
                   "--data", os.path.join(args.data, name), "--listen", client[i],
                   "--http", http[i], "--raft", raft[i], "--peers", ",".join(raft),
                   "--cluster-secret", args.secret, "--bootstrap", "--log-level", args.log_level]
            if nats:
                cmd += ["--nats-listen", nats[i]]
            procs.append(subprocess.Popen(cmd))
            print(f"{name}: clients {client[i]}  http {http[i]}  raft {raft[i]}  "
                  f"data {os.path.join(args.data, name)}", flush=True)
        print(f"connect with: servers={client}  (Ctrl-C stops all)", flush=True)
        if nats:
            print(f"nats-py: nats.connect(servers={['nats://' + a for a in nats]})", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = True               # a node ended by itself: stop the others
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave nodes running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return 1 if failed else 0
