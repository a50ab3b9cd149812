"""The local controller's view of the world: NB objects it pulled + facts of this chassis.

``Topology`` is the cache (one writer: the controller loop). It drops stale versions, keeps
the few indexes the apps need, and reports which *dependency keys* each change touched.
``View`` is what an app reads through while compiling one owner: every read records a
dependency key, so the engine knows exactly which owners a later change can affect
(OVN's incremental processing idea, without hand-written change handlers).

Dependency keys:
    ("obj", table, id)        one object
    ("net_ports", net_id)     the set of ports of a network
    ("net_addr", net_id, ip)  which ports of a network hold address ip
    ("net_dhcp", net_id)      the DHCP service ports of a network
    ("net_subnets", net_id)   the subnets of a network
    ("net_local", net_id)     the set of this chassis' ports of a network
    ("net_chassis", net_id)   the chassis hosting ports of a network (each with one
                              representative port: the least id; router ports aside)
    ("group_ports", sg_id)    the set of ports in a security group (its members)
    ("group_local", sg_id)    the set of this chassis' ports in a security group
    ("local_groups",)         the set of security groups with a port on this chassis
    ("group_referrers", sg_id) the groups whose rules name sg_id as their remote group
    ("ofport", port_id)       where a local port is plugged (None = not local)
    ("tunnel", type)          the ofport of this chassis' tunnel port of that type
    ("local_networks",)       the set of networks with a port on this chassis
    ("l3_scope",)             the routers with an interface on a local network, and every
                              network those routers reach (routed networks)
    ("learned", router_id, ip) reactive L3: whether this router has seen destination ip
    ("metadata",)             the local metadata service's interface (ofport, MAC)
    ("physnet", name)         the ofport of this chassis' patch to a physical network
    ("gateway_chassis",)      the gateway-capable chassis (any Chassis object changed)
    ("gateways",)             which gateway-capable chassis are alive
    ("local_fips",)           the floating IPs of this chassis' ports
    ("neigh", net_id)         the neighbours (IP -> MAC) learned on an external network
    ("nat_zone", router_id)   the conntrack zone of a router's NAT on this chassis
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from dragonflow.model import (
    Chassis,
    FloatingIP,
    NbObject,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    Subnet,
)
from dragonflow.model.scopes import relevance_scope_id, relevance_scopes  # noqa: F401

DepKey = tuple[str, ...]
# Neutron represents router interfaces/gateways as ports too; in the pipeline they are the
# router's interfaces (apps/l3.py), never ordinary logical ports.
ROUTER_DEVICE_OWNERS = frozenset({
    "network:router_interface", "network:router_interface_distributed",
    "network:router_gateway", "network:ha_router_replicated_interface",
})
DHCP_PORT_OWNER = "network:dhcp"  # Neutron's DHCP port of a network (its server address)
T = TypeVar("T", bound=NbObject)


@dataclass
class ChassisFacts:
    chassis_id: str
    tunnel_ip: str
    tunnel_types: tuple[str, ...]
    ofports: dict[str, int] = field(default_factory=dict)        # NB port id -> ofport
    tunnel_ofports: dict[str, int] = field(default_factory=dict)  # tunnel type -> ofport
    l3_mode: str = "proactive"  # or "reactive": host routes installed on first packet
    reactive_idle_timeout: int = 30
    # reactive L3: router id -> destination addresses seen (until their flow idles out)
    learned: dict[str, set[str]] = field(default_factory=dict)
    dhcp_lease_time: int = 86400
    dhcp_dns_servers: tuple[str, ...] = ()  # when a subnet names none
    dhcp_domain: str = "openstacklocal"
    ra_interval: float = 30.0  # seconds between unsolicited router advertisements
    # packets/s (and burst) each local port may punt: DHCP v4+v6, router solicitations
    dhcp_rate_per_port: int = 50
    dhcp_burst_per_port: int = 20
    rs_rate_per_port: int = 10
    rs_burst_per_port: int = 5
    # the local metadata service's interface on the integration bridge (apps/metadata.py):
    # its ofport and MAC while it exists; TCP SYNs per second (and burst) each local port
    # may send it
    metadata_ofport: int | None = None
    metadata_mac: str | None = None
    metadata_syn_rate: int = 20
    metadata_syn_burst: int = 40
    # provider networks: physical network -> ofport of its patch on the integration bridge
    phys_ofports: dict[str, int] = field(default_factory=dict)
    chassis_mac: str = ""  # source MAC of what a router here sends onto a provider network
    gateway: bool = False  # this chassis may host routers' external gateways (SNAT)
    live_chassis: frozenset[str] = frozenset()  # gateway-capable chassis heard lately
    # (external network, IPv4 address) -> MAC, learned from ARP on that network
    neighbours: dict[tuple[str, str], str] = field(default_factory=dict)
    nat_zones: dict[str, int] = field(default_factory=dict)  # router -> its NAT zone here


NAT_ZONES = range(0xC000, 0xFF00)  # routers' conntrack zones (ports' are their ofports)


def chassis_mac(chassis_id: str) -> str:
    """The source MAC of frames a distributed router emits onto a provider network from
    this chassis (as Neutron DVR's per-host MAC): every chassis its own, so the physical
    network never sees one router MAC behind several ports. Locally administered, derived
    from the chassis id: the same on every restart, nothing to configure or store."""
    h = hashlib.sha256(chassis_id.encode()).digest()
    return f"fa:16:3f:{h[0]:02x}:{h[1]:02x}:{h[2]:02x}"


def gateway_rank(router_id: str, chassis_id: str) -> bytes:
    """Rendezvous (highest random weight) ranking of gateway chassis for a router: every
    controller computes the same order, a chassis coming or going moves only its routers."""
    return hashlib.sha256(f"{router_id}/{chassis_id}".encode()).digest()


class Topology:
    def __init__(self, facts: ChassisFacts) -> None:
        self.facts = facts
        self.objs: dict[str, dict[str, NbObject]] = defaultdict(dict)
        self.net_ports: dict[str, set[str]] = defaultdict(set)
        self.group_ports: dict[str, set[str]] = defaultdict(set)  # security group -> ports
        self.group_local: dict[str, set[str]] = defaultdict(set)  # group -> its local ports
        self.group_referrers: dict[str, set[str]] = defaultdict(set)  # group -> groups whose
        #                                                     rules name it (remote group)
        self.net_local: dict[str, set[str]] = defaultdict(set)  # network -> its local ports
        self._nets_dirty = False
        self._new_indexes()
        self._local_networks: frozenset[str] = frozenset()
        self._base_networks: frozenset[str] = frozenset()  # networks with a local port
        self._hosted: frozenset[str] = frozenset()  # routers whose gateway may be here
        self.fips_by_port: dict[str, set[str]] = defaultdict(set)
        self._local_routers: frozenset[str] = frozenset()
        self._routed_networks: frozenset[str] = frozenset()

    def _new_indexes(self) -> None:
        # per network: address -> the ports holding it; its DHCP ports; its subnets; per
        # chassis hosting ports of it, those ports (router ports aside); the owners
        # "port/<id>" of its ports (what the apps' network parts list)
        self.net_addrs: dict[str, dict[str, set[str]]] = defaultdict(dict)
        self.net_dhcp: dict[str, set[str]] = defaultdict(set)
        self.net_subnets: dict[str, set[str]] = defaultdict(set)
        self.net_chassis: dict[str, dict[str, set[str]]] = defaultdict(dict)
        self.net_port_owners: dict[str, set[str]] = defaultdict(set)
        self.group_port_owners: dict[str, set[str]] = defaultdict(set)  # per security group
        self._frozen: dict[tuple[str, str], frozenset[str]] = {}
        self._by_key: dict[tuple[str, int], set[str]] = {}  # (table, unique key) -> ids

    def frozen_owners(self, kind: str, key: str, index: dict[str, set[str]]
                      ) -> frozenset[str]:
        """``index[key]`` frozen, the same object until it changes: every app listing the
        ports of one network after a change shares one copy (and the engine's diffs)."""
        found = self._frozen.get((kind, key))
        if found is None:
            found = self._frozen[(kind, key)] = frozenset(index.get(key, ()))
        return found

    def _index_port(self, port: Port, add: bool) -> set[DepKey]:
        """Add ``port`` to (or remove it from) the per-network indexes; the touched keys."""
        net, pid = port.network_id, port.id
        touched: set[DepKey] = set()
        owners = self.net_port_owners[net]
        (owners.add if add else owners.discard)(f"port/{pid}")
        self._frozen.pop(("net", net), None)
        addrs = self.net_addrs[net]
        for f in port.fixed_ips:
            ip = str(f.ip_address)
            holders = addrs.setdefault(ip, set())
            (holders.add if add else holders.discard)(pid)
            if not holders:
                del addrs[ip]
            touched.add(("net_addr", net, ip))
        if port.device_owner == DHCP_PORT_OWNER:
            (self.net_dhcp[net].add if add else self.net_dhcp[net].discard)(pid)
            touched.add(("net_dhcp", net))
        if (port.binding is not None and port.binding.kind == "chassis"
                and port.device_owner not in ROUTER_DEVICE_OWNERS):
            per = self.net_chassis[net]
            chassis = port.binding.chassis_id
            ports = per.setdefault(chassis, set())
            before = min(ports) if ports else None
            (ports.add if add else ports.discard)(pid)
            after = min(ports) if ports else None
            if not ports:
                del per[chassis]
            if before != after:  # a chassis came or went, or its representative changed
                touched.add(("net_chassis", net))
        return touched

    def ports_holding(self, net_id: str, ip: str) -> list[Port]:
        """The ports of ``net_id`` holding address ``ip`` (canonical text), by id (router
        ports included): one index lookup, not a walk of the network."""
        return [p for pid in sorted(self.net_addrs.get(net_id, {}).get(ip, ()))
                if (p := self.get(Port, pid)) is not None]

    def _index_key(self, table: str, obj_id: str, obj: NbObject | None, add: bool) -> None:
        key = getattr(obj, "unique_key", None)
        if not key:
            return
        ids = self._by_key.setdefault((table, key), set())
        (ids.add if add else ids.discard)(obj_id)
        if not ids:
            del self._by_key[(table, key)]

    def _index_subnet(self, subnet: Subnet, add: bool) -> set[DepKey]:
        subs = self.net_subnets[subnet.network_id]
        (subs.add if add else subs.discard)(subnet.id)
        return {("net_subnets", subnet.network_id)}

    # --- writes (controller loop only) ---------------------------------------------------
    def apply(self, table: str, obj_id: str, obj: NbObject | None) -> set[DepKey] | None:
        """Apply one change; returns the touched dependency keys, or None if it was stale."""
        cur = self.objs[table].get(obj_id)
        if obj is not None and cur is not None and obj.version < cur.version:
            return None  # stale: an older version arrived after a newer one
        if obj is None and cur is None:
            return None
        if obj is not None and cur is not None and _same_but_liveness(cur, obj):
            self.objs[table][obj_id] = obj  # a heartbeat or a status write: apps never
            return set()                    # read those, so nothing recompiles
        touched: set[DepKey] = {("obj", table, obj_id)}
        self._index_key(table, obj_id, cur, False)
        self._index_key(table, obj_id, obj, True)
        if isinstance(cur, SecurityGroup) or isinstance(obj, SecurityGroup):
            touched |= self._set_referrers(obj_id, cur, obj)
        if isinstance(cur, Port) or isinstance(obj, Port):
            local = obj_id in self.facts.ofports
            touched |= self._set_group_local(obj_id, cur, obj, local, local)
            touched |= self._set_net_local(cur, obj, local, local)
        if isinstance(cur, FloatingIP) or isinstance(obj, FloatingIP):
            touched |= self._index_fip(obj_id, cur, obj)
        if isinstance(cur, Chassis) or isinstance(obj, Chassis):
            touched.add(("gateway_chassis",))
        if isinstance(cur, Subnet):
            touched |= self._index_subnet(cur, False)
        if isinstance(obj, Subnet):
            touched |= self._index_subnet(obj, True)
        if isinstance(cur, Port):
            touched |= self._index_port(cur, False)
        if isinstance(obj, Port):
            touched |= self._index_port(obj, True)
        if isinstance(cur, Port):
            self.net_ports[cur.network_id].discard(obj_id)
            touched.add(("net_ports", cur.network_id))
            for g in cur.security_groups:
                self.group_ports[g].discard(obj_id)
                self.group_port_owners[g].discard(f"port/{obj_id}")
                self._frozen.pop(("group", g), None)
                touched.add(("group_ports", g))
        if obj is None:
            del self.objs[table][obj_id]
        else:
            self.objs[table][obj_id] = obj
            if isinstance(obj, Port):
                self.net_ports[obj.network_id].add(obj_id)
                touched.add(("net_ports", obj.network_id))
                for g in obj.security_groups:
                    self.group_ports[g].add(obj_id)
                    self.group_port_owners[g].add(f"port/{obj_id}")
                    self._frozen.pop(("group", g), None)
                    touched.add(("group_ports", g))
        if (isinstance(obj, (Router, Network)) or isinstance(cur, (Router, Network))
                or isinstance(obj, Chassis) and obj.id == self.facts.chassis_id):
            return touched | self._refresh_local_networks(force_l3=True)
        return touched | self._refresh_local_networks()

    def _index_fip(self, fip_id: str, cur: NbObject | None, new: NbObject | None
                   ) -> set[DepKey]:
        for f in (cur, new):
            if isinstance(f, FloatingIP) and f.port_id is not None:
                (self.fips_by_port[f.port_id].add if f is new
                 else self.fips_by_port[f.port_id].discard)(fip_id)
        return {("local_fips",)}

    @property
    def local_fips(self) -> frozenset[str]:
        """Floating IPs associated with a port plugged on this chassis."""
        return frozenset(f for p in self.facts.ofports for f in self.fips_by_port.get(p, ()))

    def replace_all(self, objs: Iterable[NbObject]) -> None:
        self.objs = defaultdict(dict)
        self.net_ports = defaultdict(set)
        self.group_ports = defaultdict(set)
        self.group_local = defaultdict(set)
        self.group_referrers = defaultdict(set)
        self.net_local = defaultdict(set)
        self.fips_by_port = defaultdict(set)
        self._new_indexes()
        for o in objs:
            self.objs[o.TABLE][o.id] = o
            self._index_key(o.TABLE, o.id, o, True)
            if isinstance(o, Subnet):
                self._index_subnet(o, True)
            if isinstance(o, Port):
                self.net_ports[o.network_id].add(o.id)
                self._index_port(o, True)
                if o.id in self.facts.ofports:
                    self.net_local[o.network_id].add(o.id)
                for g in o.security_groups:
                    self.group_ports[g].add(o.id)
                    self.group_port_owners[g].add(f"port/{o.id}")
                    if o.id in self.facts.ofports:
                        self.group_local[g].add(o.id)
            elif isinstance(o, SecurityGroup):
                for r in _named_groups(o):
                    self.group_referrers[r].add(o.id)
            elif isinstance(o, FloatingIP):
                self._index_fip(o.id, None, o)
        self._nets_dirty = True
        self._refresh_local_networks(force_l3=True)

    def set_ofport(self, port_id: str, ofport: int | None) -> set[DepKey]:
        if self.facts.ofports.get(port_id) == ofport:
            return set()
        was = port_id in self.facts.ofports
        if ofport is None:
            self.facts.ofports.pop(port_id, None)
        else:
            self.facts.ofports[port_id] = ofport
        port = self.objs["port"].get(port_id)
        groups = self._set_group_local(port_id, port, port, was, ofport is not None)
        nets = self._set_net_local(port, port, was, ofport is not None)
        if self.fips_by_port.get(port_id):
            nets.add(("local_fips",))
        return {("ofport", port_id)} | groups | nets | self._refresh_local_networks()

    def _set_net_local(self, cur: NbObject | None, new: NbObject | None, was_local: bool,
                       is_local: bool) -> set[DepKey]:
        """Keep ``net_local`` (local ports per network) right after a port changed or was
        (un)plugged: the local networks follow from it without walking the local ports."""
        touched: set[DepKey] = set()
        if isinstance(cur, Port) and was_local:
            ports = self.net_local[cur.network_id]
            ports.discard(cur.id)
            touched.add(("net_local", cur.network_id))
            if not ports:
                del self.net_local[cur.network_id]
                self._nets_dirty = True
        if isinstance(new, Port) and is_local:
            ports = self.net_local[new.network_id]
            self._nets_dirty |= not ports
            ports.add(new.id)
            touched.add(("net_local", new.network_id))
        return touched

    def _set_group_local(self, port_id: str, cur: NbObject | None, new: NbObject | None,
                         was_local: bool, is_local: bool) -> set[DepKey]:
        """Keep ``group_local`` (the local ports of each security group) right after a port
        changed or was (un)plugged; the touched keys: ("group_local", g) for each group whose
        local ports changed, ("local_groups",) when a group gained its first / lost its last."""
        old = set(cur.security_groups) if isinstance(cur, Port) and was_local else set()
        now = set(new.security_groups) if isinstance(new, Port) and is_local else set()
        touched: set[DepKey] = set()
        for g in old - now:
            self.group_local[g].discard(port_id)
            touched.add(("group_local", g))
            if not self.group_local[g]:
                touched.add(("local_groups",))
        for g in now - old:
            if not self.group_local[g]:
                touched.add(("local_groups",))
            self.group_local[g].add(port_id)
            touched.add(("group_local", g))
        return touched

    def _set_referrers(self, group_id: str, cur: NbObject | None,
                       new: NbObject | None) -> set[DepKey]:
        old = _named_groups(cur) if isinstance(cur, SecurityGroup) else set()
        now = _named_groups(new) if isinstance(new, SecurityGroup) else set()
        for r in old - now:
            self.group_referrers[r].discard(group_id)
        for r in now - old:
            self.group_referrers[r].add(group_id)
        return {("group_referrers", r) for r in old ^ now}

    @property
    def local_groups(self) -> frozenset[str]:
        """Security groups with a port on this chassis."""
        return frozenset(g for g, ports in self.group_local.items() if ports)

    def learn(self, router_id: str, ip: str) -> set[DepKey]:
        """Reactive L3: a packet for ``ip`` reached ``router_id``'s controller path."""
        seen = self.facts.learned.setdefault(router_id, set())
        if ip in seen:
            return set()
        seen.add(ip)
        return {("learned", router_id, ip)}

    def forget(self, router_id: str, ip: str) -> set[DepKey]:
        seen = self.facts.learned.get(router_id, set())
        if ip not in seen:
            return set()
        seen.discard(ip)
        return {("learned", router_id, ip)}

    def set_metadata_port(self, ofport: int | None, mac: str | None) -> set[DepKey]:
        """The metadata service's interface appeared, changed or went (None, None)."""
        if ofport is None or ofport <= 0 or not mac:
            ofport, mac = None, None
        if (self.facts.metadata_ofport, self.facts.metadata_mac) == (ofport, mac):
            return set()
        self.facts.metadata_ofport, self.facts.metadata_mac = ofport, mac
        return {("metadata",)}

    def set_tunnel_ofports(self, ofports: dict[str, int]) -> set[DepKey]:
        changed: set[DepKey] = {("tunnel", t) for t in set(ofports) | set(self.facts.tunnel_ofports)
                   if ofports.get(t) != self.facts.tunnel_ofports.get(t)}
        self.facts.tunnel_ofports = dict(ofports)
        return changed

    def _refresh_local_networks(self, force_l3: bool = False) -> set[DepKey]:
        """Local networks: those with a port here, those of the routers whose gateway this
        chassis may host (a gateway chassis routes their SNAT traffic), and the external
        networks of local routers' gateways whose physical network is mapped here. Local
        routers: those with an interface on a local network, and the hosted ones."""
        base = self._base_networks
        if self._nets_dirty:  # a network gained its first local port or lost its last
            base, self._nets_dirty = frozenset(self.net_local), False
        if base == self._base_networks and not force_l3:
            return set()
        self._base_networks = base
        touched: set[DepKey] = set()
        hosted = self._hosted_gateways()
        nets = set(base)
        for rid in hosted:
            nets |= {rp.network_id for rp in self.objs["router"][rid].ports}  # type: ignore[attr-defined]
        routers = frozenset(
            r.id for r in self.all(Router) if any(rp.network_id in nets for rp in r.ports))
        routers |= hosted
        for rid in routers:
            gw = self.objs["router"][rid].gateway  # type: ignore[attr-defined]
            net = self.get(Network, gw.network_id) if gw is not None else None
            if net is not None and net.physical_network in self.facts.phys_ofports:
                nets.add(net.id)
        frozen = frozenset(nets)
        if frozen != self._local_networks:
            self._local_networks = frozen
            touched.add(("local_networks",))
        routed = frozenset(rp.network_id for rid in routers
                           for rp in self.objs["router"][rid].ports)  # type: ignore[attr-defined]
        if (routers, routed, hosted) != (self._local_routers, self._routed_networks,
                                         self._hosted):
            self._local_routers, self._routed_networks = routers, routed
            self._hosted = hosted
            touched.add(("l3_scope",))
        touched |= self._allocate_nat_zones(routers)
        return touched

    def _hosted_gateways(self) -> frozenset[str]:
        """Routers whose external gateway this chassis may host: it is gateway-capable and
        maps the physical network of the router's external network."""
        if not self.facts.gateway or not self.facts.phys_ofports:
            return frozenset()
        out = set()
        for r in self.all(Router):
            net = self.get(Network, r.gateway.network_id) if r.gateway is not None else None
            if net is not None and net.physical_network in self.facts.phys_ofports:
                out.add(r.id)
        return frozenset(out)

    def _allocate_nat_zones(self, routers: frozenset[str]) -> set[DepKey]:
        """A NAT zone for each local router with a gateway, kept while it stays local (its
        connections keep their state); the lowest free one for a new router."""
        zones = self.facts.nat_zones
        want = {rid for rid in routers
                if self.objs["router"][rid].gateway is not None}  # type: ignore[attr-defined]
        touched: set[DepKey] = set()
        for rid in [r for r in zones if r not in want]:
            del zones[rid]
            touched.add(("nat_zone", rid))
        free = iter(sorted(set(NAT_ZONES) - set(zones.values()))) if want - set(zones) else None
        for rid in sorted(want - set(zones)):
            zone = next(free, None) if free is not None else None
            if zone is None:
                break  # more gateway routers than zones: the rest get no NAT here
            zones[rid] = zone
            touched.add(("nat_zone", rid))
        return touched

    def set_phys_ofports(self, ofports: dict[str, int]) -> set[DepKey]:
        """The patch ports to the physical networks (bridge_mappings) and their ofports."""
        changed: set[DepKey] = {("physnet", p) for p in set(ofports) | set(self.facts.phys_ofports)
                                if ofports.get(p) != self.facts.phys_ofports.get(p)}
        self.facts.phys_ofports = dict(ofports)
        return changed | (self._refresh_local_networks(force_l3=True) if changed else set())

    def set_live(self, alive: frozenset[str]) -> set[DepKey]:
        """The chassis whose heartbeat moved lately (the gateway watch); touches
        ("gateways",) when a gateway-capable chassis died or came back."""
        gateways = {c.id for c in self.all(Chassis) if c.gateway}
        old = self.facts.live_chassis & gateways
        self.facts.live_chassis = frozenset(alive)
        return {("gateways",)} if alive & gateways != old else set()

    def learn_neighbour(self, net_id: str, ip: str, mac: str) -> set[DepKey]:
        """An external network's host ``ip`` is at ``mac`` (from ARP)."""
        if self.facts.neighbours.get((net_id, ip)) == mac:
            return set()
        self.facts.neighbours[(net_id, ip)] = mac
        return {("neigh", net_id)}

    # --- reads -----------------------------------------------------------------------
    @property
    def local_networks(self) -> frozenset[str]:
        return self._local_networks

    @property
    def local_routers(self) -> frozenset[str]:
        """Routers with an interface on a network that has a port on this chassis."""
        return self._local_routers

    @property
    def routed_networks(self) -> frozenset[str]:
        """Every network a local router has an interface on."""
        return self._routed_networks

    def get(self, cls: type[T], obj_id: str) -> T | None:
        obj = self.objs[cls.TABLE].get(obj_id)
        return obj if isinstance(obj, cls) else None

    def all(self, cls: type[T]) -> list[T]:
        return [o for o in self.objs[cls.TABLE].values() if isinstance(o, cls)]

    def by_unique_key(self, cls: type[T], key: int | None) -> T | None:
        """The object of ``cls`` whose datapath key is ``key`` (from a packet-in's
        registers); None if unknown."""
        if not key:
            return None
        for obj_id in sorted(self._by_key.get((cls.TABLE, key), ())):
            obj = self.get(cls, obj_id)
            if obj is not None:
                return obj
        return None

    def scopes_needed(self) -> set[str]:
        """What this chassis must follow (see :func:`relevance_scopes`): the networks of its
        local ports, whoever owns them (shared, RBAC-shared, admin-owned provider or
        external networks alike), every network a router on those reaches, the gateway
        networks of those routers, and the projects of its local ports (their security
        groups, floating IPs, QoS policies)."""
        nets = set(self.local_networks | self.routed_networks)
        out: set[str] = set()
        if self.facts.gateway:  # the external networks of its physnets and their routers
            out |= {f"ext:{p}" for p in self.facts.phys_ofports}
            nets |= {n.id for n in self.all(Network)
                     if n.external and n.physical_network in self.facts.phys_ofports}
        for rid in self.local_routers:
            router = self.get(Router, rid)
            if router is not None and router.gateway is not None:
                nets.add(router.gateway.network_id)
        out |= {f"net:{n}" for n in nets}
        local = [p for pid in self.facts.ofports if (p := self.get(Port, pid)) is not None]
        out |= {f"project:{p.topic}" for p in local if p.topic}
        # the members of the groups of local ports and of the groups their rules name
        for p in local:
            for gid in p.security_groups:
                out.add(f"sg:{gid}")
                group = self.get(SecurityGroup, gid)
                out |= {f"sg:{r}" for r in (group.remote_groups() if group else ())}
                out |= {f"ag:{a}" for a in (group.address_groups() if group else ())}
        return out

    def irrelevant(self, wanted: Callable[[NbObject], bool]) -> list[NbObject]:
        """Cached objects the stream no longer delivers (``wanted`` says no) -- to forget."""
        return [o for objs in self.objs.values() for o in objs.values() if not wanted(o)]


# Fields no app reads: port status, written by controllers and Neutron. A change of only
# these (and the version) recompiles nothing. (Chassis liveness is not in the NB objects at
# all: NbApi.beat keeps it outside the watched prefix, as OVN's Chassis_Private.)
LIVENESS_FIELDS: dict[type, tuple[str, ...]] = {
    Port: ("status",),
}


def _same_but_liveness(cur: NbObject, new: NbObject) -> bool:
    volatile = LIVENESS_FIELDS.get(type(new))
    if volatile is None or type(cur) is not type(new):
        return False
    reset = dict.fromkeys(("version", *volatile))
    return cur.replace(**{f: getattr(new, f) for f in reset}) == new


def _named_groups(group: SecurityGroup) -> set[str]:
    """The groups ``group``'s rules name as their remote side (itself included)."""
    return {r.remote_group_id for r in group.rules if r.remote_group_id is not None}


class OwnersView:
    """What an app's ``owners()`` reads, recording it: the engine asks an app for its
    owners again only when one of these changed -- a change elsewhere costs nothing."""

    def __init__(self, topo: Topology) -> None:
        self._t = topo
        self.deps: set[DepKey] = set()

    @property
    def facts(self) -> ChassisFacts:
        return self._t.facts

    @property
    def local_networks(self) -> frozenset[str]:
        self.deps.add(("local_networks",))
        return self._t.local_networks

    @property
    def routed_networks(self) -> frozenset[str]:
        self.deps.add(("l3_scope",))
        return self._t.routed_networks

    @property
    def local_routers(self) -> frozenset[str]:
        self.deps.add(("l3_scope",))
        return self._t.local_routers

    def get(self, cls: type[T], obj_id: str) -> T | None:
        self.deps.add(("obj", cls.TABLE, obj_id))
        return self._t.get(cls, obj_id)

    @property
    def local_groups(self) -> frozenset[str]:
        self.deps.add(("local_groups",))
        return self._t.local_groups

    def port_owners(self, net_id: str) -> frozenset[str]:
        """The owners "port/<id>" of every port of ``net_id`` (kept by the topology as
        ports come and go: listing them costs a copy, not a walk)."""
        self.deps.add(("net_ports", net_id))
        return self._t.frozen_owners("net", net_id, self._t.net_port_owners)

    def local_fips(self) -> frozenset[str]:
        """The floating IPs associated with ports plugged here."""
        self.deps.add(("local_fips",))
        return self._t.local_fips

    def group_port_owners(self, group_id: str) -> frozenset[str]:
        """The owners "port/<id>" of every known port in security group ``group_id``."""
        self.deps.add(("group_ports", group_id))
        return self._t.frozen_owners("group", group_id, self._t.group_port_owners)


class View:
    """Read access for one owner's compile; records what was read."""

    def __init__(self, topo: Topology) -> None:
        self._t = topo
        self.deps: set[DepKey] = set()

    @property
    def facts(self) -> ChassisFacts:
        return self._t.facts

    def get(self, cls: type[T], obj_id: str) -> T | None:
        self.deps.add(("obj", cls.TABLE, obj_id))
        return self._t.get(cls, obj_id)

    def network(self, net_id: str) -> Network | None:
        return self.get(Network, net_id)

    def port(self, port_id: str) -> Port | None:
        return self.get(Port, port_id)

    def chassis(self, chassis_id: str) -> Chassis | None:
        return self.get(Chassis, chassis_id)

    def addr_ports(self, net_id: str, ip: str) -> list[Port]:
        """The ports of ``net_id`` holding address ``ip`` (by id; router ports included)."""
        self.deps.add(("net_addr", net_id, ip))
        ports = self._t.ports_holding(net_id, ip)
        self.deps |= {("obj", "port", p.id) for p in ports}
        return ports

    def dhcp_ports(self, net_id: str) -> list[Port]:
        """The DHCP service ports of ``net_id`` (device owner network:dhcp), by id."""
        self.deps.add(("net_dhcp", net_id))
        return [p for pid in sorted(self._t.net_dhcp.get(net_id, ()))
                if (p := self.port(pid)) is not None]

    def subnets_of_network(self, net_id: str) -> list[Subnet]:
        self.deps.add(("net_subnets", net_id))
        return [s for sid in sorted(self._t.net_subnets.get(net_id, ()))
                if (s := self.get(Subnet, sid)) is not None]

    def local_ports_of_network(self, net_id: str) -> list[Port]:
        """This chassis' ports of ``net_id`` (plugged here), by id."""
        self.deps.add(("net_local", net_id))
        return [p for pid in sorted(self._t.net_local.get(net_id, ()))
                if (p := self.port(pid)) is not None]

    def chassis_of_network(self, net_id: str) -> dict[str, Port]:
        """Every chassis hosting ports of ``net_id`` (router ports aside) -> one of them,
        the same on every chassis: the least id."""
        self.deps.add(("net_chassis", net_id))
        out = {}
        for chassis, pids in sorted(self._t.net_chassis.get(net_id, {}).items()):
            if (p := self.port(min(pids))) is not None:
                out[chassis] = p
        return out

    def has_local_members(self, group_id: str) -> bool:
        self.deps.add(("group_local", group_id))
        return bool(self._t.group_local.get(group_id))

    def referrers(self, group_id: str) -> list[str]:
        """The security groups whose rules name ``group_id`` as their remote group."""
        self.deps.add(("group_referrers", group_id))
        return sorted(self._t.group_referrers.get(group_id, ()))

    def ofport(self, port_id: str) -> int | None:
        self.deps.add(("ofport", port_id))
        return self._t.facts.ofports.get(port_id)

    def tunnel_ofport(self, tunnel_type: str) -> int | None:
        self.deps.add(("tunnel", tunnel_type))
        return self._t.facts.tunnel_ofports.get(tunnel_type)

    def phys_ofport(self, physnet: str | None) -> int | None:
        """The ofport of the patch to ``physnet``'s bridge, if it is mapped here."""
        if physnet is None:
            return None
        self.deps.add(("physnet", physnet))
        return self._t.facts.phys_ofports.get(physnet)

    def gateway_chassis(self, router_id: str, physnet: str) -> list[Chassis]:
        """The live gateway-capable chassis that map ``physnet``, best first for
        ``router_id`` (rendezvous ranking): the first one hosts its SNAT."""
        self.deps |= {("gateway_chassis",), ("gateways",)}
        live = self._t.facts.live_chassis
        found = [c for c in self._t.all(Chassis)
                 if c.gateway and c.id in live and c.bridge_for(physnet) is not None]
        return sorted(found, key=lambda c: gateway_rank(router_id, c.id), reverse=True)

    def neighbours(self, net_id: str) -> dict[str, str]:
        """IPv4 address -> MAC of the hosts learned on external network ``net_id``."""
        self.deps.add(("neigh", net_id))
        return {ip: mac for (n, ip), mac in self._t.facts.neighbours.items() if n == net_id}

    def nat_zone(self, router_id: str) -> int | None:
        self.deps.add(("nat_zone", router_id))
        return self._t.facts.nat_zones.get(router_id)

    def fips_of_port(self, port_id: str) -> list[FloatingIP]:
        self.deps.add(("local_fips",))
        return [f for fid in sorted(self._t.fips_by_port.get(port_id, ()))
                if (f := self.get(FloatingIP, fid)) is not None]

    def metadata_port(self) -> tuple[int, str] | None:
        """(ofport, MAC) of the local metadata service's interface, if it is plugged."""
        self.deps.add(("metadata",))
        f = self._t.facts
        if f.metadata_ofport is None or f.metadata_mac is None:
            return None
        return f.metadata_ofport, f.metadata_mac

    def is_local_network(self, net_id: str) -> bool:
        self.deps.add(("local_networks",))
        return net_id in self._t.local_networks

    def is_routed_network(self, net_id: str) -> bool:
        self.deps.add(("l3_scope",))
        return net_id in self._t.routed_networks

    def is_local_router(self, router_id: str) -> bool:
        self.deps.add(("l3_scope",))
        return router_id in self._t.local_routers

    def router(self, router_id: str) -> Router | None:
        return self.get(Router, router_id)

    def local_port(self, port_id: str) -> tuple[Port, Network] | None:
        """The port and its network, if that network has a port on this chassis."""
        port = self.port(port_id)
        net = self.network(port.network_id) if port else None
        if (port is None or net is None or port.device_owner in ROUTER_DEVICE_OWNERS
                or not self.is_local_network(net.id)):
            return None
        return port, net

    def routers_on(self, net_id: str) -> list[Router]:
        """The local routers with an interface on ``net_id`` (reads recorded)."""
        self.deps.add(("l3_scope",))
        out = []
        for rid in sorted(self._t.local_routers):
            router = self.router(rid)
            if router is not None and any(rp.network_id == net_id for rp in router.ports):
                out.append(router)
        return out

    def local_interfaces(self, router_id: str) -> list[tuple[RouterPort, Network]]:
        """A local router's interfaces on networks with a port on this chassis (none for an
        unknown or non-local router)."""
        router = self.router(router_id)
        if router is None or not self.is_local_router(router_id):
            return []
        out = []
        for rp in router.ports:
            net = self.network(rp.network_id)
            if net is not None and self.is_local_network(net.id):
                out.append((rp, net))
        return out

    def is_learned(self, router_id: str, ip: str) -> bool:
        """Reactive L3: has ``router_id`` seen a packet for ``ip`` (flow not idled out)?"""
        self.deps.add(("learned", router_id, ip))
        return ip in self._t.facts.learned.get(router_id, ())
