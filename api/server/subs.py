"""Core subscriptions: who receives a message published on a subject.

Plain subscribers each get a copy; members of a queue group share one copy
per group, handed out round-robin, skipping members whose connection cannot
take more right now (back-pressure) when another member can.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Optional

from jetstream import subjects as subj


@dataclass(eq=False)
class Subscription:
    conn: object            # the server's Connection
    sid: int
    subject: str
    queue: Optional[str] = None


class SubjectRouter:
    def __init__(self):
        self._subs: list[Subscription] = []
        self._rr = itertools.count()
        # Called with (subscription, +1 or -1) for this node's own clients' subscriptions
        # (not for the interest other nodes route here): the routes tell the peers.
        self.on_local: Optional[Callable[[Subscription, int], None]] = None

    def add(self, sub: Subscription) -> None:
        self._subs.append(sub)
        self._changed(sub, 1)

    def remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._changed(sub, -1)

    def remove_conn(self, conn) -> None:
        gone = [s for s in self._subs if s.conn is conn]
        self._subs = [s for s in self._subs if s.conn is not conn]
        for s in gone:
            self._changed(s, -1)

    def _changed(self, sub: Subscription, delta: int) -> None:
        if self.on_local is not None and not getattr(sub.conn, "is_route", False):
            self.on_local(sub, delta)

    def local(self, pattern: str, queue: Optional[str]) -> list[Subscription]:
        """This node's own subscriptions on exactly `pattern` (in `queue`, or plain): where
        a message another node routed here for that interest goes."""
        return [s for s in self._subs if s.subject == pattern and s.queue == queue
                and not getattr(s.conn, "is_route", False)]

    def has_interest(self, subject: str) -> bool:
        return any(subj.matches(s.subject, subject) for s in self._subs)

    def targets(self, subject: str, can_take=lambda sub: True) -> list[Subscription]:
        """The subscriptions one message on `subject` goes to."""
        plain: list[Subscription] = []
        groups: dict[str, list[Subscription]] = {}
        for s in self._subs:
            if subj.matches(s.subject, subject):
                if s.queue:
                    groups.setdefault(s.queue, []).append(s)
                else:
                    plain.append(s)
        turn = next(self._rr)
        for members in groups.values():
            ready = [m for m in members if can_take(m)] or members
            plain.append(ready[turn % len(ready)])
        return plain
