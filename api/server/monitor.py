"""The monitoring views /varz, /connz, /jsz and the health checks, shaped like nats-server's
monitoring JSON wherever the concept is the same, so NATS dashboards and habits carry over.

Everything here is read from the node's own store and counters (a follower answers with
its own state, as a nats-server does); nothing is proposed.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

from jetstream.errors import JSError

from .nats.jsjson import SERVER_VERSION, consumer_config_out, rfc3339, seq_out, stream_config_out
from .stats import ProcessUsage

@dataclass
class ConsumerThresholds:
    """The seeds' consumer-health rule: any one exceeded makes the consumer unhealthy."""
    max_pending: int = 1000
    max_ack_pending: int = 100
    max_redelivery_ratio: float = 0.10


def _stream_rows(store, with_consumers: bool) -> list:
    out = []
    for name in store.stream_names():
        info = store.stream_info(name)
        consumers = [store.consumer_info(name, c) for c in store.consumer_names(name)] if with_consumers else []
        out.append((info, consumers))
    return out


def consumer_problems(info, t: ConsumerThresholds) -> list[str]:
    problems = []
    if info.num_pending > t.max_pending:
        problems.append(f"pending {info.num_pending} > {t.max_pending}")
    if info.num_ack_pending > t.max_ack_pending:
        problems.append(f"ack pending {info.num_ack_pending} > {t.max_ack_pending}")
    delivered = info.delivered.consumer_seq
    if delivered and info.num_redelivered / delivered > t.max_redelivery_ratio:
        problems.append(f"redelivered {info.num_redelivered} of {delivered} "
                        f"> {t.max_redelivery_ratio:.0%}")
    return problems


class Monitor:
    def __init__(self, broker):
        self.broker = broker
        self.started = time.time()
        self.usage = ProcessUsage()

    @property
    def node(self):
        return self.broker.node

    def _fronts(self) -> list:
        return [f for f in (self.broker.rpc, getattr(self.broker, "nats", None)) if f is not None]

    def _rows(self):
        return [c.row() for f in self._fronts() for c in list(f.conns)]

    def _meta(self) -> dict:
        leader, _ = self.node.leader
        clustered = hasattr(self.node, "status")
        size = len(self.node.status()["members"]) if clustered else 1
        return {"name": "raftbroker", "leader": leader, "peer": self.broker.cfg.name, "cluster_size": size}

    # == /varz ===========================================================================
    def varz(self) -> dict:
        cfg = self.broker.cfg
        rows = self._rows()
        traffic = {k: 0 for k in ("in_msgs", "in_bytes", "out_msgs", "out_bytes")}
        for f in self._fronts():
            for k in traffic:
                traffic[k] += getattr(f.closed_traffic, k)
        for r in rows:
            for k in traffic:
                traffic[k] += getattr(r.traffic, k)
        rss, cpu = self.usage.sample()
        nats = getattr(self.broker, "nats", None)
        now = time.time()
        return {
            "server_id": nats.server_id if nats else cfg.name, "server_name": cfg.name, "version": SERVER_VERSION,
            "proto": 1, "go": "python", "host": self.broker.rpc.config.host,
            "port": nats.port if nats else self.broker.rpc.port, "max_payload": self.broker.rpc.config.max_payload,
            "start": rfc3339(int(self.started * 1e9)), "now": rfc3339(int(now * 1e9)),
            "uptime": _uptime(now - self.started), "mem": rss, "cores": os.cpu_count(), "cpu": cpu,
            "connections": len(rows), "total_connections": sum(f.total_connections for f in self._fronts()),
            "routes": 0, "remotes": 0, "leafnodes": 0, **traffic,
            "slow_consumers": nats.slow_consumers if nats else 0,
            "subscriptions": sum(r.subscriptions for r in rows),
            "http_host": cfg.http.rpartition(":")[0] if cfg.http else "",
            "http_port": int(cfg.http.rpartition(":")[2]) if cfg.http else 0,
            "jetstream": {"config": {"store_dir": cfg.data}, "meta": self._meta()},
        }

    # == /connz ==========================================================================
    def connz(self, offset: int = 0, limit: int = 1024) -> dict:
        rows = sorted(self._rows(), key=lambda r: (r.kind, r.cid))
        now = time.time()
        page = rows[offset:offset + limit]
        return {
            "server_id": self.broker.cfg.name, "now": rfc3339(int(now * 1e9)), "num_connections": len(page),
            "total": len(rows), "offset": offset, "limit": limit,
            "connections": [{
                "cid": r.cid, "kind": "Client", "type": r.kind, "ip": r.ip, "port": r.port,
                "start": rfc3339(int(r.start * 1e9)), "last_activity": rfc3339(int(r.traffic.last_activity * 1e9)),
                "uptime": _uptime(now - r.start), "idle": _uptime(now - r.traffic.last_activity),
                "pending_bytes": r.pending_bytes, "in_msgs": r.traffic.in_msgs, "out_msgs": r.traffic.out_msgs,
                "in_bytes": r.traffic.in_bytes, "out_bytes": r.traffic.out_bytes,
                "subscriptions": r.subscriptions, "name": r.name, "lang": r.lang, "version": r.version,
            } for r in page],
        }

    # == /jsz ============================================================================
    async def jsz(self, streams: bool = False, consumers: bool = False, config: bool = False) -> dict:
        rows = await self.node.read(lambda s: _stream_rows(s, True))
        totals = {"streams": len(rows), "consumers": sum(len(c) for _, c in rows),
                  "messages": sum(i.state.messages for i, _ in rows), "bytes": sum(i.state.bytes for i, _ in rows)}
        out = {"server_id": self.broker.cfg.name, "now": rfc3339(time.time_ns()),
               "config": {"store_dir": self.broker.cfg.data}, "memory": 0, "storage": totals["bytes"],
               "accounts": 1, "ha_assets": totals["streams"] + totals["consumers"], **totals,
               "meta_cluster": self._meta()}
        if streams:
            details = []
            for info, cons in rows:
                d = {"name": info.config.name, "created": rfc3339(info.created), "state": _state_out(info.state)}
                if config:
                    d["config"] = stream_config_out(info.config)
                if consumers:
                    d["consumer_detail"] = [_consumer_out(c, config) for c in cons]
                details.append(d)
            out["account_details"] = [{"name": "$G", "id": "$G", "stream_detail": details}]
        return out

    # == health ==========================================================================
    async def healthz(self, js_enabled_only: bool = False, js_server_only: bool = False,
                      stream: Optional[str] = None, consumer: Optional[str] = None) -> tuple[int, dict]:
        if js_enabled_only:
            return 200, {"status": "ok"}
        ok, reason = self.node.health() if hasattr(self.node, "health") else (True, "ok")
        routes = getattr(getattr(self.broker, "nats", None), "routes", None)
        if ok and routes is not None:
            ok, reason = routes.ready(self.node.leader[0])
        if not ok:
            return 503, {"status": "unavailable", "error": reason, "leader": self.node.leader[0]}
        if js_server_only or not stream:
            return 200, {"status": "ok", "leader": self.node.leader[0]}
        try:
            if consumer:
                await self.node.read(lambda s: s.consumer_info(stream, consumer))
            else:
                await self.node.read(lambda s: s.stream_info(stream))
        except JSError as e:
            return 503, {"status": "unavailable", "error": e.description}
        return 200, {"status": "ok"}

    async def consumer_health(self, stream: str, consumer: str, t: ConsumerThresholds) -> tuple[int, dict]:
        try:
            info = await self.node.read(lambda s: s.consumer_info(stream, consumer))
        except JSError as e:
            return 404 if e.code == 404 else 503, {"status": "unavailable", "error": e.description}
        problems = consumer_problems(info, t)
        body = {"status": "unhealthy" if problems else "ok", "stream": stream, "consumer": consumer,
                "num_pending": info.num_pending, "num_ack_pending": info.num_ack_pending,
                "num_redelivered": info.num_redelivered, "delivered": info.delivered.consumer_seq}
        if problems:
            body["reasons"] = problems
        return (503 if problems else 200), body


def _uptime(seconds: float) -> str:
    """nats-server's uptime format: 1d2h3m4s."""
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if d or h else "") + (f"{m}m" if d or h or m else "") + f"{s}s"


def _state_out(st) -> dict:
    return {"messages": st.messages, "bytes": st.bytes, "first_seq": st.first_seq,
            "first_ts": rfc3339(st.first_ts), "last_seq": st.last_seq, "last_ts": rfc3339(st.last_ts),
            "num_subjects": st.num_subjects, "num_deleted": st.num_deleted, "consumer_count": st.consumer_count}


def _consumer_out(c, config: bool) -> dict:
    d = {"stream_name": c.stream_name, "name": c.name, "created": rfc3339(c.created),
         "delivered": seq_out(c.delivered), "ack_floor": seq_out(c.ack_floor),
         "num_ack_pending": c.num_ack_pending, "num_redelivered": c.num_redelivered,
         "num_waiting": c.num_waiting, "num_pending": c.num_pending}
    if config:
        d["config"] = consumer_config_out(c.config)
    return d
