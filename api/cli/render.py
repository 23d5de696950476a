"""Output for people (rich tables) and for scripts (`--json` on stdout), and the units both
read and write: durations like 1h30m, 30s, 500ms and sizes like 1MiB, 512KB."""
from __future__ import annotations

import base64
import json
import re
import sys
import time
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

# Piped output gets no colour from rich; a wider page keeps table rows on one line there,
# so `| grep` sees a row whole.
_PIPE_WIDTH = 160


def console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr, highlight=False)
    if not c.is_terminal:
        c = Console(stderr=stderr, highlight=False, width=_PIPE_WIDTH)
    return c


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=_json_default))


def emit_json_line(data: Any) -> None:
    print(json.dumps(data, default=_json_default), flush=True)


def _json_default(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if hasattr(v, "to_dict"):
        return v.to_dict()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


def section(title: str, pairs: Iterable[tuple[str, Any]]) -> Table:
    """A `nats stream info`-style block: aligned `label: value` lines under a heading."""
    t = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 1, 0, 2))
    t.add_column(justify="right", style="bold")
    t.add_column()
    for k, v in pairs:
        if v is not None:
            t.add_row(f"{k}:", str(v))
    return t


# -- units ------------------------------------------------------------------------------
_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
              "y": 365 * 86400.0}
_DUR_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|y)")


def parse_duration(text: str) -> float:
    """Seconds from `1h30m`, `30s`, `500ms`, `2d` or a bare number of seconds."""
    s = text.strip().lower()
    try:
        return float(s)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DUR_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"invalid duration {text!r} (examples: 1h, 30s, 500ms, 1h30m)")
    return total


def parse_durations(text: str) -> list[float]:
    return [parse_duration(p) for p in text.split(",") if p.strip()]


def format_duration(seconds: float | None) -> str:
    if not seconds:
        return "0s" if seconds == 0 else "unlimited"
    if seconds < 1:
        return f"{seconds * 1000:.3g}ms"
    out, rest = [], round(seconds, 3)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if rest >= size:
            n = int(rest // size)
            out.append(f"{n}{unit}")
            rest -= n * size
    if rest or not out:
        out.append(f"{rest:g}s")
    return "".join(out)


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024 ** 2, "mb": 1024 ** 2, "mib": 1024 ** 2,
               "g": 1024 ** 3, "gb": 1024 ** 3, "gib": 1024 ** 3, "t": 1024 ** 4, "tb": 1024 ** 4, "tib": 1024 ** 4}


def parse_size(text: str) -> int:
    """Bytes from `512`, `1KB`, `10MiB`, `2G` (powers of 1024, as the nats tool reads them);
    -1 means unlimited."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r} (examples: 1024, 1KB, 10MiB, 2GB)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def format_size(n: int | None) -> str:
    if n is None or n < 0:
        return "unlimited"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_limit(n: int | None) -> str:
    return "unlimited" if n is None or n < 0 else f"{n:,}"


def format_time(ns: int | None) -> str:
    if not ns:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) + f".{ns // 1_000_000 % 1000:03d}"


def format_ago(ns: int | None, now_ns: int | None = None) -> str:
    if ns is None:
        return "never"
    return format_duration(max(0.0, ((now_ns or time.time_ns()) - ns) / 1e9)) + " ago"


# -- messages ---------------------------------------------------------------------------
def msg_dict(subject: str, data: bytes, headers: dict | None, **extra) -> dict:
    """A message for `--json`: text payloads as `data`, binary ones as `data_base64`."""
    d: dict = {"subject": subject, **{k: v for k, v in extra.items() if v is not None}}
    if headers:
        d["headers"] = headers
    try:
        d["data"] = data.decode("utf-8")
    except UnicodeDecodeError:
        d["data_base64"] = base64.b64encode(data).decode("ascii")
    return d


def print_msg(title: str, subject: str, data: bytes, headers: dict | None) -> None:
    out = sys.stdout
    out.write(f"{title} on {subject!r}\n")
    for k, v in (headers or {}).items():
        out.write(f"{k}: {v}\n")
    out.write("\n" + data.decode("utf-8", "replace") + "\n\n")
    out.flush()
