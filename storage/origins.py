"""What a stream knows of each origin it mirrors or sources, as replicated state.

A pipeline (cluster/pipelines.py) reads an origin and proposes what it read as a
`SourceCopy`; the state here is updated in the same entry as the copied messages,
so a pipeline that restarts, moves to another node or replays a batch resumes
exactly after the last origin sequence stored, never storing one twice and never
skipping one. The origin's creation time is its identity: a copy from an origin
that was deleted and created again is refused and reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from jetstream.config import StreamConfig, StreamSource, origin_key
from jetstream.errors import js_error
from jetstream.model import Base
from jetstream.results import StreamSourceInfo

SOURCE_HEADER = "Nats-Stream-Source"

# err_code of StreamSourceInfo.error for a mirror and for a source (JetStream's
# JSMirrorConsumerSetupFailedErrF and JSSourceConsumerSetupFailedErrF).
MIRROR_ERR, SOURCE_ERR = 10029, 10045


@dataclass
class OriginState(Base):
    last: int = 0                       # the last origin sequence stored (or skipped) here
    created: int = 0                    # the origin stream's creation time, once seen
    lag: int = 0                        # messages the origin held past `last` at the last report
    contact: int = 0                    # entry time of the last report from the pipeline
    error: Optional[dict] = None        # {code, err_code, description} or None
    runner: str = ""                    # the node assigned to run the pipeline


def origins_of(config: StreamConfig) -> dict[str, StreamSource]:
    """origin key -> its StreamSource, for a stream's mirror or sources."""
    found = [config.mirror] if config.mirror else list(config.sources or [])
    return {origin_key(o): o for o in found}


def sync_origins(origins: dict[str, OriginState], config: StreamConfig) -> None:
    """Keep one state per configured origin: new origins start empty, removed ones go."""
    wanted = origins_of(config)
    for key in list(origins):
        if key not in wanted:
            del origins[key]
    for key in wanted:
        origins.setdefault(key, OriginState())


def source_header(origin: StreamSource, origin_seq: int, subject: str) -> str:
    """JetStream's `Nats-Stream-Source` value: origin, sequence, filter, destination, subject."""
    dest = ",".join(t.dest for t in origin.subject_transforms or []) or ">"
    return f"{origin.name} {origin_seq} {','.join(origin.filters) or '>'} {dest} {subject}"


def source_infos(config: StreamConfig, origins: dict[str, OriginState], now: int
                 ) -> tuple[Optional[StreamSourceInfo], Optional[list[StreamSourceInfo]]]:
    """(mirror, sources) of StreamInfo. `active` is measured at the store's clock (the
    last applied entry's time), so every replica reports the same."""
    def info(key: str, o: StreamSource, err_code: int) -> StreamSourceInfo:
        s = origins.get(key) or OriginState()
        error = s.error
        if error is None and not s.contact:
            error = js_error(err_code, f"no pipeline has reached origin {o.name} yet"
                                       + (f" (assigned to {s.runner})" if s.runner else ""), 503).to_wire()
        return StreamSourceInfo(
            name=o.name, lag=s.lag, active=(now - s.contact) if s.contact else None,
            filter_subject=o.filter_subject, subject_transforms=o.subject_transforms, external=o.external,
            error=error)
    mirror = info(origin_key(config.mirror), config.mirror, MIRROR_ERR) if config.mirror else None
    sources = [info(origin_key(o), o, SOURCE_ERR) for o in config.sources] if config.sources else None
    return mirror, sources
