"""`raftbroker cluster status|add-peer|remove-peer|step-down`."""
from __future__ import annotations

import asyncio
import json

from api.client import connect


def cluster_cmd(args) -> int:
    async def run():
        nc = await connect(args.server.split(","), token=args.token, max_reconnect_attempts=2)
        try:
            if args.action == "status":
                return await nc._request("cluster.status", {}, idempotent=True)
            if args.action in ("add-peer", "remove-peer"):
                if not args.peer:
                    raise SystemExit(f"{args.action} needs the peer's Raft address HOST:PORT")
                op = "cluster.add_peer" if args.action == "add-peer" else "cluster.remove_peer"
                return await nc._request(op, {"raft": args.peer}, timeout=15)
            return await nc._request("cluster.step_down", {}, timeout=15)
        finally:
            await nc.close()

    out = asyncio.run(run())
    if args.action == "status" and not args.json:
        print(f"leader: {out['leader']} ({out['leader_client']})  term {out['term']}  "
              f"commit {out['commit_index']}  applied {out['applied_index']}")
        for m in out["members"]:
            extra = f"  lag {m['lag']}  last contact {m['last_contact_s']:.2f}s" if "lag" in m and \
                m.get("last_contact_s") is not None else ""
            print(f"  {m['name']:<8} raft {m['raft']:<21} client {m['client']}{extra}")
    else:
        print(json.dumps(out, indent=2, default=str))
    return 0
