"""NATS subject rules: validation, wildcard matching and overlap.

Subjects are dot-separated tokens; `*` matches exactly one token and `>`
matches one or more trailing tokens (it may only be the last token). A transform
rewrites a subject matched by a pattern into a destination (mirrors and sources).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Optional

_FORBIDDEN_IN_SUBJECT = frozenset(" \t\r\n\x00")


def is_valid_subject(subject: str, allow_wildcards: bool = True) -> bool:
    if not isinstance(subject, str) or not subject or not _FORBIDDEN_IN_SUBJECT.isdisjoint(subject):
        return False
    tokens = subject.split(".")
    for i, tok in enumerate(tokens):
        if not tok:
            return False
        if tok in ("*", ">"):
            if not allow_wildcards or (tok == ">" and i != len(tokens) - 1):
                return False
        elif "*" in tok or ">" in tok:
            # A wildcard character inside a token is a literal in NATS, but it is
            # never what a user meant; JetStream refuses such stream subjects too.
            return False
    return True


def is_literal(subject: str) -> bool:
    return "*" not in subject and ">" not in subject


@lru_cache(maxsize=65536)
def _tokens(subject: str) -> tuple[str, ...]:
    return tuple(subject.split("."))


def matches(pattern: str, subject: str) -> bool:
    """True when the literal `subject` is matched by `pattern` (which may hold wildcards)."""
    if pattern == subject:
        return True
    if is_literal(pattern):
        return False
    pt, st = _tokens(pattern), _tokens(subject)
    for i, p in enumerate(pt):
        if p == ">":
            return len(st) > i
        if i >= len(st):
            return False
        if p != "*" and p != st[i]:
            return False
    return len(pt) == len(st)


def overlaps(a: str, b: str) -> bool:
    """True when some literal subject is matched by both patterns."""
    at, bt = _tokens(a), _tokens(b)
    for i in range(max(len(at), len(bt))):
        x = at[i] if i < len(at) else None
        y = bt[i] if i < len(bt) else None
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != "*" and y != "*" and x != y:
            return False
    return True


def is_subset(sub: str, sup: str) -> bool:
    """True when every subject `sub` matches is also matched by `sup`."""
    st, pt = _tokens(sub), _tokens(sup)
    for i, p in enumerate(pt):
        if p == ">":
            return len(st) > i
        if i >= len(st):
            return False
        s = st[i]
        if s == ">":
            return False
        if p == "*":
            continue
        if s == "*" or s != p:
            return False
    return len(st) == len(pt)


def any_match(patterns, subject: str) -> bool:
    return any(matches(p, subject) for p in patterns)


_WILDCARD_REF = re.compile(r"^(?:\{\{\s*wildcard\s*\(\s*(\d+)\s*\)\s*\}\}|\$(\d+))$")


def _dest_parts(src: str, dest: str) -> Optional[list]:
    """The destination as a list of literal tokens and wildcard references (ints for
    the n-th `*` of src, 0-based; ">" for the rest), or None when it is not valid."""
    stars = sum(1 for t in _tokens(src) if t == "*")
    full = _tokens(src)[-1] == ">"
    parts, next_star = [], 0
    for t in _tokens(dest):
        m = _WILDCARD_REF.match(t)
        if m:
            n = int(m.group(1) or m.group(2))
            if not 1 <= n <= stars:
                return None
            parts.append(n - 1)
        elif t == "*":
            if next_star >= stars:
                return None
            parts.append(next_star)
            next_star += 1
        elif t == ">":
            if not full:
                return None
            parts.append(">")
        elif "{{" in t or "$" == t[:1]:
            return None
        else:
            parts.append(t)
    return parts


def valid_transform(src: str, dest: str) -> bool:
    return is_valid_subject(src) and bool(dest) and _dest_parts(src, dest) is not None


def transform(src: str, dest: str, subject: str) -> str:
    """`subject` (which matches `src`) rewritten to `dest` (JetStream's subject mapping:
    `{{wildcard(n)}}` or `$n` for the n-th `*`, `>` for the rest)."""
    toks = _tokens(subject)
    stars, rest = [], ()
    for i, t in enumerate(_tokens(src)):
        if t == "*":
            stars.append(toks[i])
        elif t == ">":
            rest = toks[i:]
    out = []
    for p in _dest_parts(src, dest) or []:
        if p == ">":
            out.extend(rest)
        elif isinstance(p, int):
            out.append(stars[p])
        else:
            out.append(p)
    return ".".join(out)
