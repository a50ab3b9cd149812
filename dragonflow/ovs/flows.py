"""The physical flow value type: what the reconciler diffs and the encoder sends.

An :class:`OfFlow` is an immutable, hashable OpenFlow 1.3 flow entry: table, priority,
:data:`Match`, apply-actions, an optional write-metadata and goto-table instruction, cookie
and timeouts. ``OfFlow.key`` -- ``(table, priority, match)`` -- is the identity OVS uses
for strict modify/delete; two flows with the same key and different actions are a modify.

A :data:`Match` is a tuple of ``(field, value, mask | None)`` sorted by field name and
built by :func:`match`, which normalizes values (lower-case MACs, canonical IP text,
``value & mask``, all-ones masks dropped, zero masks = field omitted) so equal matches
compare equal, and checks OpenFlow prerequisites (``ipv4_src`` needs ``eth_type=0x0800``,
``tcp_dst`` needs ``ip_proto=6`` ...). Field names are os-ken's OXM/NXM names.

Actions are small frozen dataclasses; "drop" is no actions and no goto. ``str(flow)``
renders ``ovs-ofctl`` syntax (``ovs-ofctl add-flow`` accepts it). This module knows nothing
of os-ken: :mod:`dragonflow.ovs.encode` turns flows into bytes. To add an action (e.g.
conntrack) add a dataclass here, include it in :data:`Action`, and register its codec in
encode.py.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import re
import socket
from dataclasses import dataclass, field
from typing import Literal

# ---- reserved port numbers (OpenFlow 1.3) ------------------------------------------------
OFPP_MAX = 0xFFFFFF00
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_TABLE = 0xFFFFFFF9
OFPP_NORMAL = 0xFFFFFFFA
OFPP_FLOOD = 0xFFFFFFFB
OFPP_ALL = 0xFFFFFFFC
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_LOCAL = 0xFFFFFFFE
OFPP_ANY = 0xFFFFFFFF
OFPCML_NO_BUFFER = 0xFFFF
_PORT_NAMES = {OFPP_IN_PORT: "IN_PORT", OFPP_TABLE: "TABLE", OFPP_NORMAL: "NORMAL",
               OFPP_FLOOD: "FLOOD", OFPP_ALL: "ALL", OFPP_LOCAL: "LOCAL"}

FieldKind = Literal["int", "mac", "ipv4", "ipv6"]
MatchValue = int | str
MatchEntry = tuple[str, MatchValue, MatchValue | None]
Match = tuple[MatchEntry, ...]


@dataclass(frozen=True)
class FieldSpec:
    """One matchable/settable field: os-ken name, wire kind and size, ovs-ofctl name."""

    name: str
    kind: FieldKind
    nbytes: int
    ofctl: str
    hex: bool = False  # render ints in hex for ovs-ofctl
    limit: int = field(default=0, init=False, repr=False)  # 1 << bits

    def __post_init__(self) -> None:
        object.__setattr__(self, "limit", 1 << (8 * self.nbytes))


def _specs() -> dict[str, FieldSpec]:
    rows: list[tuple[str, FieldKind, int, str, bool]] = [
        ("in_port", "int", 4, "in_port", False),
        ("metadata", "int", 8, "metadata", True),
        ("eth_dst", "mac", 6, "eth_dst", False),
        ("eth_src", "mac", 6, "eth_src", False),
        ("eth_type", "int", 2, "eth_type", True),
        ("vlan_vid", "int", 2, "vlan_vid", True),
        ("vlan_pcp", "int", 1, "vlan_pcp", False),
        ("ip_dscp", "int", 1, "ip_dscp", False),
        ("ip_ecn", "int", 1, "ip_ecn", False),
        ("ip_proto", "int", 1, "ip_proto", False),
        ("ipv4_src", "ipv4", 4, "ip_src", False),
        ("ipv4_dst", "ipv4", 4, "ip_dst", False),
        ("tcp_src", "int", 2, "tcp_src", False),
        ("tcp_dst", "int", 2, "tcp_dst", False),
        ("udp_src", "int", 2, "udp_src", False),
        ("udp_dst", "int", 2, "udp_dst", False),
        ("sctp_src", "int", 2, "sctp_src", False),
        ("sctp_dst", "int", 2, "sctp_dst", False),
        ("icmpv4_type", "int", 1, "icmp_type", False),
        ("icmpv4_code", "int", 1, "icmp_code", False),
        ("arp_op", "int", 2, "arp_op", False),
        ("arp_spa", "ipv4", 4, "arp_spa", False),
        ("arp_tpa", "ipv4", 4, "arp_tpa", False),
        ("arp_sha", "mac", 6, "arp_sha", False),
        ("arp_tha", "mac", 6, "arp_tha", False),
        ("ipv6_src", "ipv6", 16, "ipv6_src", False),
        ("ipv6_dst", "ipv6", 16, "ipv6_dst", False),
        ("ipv6_flabel", "int", 4, "ipv6_label", True),
        ("icmpv6_type", "int", 1, "icmpv6_type", False),
        ("icmpv6_code", "int", 1, "icmpv6_code", False),
        ("ipv6_nd_target", "ipv6", 16, "nd_target", False),
        ("ipv6_nd_sll", "mac", 6, "nd_sll", False),
        ("ipv6_nd_tll", "mac", 6, "nd_tll", False),
        ("tunnel_id", "int", 8, "tun_id", True),
        ("tun_ipv4_src", "ipv4", 4, "tun_src", False),
        ("tun_ipv4_dst", "ipv4", 4, "tun_dst", False),
        ("tun_ipv6_src", "ipv6", 16, "tun_ipv6_src", False),
        ("tun_ipv6_dst", "ipv6", 16, "tun_ipv6_dst", False),
        ("pkt_mark", "int", 4, "pkt_mark", True),
        ("tcp_flags", "int", 2, "tcp_flags", True),
        ("conj_id", "int", 4, "conj_id", False),
        ("ct_state", "int", 4, "ct_state", True),
        ("ct_zone", "int", 2, "ct_zone", False),
        ("ct_mark", "int", 4, "ct_mark", True),
        ("ct_label", "int", 16, "ct_label", True),
        ("actset_output", "int", 4, "actset_output", False),
    ]
    rows += [(f"reg{i}", "int", 4, f"reg{i}", True) for i in range(16)]
    return {r[0]: FieldSpec(*r) for r in rows}


FIELDS: dict[str, FieldSpec] = _specs()

_IP = frozenset({0x0800, 0x86DD})
_V4 = ("eth_type", frozenset({0x0800}))
_V6 = ("eth_type", frozenset({0x86DD}))
_ARP = ("eth_type", frozenset({0x0806}))


def _proto(number: int, eth: tuple[str, frozenset[int]] = ("eth_type", _IP)
           ) -> tuple[tuple[str, frozenset[int]], ...]:
    return (eth, ("ip_proto", frozenset({number})))


_ICMP6 = _proto(58, _V6)
# field -> every (field, allowed exact values) it needs, as OVS checks them
PREREQUISITES: dict[str, tuple[tuple[str, frozenset[int]], ...]] = {
    "ip_dscp": (("eth_type", _IP),), "ip_ecn": (("eth_type", _IP),),
    "ip_proto": (("eth_type", _IP),),
    "ipv4_src": (_V4,), "ipv4_dst": (_V4,),
    "ipv6_src": (_V6,), "ipv6_dst": (_V6,), "ipv6_flabel": (_V6,),
    "tcp_src": _proto(6), "tcp_dst": _proto(6), "tcp_flags": _proto(6),
    "udp_src": _proto(17), "udp_dst": _proto(17),
    "sctp_src": _proto(132), "sctp_dst": _proto(132),
    "icmpv4_type": _proto(1, _V4), "icmpv4_code": _proto(1, _V4),
    "icmpv6_type": _ICMP6, "icmpv6_code": _ICMP6,
    "ipv6_nd_target": _ICMP6 + (("icmpv6_type", frozenset({135, 136})),),
    "ipv6_nd_sll": _ICMP6 + (("icmpv6_type", frozenset({135})),),
    "ipv6_nd_tll": _ICMP6 + (("icmpv6_type", frozenset({136})),),
    "arp_op": (_ARP,), "arp_spa": (_ARP,), "arp_tpa": (_ARP,), "arp_sha": (_ARP,),
    "arp_tha": (_ARP,),
}


# ---- value normalization ------------------------------------------------------------------
def _to_int(spec: FieldSpec, raw: object) -> int:
    """Any value of a field as an unsigned int of the field's width."""
    if spec.kind == "int":
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ValueError(f"field {spec.name}: expected int, got {raw!r}")
        value = raw
    elif spec.kind == "mac":
        text = str(raw)
        parts = text.split(":")
        if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
            raise ValueError(f"field {spec.name}: bad MAC address {raw!r}")
        try:
            value = int("".join(p.zfill(2) for p in parts), 16)
        except ValueError:
            raise ValueError(f"field {spec.name}: bad MAC address {raw!r}") from None
    else:
        family = socket.AF_INET if spec.kind == "ipv4" else socket.AF_INET6
        try:
            value = int.from_bytes(socket.inet_pton(family, str(raw)), "big")
        except (OSError, ValueError):
            raise ValueError(f"field {spec.name}: bad {spec.kind} address {raw!r}") from None
    if not 0 <= value < spec.limit:
        raise ValueError(f"field {spec.name}: {raw!r} does not fit {spec.nbytes} bytes")
    return value


def _from_int(spec: FieldSpec, value: int) -> MatchValue:
    if spec.kind == "int":
        return value
    raw = value.to_bytes(spec.nbytes, "big")
    if spec.kind == "mac":
        return ":".join(f"{b:02x}" for b in raw)
    return socket.inet_ntop(socket.AF_INET if spec.kind == "ipv4" else socket.AF_INET6, raw)


_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


def _canonical(spec: FieldSpec, raw: object) -> MatchValue:
    """An unmasked value in canonical form (fast paths for the usual spellings)."""
    kind = spec.kind
    if kind == "int":
        if type(raw) is int and 0 <= raw < spec.limit:
            return raw
    elif kind == "mac":
        if type(raw) is str and len(raw) == 17 and _MAC_RE.fullmatch(raw):
            return raw.lower()
    elif type(raw) is str:
        family = socket.AF_INET if kind == "ipv4" else socket.AF_INET6
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, raw))
        except (OSError, ValueError):
            pass  # the slow path below raises the error naming the field
    return _from_int(spec, _to_int(spec, raw))


def normalize_value(name: str, raw: object) -> MatchValue:
    """The canonical form of an unmasked value of field ``name`` (raises ValueError)."""
    return _canonical(field_spec(name), raw)


def field_spec(name: str) -> FieldSpec:
    try:
        return FIELDS[name]
    except KeyError:
        raise ValueError(f"unknown OpenFlow field {name!r}") from None


def _entry(name: str, raw: object) -> MatchEntry | None:
    spec = field_spec(name)
    mask: int | None = None
    if isinstance(raw, tuple):
        if len(raw) != 2:
            raise ValueError(f"field {name}: expected value or (value, mask), got {raw!r}")
        raw, raw_mask = raw
        mask = _to_int(spec, raw_mask)
    elif spec.kind in ("ipv4", "ipv6") and "/" in str(raw):
        try:
            net = ipaddress.ip_network(str(raw), strict=False)
        except ValueError:
            raise ValueError(f"field {name}: bad prefix {raw!r}") from None
        raw, mask = str(net.network_address), int(net.netmask)
    else:
        return (name, _canonical(spec, raw), None)
    if mask == 0:
        return None  # fully wildcarded: same as not matching the field
    value = _to_int(spec, raw) & mask
    if mask == spec.limit - 1:
        return (name, _from_int(spec, value), None)
    return (name, _from_int(spec, value), _from_int(spec, mask))


@functools.lru_cache(maxsize=32768, typed=True)
def _entry_cached(name: str, raw: object) -> MatchEntry | None:
    return _entry(name, raw)


def _entry_of(name: str, raw: object) -> MatchEntry | None:
    """:func:`_entry`, remembered: a flow's values repeat across flows (the port's MAC in
    each of its port-security flows, the ethertypes and protocols in nearly all)."""
    try:
        return _entry_cached(name, raw)
    except TypeError:  # an unhashable value: not remembered (the error, if any, is _entry's)
        return _entry(name, raw)


def match(**fields: object) -> Match:
    """Build a normalized :data:`Match`; a value may be ``(value, mask)`` or an IP prefix.

    >>> match(eth_type=0x0800, ipv4_dst="10.0.0.0/24", reg6=(5, 0xff))
    (('eth_type', 2048, None), ('ipv4_dst', '10.0.0.0', '255.255.255.0'), ('reg6', 5, 255))
    """
    entries = [e for name, raw in fields.items() if (e := _entry_of(name, raw)) is not None]
    entries.sort()
    result = tuple(entries)
    check_prerequisites(result)
    return result


def check_prerequisites(m: Match) -> None:
    """Raise ValueError naming the field whose OpenFlow prerequisite is missing."""
    exact = {name: value for name, value, mask in m if mask is None}
    for name, _value, _mask in m:
        for req_field, allowed in PREREQUISITES.get(name, ()):
            have = exact.get(req_field)
            if have not in allowed:
                wanted = " or ".join(hex(a) if req_field == "eth_type" else str(a)
                                     for a in sorted(allowed))
                raise ValueError(f"match field {name} needs {req_field}={wanted} "
                                 f"(have {req_field}={have!r})")


# ---- actions ------------------------------------------------------------------------------
def _port_text(port: int) -> str:
    return _PORT_NAMES.get(port, str(port))


@dataclass(frozen=True, slots=True)
class Output:
    port: int

    def __str__(self) -> str:
        return f"output:{_port_text(self.port)}"


@dataclass(frozen=True, slots=True)
class Controller:
    """Send the packet to the controller (OFPP_CONTROLLER); max_len bytes of it."""

    max_len: int = OFPCML_NO_BUFFER

    def __str__(self) -> str:
        return f"controller:{self.max_len}"


@dataclass(frozen=True, slots=True)
class SetField:
    """Set a field (unmasked, OpenFlow 1.3); the value is normalized like match values."""

    field: str
    value: MatchValue

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", normalize_value(self.field, self.value))

    def __str__(self) -> str:
        return f"set_field:{_value_text(FIELDS[self.field], self.value)}->" \
               f"{FIELDS[self.field].ofctl}"


@dataclass(frozen=True, slots=True)
class PushVlan:
    ethertype: int = 0x8100

    def __str__(self) -> str:
        return f"push_vlan:{self.ethertype:#06x}"


@dataclass(frozen=True, slots=True)
class PopVlan:
    def __str__(self) -> str:
        return "pop_vlan"


@dataclass(frozen=True, slots=True)
class Group:
    group_id: int

    def __str__(self) -> str:
        return f"group:{self.group_id}"


@dataclass(frozen=True, slots=True)
class Resubmit:
    """Nicira resubmit to ``table`` (as if received on ``in_port``; None: the current one)."""

    table: int
    in_port: int | None = None

    def __str__(self) -> str:
        port = "" if self.in_port is None else _port_text(self.in_port)
        return f"resubmit({port},{self.table})"


@dataclass(frozen=True, slots=True)
class Move:
    """Nicira reg move: copy ``n_bits`` from ``src`` (from bit ``src_ofs``) to ``dst`` (from
    bit ``dst_ofs``). All of it is part of the flow's shape (it fixes the wire bytes)."""

    src: str
    dst: str
    n_bits: int
    src_ofs: int = 0
    dst_ofs: int = 0

    def __post_init__(self) -> None:
        for name in (self.src, self.dst):
            if name not in FIELDS:
                raise ValueError(f"move: unknown field {name!r}")
        if (self.n_bits <= 0 or self.src_ofs < 0 or self.dst_ofs < 0
                or self.src_ofs + self.n_bits > 8 * FIELDS[self.src].nbytes
                or self.dst_ofs + self.n_bits > 8 * FIELDS[self.dst].nbytes):
            raise ValueError(f"move: {self.n_bits} bits at {self.src_ofs}/{self.dst_ofs} do "
                             f"not fit {self.src}->{self.dst}")

    def __str__(self) -> str:
        s = f"[{self.src_ofs}..{self.src_ofs + self.n_bits - 1}]"
        d = f"[{self.dst_ofs}..{self.dst_ofs + self.n_bits - 1}]"
        return f"move:{FIELDS[self.src].ofctl}{s}->{FIELDS[self.dst].ofctl}{d}"


@dataclass(frozen=True, slots=True)
class DecTtl:
    """Decrement the IPv4 TTL / IPv6 hop limit; at 0 or 1 OVS sends the packet to the
    controller (reason invalid TTL) instead, and drops it."""

    def __str__(self) -> str:
        return "dec_ttl"


# fields whose OpenFlow 1.3 header is an 8-byte ONF experimenter OXM: the Nicira actions
# that name a field in 4 bytes (reg_load, ct's zone source) cannot carry them
_EXPERIMENTER_OXM = frozenset({"tcp_flags", "actset_output"})


def _check_bits(what: str, name: str, ofs: int, nbits: int) -> None:
    if name not in FIELDS:
        raise ValueError(f"{what}: unknown field {name!r}")
    if name in _EXPERIMENTER_OXM:
        raise ValueError(f"{what}: field {name} has no 4-byte NXM/OXM header")
    width = 8 * FIELDS[name].nbytes
    if nbits <= 0 or ofs < 0 or ofs + nbits > width:
        raise ValueError(f"{what}: bits {ofs}..{ofs + nbits - 1} do not fit {name} "
                         f"({width} bits)")


def _bits_text(name: str, ofs: int, nbits: int) -> str:
    spec = FIELDS[name]
    if ofs == 0 and nbits == 8 * spec.nbytes:
        return f"{spec.ofctl}[]"
    if nbits == 1:
        return f"{spec.ofctl}[{ofs}]"
    return f"{spec.ofctl}[{ofs}..{ofs + nbits - 1}]"


@dataclass(frozen=True, slots=True)
class Load:
    """Nicira reg_load: write ``value`` into bits ``ofs .. ofs+nbits-1`` of ``field``
    (the other bits are kept). ``value`` fits ``nbits`` and at most 64 bits."""

    field: str
    value: int
    ofs: int = 0
    nbits: int = 32

    def __post_init__(self) -> None:
        _check_bits("load", self.field, self.ofs, self.nbits)
        if self.nbits > 64:
            raise ValueError(f"load: at most 64 bits at a time, not {self.nbits}")
        _check_range(f"load value for {self.nbits} bits", self.value, self.nbits)

    def __str__(self) -> str:
        return f"load:{self.value:#x}->{_bits_text(self.field, self.ofs, self.nbits)}"


@dataclass(frozen=True, slots=True)
class Conjunction:
    """Conjunctive match: this flow is clause ``clause`` (1-based) of ``n_clauses`` of the
    conjunction ``conj_id`` (matched later as ``conj_id=<id>``)."""

    conj_id: int
    clause: int
    n_clauses: int

    def __post_init__(self) -> None:
        _check_range("conjunction id", self.conj_id, 32)
        if not 2 <= self.n_clauses <= 64 or not 1 <= self.clause <= self.n_clauses:
            raise ValueError(f"conjunction({self.conj_id},{self.clause}/{self.n_clauses}): "
                             f"need 1 <= k <= n, 2 <= n <= 64")

    def __str__(self) -> str:
        return f"conjunction({self.conj_id},{self.clause}/{self.n_clauses})"


@dataclass(frozen=True, slots=True)
class SetQueue:
    queue_id: int

    def __post_init__(self) -> None:
        _check_range("queue id", self.queue_id, 32)

    def __str__(self) -> str:
        return f"set_queue:{self.queue_id}"


NatKind = Literal["src", "dst"]


@dataclass(frozen=True, slots=True)
class Nat:
    """NAT inside :class:`Ct`: ``kind`` None = un-NAT an existing NATted connection
    (``nat`` without arguments); "src"/"dst" with an address range (IPv4 or IPv6, both
    ends of one family; ``ip_max`` None = one address) and an optional L4 port range."""

    kind: NatKind | None = None
    ip_min: str | None = None
    ip_max: str | None = None
    port_min: int | None = None
    port_max: int | None = None
    persistent: bool = False
    random: bool = False  # port selection: hash (False) or random

    def __post_init__(self) -> None:
        if self.kind is None:
            if any(v is not None for v in (self.ip_min, self.ip_max, self.port_min,
                                           self.port_max)):
                raise ValueError("nat without src/dst takes no range")
            return
        if self.kind not in ("src", "dst"):
            raise ValueError(f"nat kind must be 'src' or 'dst', not {self.kind!r}")
        if self.ip_min is None:
            if self.ip_max is not None or self.port_min is not None:
                raise ValueError("nat: a port range needs an address range")
            return
        lo = ipaddress.ip_address(self.ip_min)
        object.__setattr__(self, "ip_min", str(lo))
        if self.ip_max is not None:
            hi = ipaddress.ip_address(self.ip_max)
            if hi.version != lo.version or int(hi) < int(lo):
                raise ValueError(f"nat: bad address range {self.ip_min}-{self.ip_max}")
            object.__setattr__(self, "ip_max", str(hi))
        if self.port_max is not None and self.port_min is None:
            raise ValueError("nat: port_max without port_min")
        for p in (self.port_min, self.port_max):
            if p is not None and (not isinstance(p, int) or isinstance(p, bool)
                                  or not 1 <= p <= 0xFFFF):
                # OVS rejects port 0 (OFPBAC_BAD_ARGUMENT); ovs-ofctl drops it silently
                raise ValueError(f"nat port must be 1..65535, got {p!r}")
        if (self.port_min is not None and self.port_max is not None
                and self.port_max < self.port_min):
            raise ValueError(f"nat: bad port range {self.port_min}-{self.port_max}")

    @property
    def version(self) -> int | None:
        return None if self.ip_min is None else ipaddress.ip_address(self.ip_min).version

    def __str__(self) -> str:
        if self.kind is None:
            return "nat"
        text = f"nat({self.kind}"
        if self.ip_min is not None:
            # IPv6 in brackets when a range or port follows (as OVS prints it)
            brackets = self.version == 6 and (self.ip_max is not None
                                              or self.port_min is not None)
            lo = f"[{self.ip_min}]" if brackets else self.ip_min
            text += f"={lo}"
            if self.ip_max is not None:
                hi = f"[{self.ip_max}]" if brackets else self.ip_max
                text += f"-{hi}"
            if self.port_min is not None:
                text += f":{self.port_min}"
                if self.port_max is not None:
                    text += f"-{self.port_max}"
        if self.persistent:
            text += ",persistent"
        if self.random:
            text += ",random"
        return text + ")"


_CT_ALGS = {0: "", 21: "ftp", 69: "tftp"}  # the ALG helpers OVS has


@dataclass(frozen=True, slots=True)
class Ct:
    """Send the packet through the connection tracker (Nicira ct action).

    ``zone``: an immediate zone (int), or ``zone_field`` bits ``zone_ofs`` .. +16 of a
    register; ``table``: recirculate the packet, with its ct_state set, into that table
    (None: continue without the ct fields); ``commit`` the connection (only then may
    ``exec`` set ct_mark / ct_label with :class:`Load` or :class:`SetField`, and ``force``
    end an existing connection of the other direction first); ``nat``: translate."""

    commit: bool = False
    zone: int = 0
    zone_field: str | None = None
    zone_ofs: int = 0
    table: int | None = None
    nat: Nat | None = None
    exec: tuple[Load | SetField, ...] = ()
    force: bool = False
    alg: int = 0  # 0, or the L4 port of an ALG helper (21 = ftp, 69 = tftp)

    def __post_init__(self) -> None:
        if not isinstance(self.exec, tuple):
            object.__setattr__(self, "exec", tuple(self.exec))
        if self.zone_field is not None:
            _check_bits("ct zone", self.zone_field, self.zone_ofs, 16)
            if self.zone:
                raise ValueError("ct: zone and zone_field are exclusive")
        else:
            _check_range("ct zone", self.zone, 16)
        if self.table is not None:
            _check_range("ct table", self.table, 8)
            if self.table == 0xFF:
                raise ValueError("ct table 255 is not a real table")
        if (self.exec or self.force) and not self.commit:
            raise ValueError("ct: exec and force need commit")
        if self.nat is not None and self.nat.kind is not None and not self.commit:
            # OVS: OFPBAC_BAD_ARGUMENT; only the un-NAT lookup (plain "nat") may skip it
            raise ValueError("ct: nat(src/dst) needs commit")
        for a in self.exec:
            if not isinstance(a, (Load, SetField)) or a.field not in ("ct_mark", "ct_label"):
                raise ValueError(f"ct exec may only set ct_mark / ct_label, not {a}")
        if self.alg not in _CT_ALGS:
            raise ValueError(f"ct alg must be 0, 21 (ftp) or 69 (tftp), not {self.alg!r}")

    def __str__(self) -> str:
        args: list[str] = []
        if self.commit:
            args.append("commit")
        if self.force:
            args.append("force")
        if self.zone_field is not None:
            args.append(f"zone={_bits_text(self.zone_field, self.zone_ofs, 16)}")
        elif self.zone:
            args.append(f"zone={self.zone}")
        if self.table is not None:
            args.append(f"table={self.table}")
        if self.alg:
            args.append(f"alg={_CT_ALGS[self.alg]}")  # ovs-ofctl takes only the names
        if self.nat is not None:
            args.append(str(self.nat))
        if self.exec:
            args.append("exec(" + ",".join(str(a) for a in self.exec) + ")")
        return "ct(" + ",".join(args) + ")"


@dataclass(frozen=True, slots=True)
class CtClear:
    """Forget the packet's conntrack state (so a later ct() looks it up afresh)."""

    def __str__(self) -> str:
        return "ct_clear"


Action = (Output | Controller | SetField | PushVlan | PopVlan | Group | Resubmit | Move
          | DecTtl | Load | Conjunction | SetQueue | Ct | CtClear)
ACTION_TYPES: tuple[type, ...] = (Output, Controller, SetField, PushVlan, PopVlan, Group,
                                  Resubmit, Move, DecTtl, Load, Conjunction, SetQueue, Ct,
                                  CtClear)


@dataclass(frozen=True, slots=True)
class OfMeter:
    """An OpenFlow 1.3 meter with one drop band: ``rate`` packets/s (``unit`` "pktps") or
    kbit/s ("kbps"), ``burst`` in the same unit (0: the switch's default)."""

    meter_id: int
    rate: int
    burst: int = 0
    unit: Literal["pktps", "kbps"] = "pktps"

    def __post_init__(self) -> None:
        if not 1 <= self.meter_id <= 0xFFFF0000:
            raise ValueError(f"meter id must be 1..0xffff0000, got {self.meter_id!r}")
        _check_range("meter rate", self.rate, 32)
        _check_range("meter burst", self.burst, 32)
        if self.rate == 0:
            raise ValueError("meter rate must be > 0")
        if self.unit not in ("pktps", "kbps"):
            raise ValueError(f"meter unit must be pktps or kbps, not {self.unit!r}")

    def __str__(self) -> str:
        burst = f",burst_size={self.burst}" if self.burst else ""
        flags = "burst," if self.burst else ""
        return (f"meter={self.meter_id},{self.unit},{flags}stats,"
                f"bands=type=drop,rate={self.rate}{burst}")


# ---- the flow -----------------------------------------------------------------------------
def _check_range(what: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise ValueError(f"{what} must be an unsigned {bits}-bit int, got {value!r}")


@dataclass(frozen=True, slots=True)
class OfFlow:
    """One OpenFlow 1.3 flow entry (only wire-format ranges are checked here; semantic
    errors such as a goto to an earlier table are OVS's to report)."""

    table: int
    priority: int
    match: Match
    actions: tuple[Action, ...] = ()
    goto: int | None = None
    write_metadata: tuple[int, int] | None = None  # (value, mask)
    meter: int | None = None  # OpenFlow 1.3 meter instruction (meter id)
    cookie: int = 0
    idle_timeout: int = 0
    hard_timeout: int = 0
    _hash: int = field(default=0, init=False, repr=False, compare=False)
    # interned id of flow_shape(self): the encoder's template key
    shape: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_range("table", self.table, 8)
        if self.table == 0xFF:
            raise ValueError("table 255 is not a real table")
        _check_range("priority", self.priority, 16)
        _check_range("cookie", self.cookie, 64)
        _check_range("idle_timeout", self.idle_timeout, 16)
        _check_range("hard_timeout", self.hard_timeout, 16)
        if not isinstance(self.match, tuple):
            raise ValueError(f"match must be built by match(), got {self.match!r}")
        if not isinstance(self.actions, tuple):
            object.__setattr__(self, "actions", tuple(self.actions))
        for action in self.actions:
            if not isinstance(action, ACTION_TYPES):
                raise ValueError(f"not an action: {action!r}")
        if self.goto is not None:
            _check_range("goto", self.goto, 8)
        if self.meter is not None and not 1 <= self.meter <= 0xFFFF0000:
            raise ValueError(f"meter id must be 1..0xffff0000, got {self.meter!r}")
        if self.write_metadata is not None:
            value, mask = self.write_metadata
            _check_range("write_metadata value", value, 64)
            _check_range("write_metadata mask", mask, 64)
        object.__setattr__(self, "_hash", hash((self.table, self.priority, self.match,
                                                self.actions, self.goto,
                                                self.write_metadata, self.meter, self.cookie,
                                                self.idle_timeout, self.hard_timeout)))
        object.__setattr__(self, "shape", shape_id(flow_shape(self)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def key(self) -> tuple[int, int, Match]:
        """Identity for strict modify/delete: same key + other actions = a modify."""
        return (self.table, self.priority, self.match)

    def __str__(self) -> str:
        parts = [f"table={self.table}", f"priority={self.priority}"]
        if self.cookie:
            parts.append(f"cookie={self.cookie:#x}")
        if self.idle_timeout:
            parts.append(f"idle_timeout={self.idle_timeout}")
        if self.hard_timeout:
            parts.append(f"hard_timeout={self.hard_timeout}")
        if self.idle_timeout or self.hard_timeout:
            parts.append("send_flow_rem")  # the encoder asks OVS to report expiry
        parts += [match_text(e) for e in self.match]
        acts = [] if self.meter is None else [f"meter:{self.meter}"]
        acts += [str(a) for a in self.actions]
        if self.write_metadata is not None:
            acts.append(f"write_metadata:{self.write_metadata[0]:#x}/"
                        f"{self.write_metadata[1]:#x}")
        if self.goto is not None:
            acts.append(f"goto_table:{self.goto}")
        return ",".join(parts) + ",actions=" + (",".join(acts) if acts else "drop")


def _nat_shape(nat: Nat | None) -> object:
    if nat is None:
        return None
    return (nat.version, nat.ip_max is not None, nat.port_min is not None,
            nat.port_max is not None)


def action_shape(action: Action) -> object:
    """What fixes an action's wire layout: its type, the field of a set_field / load, all of
    a move (its fields and width are encoded as constants); of a ct: its flags, zone source
    field, alg, which NAT range parts are present and the shapes of its exec actions (zone,
    table, NAT flags/addresses/ports and exec values are per-flow values)."""
    if type(action) is SetField:
        return action.field
    if type(action) is Move:
        return action
    if type(action) is Load:
        return (Load, action.field)
    if type(action) is Ct:
        return (Ct, action.commit, action.force, action.zone_field, action.alg,
                _nat_shape(action.nat), tuple([action_shape(a) for a in action.exec]))
    return type(action)


def flow_shape(flow: OfFlow) -> tuple[object, ...]:
    """The wire layout of a flow-mod apart from values: match field names and mask
    presence, action shapes, which instructions exist. Encoder templates are per shape."""
    return (tuple([(name, mask is None) for name, _v, mask in flow.match]),
            tuple([action_shape(a) for a in flow.actions]),
            flow.goto is None, flow.write_metadata is None, flow.meter is None)


_SHAPE_IDS: dict[tuple[object, ...], int] = {}
_NEXT_SHAPE_ID = itertools.count(1)


def shape_id(shape: tuple[object, ...]) -> int:
    """A small int naming ``shape`` (interned: equal shapes, equal ids; cheap to hash)."""
    found = _SHAPE_IDS.get(shape)
    if found is None:
        found = _SHAPE_IDS.setdefault(shape, next(_NEXT_SHAPE_ID))
    return found


def _value_text(spec: FieldSpec, value: MatchValue) -> str:
    if isinstance(value, int) and spec.hex:
        return f"{value:#x}"
    return str(value)


def match_text(entry: MatchEntry) -> str:
    """One match entry in ovs-ofctl syntax, e.g. ``reg6=0x5/0xff``."""
    name, value, mask = entry
    spec = FIELDS[name]
    text = f"{spec.ofctl}={_value_text(spec, value)}"
    if mask is not None:
        text += f"/{_value_text(spec, mask)}"
    return text
