"""The local controller's view of the world: NB objects it pulled + facts of this chassis.

``Topology`` is the cache (one writer: the controller loop). It drops stale versions, keeps
the few indexes the apps need, and reports which *dependency keys* each change touched.
``View`` is what an app reads through while compiling one owner: every read records a
dependency key, so the engine knows exactly which owners a later change can affect
(OVN's incremental processing idea, without hand-written change handlers).

Dependency keys:
    ("obj", table, id)        one object
    ("net_ports", net_id)     the set of ports of a network
    ("group_ports", sg_id)    the set of ports in a security group (its members)
    ("group_local", sg_id)    the set of this chassis' ports in a security group
    ("local_groups",)         the set of security groups with a port on this chassis
    ("group_referrers", sg_id) the groups whose rules name sg_id as their remote group
    ("ofport", port_id)       where a local port is plugged (None = not local)
    ("tunnel", type)          the ofport of this chassis' tunnel port of that type
    ("local_networks",)       the set of networks with a port on this chassis
    ("l3_scope",)             the routers with an interface on a local network, and every
                              network those routers reach (routed networks)
    ("learned", router_id)    reactive L3: the destinations this router has seen
    ("metadata",)             the local metadata service's interface (ofport, MAC)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from dragonflow.model import (
    AddressGroup,
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

DepKey = tuple[str, ...]
# Neutron represents router interfaces/gateways as ports too; in the pipeline they are the
# router's interfaces (apps/l3.py), never ordinary logical ports.
ROUTER_DEVICE_OWNERS = frozenset({
    "network:router_interface", "network:router_interface_distributed",
    "network:router_gateway", "network:ha_router_replicated_interface",
})
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


class Topology:
    def __init__(self, facts: ChassisFacts) -> None:
        self.facts = facts
        self.objs: dict[str, dict[str, NbObject]] = defaultdict(dict)
        self.net_ports: dict[str, set[str]] = defaultdict(set)
        self.group_ports: dict[str, set[str]] = defaultdict(set)  # security group -> ports
        self.group_local: dict[str, set[str]] = defaultdict(set)  # group -> its local ports
        self.group_referrers: dict[str, set[str]] = defaultdict(set)  # group -> groups whose
        #                                                     rules name it (remote group)
        self._local_networks: frozenset[str] = frozenset()
        self._local_routers: frozenset[str] = frozenset()
        self._routed_networks: frozenset[str] = frozenset()

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
        if isinstance(cur, SecurityGroup) or isinstance(obj, SecurityGroup):
            touched |= self._set_referrers(obj_id, cur, obj)
        if isinstance(cur, Port) or isinstance(obj, Port):
            touched |= self._set_group_local(obj_id, cur, obj, obj_id in self.facts.ofports,
                                             obj_id in self.facts.ofports)
        if isinstance(cur, Port):
            self.net_ports[cur.network_id].discard(obj_id)
            touched.add(("net_ports", cur.network_id))
            for g in cur.security_groups:
                self.group_ports[g].discard(obj_id)
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
                    touched.add(("group_ports", g))
        if isinstance(obj, Router) or isinstance(cur, Router):
            return touched | self._refresh_local_networks(force_l3=True)
        return touched | self._refresh_local_networks()

    def replace_all(self, objs: Iterable[NbObject]) -> None:
        self.objs = defaultdict(dict)
        self.net_ports = defaultdict(set)
        self.group_ports = defaultdict(set)
        self.group_local = defaultdict(set)
        self.group_referrers = defaultdict(set)
        for o in objs:
            self.objs[o.TABLE][o.id] = o
            if isinstance(o, Port):
                self.net_ports[o.network_id].add(o.id)
                for g in o.security_groups:
                    self.group_ports[g].add(o.id)
                    if o.id in self.facts.ofports:
                        self.group_local[g].add(o.id)
            elif isinstance(o, SecurityGroup):
                for r in _named_groups(o):
                    self.group_referrers[r].add(o.id)
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
        return {("ofport", port_id)} | groups | self._refresh_local_networks()

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
        return {("learned", router_id)}

    def forget(self, router_id: str, ip: str) -> set[DepKey]:
        seen = self.facts.learned.get(router_id, set())
        if ip not in seen:
            return set()
        seen.discard(ip)
        return {("learned", router_id)}

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
        nets = frozenset(
            p.network_id for pid in self.facts.ofports
            if isinstance(p := self.objs["port"].get(pid), Port))
        touched: set[DepKey] = set()
        if nets != self._local_networks:
            self._local_networks = nets
            touched.add(("local_networks",))
        if touched or force_l3:
            routers = frozenset(
                r.id for r in self.all(Router) if any(rp.network_id in nets for rp in r.ports))
            routed = frozenset(rp.network_id for rid in routers
                               for rp in self.objs["router"][rid].ports)  # type: ignore[attr-defined]
            if (routers, routed) != (self._local_routers, self._routed_networks):
                self._local_routers, self._routed_networks = routers, routed
                touched.add(("l3_scope",))
        return touched

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
        if key is None:
            return None
        return next((o for o in self.all(cls) if getattr(o, "unique_key", None) == key),
                    None)

    def scopes_needed(self) -> set[str]:
        """What this chassis must follow (see :func:`relevance_scopes`): the networks of its
        local ports, whoever owns them (shared, RBAC-shared, admin-owned provider or
        external networks alike), every network a router on those reaches, the gateway
        networks of those routers, and the projects of its local ports (their security
        groups, floating IPs, QoS policies)."""
        nets = set(self.local_networks | self.routed_networks)
        for rid in self.local_routers:
            router = self.get(Router, rid)
            if router is not None and router.gateway is not None:
                nets.add(router.gateway.network_id)
        out = {f"net:{n}" for n in nets}
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


def relevance_scopes(obj: NbObject) -> tuple[str, ...]:
    """The scopes an object belongs to, for the change stream's filter: networks, not
    projects. A network, its subnets and ports are in ``net:<network id>``; a router in the
    scope of every network it has an interface or its gateway on; a floating IP in its
    external network's and its project's; chassis are global; anything else (security
    groups, QoS policies) in ``project:<project id>``."""
    if isinstance(obj, Network):
        return (f"net:{obj.id}",)
    if isinstance(obj, Port):  # and the groups it is a member of (remote-group rules)
        return (f"net:{obj.network_id}", *(f"sg:{g}" for g in obj.security_groups))
    if isinstance(obj, Subnet):
        return (f"net:{obj.network_id}",)
    if isinstance(obj, Router):
        scopes = [f"net:{rp.network_id}" for rp in obj.ports]
        if obj.gateway is not None:
            scopes.append(f"net:{obj.gateway.network_id}")
        return tuple(scopes)
    if isinstance(obj, FloatingIP):
        return (f"net:{obj.floating_network_id}", f"project:{obj.topic}")
    if isinstance(obj, AddressGroup):  # any project's: followed where a local rule names it
        return (f"ag:{obj.id}", f"project:{obj.topic}") if obj.topic else ("",)
    if isinstance(obj, Chassis) or not obj.topic:
        return ("",)
    return (f"project:{obj.topic}",)


def relevance_scope_id(scope: str) -> str:
    """The id every object of a relevance scope carries in its stored form: ``net:<id>``
    objects name the network (id, network_id, a router port's or gateway's network_id, a
    floating IP's floating_network_id), ``project:<id>`` objects their project (topic),
    ``sg:<id>`` ports their security group, ``ag:<id>`` an address group its id."""
    return scope.split(":", 1)[1]


class _RecordingPorts:
    """``topo.net_ports`` for an :class:`OwnersView`: each network looked up is a dep."""

    def __init__(self, ports: dict[str, set[str]], deps: set[DepKey]) -> None:
        self._ports, self._deps = ports, deps

    def get(self, net_id: str, default: Iterable[str] = ()) -> Iterable[str]:
        self._deps.add(("net_ports", net_id))
        return self._ports.get(net_id, default)


class OwnersView:
    """What an app's ``owners()`` reads, recording it: the engine asks an app for its
    owners again only when one of these changed -- a change elsewhere costs nothing."""

    def __init__(self, topo: Topology) -> None:
        self._t = topo
        self.deps: set[DepKey] = set()
        self.net_ports = _RecordingPorts(topo.net_ports, self.deps)

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

    def group_members(self, group_id: str) -> frozenset[str]:
        """The ids of every known port in security group ``group_id``."""
        self.deps.add(("group_ports", group_id))
        return frozenset(self._t.group_ports.get(group_id, ()))


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

    def ports_of_network(self, net_id: str) -> list[Port]:
        self.deps.add(("net_ports", net_id))
        ports = [self.port(pid) for pid in sorted(self._t.net_ports.get(net_id, ()))]
        return [p for p in ports if p is not None and p.device_owner not in ROUTER_DEVICE_OWNERS]

    def all_ports_of_network(self, net_id: str) -> list[Port]:
        """Every port of the network, router interfaces and service ports included."""
        self.deps.add(("net_ports", net_id))
        return [p for pid in sorted(self._t.net_ports.get(net_id, ()))
                if (p := self.port(pid)) is not None]

    def has_local_members(self, group_id: str) -> bool:
        self.deps.add(("group_local", group_id))
        return bool(self._t.group_local.get(group_id))

    def referrers(self, group_id: str) -> list[str]:
        """The security groups whose rules name ``group_id`` as their remote group."""
        self.deps.add(("group_referrers", group_id))
        return sorted(self._t.group_referrers.get(group_id, ()))

    def ports_of_group(self, group_id: str) -> list[Port]:
        """Every known port in security group ``group_id`` (its members), by id."""
        self.deps.add(("group_ports", group_id))
        return [p for pid in sorted(self._t.group_ports.get(group_id, ()))
                if (p := self.port(pid)) is not None]

    def ofport(self, port_id: str) -> int | None:
        self.deps.add(("ofport", port_id))
        return self._t.facts.ofports.get(port_id)

    def tunnel_ofport(self, tunnel_type: str) -> int | None:
        self.deps.add(("tunnel", tunnel_type))
        return self._t.facts.tunnel_ofports.get(tunnel_type)

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

    def learned(self, router_id: str) -> frozenset[str]:
        self.deps.add(("learned", router_id))
        return frozenset(self._t.facts.learned.get(router_id, ()))
