"""The node's HTTP endpoints (aiohttp): /healthz, /raftz, /digest."""
from __future__ import annotations

from aiohttp import web


def make_app(node) -> web.Application:
    clustered = hasattr(node, "status")

    async def healthz(_request):
        if clustered:
            ok, reason = node.health()
        else:
            ok, reason = True, "ok"
        body = {"status": "ok" if ok else "unavailable", "leader": node.leader[0]}
        if not ok:
            body["reason"] = reason
        return web.json_response(body, status=200 if ok else 503)

    async def raftz(_request):
        if not clustered:
            return web.json_response({"role": "single", "leader": node.leader[0]})
        return web.json_response(node.status())

    async def digest(_request):
        # This node's own state, not the leader's: tests compare nodes with it.
        def read(store):
            return {"applied_index": store.applied_index, "streams": store.digest(),
                    "messages": {n: store.stream_info(n).state.messages for n in store.stream_names()}}
        return web.json_response(await node.read(read))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/raftz", raftz)
    app.router.add_get("/digest", digest)
    return app


async def start_http(node, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
