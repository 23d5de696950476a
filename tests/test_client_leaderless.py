"""A node that knows no leader (cut off from its cluster) answers every request with
"not leader" and no address. The client must then try the other servers, not go back
to the same node forever: that kept the chaos suite's final read on a partitioned node."""
from __future__ import annotations

import asyncio

import pytest

import api.protocol as P
from api.client import connect


async def _fake_node(answer):
    """A one-frame-at-a-time server: INFO, accept CONNECT, then answer(request)."""
    async def handle(reader, writer):
        dec = P.Decoder()
        writer.write(P.encode(P.Info(server_id="fake")))

        async def frame():
            while (f := dec.next()) is None:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError
                dec.feed(data)
            return f
        try:
            await frame()                                  # CONNECT
            writer.write(P.encode(P.Response(0, {})))
            while True:
                f = await frame()
                if isinstance(f, P.Request):
                    writer.write(P.encode(answer(f)))
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, "127.0.0.1:%d" % server.sockets[0].getsockname()[1]


@pytest.mark.asyncio
async def test_a_leaderless_node_is_left_for_one_that_answers():
    served = {"cut": 0, "ok": 0}

    def cut_off(req):
        served["cut"] += 1
        return P.Error(req.id, 503, P.ERR_NOT_LEADER, "not the leader, and no leader is known yet")

    def answers(req):
        served["ok"] += 1
        return P.Response(req.id, {"answered": req.op})

    s1, cut_url = await _fake_node(cut_off)
    s2, ok_url = await _fake_node(answers)
    try:
        nc = await connect([cut_url, ok_url], timeout=5.0)
        assert nc.connected_url == cut_url                  # the first server, as listed
        body = await nc._request("stream.info", {"name": "S"}, timeout=5.0)
        assert body == {"answered": "stream.info"}
        assert served["cut"] == 1 and served["ok"] == 1
        assert nc.connected_url == ok_url
        await nc.close()
    finally:
        s1.close()
        s2.close()
