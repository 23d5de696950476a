"""The JetStream JSON API's conventions over our model: durations are integer nanoseconds
(ours are float seconds), timestamps RFC 3339 with nanoseconds (ours unix ns), and 0 in a
request means "unset" (nats-py sends 0 for every duration it was not given)."""
from __future__ import annotations

import calendar
import re
import time
from typing import Optional

from jetstream.config import ConsumerConfig, StreamConfig
from jetstream.errors import BadRequestError
from jetstream.results import ConsumerInfo, StreamInfo

NS = 1_000_000_000
SERVER_VERSION = "2.10.26"      # the NATS level we speak: nats-py gates behaviour on it
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
STREAM_DURATIONS = ("max_age", "duplicate_window")
CONSUMER_DURATIONS = ("ack_wait", "idle_heartbeat", "inactive_threshold", "max_expires")
_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)$")


def rfc3339(unix_ns: Optional[int]) -> str:
    if not unix_ns:
        return GO_ZERO_TIME
    secs, frac = divmod(int(unix_ns), NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def parse_rfc3339(text) -> int:
    m = _RFC3339.match(text) if isinstance(text, str) else None
    if m is None:
        raise BadRequestError(f"invalid time {text!r}")
    y, mo, d, h, mi, s, frac, zone = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s)))
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return secs * NS + int((frac or "0").ljust(9, "0"))


def _ns_to_s(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value        # the model's validation reports it
    return value / NS if value else None


def _s_to_ns(value):
    return int(round(value * NS)) if value else 0


# == streams ================================================================================
def stream_config_in(body: dict) -> StreamConfig:
    d = dict(body)
    for k in STREAM_DURATIONS:
        if k in d:
            d[k] = _ns_to_s(d[k]) or 0.0
    if isinstance(d.get("consumer_limits"), dict):
        limits = d["consumer_limits"] = dict(d["consumer_limits"])
        if "inactive_threshold" in limits:
            limits["inactive_threshold"] = _ns_to_s(limits["inactive_threshold"])
    _origin_times(d, parse_rfc3339)
    return StreamConfig.from_dict(d)


def _origin_times(d: dict, convert) -> None:
    """A mirror's or source's `opt_start_time`: RFC 3339 in JSON, unix ns in the model."""
    origins = ([d["mirror"]] if isinstance(d.get("mirror"), dict) else []) + [
        s for s in d.get("sources") or [] if isinstance(s, dict)]
    for o in origins:
        if o.get("opt_start_time"):
            o["opt_start_time"] = convert(o["opt_start_time"])


def stream_config_out(cfg: StreamConfig) -> dict:
    d = cfg.to_dict()
    for k in STREAM_DURATIONS:
        d[k] = _s_to_ns(d.get(k))
    d.setdefault("allow_direct", False)
    limits = d.setdefault("consumer_limits", {})
    if limits.get("inactive_threshold"):
        limits["inactive_threshold"] = _s_to_ns(limits["inactive_threshold"])
    if not d.get("first_seq"):
        d.pop("first_seq", None)        # omitted unless set, as nats-server sends it
    _origin_times(d, rfc3339)
    return d


def _cluster_out(cluster) -> Optional[dict]:
    if cluster is None:
        return None
    d = cluster if isinstance(cluster, dict) else cluster.to_dict()
    return d


def stream_info_out(info: StreamInfo, cluster=None) -> dict:
    st = info.state
    state = {"messages": st.messages, "bytes": st.bytes, "first_seq": st.first_seq,
             "first_ts": rfc3339(st.first_ts), "last_seq": st.last_seq, "last_ts": rfc3339(st.last_ts),
             "consumer_count": st.consumer_count}
    if st.num_subjects:
        state["num_subjects"] = st.num_subjects
    if st.num_deleted:
        state["num_deleted"] = st.num_deleted
    out = {"config": stream_config_out(info.config), "created": rfc3339(info.created), "state": state,
           "ts": rfc3339(info.ts or time.time_ns())}
    c = _cluster_out(cluster if cluster is not None else info.cluster)
    if c is not None:
        out["cluster"] = c
    if info.mirror is not None:
        out["mirror"] = info.mirror.to_dict()
    if info.sources is not None:
        out["sources"] = [s.to_dict() for s in info.sources]
    return out


# == consumers ==============================================================================
def consumer_config_in(body: dict) -> ConsumerConfig:
    d = dict(body)
    for k in CONSUMER_DURATIONS:
        if k in d:
            d[k] = _ns_to_s(d[k])
    if isinstance(d.get("backoff"), list):
        d["backoff"] = [_ns_to_s(v) or 0.0 for v in d["backoff"]]
    if d.get("opt_start_time") is not None:
        d["opt_start_time"] = parse_rfc3339(d["opt_start_time"])
    for k in ("max_deliver", "max_waiting", "max_ack_pending", "num_replicas", "max_batch", "max_bytes",
              "rate_limit_bps", "opt_start_seq"):
        if d.get(k) == 0:
            d[k] = None
    return ConsumerConfig.from_dict(d)


def consumer_config_out(cfg: ConsumerConfig) -> dict:
    d = cfg.to_dict()
    for k in CONSUMER_DURATIONS:
        if k in d:
            d[k] = _s_to_ns(d[k])
    if d.get("backoff"):
        d["backoff"] = [_s_to_ns(v) for v in d["backoff"]]
    if d.get("opt_start_time"):
        d["opt_start_time"] = rfc3339(d["opt_start_time"])
    return d


def seq_out(s) -> dict:
    d = {"consumer_seq": s.consumer_seq, "stream_seq": s.stream_seq}
    if s.last_active:
        d["last_active"] = rfc3339(s.last_active)
    return d


def consumer_info_out(info: ConsumerInfo, cluster=None) -> dict:
    out = {"stream_name": info.stream_name, "name": info.name, "created": rfc3339(info.created),
           "config": consumer_config_out(info.config), "delivered": seq_out(info.delivered),
           "ack_floor": seq_out(info.ack_floor), "num_ack_pending": info.num_ack_pending,
           "num_redelivered": info.num_redelivered, "num_waiting": info.num_waiting,
           "num_pending": info.num_pending, "ts": rfc3339(info.ts or time.time_ns())}
    if info.push_bound is not None:
        out["push_bound"] = info.push_bound
    c = _cluster_out(cluster if cluster is not None else info.cluster)
    if c is not None:
        out["cluster"] = c
    return out
