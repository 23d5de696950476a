"""The node's HTTP endpoints (aiohttp): NATS-shaped monitoring (/varz, /connz, /jsz, /healthz),
Prometheus /metrics, the seeds' consumer-health check, and our own /raftz and /digest."""
from __future__ import annotations

import asyncio

from aiohttp import web

from .metrics import ScrapeState
from .monitor import ConsumerThresholds, Monitor, _stream_rows

MAX_CONNZ_LIMIT = 1024


def _flag(request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes", "on")


def _int(request, name: str, default: int, lo: int = 0, hi: int = 2**31) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer, got {raw!r}")
    return max(lo, min(hi, v))


def _float(request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a number, got {raw!r}")


def make_app(broker) -> web.Application:
    node = broker.node
    clustered = hasattr(node, "status")
    mon = Monitor(broker)

    async def healthz(request):
        status, body = await mon.healthz(js_enabled_only=_flag(request, "js-enabled-only"),
                                         js_server_only=_flag(request, "js-server-only"),
                                         stream=request.query.get("stream") or None,
                                         consumer=request.query.get("consumer") or None)
        return web.json_response(body, status=status)

    async def consumer_health(request):
        d = ConsumerThresholds()
        t = ConsumerThresholds(max_pending=_int(request, "max_pending", d.max_pending),
                               max_ack_pending=_int(request, "max_ack_pending", d.max_ack_pending),
                               max_redelivery_ratio=_float(request, "max_redelivery_ratio", d.max_redelivery_ratio))
        status, body = await mon.consumer_health(request.match_info["stream"], request.match_info["consumer"], t)
        return web.json_response(body, status=status)

    async def varz(_request):
        return web.json_response(mon.varz())

    async def connz(request):
        return web.json_response(mon.connz(offset=_int(request, "offset", 0),
                                           limit=_int(request, "limit", MAX_CONNZ_LIMIT, lo=1, hi=MAX_CONNZ_LIMIT)))

    async def jsz(request):
        everything = _flag(request, "all")
        return web.json_response(await mon.jsz(streams=everything or _flag(request, "streams"),
                                               consumers=everything or _flag(request, "consumers"),
                                               config=everything or _flag(request, "config")))

    async def metrics(_request):
        streams = await node.read(lambda s: _stream_rows(s, True))
        state = ScrapeState(broker.cfg.name, node.is_leader, node.leader[0], streams,
                            node.status() if clustered else None, node.proposals_queued)
        body = broker.service.metrics.render(state)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def raftz(_request):
        if not clustered:
            return web.json_response({"role": "single", "leader": node.leader[0]})
        return web.json_response(node.status())

    async def digest(_request):
        # This node's own state, not the leader's: tests compare nodes with it. Only the
        # view is taken under the apply lock; hashing a large stream takes seconds.
        def read(store):
            return {"applied_index": store.applied_index, "streams": store.digest_view(),
                    "messages": {n: store.stream_info(n).state.messages for n in store.stream_names()}}
        out = await node.read(read)
        out["streams"] = await asyncio.to_thread(out["streams"])
        return web.json_response(out)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/healthz/consumer/{stream}/{consumer}", consumer_health)
    app.router.add_get("/varz", varz)
    app.router.add_get("/connz", connz)
    app.router.add_get("/jsz", jsz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/raftz", raftz)
    app.router.add_get("/digest", digest)
    return app


async def start_http(broker, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(broker), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
