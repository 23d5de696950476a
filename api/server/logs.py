"""Structured logs: one line per event, the record's extra fields as key=value."""
from __future__ import annotations

import logging

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class KeyValueFormatter(logging.Formatter):
    def __init__(self, node: str):
        super().__init__("%(asctime)s %(levelname)s %(name)s node=" + node + " %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}"
                 for k, v in vars(record).items() if k not in _STANDARD]
        return line + (" " + " ".join(extra) if extra else "")


def setup_logging(level: str, node: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(KeyValueFormatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # pysyncobj logs its own view (elections, connections) under "pysyncobj".
    logging.getLogger("pysyncobj").setLevel(max(root.level, logging.INFO))
