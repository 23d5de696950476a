"""The node's HTTP endpoints (aiohttp): health now; monitoring, metrics and admin later."""
from __future__ import annotations

from aiohttp import web


def make_app(node) -> web.Application:
    async def healthz(_request):
        if node.is_leader or node.leader[0]:
            return web.json_response({"status": "ok", "leader": node.leader[0]})
        return web.json_response({"status": "unavailable", "reason": "no known leader"}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    return app


async def start_http(node, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
