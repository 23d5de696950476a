"""What applying an entry announces once it is committed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from jetstream.model import Base


@dataclass
class Event(Base):
    """Something applying produced that the serving node announces after commit."""
    kind: str                # "stored", "max_deliveries", "terminated", "consumer_deleted",
                             # "stream_changed" (created or updated), "stream_deleted"
    stream: str
    consumer: Optional[str] = None
    stream_seq: Optional[int] = None
    deliveries: Optional[int] = None
    reason: Optional[str] = None
    subject: Optional[str] = None
