"""Writing frames to a stream: one transport write per event-loop iteration.

With many requests in flight, frames come in bursts; joining the frames sent
in one loop iteration into one write saves a send syscall per frame. Past
FLUSH_BYTES the buffer goes out at once, so it stays bounded and the
transport's buffer (and so drain() and back-pressure) sees the bytes.
"""
from __future__ import annotations

import asyncio

from . import protocol as P

FLUSH_BYTES = 65536


class FrameWriter:
    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self._frames: list[bytes] = []
        self._bytes = 0
        self._scheduled = False

    def send(self, frame) -> None:
        data = P.encode(frame)
        self._frames.append(data)
        self._bytes += len(data)
        if self._bytes >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._frames:
            data = b"".join(self._frames) if len(self._frames) > 1 else self._frames[0]
            self.discard()
            if not self.writer.is_closing():
                self.writer.write(data)

    def discard(self) -> None:
        """Forget frames not yet written (their connection is gone)."""
        self._frames.clear()
        self._bytes = 0

    @property
    def unsent_bytes(self) -> int:
        """Bytes accepted but not yet on the wire: ours plus the transport's buffer."""
        return self.writer.transport.get_write_buffer_size() + self._bytes

    async def drain(self) -> None:
        self.flush()
        await self.writer.drain()

    def close(self) -> None:
        self.flush()   # frames sent just before closing (errors, last responses) still go out
        self.writer.close()
