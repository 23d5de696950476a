"""What applying an entry announces once it is committed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from jetstream.model import Base


@dataclass
class Event(Base):
    """Something applying produced that the serving node announces after commit."""
    kind: str                # "stored", "max_deliveries", "terminated", "consumer_deleted",
                             # "stream_changed" (created or updated), "stream_deleted",
                             # "republish" (a core message for the stream's leader to send)
    stream: str
    consumer: Optional[str] = None
    stream_seq: Optional[int] = None
    deliveries: Optional[int] = None
    reason: Optional[str] = None
    subject: Optional[str] = None
    headers: Optional[dict] = None       # republish: the message's headers and data
    data: Optional[bytes] = None
    time: Optional[int] = None           # republish: when the message was stored (unix ns)
