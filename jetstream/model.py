"""Base for the dataclasses that cross the wire: dict in, dict out.

`from_dict` ignores unknown keys (an older peer must read a newer one's
configs); `to_dict` drops None so defaults stay the receiver's business.
"""
from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from typing import Any, TypeVar

T = TypeVar("T", bound="Base")

# Every publish ack, delivered message and fetched message crosses the wire through
# to_dict/from_dict, so both avoid per-call dataclasses.fields() (names are cached
# per class: a dataclass's fields are fixed once it is created) and _plain() for
# values of these exact types, which _plain returns unchanged.
_SCALARS = frozenset({str, int, float, bool, bytes})
_NAMES: dict[type, tuple[str, ...]] = {}
_NAME_SETS: dict[type, frozenset] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _field_set(cls: type) -> frozenset:
    names = _NAME_SETS.get(cls)
    if names is None:
        names = _NAME_SETS[cls] = frozenset(_field_names(cls))
    return names


def _plain(v: Any) -> Any:
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, Base):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class Base:
    # Fields whose value is a nested Base dataclass (or list of them), by name.
    _nested: typing.ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict:
        out = {}
        for name in _field_names(type(self)):
            v = getattr(self, name)
            if v is not None:
                out[name] = v if type(v) in _SCALARS else _plain(v)
        return out

    @classmethod
    def from_dict(cls: type[T], d: dict | None) -> T:
        if d is None:
            d = {}
        if isinstance(d, cls):
            return d
        names = _field_set(cls)
        kw = {}
        for k, v in d.items():
            if k not in names:
                continue
            nested = cls._nested.get(k)
            if nested is None and type(v) in _SCALARS:
                kw[k] = v
                continue
            if nested is not None and v is not None:
                v = [nested.from_dict(x) for x in v] if isinstance(v, list) else nested.from_dict(v)
            kw[k] = _plain(v) if not isinstance(v, Base) and not isinstance(v, list) else v
        return cls(**kw)

    def evolve(self: T, **kw) -> T:
        return dataclasses.replace(self, **kw)
