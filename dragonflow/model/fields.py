"""Small reusable field validators ("codecs") for the NB model.

A codec does two things for one field: ``norm(value)`` checks a value given to a constructor
or read from JSON and returns its canonical typed form (``"10.0.0.5"`` -> ``IPv4Address``,
a list -> a tuple, upper-case MAC -> lower-case), raising :class:`Invalid` otherwise;
``dump(value)`` turns the canonical form back into JSON (str, int, float, bool, None, list,
dict). ``norm`` is idempotent, so ``from_dict(to_dict(obj)) == obj``.

Model classes declare each field as ``name: type = fld(CODEC, default)`` and so read like a
table of fields.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

MAX_ID_LEN = 255
MAX_UINT32 = 2**32 - 1


class Invalid(Exception):
    """A bad value at ``path`` (relative to the field being checked, e.g. ``[1].ip_address``);
    turned into a ValidationError by the object that holds the field."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def json_kind(value: Any) -> str:
    """The JSON-ish name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _wrong_type(expected: str, value: Any) -> Invalid:
    return Invalid("", f"must be {expected}, got {json_kind(value)} {value!r}")


class Codec:
    def norm(self, value: Any) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return value


def fld(codec: Codec, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field validated by ``codec``; no default means required."""
    return dataclasses.field(default=default, metadata={"codec": codec})


# --- scalars -------------------------------------------------------------------------------
class Str(Codec):
    def __init__(self, max_len: int = MAX_ID_LEN) -> None:
        self.max_len = max_len

    def norm(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _wrong_type("a string", value)
        if len(value) > self.max_len:
            raise Invalid("", f"longer than {self.max_len} characters")
        return value


_BAD_ID_CHAR = re.compile(r"[/\s\x00-\x1f\x7f-\x9f]")


class Ident(Codec):
    """An id (or id-like name used in DB keys): non-empty, <= 255 chars, printable,
    no '/', no whitespace. With ``allow_empty`` the empty string also passes."""

    def __init__(self, allow_empty: bool = False) -> None:
        self.allow_empty = allow_empty

    def norm(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _wrong_type("a string id", value)
        if not value:
            if self.allow_empty:
                return value
            raise Invalid("", "must not be empty")
        if len(value) > MAX_ID_LEN:
            raise Invalid("", f"longer than {MAX_ID_LEN} characters")
        if _BAD_ID_CHAR.search(value):
            if "/" in value:
                raise Invalid("", f"{value!r} must not contain '/'")
            raise Invalid("", f"{value!r} must not contain whitespace or control characters")
        return value


_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ProjectId(Codec):
    """A project (tenant) id as Neutron takes it: any printable string of up to 255
    characters -- spaces and '/' included (it is never part of a DB key); "" = global."""

    def norm(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _wrong_type("a string project id", value)
        if len(value) > MAX_ID_LEN:
            raise Invalid("", f"longer than {MAX_ID_LEN} characters")
        if _CONTROL_CHAR.search(value):
            raise Invalid("", f"{value!r} must not contain control characters")
        return value


class Bool(Codec):
    def norm(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _wrong_type("a bool", value)
        return value


class Int(Codec):
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def norm(self, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _wrong_type("an integer", value)
        if not self.lo <= value <= self.hi:
            raise Invalid("", f"{value} is out of range {self.lo}..{self.hi}")
        return value


class Float(Codec):
    def __init__(self, lo: float) -> None:
        self.lo = lo

    def norm(self, value: Any) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _wrong_type("a number", value)
        if not math.isfinite(value) or value < self.lo:
            raise Invalid("", f"{value} must be a finite number >= {self.lo}")
        return float(value)


class OneOf(Codec):
    """One of a fixed set of values (strings or ints; bools never pass as ints)."""

    def __init__(self, *values: str | int) -> None:
        self.values = values

    def norm(self, value: Any) -> Any:
        if isinstance(value, bool) or value not in self.values:
            choices = "|".join(str(v) for v in self.values)
            raise Invalid("", f"{value!r} is not one of {choices}")
        return value


# --- addresses -----------------------------------------------------------------------------
def _no_scope(addr: IPAddress, value: Any) -> None:
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        raise Invalid("", f"{value!r}: scoped IPv6 addresses are not allowed")


class IpAddr(Codec):
    def norm(self, value: Any) -> IPAddress:
        if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            addr = value
        elif isinstance(value, str):
            try:
                addr = ipaddress.ip_address(value)
            except ValueError:
                raise Invalid("", f"{value!r} is not an IP address") from None
        else:
            raise _wrong_type("an IP address string", value)
        _no_scope(addr, value)
        return addr

    def dump(self, value: Any) -> str:
        return str(value)


class Cidr(Codec):
    """A network "10.0.0.0/24": host bits set is an error. With ``bare_ip`` a plain address is
    accepted as a /32 (or /128) network."""

    def __init__(self, bare_ip: bool = False) -> None:
        self.bare_ip = bare_ip

    def norm(self, value: Any) -> IPNetwork:
        if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return value
        if not isinstance(value, str):
            raise _wrong_type("a CIDR string", value)
        if "/" not in value and not self.bare_ip:
            raise Invalid("", f"{value!r} is not a CIDR (no '/prefix')")
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise Invalid("", f"{value!r} is not a CIDR") from None
        _no_scope(net.network_address, value)
        if net.network_address != ipaddress.ip_interface(value).ip:
            raise Invalid("", f"{value!r} has host bits set (the network is {net})")
        return net

    def dump(self, value: Any) -> str:
        return str(value)


def host_address_problem(
    net: IPNetwork, ip: IPAddress, allow_network: bool = False
) -> str | None:
    """Why ``ip`` is not a usable host address of ``net`` (None if it is).

    Outside the network, or its network address (unless ``allow_network``, e.g. the IPv6
    subnet-router anycast address on a router port), or the IPv4 broadcast address. Networks
    of one or two addresses (/31, /32, /127, /128) have no reserved addresses.
    """
    if ip.version != net.version:
        return f"{ip} is IPv{ip.version} but {net} is IPv{net.version}"
    if ip not in net:
        return f"{ip} is not inside {net}"
    if net.num_addresses <= 2:
        return None
    if ip == net.network_address and not allow_network:
        return f"{ip} is the network address of {net}"
    if net.version == 4 and ip == net.broadcast_address:
        return f"{ip} is the broadcast address of {net}"
    return None


class IfaceAddr(Codec):
    """An interface address "10.0.0.1/24": a usable host address with its prefix."""

    def norm(self, value: Any) -> IPInterface:
        if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
            iface = value
        elif isinstance(value, str):
            if "/" not in value:
                raise Invalid("", f"{value!r} is not an interface address (no '/prefix')")
            try:
                iface = ipaddress.ip_interface(value)
            except ValueError:
                raise Invalid("", f"{value!r} is not an interface address") from None
        else:
            raise _wrong_type("an interface address string like '10.0.0.1/24'", value)
        _no_scope(iface.ip, value)
        problem = host_address_problem(iface.network, iface.ip)
        if problem:
            raise Invalid("", problem)
        return iface

    def dump(self, value: Any) -> str:
        return str(value)


_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


class Mac(Codec):
    """A unicast MAC "aa:bb:cc:dd:ee:ff" (any case in, lower case stored)."""

    def norm(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _wrong_type("a MAC address string", value)
        mac = value.lower()
        if not _MAC_RE.fullmatch(mac):
            raise Invalid("", f"{value!r} is not a MAC address like 'fa:16:3e:00:00:01'")
        if int(mac[:2], 16) & 1:
            raise Invalid("", f"{value!r} is a multicast MAC; a unicast MAC is required")
        if mac == "00:00:00:00:00:00":
            raise Invalid("", "the all-zero MAC is not allowed")
        return mac


# --- combinators ---------------------------------------------------------------------------
class Opt(Codec):
    """None, or a value of ``inner``."""

    def __init__(self, inner: Codec) -> None:
        self.inner = inner

    def norm(self, value: Any) -> Any:
        return None if value is None else self.inner.norm(value)

    def dump(self, value: Any) -> Any:
        return None if value is None else self.inner.dump(value)


def _as_items(value: Any) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise _wrong_type("a list", value)
    return tuple(value)


class TupleOf(Codec):
    """A tuple of ``inner`` values (a JSON list). Options: no duplicates, at least one item."""

    def __init__(self, inner: Codec, unique: bool = False, non_empty: bool = False) -> None:
        self.inner, self.unique, self.non_empty = inner, unique, non_empty

    def norm(self, value: Any) -> tuple[Any, ...]:
        items = _as_items(value)
        if self.non_empty and not items:
            raise Invalid("", "must not be empty")
        out = []
        for i, item in enumerate(items):
            try:
                norm = self.inner.norm(item)
            except Invalid as e:
                raise Invalid(f"[{i}]{e.path}", e.reason) from None
            if self.unique and norm in out:
                raise Invalid(f"[{i}]", f"duplicate value {self.inner.dump(norm)!r}")
            out.append(norm)
        return tuple(out)

    def dump(self, value: Any) -> list[Any]:
        return [self.inner.dump(v) for v in value]


class Nested(Codec):
    """A nested model record (see base.Record): an instance, or a JSON object."""

    def __init__(self, cls: Any) -> None:
        self.cls = cls

    def norm(self, value: Any) -> Any:
        from dragonflow.model.errors import ValidationError

        if isinstance(value, self.cls):
            return value
        if not isinstance(value, Mapping):
            raise _wrong_type("an object", value)
        try:
            return self.cls.from_dict(value)
        except ValidationError as e:
            raise Invalid(f".{e.field}" if e.field else "", e.reason) from None

    def dump(self, value: Any) -> Any:
        return value.to_dict()


class PairsOf(Codec):
    """A mapping stored as a tuple of (key, value) pairs sorted by key (hashable, canonical);
    in JSON an object. Accepts a mapping or an iterable of pairs. Error paths: ``field.key``."""

    def __init__(self, key: Codec, val: Codec) -> None:
        self.key, self.val = key, val

    def norm(self, value: Any) -> tuple[tuple[Any, Any], ...]:
        pairs: Iterable[Any]
        if isinstance(value, Mapping):
            pairs = value.items()
        else:
            pairs = _as_items(value)
        seen: dict[Any, Any] = {}
        for pair in pairs:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise Invalid("", f"must be an object or (key, value) pairs, got {pair!r}")
            k, v = pair
            try:
                k = self.key.norm(k)
            except Invalid as e:
                raise Invalid(f".{k}", f"bad key: {e.reason}") from None
            if k in seen:
                raise Invalid(f".{k}", f"duplicate key {k!r}")
            try:
                seen[k] = self.val.norm(v)
            except Invalid as e:
                raise Invalid(f".{k}{e.path}", e.reason) from None
        return tuple(sorted(seen.items()))

    def dump(self, value: Any) -> dict[Any, Any]:
        return {self.key.dump(k): self.val.dump(v) for k, v in value}


# --- shared instances ----------------------------------------------------------------------
ID = Ident()
OPT_ID = Opt(Ident())
ID_OR_EMPTY = Ident(allow_empty=True)
PROJECT_ID = ProjectId()
NAME = Str()
BOOL = Bool()
IP = IpAddr()
OPT_IP = Opt(IP)
CIDR = Cidr()
MAC = Mac()
UNIQUE_KEY = Int(0, MAX_UINT32)
IDS = TupleOf(ID, unique=True)
