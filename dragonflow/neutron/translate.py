"""Neutron API dicts -> typed NB objects. Pure: no Neutron import, no I/O.

Every function takes the dict a Neutron plugin returns (``get_port`` and friends, or an ML2
context's ``current``) and returns the NB object whose ``version`` is :func:`version_of`
Neutron's ``revision_number``: revision + 1, since NB versions start at 1 and Neutron
revisions at 0 (0 when the revisions plugin is not loaded: no ordering known). Input the NB
model cannot express raises :class:`Untranslatable` or the model's ``ValidationError``,
naming the field.

What is deliberately not carried over (phase 1), each a known gap:
* QoS policy ids (QoS policies are not written to the NB yet);
* extra routes whose next hop is not inside one of the router's interface subnets (the NB
  router only routes via its interfaces; skipped with a warning).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from dragonflow.model import (
    AddressGroup,
    AddressPair,
    Binding,
    DhcpOpt,
    FixedIp,
    FloatingIP,
    Gateway,
    HostRoute,
    IPInterface,
    NbObject,
    Network,
    Port,
    Route,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)

LOG = logging.getLogger(__name__)

# Router interfaces live inside the NB Router (Router.ports), never as NB Ports.
ROUTER_INTERFACE_OWNERS = frozenset({
    "network:router_interface",
    "network:router_interface_distributed",
    "network:ha_router_replicated_interface",
})
SUPPORTED_NETWORK_TYPES = ("vxlan", "geneve", "gre", "vlan", "flat", "local")
_PROVIDER_KEYS = ("provider:network_type", "provider:physical_network",
                  "provider:segmentation_id")
# Neutron's protocol names (neutron_lib.constants.IP_PROTOCOL_MAP) -> IANA numbers; the NB
# stores tcp/udp/sctp/icmp/icmpv6 by name and every other protocol by number.
IP_PROTOCOLS = {
    "ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "hopopt": 0, "icmp": 1,
    "igmp": 2, "ip": 0, "ipip": 4, "ipv6-encap": 41, "ipv6-frag": 44, "ipv6-icmp": 58,
    "icmpv6": 58, "ipv6-nonxt": 59, "ipv6-opts": 60, "ipv6-route": 43, "ospf": 89,
    "pgm": 113, "rsvp": 46, "sctp": 132, "tcp": 6, "udp": 17, "udplite": 136, "vrrp": 112,
}


class Untranslatable(ValueError):
    """A Neutron object the NB model cannot represent; the message names the field."""

    def __init__(self, kind: str, obj_id: str, field: str, reason: str) -> None:
        super().__init__(f"{kind} {obj_id!r}: field '{field}': {reason}")
        self.kind, self.obj_id, self.field, self.reason = kind, obj_id, field, reason


def version_of(obj: Mapping[str, Any]) -> int:
    """The NB version of a Neutron object: revision_number + 1; 0 if it has none."""
    rev = obj.get("revision_number")
    return rev + 1 if isinstance(rev, int) and not isinstance(rev, bool) and rev >= 0 else 0


def _common(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": obj["id"], "topic": obj.get("project_id") or obj.get("tenant_id") or "",
            "name": obj.get("name") or "", "version": version_of(obj)}


def is_router_interface(port: Mapping[str, Any]) -> bool:
    return (port.get("device_owner") or "") in ROUTER_INTERFACE_OWNERS


# --- L2 ------------------------------------------------------------------------------------
def _segment(net: Mapping[str, Any]) -> Mapping[str, Any]:
    segments = net.get("segments")
    if segments:
        usable = [s for s in segments if s.get("provider:network_type") in
                  SUPPORTED_NETWORK_TYPES]
        if not usable:
            types = [s.get("provider:network_type") for s in segments]
            raise Untranslatable("network", net["id"], "segments",
                                 f"no segment of a supported type (have {types})")
        if len(segments) > 1:
            LOG.warning("network %s has %d segments; the NB keeps only the first supported "
                        "one (%s)", net["id"], len(segments), usable[0])
        return usable[0]
    return {k: net.get(k) for k in _PROVIDER_KEYS}


def network(net: Mapping[str, Any]) -> Network:
    seg = _segment(net)
    kind = seg.get("provider:network_type")
    if kind not in SUPPORTED_NETWORK_TYPES:
        raise Untranslatable("network", net["id"], "provider:network_type",
                             f"{kind!r} is not one of {', '.join(SUPPORTED_NETWORK_TYPES)}")
    fields = _common(net) | {
        "network_type": kind,
        "segmentation_id": seg.get("provider:segmentation_id"),
        "physical_network": seg.get("provider:physical_network"),
        "external": bool(net.get("router:external", False)),
    }
    if net.get("mtu"):
        fields["mtu"] = net["mtu"]
    return Network(**fields)


def subnet(sub: Mapping[str, Any]) -> Subnet:
    return Subnet(**_common(sub),
                  network_id=sub["network_id"],
                  cidr=sub["cidr"],
                  gateway_ip=sub.get("gateway_ip"),
                  enable_dhcp=bool(sub.get("enable_dhcp", True)),
                  dns_nameservers=tuple(sub.get("dns_nameservers") or ()),
                  host_routes=tuple(HostRoute(destination=r["destination"], nexthop=r["nexthop"])
                                    for r in sub.get("host_routes") or ()),
                  ipv6_ra_mode=sub.get("ipv6_ra_mode"),
                  ipv6_address_mode=sub.get("ipv6_address_mode"))


def port(p: Mapping[str, Any]) -> Port | None:
    """The NB Port, or None for a router interface (the NB Router holds those)."""
    if is_router_interface(p):
        return None
    host = p.get("binding:host_id") or ""
    psec = p.get("port_security_enabled", True)
    return Port(**_common(p),
                network_id=p["network_id"],
                mac=p["mac_address"],
                fixed_ips=tuple(FixedIp(subnet_id=f["subnet_id"], ip_address=f["ip_address"])
                                for f in p.get("fixed_ips") or ()),
                admin_state_up=bool(p.get("admin_state_up", True)),
                binding=Binding(kind="chassis", chassis_id=host) if host else None,
                device_owner=p.get("device_owner") or "",
                device_id=p.get("device_id") or "",
                security_groups=tuple(p.get("security_groups") or ()) if psec else (),
                port_security_enabled=bool(psec),
                allowed_address_pairs=tuple(
                    AddressPair(ip_address=a["ip_address"], mac=a.get("mac_address"))
                    for a in p.get("allowed_address_pairs") or ()) if psec else (),
                extra_dhcp_opts=tuple(
                    DhcpOpt(opt_name=o["opt_name"], opt_value=o["opt_value"],
                            ip_version=o.get("ip_version") or 4)
                    for o in p.get("extra_dhcp_opts") or () if o.get("opt_value") is not None))


# --- security groups -----------------------------------------------------------------------
def _protocol(rule: Mapping[str, Any]) -> str | int | None:
    proto = rule.get("protocol")
    if proto is None or isinstance(proto, int):
        return proto
    name = str(proto).lower()
    if name in ("any", ""):
        return None
    if name.isdigit():
        return int(name)
    if name in ("tcp", "udp", "sctp", "icmp", "icmpv6", "ipv6-icmp"):
        return name
    if name in IP_PROTOCOLS:
        return IP_PROTOCOLS[name]
    raise Untranslatable("securitygroup_rule", rule["id"], "protocol",
                         f"unknown protocol {proto!r}")


def sg_rule(rule: Mapping[str, Any]) -> SecurityGroupRule:
    raw = rule.get("normalized_cidr") or rule.get("remote_ip_prefix")
    prefix = None if raw is None else ipaddress.ip_network(raw, strict=False)
    return SecurityGroupRule(id=rule["id"], direction=rule["direction"],
                             ethertype=rule.get("ethertype") or "IPv4",
                             protocol=_protocol(rule),
                             port_range_min=rule.get("port_range_min"),
                             port_range_max=rule.get("port_range_max"),
                             remote_ip_prefix=prefix,
                             remote_group_id=rule.get("remote_group_id"),
                             remote_address_group_id=rule.get("remote_address_group_id"))


def security_group(sg: Mapping[str, Any]) -> SecurityGroup:
    rules = sorted(sg.get("security_group_rules") or (), key=lambda r: r["id"])
    return SecurityGroup(**_common(sg), rules=tuple(sg_rule(r) for r in rules),
                         stateful=sg.get("stateful", True) is not False)


def address_group(ag: Mapping[str, Any]) -> AddressGroup:
    """Neutron stores every address as a CIDR ("10.0.0.5/32"); bare addresses are taken as
    host networks too."""
    return AddressGroup(**_common(ag), addresses=tuple(ag.get("addresses") or ()))


# --- L3 ------------------------------------------------------------------------------------
def _iface_addrs(p: Mapping[str, Any], subnets: Mapping[str, Mapping[str, Any]]
                 ) -> tuple[list[IPInterface], list[str]]:
    cidrs: list[IPInterface] = []
    subnet_ids: list[str] = []
    for f in p.get("fixed_ips") or ():
        sub = subnets.get(f["subnet_id"])
        if sub is None:
            raise Untranslatable("router_port", p["id"], "fixed_ips.subnet_id",
                                 f"subnet {f['subnet_id']!r} not found")
        prefix = ipaddress.ip_network(sub["cidr"]).prefixlen
        cidrs.append(ipaddress.ip_interface(f"{f['ip_address']}/{prefix}"))
        subnet_ids.append(f["subnet_id"])
    return cidrs, list(dict.fromkeys(subnet_ids))


def router(r: Mapping[str, Any], interfaces: Iterable[Mapping[str, Any]],
           subnets: Mapping[str, Mapping[str, Any]]) -> Router:
    """``interfaces``: the router's interface ports; ``subnets``: by id, every subnet they
    have an address on."""
    ports = []
    for p in sorted(interfaces, key=lambda p: p["id"]):
        cidrs, subnet_ids = _iface_addrs(p, subnets)
        if not cidrs:
            LOG.warning("router %s: interface port %s has no fixed IPs; left out", r["id"],
                        p["id"])
            continue
        ports.append(RouterPort(id=p["id"], mac=p["mac_address"], network_id=p["network_id"],
                                cidrs=tuple(cidrs), subnet_ids=tuple(subnet_ids)))
    nets = [c.network for rp in ports for c in rp.cidrs]
    routes = []
    for route in r.get("routes") or ():
        hop = ipaddress.ip_address(route["nexthop"])
        if any(hop in n for n in nets):
            routes.append(Route(destination=route["destination"], nexthop=route["nexthop"]))
        else:
            LOG.warning("router %s: extra route %s via %s is not reachable through an "
                        "interface subnet; left out of the NB", r["id"], route["destination"],
                        route["nexthop"])
    return Router(**_common(r), ports=tuple(ports), routes=tuple(routes),
                  gateway=_gateway(r), distributed=True)


def _gateway(r: Mapping[str, Any]) -> Gateway | None:
    info = r.get("external_gateway_info")
    if not info:
        return None
    ips = [f["ip_address"] for f in info.get("external_fixed_ips") or ()]
    if not ips:
        LOG.warning("router %s: external gateway on %s has no IP address; left out", r["id"],
                    info.get("network_id"))
        return None
    ips.sort(key=lambda ip: ipaddress.ip_address(ip).version)  # IPv4 first
    return Gateway(network_id=info["network_id"], ip_address=ips[0],
                   enable_snat=bool(info.get("enable_snat", True)))


def floatingip(f: Mapping[str, Any]) -> FloatingIP:
    return FloatingIP(**_common(f),
                      floating_ip_address=f["floating_ip_address"],
                      floating_network_id=f["floating_network_id"],
                      port_id=f.get("port_id"),
                      fixed_ip_address=f.get("fixed_ip_address") if f.get("port_id") else None,
                      router_id=f.get("router_id") if f.get("port_id") else None)


# --- comparing with what the NB holds ------------------------------------------------------
def merge(stored: NbObject, new: NbObject) -> NbObject:
    """``new`` with the fields the NB owns taken from ``stored``: the status of a port and of
    a floating IP, written by the local controllers (Neutron's own status follows the NB's,
    never the other way). It is reset to DOWN when what it vouched for changed: a port moved
    to another chassis, a floating IP associated with another port or fixed IP (or none)."""
    if isinstance(new, Port) and isinstance(stored, Port):
        moved = stored.binding != new.binding
        return new.replace(status="DOWN" if moved else stored.status)
    if isinstance(new, FloatingIP) and isinstance(stored, FloatingIP):
        moved = (stored.port_id, stored.fixed_ip_address) != (new.port_id,
                                                              new.fixed_ip_address)
        return new.replace(status="DOWN" if moved else stored.status)
    return new


def same(stored: NbObject, new: NbObject) -> bool:
    """Equal apart from version, the NB-allocated unique keys and the NB-owned status (of a
    port or floating IP: Neutron's dicts never carry it, so comparing it would make every
    ACTIVE object differ from Neutron's)."""
    if type(stored) is not type(new):
        return False
    new = new.replace(version=stored.version).carry_unique_keys(stored)
    if isinstance(new, Port | FloatingIP) and isinstance(stored, Port | FloatingIP):
        new = new.replace(status=stored.status)
    return new == stored
