"""L3 tables of the NB model: router (with its ports, routes and gateway) and floating IP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Self

from dragonflow.model.base import Lookup, NbObject, Record, alloc_key, dedupe, fetch
from dragonflow.model.fields import (
    BOOL,
    ID,
    IDS,
    IP,
    MAC,
    OPT_ID,
    OPT_IP,
    UNIQUE_KEY,
    IfaceAddr,
    Invalid,
    IPAddress,
    IPInterface,
    Nested,
    OneOf,
    Opt,
    TupleOf,
    fld,
)
from dragonflow.model.l2 import HostRoute, Network, Port, Subnet

PORT_KEY_NS = "port"  # router ports are logical ports too: they share the port key space
FLOATINGIP_STATUSES = ("DOWN", "ACTIVE", "ERROR")


@dataclass(frozen=True, kw_only=True, slots=True)
class RouterPort(Record):
    """A router interface on one network, with its addresses ("10.0.0.1/24")."""

    TABLE: ClassVar[str] = "router_port"

    id: str = fld(ID)
    mac: str = fld(MAC)
    network_id: str = fld(ID)
    cidrs: tuple[IPInterface, ...] = fld(TupleOf(IfaceAddr(), unique=True, non_empty=True))
    subnet_ids: tuple[str, ...] = fld(IDS, ())
    unique_key: int = fld(UNIQUE_KEY, 0)


@dataclass(frozen=True, kw_only=True, slots=True)
class Route(HostRoute):
    """A router's extra route: the same record as a subnet's host route."""

    TABLE: ClassVar[str] = "route"


@dataclass(frozen=True, kw_only=True, slots=True)
class Gateway(Record):
    """The router's external gateway: its address on an external network."""

    TABLE: ClassVar[str] = "gateway"

    network_id: str = fld(ID)
    ip_address: IPAddress = fld(IP)
    enable_snat: bool = fld(BOOL, True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Router(NbObject):
    TABLE: ClassVar[str] = "router"
    UNIQUE_KEY_NS: ClassVar[str | None] = "router"

    ports: tuple[RouterPort, ...] = fld(TupleOf(Nested(RouterPort)), ())
    routes: tuple[Route, ...] = fld(TupleOf(Nested(Route), unique=True), ())
    gateway: Gateway | None = fld(Opt(Nested(Gateway)), None)
    distributed: bool = fld(BOOL, True)
    unique_key: int = fld(UNIQUE_KEY, 0)

    def _check(self) -> None:
        ids: set[str] = set()
        macs: set[tuple[str, str]] = set()
        seen: list[tuple[IPInterface, str]] = []
        for i, port in enumerate(self.ports):
            if port.id in ids:
                raise Invalid(f"ports[{i}].id", f"duplicate router port id {port.id!r}")
            ids.add(port.id)
            if (port.network_id, port.mac) in macs:
                raise Invalid(f"ports[{i}].mac", f"duplicate MAC {port.mac} on network "
                                                 f"{port.network_id!r}")
            macs.add((port.network_id, port.mac))
            for j, iface in enumerate(port.cidrs):
                for other, owner in seen:
                    if (other.version == iface.version
                            and other.network.overlaps(iface.network)):
                        raise Invalid(f"ports[{i}].cidrs[{j}]",
                                      f"{iface} overlaps {other} of router port {owner!r}")
                seen.append((iface, port.id))
        for i, route in enumerate(self.routes):
            if not any(route.nexthop in iface.network for iface, _ in seen):
                raise Invalid(f"routes[{i}].nexthop",
                              f"{route.nexthop} is not inside any router port's CIDR")

    def port(self, port_id: str) -> RouterPort | None:
        return next((p for p in self.ports if p.id == port_id), None)

    def references(self) -> list[tuple[str, str, str]]:
        refs = []
        for i, p in enumerate(self.ports):
            refs.append(("network", p.network_id, f"ports[{i}].network_id"))
            refs += [("subnet", s, f"ports[{i}].subnet_ids[{j}]")
                     for j, s in enumerate(p.subnet_ids)]
        if self.gateway is not None:
            refs.append(("network", self.gateway.network_id, "gateway.network_id"))
        return refs

    def index_entries(self) -> list[tuple[str, str]]:
        out = [("network_id", p.network_id) for p in self.ports]
        if self.gateway is not None:
            out.append(("network_id", self.gateway.network_id))
        out += [("subnet_id", s) for p in self.ports for s in p.subnet_ids]
        return dedupe(out)

    def claims(self) -> list[tuple[str, str]]:
        return [(f"mac/{p.network_id}/{p.mac}", f"ports[{i}].mac")
                for i, p in enumerate(self.ports)]

    def _check_refs(self, lookup: Lookup) -> None:
        for i, p in enumerate(self.ports):
            for j, sid in enumerate(p.subnet_ids):
                subnet = fetch(lookup, Subnet, sid, f"ports[{i}].subnet_ids[{j}]")
                if subnet.network_id != p.network_id:
                    raise Invalid(f"ports[{i}].subnet_ids[{j}]",
                                  f"subnet {sid!r} belongs to network {subnet.network_id!r}, "
                                  f"not to the router port's network {p.network_id!r}")
        if self.gateway is not None:
            net = fetch(lookup, Network, self.gateway.network_id, "gateway.network_id")
            if not net.external:
                raise Invalid("gateway.network_id",
                              f"network {net.id!r} is not external; a router gateway needs an "
                              "external network")

    # --- unique keys: the router's own ("router") and each port's ("port") ------------------
    def assign_unique_keys(self, alloc: Callable[[str], int]) -> Self:
        ports = tuple(p if p.unique_key else p.replace(unique_key=alloc_key(alloc, PORT_KEY_NS))
                      for p in self.ports)
        key = self.unique_key or alloc_key(alloc, "router")
        if key == self.unique_key and ports == self.ports:
            return self
        return self.replace(unique_key=key, ports=ports)

    def carry_unique_keys(self, old: Self) -> Self:
        if type(old) is not type(self):
            raise TypeError(f"cannot carry keys from {type(old).__name__} to Router")
        old_keys = {p.id: p.unique_key for p in old.ports if p.unique_key}
        ports = tuple(p.replace(unique_key=old_keys[p.id])
                      if p.id in old_keys and old_keys[p.id] != p.unique_key else p
                      for p in self.ports)
        key = old.unique_key or self.unique_key
        if key == self.unique_key and ports == self.ports:
            return self
        return self.replace(unique_key=key, ports=ports)

    def unique_keys(self) -> list[tuple[str, int]]:
        out = [("router", self.unique_key)] if self.unique_key else []
        out += [(PORT_KEY_NS, p.unique_key) for p in self.ports if p.unique_key]
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class FloatingIP(NbObject):
    TABLE: ClassVar[str] = "floatingip"

    floating_ip_address: IPAddress = fld(IP)
    floating_network_id: str = fld(ID)
    port_id: str | None = fld(OPT_ID, None)
    fixed_ip_address: IPAddress | None = fld(OPT_IP, None)
    router_id: str | None = fld(OPT_ID, None)
    # Written by the local controller of the chassis hosting port_id: ACTIVE once its NAT
    # flows are installed, DOWN when they no longer are; Neutron's status follows it.
    status: str = fld(OneOf(*FLOATINGIP_STATUSES), "DOWN")

    def _check(self) -> None:
        fixed = self.fixed_ip_address
        if fixed is None:
            return
        if self.port_id is None:
            raise Invalid("fixed_ip_address", "requires port_id (the port that owns it)")
        if fixed.version != self.floating_ip_address.version:
            raise Invalid("fixed_ip_address",
                          f"{fixed} is IPv{fixed.version} but floating_ip_address "
                          f"{self.floating_ip_address} is "
                          f"IPv{self.floating_ip_address.version}")

    def references(self) -> list[tuple[str, str, str]]:
        refs = [("network", self.floating_network_id, "floating_network_id")]
        if self.port_id is not None:
            refs.append(("port", self.port_id, "port_id"))
        if self.router_id is not None:
            refs.append(("router", self.router_id, "router_id"))
        return refs

    def index_entries(self) -> list[tuple[str, str]]:
        out = [("floating_network_id", self.floating_network_id)]
        if self.port_id is not None:
            out.append(("port_id", self.port_id))
        if self.router_id is not None:
            out.append(("router_id", self.router_id))
        return out

    def claims(self) -> list[tuple[str, str]]:
        return [(f"fip/{self.floating_network_id}/{self.floating_ip_address}",
                 "floating_ip_address")]

    def _check_refs(self, lookup: Lookup) -> None:
        net = fetch(lookup, Network, self.floating_network_id, "floating_network_id")
        if not net.external:
            raise Invalid("floating_network_id",
                          f"network {net.id!r} is not external; floating IPs need an external "
                          "network")
        if self.port_id is None:
            return
        port = fetch(lookup, Port, self.port_id, "port_id")
        ips = port.ips()
        if self.fixed_ip_address is None:
            if len(ips) != 1:
                raise Invalid("fixed_ip_address",
                              f"required: port {port.id!r} has {len(ips)} fixed IPs, "
                              "so the one to map must be named")
        elif self.fixed_ip_address not in ips:
            have = ", ".join(str(ip) for ip in ips) or "none"
            raise Invalid("fixed_ip_address",
                          f"{self.fixed_ip_address} is not a fixed IP of port {port.id!r} "
                          f"(it has {have})")

    def mapped_ip(self, port: Port) -> IPAddress | None:
        """The fixed IP this floating IP maps to, given its port."""
        if self.fixed_ip_address is not None:
            return self.fixed_ip_address
        ips = port.ips()
        return ips[0] if len(ips) == 1 else None
