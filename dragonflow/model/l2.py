"""L2 tables of the NB model: chassis, network, subnet and port (with their nested records)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from dragonflow.model.base import Lookup, NbObject, Record, dedupe, fetch
from dragonflow.model.fields import (
    BOOL,
    CIDR,
    ID,
    ID_OR_EMPTY,
    IDS,
    IP,
    MAC,
    NAME,
    OPT_ID,
    OPT_IP,
    UNIQUE_KEY,
    Cidr,
    Ident,
    Int,
    Invalid,
    IPAddress,
    IPNetwork,
    Nested,
    OneOf,
    Opt,
    PairsOf,
    Str,
    TupleOf,
    fld,
    host_address_problem,
)

TUNNEL_TYPES = ("vxlan", "geneve", "gre")
NETWORK_TYPES = (*TUNNEL_TYPES, "vlan", "flat", "local")
SEGMENTATION_RANGES = {
    "vxlan": (1, 2**24 - 1),
    "geneve": (1, 2**24 - 1),
    "gre": (1, 2**32 - 1),
    "vlan": (1, 4094),
}
IPV6_MODES = ("slaac", "dhcpv6-stateful", "dhcpv6-stateless")
PORT_STATUSES = ("DOWN", "ACTIVE", "BUILD", "ERROR")
ROUTER_OWNER_PREFIX = "network:router"  # Neutron device_owner of router ports


@dataclass(frozen=True, kw_only=True, slots=True)
class Chassis(NbObject):
    """A compute node running a local controller (a global object: topic is "")."""

    TABLE: ClassVar[str] = "chassis"

    ip: IPAddress = fld(IP)  # tunnel endpoint
    tunnel_types: tuple[str, ...] = fld(TupleOf(OneOf(*TUNNEL_TYPES), unique=True,
                                                non_empty=True))
    external_host_ip: IPAddress | None = fld(OPT_IP, None)
    bridge_mappings: tuple[tuple[str, str], ...] = fld(PairsOf(Ident(), Ident()), ())
    gateway: bool = fld(BOOL, False)  # may host routers' external gateways (SNAT)

    def _check(self) -> None:
        if self.topic:
            raise Invalid("topic", f"must be empty for chassis (a global object), got "
                                   f"{self.topic!r}")

    def bridge_for(self, physical_network: str) -> str | None:
        return dict(self.bridge_mappings).get(physical_network)


@dataclass(frozen=True, kw_only=True, slots=True)
class Network(NbObject):
    TABLE: ClassVar[str] = "network"
    UNIQUE_KEY_NS: ClassVar[str | None] = "network"

    network_type: str = fld(OneOf(*NETWORK_TYPES))
    segmentation_id: int | None = fld(Opt(Int(1, 2**32 - 1)), None)
    physical_network: str | None = fld(OPT_ID, None)
    mtu: int = fld(Int(68, 65535), 1450)
    external: bool = fld(BOOL, False)
    qos_policy_id: str | None = fld(OPT_ID, None)
    unique_key: int = fld(UNIQUE_KEY, 0)

    def _check(self) -> None:
        kind, seg = self.network_type, self.segmentation_id
        if kind in SEGMENTATION_RANGES:
            lo, hi = SEGMENTATION_RANGES[kind]
            if seg is None:
                raise Invalid("segmentation_id", f"required for network_type {kind!r}")
            if not lo <= seg <= hi:
                raise Invalid("segmentation_id", f"{seg} is out of range {lo}..{hi} for "
                                                 f"network_type {kind!r}")
        elif seg is not None:
            raise Invalid("segmentation_id", f"must be null for network_type {kind!r}")
        if kind in ("vlan", "flat"):
            if self.physical_network is None:
                raise Invalid("physical_network", f"required for network_type {kind!r}")
        elif self.physical_network is not None:
            raise Invalid("physical_network", f"must be null for network_type {kind!r}")

    def references(self) -> list[tuple[str, str, str]]:
        if self.qos_policy_id is None:
            return []
        return [("qospolicy", self.qos_policy_id, "qos_policy_id")]

    def index_entries(self) -> list[tuple[str, str]]:
        return [] if self.qos_policy_id is None else [("qos_policy_id", self.qos_policy_id)]

    def claims(self) -> list[tuple[str, str]]:
        """A physical network carries one flat network and one network per VLAN id (as
        Neutron allocates them): two would be one wire."""
        if self.network_type == "flat":
            return [(f"segment/{self.physical_network}/flat", "physical_network")]
        if self.network_type == "vlan":
            return [(f"segment/{self.physical_network}/vlan/{self.segmentation_id}",
                     "segmentation_id")]
        return []


@dataclass(frozen=True, kw_only=True, slots=True)
class HostRoute(Record):
    TABLE: ClassVar[str] = "host_route"

    destination: IPNetwork = fld(CIDR)
    nexthop: IPAddress = fld(IP)

    def _check(self) -> None:
        if self.nexthop.version != self.destination.version:
            raise Invalid("nexthop", f"{self.nexthop} is IPv{self.nexthop.version} but the "
                                     f"destination {self.destination} is "
                                     f"IPv{self.destination.version}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Subnet(NbObject):
    TABLE: ClassVar[str] = "subnet"
    DERIVED: ClassVar[tuple[str, ...]] = ("ip_version",)

    network_id: str = fld(ID)
    cidr: IPNetwork = fld(CIDR)
    gateway_ip: IPAddress | None = fld(OPT_IP, None)
    enable_dhcp: bool = fld(BOOL, True)
    dhcp_ip: IPAddress | None = fld(OPT_IP, None)
    dns_nameservers: tuple[IPAddress, ...] = fld(TupleOf(IP, unique=True), ())
    host_routes: tuple[HostRoute, ...] = fld(TupleOf(Nested(HostRoute), unique=True), ())
    ipv6_ra_mode: str | None = fld(Opt(OneOf(*IPV6_MODES)), None)
    ipv6_address_mode: str | None = fld(Opt(OneOf(*IPV6_MODES)), None)

    @property
    def ip_version(self) -> int:
        return self.cidr.version

    def _check(self) -> None:
        for name in ("gateway_ip", "dhcp_ip"):
            ip = getattr(self, name)
            if ip is None or (name == "gateway_ip" and ip.version == 6 and ip.is_link_local):
                continue  # an IPv6 link-local gateway (fe80::1) is valid, as Neutron allows
            # the IPv6 subnet-router anycast address (the network address) may be the gateway
            problem = host_address_problem(self.cidr, ip,
                                           allow_network=name == "gateway_ip" and ip.version == 6)
            if problem:
                raise Invalid(name, problem)
        for i, route in enumerate(self.host_routes):
            if route.destination.version != self.ip_version:
                raise Invalid(f"host_routes[{i}].destination",
                              f"IPv{route.destination.version} route in an "
                              f"IPv{self.ip_version} subnet")
        ra, addr = self.ipv6_ra_mode, self.ipv6_address_mode
        if self.ip_version == 4:
            for name, mode in (("ipv6_ra_mode", ra), ("ipv6_address_mode", addr)):
                if mode is not None:
                    raise Invalid(name, f"must be null for an IPv4 subnet, got {mode!r}")
        elif ra is not None and addr is not None and ra != addr:
            raise Invalid("ipv6_address_mode",
                          f"{addr!r} differs from ipv6_ra_mode {ra!r}; when both are set "
                          "they must be equal")

    def references(self) -> list[tuple[str, str, str]]:
        return [("network", self.network_id, "network_id")]

    def index_entries(self) -> list[tuple[str, str]]:
        return [("network_id", self.network_id)]


@dataclass(frozen=True, kw_only=True, slots=True)
class FixedIp(Record):
    TABLE: ClassVar[str] = "fixed_ip"

    subnet_id: str = fld(ID)
    ip_address: IPAddress = fld(IP)


@dataclass(frozen=True, kw_only=True, slots=True)
class Binding(Record):
    """Where a port lives: a chassis (compute node) or a VTEP switch."""

    TABLE: ClassVar[str] = "binding"

    kind: str = fld(OneOf("chassis", "vtep"))
    chassis_id: str = fld(ID)


@dataclass(frozen=True, kw_only=True, slots=True)
class AddressPair(Record):
    """An allowed address pair: extra source IP (or CIDR) and optionally MAC for port
    security. A plain IP is stored as a /32 (/128) network."""

    TABLE: ClassVar[str] = "address_pair"

    ip_address: IPNetwork = fld(Cidr(bare_ip=True))
    mac: str | None = fld(Opt(MAC), None)


@dataclass(frozen=True, kw_only=True, slots=True)
class DhcpOpt(Record):
    TABLE: ClassVar[str] = "dhcp_opt"

    opt_name: str = fld(Ident())
    opt_value: str = fld(Str())
    ip_version: int = fld(OneOf(4, 6), 4)


@dataclass(frozen=True, kw_only=True, slots=True)
class Port(NbObject):
    TABLE: ClassVar[str] = "port"
    UNIQUE_KEY_NS: ClassVar[str | None] = "port"

    network_id: str = fld(ID)
    mac: str = fld(MAC)
    fixed_ips: tuple[FixedIp, ...] = fld(TupleOf(Nested(FixedIp)), ())
    admin_state_up: bool = fld(BOOL, True)
    binding: Binding | None = fld(Opt(Nested(Binding)), None)
    device_owner: str = fld(NAME, "")
    device_id: str = fld(ID_OR_EMPTY, "")
    security_groups: tuple[str, ...] = fld(IDS, ())
    port_security_enabled: bool = fld(BOOL, True)
    allowed_address_pairs: tuple[AddressPair, ...] = fld(
        TupleOf(Nested(AddressPair), unique=True), ())
    extra_dhcp_opts: tuple[DhcpOpt, ...] = fld(TupleOf(Nested(DhcpOpt)), ())
    qos_policy_id: str | None = fld(OPT_ID, None)
    status: str = fld(OneOf(*PORT_STATUSES), "DOWN")
    unique_key: int = fld(UNIQUE_KEY, 0)

    def _check(self) -> None:
        seen: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for i, fip in enumerate(self.fixed_ips):
            if fip.ip_address in seen:
                raise Invalid(f"fixed_ips[{i}].ip_address",
                              f"duplicate IP {fip.ip_address} in fixed_ips")
            seen.add(fip.ip_address)
        opts: set[tuple[str, int]] = set()
        for i, opt in enumerate(self.extra_dhcp_opts):
            if (opt.opt_name, opt.ip_version) in opts:
                raise Invalid(f"extra_dhcp_opts[{i}].opt_name",
                              f"duplicate option {opt.opt_name!r} for IPv{opt.ip_version}")
            opts.add((opt.opt_name, opt.ip_version))
        if not self.port_security_enabled:
            for name in ("security_groups", "allowed_address_pairs"):
                if getattr(self, name):
                    raise Invalid(name, "must be empty when port_security_enabled is false")

    @property
    def is_router_port(self) -> bool:
        return self.device_owner.startswith(ROUTER_OWNER_PREFIX)

    def ips(self) -> tuple[IPAddress, ...]:
        return tuple(f.ip_address for f in self.fixed_ips)

    def references(self) -> list[tuple[str, str, str]]:
        refs = [("network", self.network_id, "network_id")]
        refs += [("subnet", f.subnet_id, f"fixed_ips[{i}].subnet_id")
                 for i, f in enumerate(self.fixed_ips)]
        refs += [("securitygroup", sg, f"security_groups[{i}]")
                 for i, sg in enumerate(self.security_groups)]
        if self.qos_policy_id is not None:
            refs.append(("qospolicy", self.qos_policy_id, "qos_policy_id"))
        return refs

    def index_entries(self) -> list[tuple[str, str]]:
        out = [("network_id", self.network_id)]
        out += [("subnet_id", f.subnet_id) for f in self.fixed_ips]
        out += [("security_group", sg) for sg in self.security_groups]
        if self.binding is not None:
            out.append(("chassis", self.binding.chassis_id))
        if self.qos_policy_id is not None:
            out.append(("qos_policy_id", self.qos_policy_id))
        if self.device_id:
            out.append(("device_id", self.device_id))
        return dedupe(out)

    def claims(self) -> list[tuple[str, str]]:
        out = [(f"ip/{f.subnet_id}/{f.ip_address}", f"fixed_ips[{i}].ip_address")
               for i, f in enumerate(self.fixed_ips)]
        out.append((f"mac/{self.network_id}/{self.mac}", "mac"))
        return out

    def _check_refs(self, lookup: Lookup) -> None:
        for i, fip in enumerate(self.fixed_ips):
            path = f"fixed_ips[{i}]"
            subnet = fetch(lookup, Subnet, fip.subnet_id, f"{path}.subnet_id")
            if subnet.network_id != self.network_id:
                raise Invalid(f"{path}.subnet_id",
                              f"subnet {subnet.id!r} belongs to network {subnet.network_id!r},"
                              f" not to the port's network {self.network_id!r}")
            problem = host_address_problem(subnet.cidr, fip.ip_address,
                                           allow_network=self.is_router_port)
            if problem:
                raise Invalid(f"{path}.ip_address", f"{problem} (subnet {subnet.id!r})")
