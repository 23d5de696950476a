"""Shared helpers for the end-to-end tests (client library against a real server process)."""
import asyncio
import inspect
import json
import time

import pytest

from api.client import connect


@pytest.fixture
async def nc(server):
    c = await connect([server.addr], timeout=5)
    yield c
    await c.close()


async def until(pred, timeout: float = 5.0, interval: float = 0.02, what: str = "condition"):
    """Poll `pred` (sync or async) until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if inspect.isawaitable(v):
            v = await v
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def stream_msgs(js, stream: str) -> list:
    """Every message currently in `stream`, in order (through get_msg)."""
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            out.append(await js.get_msg(stream, seq))
        except Exception as e:  # deleted seqs inside the range
            if getattr(e, "err_code", None) != 10037:
                raise
    return out


async def advisories(js, stream: str) -> list[dict]:
    return [json.loads(m.data) for m in await stream_msgs(js, stream)]
