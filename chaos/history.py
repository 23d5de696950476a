"""The history of a chaos run: every operation the workload attempted, and what came of it.

One `Op` per attempt, written as one JSON line. Times are seconds since the
run started (the controller's monotonic clock), so they order operations in
real time across every client.

Kinds and their fields:
- ``publish``: `value` (the payload, unique per run) and `msg_id`; `seq` when ok.
- ``deliver``: a consumer got a message: `consumer`, `seq`, `value`, `delivered`
  (the delivery count the server reported). Always `ok`.
- ``ack``: an `ack_sync` for `seq` on `consumer`: ok (confirmed), fail, or info.
- ``fault``: a nemesis window: `value` is the fault's name, `node` its targets;
  invoke..complete is when it was in force.

Outcomes: ``ok`` (confirmed), ``fail`` (definitely did not happen: the server
refused before proposing), ``info`` (unknown: timeout, connection lost).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Optional

OK, FAIL, INFO = "ok", "fail", "info"


@dataclass
class Op:
    kind: str
    process: str                    # which client (publisher-2, puller-1, push-0, nemesis)
    invoke: float
    complete: Optional[float] = None
    outcome: str = INFO
    value: Optional[str] = None
    msg_id: Optional[str] = None
    seq: Optional[int] = None
    consumer: Optional[str] = None
    delivered: Optional[int] = None
    node: Optional[str] = None
    error: Optional[str] = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "Op":
        return cls(**json.loads(line))


@dataclass
class FinalState:
    """What the cluster holds after healing: read once the faults are over."""
    stream: list[tuple[int, str]] = field(default_factory=list)     # (seq, value) in sequence order
    digests: dict[str, dict] = field(default_factory=dict)          # node -> its /digest streams map
    node_streams: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # optional per-node contents
    consumers: dict[str, dict] = field(default_factory=dict)        # consumer -> num_pending, num_ack_pending, ack_floor


def write(path: str, ops: Iterable[Op]) -> None:
    with open(path, "w") as f:
        for op in ops:
            f.write(op.to_json() + "\n")


def read(path: str) -> Iterator[Op]:
    with open(path) as f:
        for line in f:
            if line.strip():
                yield Op.from_json(line)
