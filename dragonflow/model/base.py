"""Base classes of the NB model: ``Record`` (any validated frozen record, also the nested
ones such as a port's fixed IP) and ``NbObject`` (a top-level NB table row).

Validation happens at construction: ``__post_init__`` normalises every field through its
codec (see fields.py), then runs the class's ``_check`` for rules that span fields. Rules
that need other objects (does the network exist? is the IP inside the subnet?) live in
``validate_refs``, which the NbApi calls with a lookup inside the write.

Every bad input raises ``ValidationError`` naming the table, object id and field path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Self, TypeVar

from dragonflow.model.errors import ValidationError
from dragonflow.model.fields import (
    ID,
    NAME,
    PROJECT_ID,
    Codec,
    Int,
    Invalid,
    fld,
    json_kind,
)

Lookup = Callable[[str, str], "NbObject | None"]
R = TypeVar("R", bound="NbObject")

_CODECS: dict[type, tuple[tuple[str, Codec], ...]] = {}


def _codecs(cls: type) -> tuple[tuple[str, Codec], ...]:
    """(field name, codec) of every dataclass field of ``cls``, cached per class."""
    found = _CODECS.get(cls)
    if found is None:
        out = []
        for f in dataclasses.fields(cls):
            codec = f.metadata.get("codec")
            if codec is None:
                raise TypeError(f"{cls.__name__}.{f.name} has no codec: declare it with fld()")
            out.append((f.name, codec))
        found = _CODECS[cls] = tuple(out)
    return found


_REQUIRED: dict[type, tuple[str, ...]] = {}


def required_fields(cls: type) -> tuple[str, ...]:
    """Names of the fields without a default, cached per class."""
    found = _REQUIRED.get(cls)
    if found is None:
        found = _REQUIRED[cls] = tuple(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
    return found


def dedupe(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop repeated pairs, keeping the first occurrence's order."""
    return list(dict.fromkeys(items))


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Record:
    """A validated, immutable record with a strict JSON codec."""

    TABLE: ClassVar[str]  # the name used in error messages (the table for NbObjects)
    DERIVED: ClassVar[tuple[str, ...]] = ()  # JSON keys from_dict accepts and checks, not stored

    def __post_init__(self) -> None:
        for name, codec in _codecs(type(self)):
            value = getattr(self, name)
            try:
                norm = codec.norm(value)
            except Invalid as e:
                raise self._error(name + e.path, e.reason) from None
            if norm is not value:
                object.__setattr__(self, name, norm)
        try:
            self._check()
        except Invalid as e:
            raise self._error(e.path, e.reason) from None

    def _check(self) -> None:
        """Rules spanning several fields; raise Invalid(full field path, reason)."""

    def _obj_id(self) -> str:
        oid = getattr(self, "id", "")
        return oid if isinstance(oid, str) else ""

    def _error(self, field: str, reason: str) -> ValidationError:
        return ValidationError(self.TABLE, self._obj_id(), field, reason)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (str, int, float, bool, None, lists, dicts) of every field."""
        return {name: codec.dump(getattr(self, name)) for name, codec in _codecs(type(self))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Strict: unknown or missing keys and wrong JSON types raise ValidationError."""
        if not isinstance(data, Mapping):
            raise ValidationError(cls.TABLE, "", "", f"must be an object, got {json_kind(data)}")
        oid = data.get("id", "")
        oid = oid if isinstance(oid, str) else ""
        codecs = dict(_codecs(cls))
        for key in data:
            if key not in codecs and key not in cls.DERIVED:
                raise ValidationError(cls.TABLE, oid, str(key), "unknown field")
        for name in required_fields(cls):
            if name not in data:
                raise ValidationError(cls.TABLE, oid, name, "required field missing")
        obj = cls(**{k: v for k, v in data.items() if k in codecs})
        for key in cls.DERIVED:
            if key in data and (
                type(data[key]) is not type(getattr(obj, key)) or data[key] != getattr(obj, key)
            ):
                raise ValidationError(
                    cls.TABLE, oid, key, f"{data[key]!r} contradicts the derived value "
                    f"{getattr(obj, key)!r}")
        return obj

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)


def fetch(lookup: Lookup, cls: type[R], obj_id: str, path: str) -> R:
    """The ``cls`` object ``obj_id`` via ``lookup``, or Invalid(path) if it does not exist."""
    obj = lookup(cls.TABLE, obj_id)
    if obj is None:
        raise Invalid(path, f"{cls.TABLE} {obj_id!r} does not exist")
    if not isinstance(obj, cls):
        raise Invalid(path, f"lookup of {cls.TABLE} {obj_id!r} returned a {type(obj).__name__}")
    return obj


def alloc_key(alloc: Callable[[str], int], ns: str) -> int:
    key = alloc(ns)
    if isinstance(key, bool) or not isinstance(key, int) or not 0 < key < 2**32:
        raise ValueError(f"unique key allocator for {ns!r} returned {key!r}, not 1..2**32-1")
    return key


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NbObject(Record):
    """A top-level NB object (one row of ``TABLE``).

    Subclasses with ``UNIQUE_KEY_NS`` declare a ``unique_key`` field (0 = not allocated).
    """

    UNIQUE_KEY_NS: ClassVar[str | None] = None

    id: str = fld(ID)
    topic: str = fld(PROJECT_ID, "")  # project id (as Neutron takes it); "" for global objects
    name: str = fld(NAME, "")
    version: int = fld(Int(0, 2**63 - 1), 0)

    def references(self) -> list[tuple[str, str, str]]:
        """(table, id, field path) of every object that must exist for this one."""
        return []

    def index_entries(self) -> list[tuple[str, str]]:
        """(index name, value) of this object's secondary index entries."""
        return []

    def claims(self) -> list[tuple[str, str]]:
        """(claim key, field path): values that must be unique in the whole DB."""
        return []

    def validate_refs(self, lookup: Lookup) -> None:
        """Check every reference exists, then the class's cross-object rules.
        Each (table, id) is looked up at most once."""
        seen: dict[tuple[str, str], NbObject | None] = {}

        def once(table: str, oid: str) -> NbObject | None:
            if (table, oid) not in seen:
                seen[(table, oid)] = lookup(table, oid)
            return seen[(table, oid)]

        for table, oid, field in self.references():
            if table == self.TABLE and oid == self.id:
                continue  # a self-reference (security group rule to its own group)
            if once(table, oid) is None:
                raise self._error(field, f"{table} {oid!r} does not exist")
        try:
            self._check_refs(once)
        except Invalid as e:
            raise self._error(e.path, e.reason) from None

    def _check_refs(self, lookup: Lookup) -> None:
        """Cross-object rules; raise Invalid(field path, reason). References exist here."""

    # --- unique keys (overridden by Router, which also holds its ports' keys) ---------------
    def _key(self) -> int:
        key: int = getattr(self, "unique_key", 0)
        return key

    def assign_unique_keys(self, alloc: Callable[[str], int]) -> Self:
        ns = self.UNIQUE_KEY_NS
        if ns is None or self._key() != 0:
            return self
        return self.replace(unique_key=alloc_key(alloc, ns))

    def carry_unique_keys(self, old: Self) -> Self:
        if type(old) is not type(self):
            raise TypeError(f"cannot carry keys from {type(old).__name__} to {type(self).__name__}")
        key = old._key()
        if self.UNIQUE_KEY_NS is None or key == 0 or key == self._key():
            return self
        return self.replace(unique_key=key)

    def unique_keys(self) -> list[tuple[str, int]]:
        ns = self.UNIQUE_KEY_NS
        return [] if ns is None or self._key() == 0 else [(ns, self._key())]
