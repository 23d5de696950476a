"""Bootstrap probe: may empty nodes elect each other? Only if every member is empty.

Asked over the Raft port with pysyncobj's authenticated `status` utility call
(with the Raft port's cipher, see `raft_wire.py`), so only holders of the cluster
secret can answer.
"""
from __future__ import annotations

from pysyncobj.utility import TcpUtility, UtilityException

from .raft_wire import install_raft_wire


def probe(peer: str, secret: str | None, timeout: float) -> dict:
    install_raft_wire()
    return TcpUtility(password=secret, timeout=timeout).executeCommand(peer, ["status"])


def probe_all(peers: list[str], secret: str | None, timeout: float) -> str:
    """'empty' when every peer answers with an empty log and term 0;
    'history: …' when one has a log or a term; 'unreachable: …' otherwise."""
    for peer in peers:
        try:
            st = probe(peer, secret, timeout)
        except (UtilityException, OSError) as e:
            return f"unreachable: {peer} ({e})"
        if not isinstance(st, dict):
            return f"unreachable: {peer} answered {st!r}"
        if st.get("raft_term", 0) > 0 or st.get("log_len", 0) > 1 or st.get("last_applied", 0) > 1:
            return f"history: {peer} is at term {st.get('raft_term')} with {st.get('log_len')} log entries"
    return "empty"
