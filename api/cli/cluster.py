"""`raftbroker cluster status|add-peer|remove-peer|step-down`."""
from __future__ import annotations

import os

from . import render as R
from .conn import UsageError, add_connection_args, run

DEFAULT_CLUSTER = "127.0.0.1:4222,127.0.0.1:4223,127.0.0.1:4224"


async def cluster_status(nc, args):
    if args.action == "status":
        out = await nc._request("cluster.status", {}, idempotent=True)
    elif args.action in ("add-peer", "remove-peer"):
        if not args.peer:
            raise UsageError(f"{args.action} needs the peer's Raft address HOST:PORT")
        op = "cluster.add_peer" if args.action == "add-peer" else "cluster.remove_peer"
        out = await nc._request(op, {"raft": args.peer}, timeout=15)
    else:
        out = await nc._request("cluster.step_down", {}, timeout=15)
    if args.action == "status" and not args.json:
        print(f"leader: {out['leader']} ({out['leader_client']})  term {out['term']}  "
              f"commit {out['commit_index']}  applied {out['applied_index']}")
        for m in out["members"]:
            extra = f"  lag {m['lag']}  last contact {m['last_contact_s']:.2f}s" if "lag" in m and \
                m.get("last_contact_s") is not None else ""
            print(f"  {m['name']:<8} raft {m['raft']:<21} client {m['client']}{extra}")
    else:
        R.emit_json(out)


def add_parser(sub) -> None:
    p = sub.add_parser("cluster", help="cluster administration: status | add-peer | remove-peer | step-down")
    p.add_argument("action", choices=["status", "add-peer", "remove-peer", "step-down"])
    p.add_argument("peer", nargs="?", help="Raft address HOST:PORT (add-peer, remove-peer)")
    add_connection_args(p)
    # The local `raftbroker up` cluster, unless the environment names another.
    p.set_defaults(server=os.environ.get("RAFTBROKER_SERVER", DEFAULT_CLUSTER),
                   func=lambda args: run(args, cluster_status))
