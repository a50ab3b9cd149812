"""Security groups of the NB model: a group is a tuple of rules (Neutron semantics); an
address group is a named set of networks a rule may name as its remote side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from dragonflow.model.base import NbObject, Record, dedupe
from dragonflow.model.fields import (
    BOOL,
    ID,
    OPT_ID,
    Cidr,
    Codec,
    Int,
    Invalid,
    IPNetwork,
    Nested,
    OneOf,
    Opt,
    TupleOf,
    fld,
)

PORT_PROTOCOLS = ("tcp", "udp", "sctp")  # protocols whose rules may carry a port range
ICMP_PROTOCOLS = ("icmp", "icmpv6")  # port_range_min/max are ICMP type/code
PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
_NAMES = {n: name for name, n in PROTOCOL_NUMBERS.items()}
_ALIASES = {"ipv6-icmp": "icmpv6"}
ETHERTYPE_VERSION = {"IPv4": 4, "IPv6": 6}


class Protocol(Codec):
    """None (any), a name (tcp|udp|sctp|icmp|icmpv6) or an IP protocol number 0..255.
    Numbers (and numeric strings) with a name are stored as the name."""

    def norm(self, value: Any) -> str | int | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = _ALIASES.get(value.lower(), value.lower())
            if value in PROTOCOL_NUMBERS:
                return value
            if not (value.isascii() and value.isdigit()):
                raise Invalid("", f"{value!r} is not one of {'|'.join(PROTOCOL_NUMBERS)} "
                                  "or a protocol number 0..255")
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid("", f"must be a protocol name or number, got {value!r}")
        if not 0 <= value <= 255:
            raise Invalid("", f"protocol number {value} is out of range 0..255")
        return _NAMES.get(value, value)


PORT_NUMBER = Opt(Int(0, 65535))
# a rule's remote side: at most one of these is set (none: any address)
REMOTE_FIELDS = ("remote_ip_prefix", "remote_group_id", "remote_address_group_id")


@dataclass(frozen=True, kw_only=True, slots=True)
class SecurityGroupRule(Record):
    TABLE: ClassVar[str] = "securitygroup_rule"

    id: str = fld(ID)
    direction: str = fld(OneOf("ingress", "egress"))
    ethertype: str = fld(OneOf("IPv4", "IPv6"), "IPv4")
    protocol: str | int | None = fld(Protocol(), None)
    port_range_min: int | None = fld(PORT_NUMBER, None)
    port_range_max: int | None = fld(PORT_NUMBER, None)
    remote_ip_prefix: IPNetwork | None = fld(Opt(Cidr(bare_ip=True)), None)
    remote_group_id: str | None = fld(OPT_ID, None)
    remote_address_group_id: str | None = fld(OPT_ID, None)

    @property
    def ip_version(self) -> int:
        return ETHERTYPE_VERSION[self.ethertype]

    def _check(self) -> None:
        version = self.ip_version
        if self.protocol == "icmp" and version == 6:
            object.__setattr__(self, "protocol", "icmpv6")  # Neutron's legacy spelling
        if self.protocol == "icmpv6" and version == 4:
            raise Invalid("protocol", "icmpv6 needs ethertype IPv6")
        self._check_ports()
        prefix = self.remote_ip_prefix
        if prefix is not None and prefix.version != version:
            raise Invalid("remote_ip_prefix", f"{prefix} is IPv{prefix.version} but ethertype "
                                              f"is {self.ethertype}")
        remotes = [name for name in REMOTE_FIELDS if getattr(self, name) is not None]
        if len(remotes) > 1:
            raise Invalid(remotes[1], f"cannot be combined with {remotes[0]} (a rule has at "
                                      f"most one of {', '.join(REMOTE_FIELDS)})")

    def _check_ports(self) -> None:
        lo, hi, proto = self.port_range_min, self.port_range_max, self.protocol
        if lo is None and hi is None:
            return
        if proto in PORT_PROTOCOLS:
            if lo is None:
                raise Invalid("port_range_min", "required when port_range_max is set")
            if hi is None:
                raise Invalid("port_range_max", "required when port_range_min is set")
            if lo > hi:
                raise Invalid("port_range_min", f"{lo} is greater than port_range_max {hi}")
        elif proto in ICMP_PROTOCOLS:
            for name, value, what in (("port_range_min", lo, "type"),
                                      ("port_range_max", hi, "code")):
                if value is not None and value > 255:
                    raise Invalid(name, f"ICMP {what} {value} is out of range 0..255")
            if lo is None:
                raise Invalid("port_range_max", "an ICMP code needs an ICMP type in "
                                                "port_range_min")
        else:
            name = "port_range_min" if lo is not None else "port_range_max"
            raise Invalid(name, f"port ranges need protocol tcp, udp or sctp (or icmp type/"
                                f"code), not {proto!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class SecurityGroup(NbObject):
    TABLE: ClassVar[str] = "securitygroup"

    rules: tuple[SecurityGroupRule, ...] = fld(TupleOf(Nested(SecurityGroupRule)), ())
    # Neutron's stateful-security-group: False -> no connection tracking, every packet in
    # either direction needs a rule (replies too)
    stateful: bool = fld(BOOL, True)

    def _check(self) -> None:
        ids: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.id in ids:
                raise Invalid(f"rules[{i}].id", f"duplicate rule id {rule.id!r}")
            ids.add(rule.id)

    def remote_groups(self) -> list[str]:
        """Other groups whose members this group's rules refer to (not itself)."""
        return list(dict.fromkeys(
            r.remote_group_id for r in self.rules
            if r.remote_group_id is not None and r.remote_group_id != self.id))

    def address_groups(self) -> list[str]:
        """The address groups this group's rules name, in rule order."""
        return list(dict.fromkeys(
            r.remote_address_group_id for r in self.rules
            if r.remote_address_group_id is not None))

    def references(self) -> list[tuple[str, str, str]]:
        refs = []
        for i, r in enumerate(self.rules):
            if r.remote_group_id is not None and r.remote_group_id != self.id:
                refs.append(("securitygroup", r.remote_group_id, f"rules[{i}].remote_group_id"))
            if r.remote_address_group_id is not None:
                refs.append(("addressgroup", r.remote_address_group_id,
                             f"rules[{i}].remote_address_group_id"))
        return refs

    def index_entries(self) -> list[tuple[str, str]]:
        return dedupe([*(("remote_group", g) for g in self.remote_groups()),
                       *(("remote_address_group", a) for a in self.address_groups())])


@dataclass(frozen=True, kw_only=True, slots=True)
class AddressGroup(NbObject):
    """Neutron's address group: networks (a bare address is a /32 or /128) that security
    group rules name with ``remote_address_group_id``. Kept sorted (IPv4 first), no
    duplicates: Neutron stores them as a set."""

    TABLE: ClassVar[str] = "addressgroup"

    addresses: tuple[IPNetwork, ...] = fld(TupleOf(Cidr(bare_ip=True), unique=True), ())

    def _check(self) -> None:
        ordered = tuple(sorted(self.addresses, key=lambda n: (n.version, n)))
        if ordered != self.addresses:
            object.__setattr__(self, "addresses", ordered)

    def networks(self, version: int) -> list[IPNetwork]:
        """The addresses of IP ``version`` (4 or 6)."""
        return [n for n in self.addresses if n.version == version]
