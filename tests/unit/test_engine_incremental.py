"""Incremental == full: after every step of random change sequences (networks, ports,
chassis, VIFs plugged and unplugged, ports moved between chassis, routers with extra routes
-- some equal to an attached subnet --, tunnel ports renumbered, reactive L3 learning and
forgetting, security groups with remote-group / CIDR / port-range rules created, changed and
deleted, ports moved between groups, port security toggled, a resync that replaces the whole
topology; north-south: flat / VLAN provider and external networks, router gateways set and
cleared, floating IPs created, (re)associated and deleted, gateway chassis dying and coming
back, neighbours learned), the flows the engine holds after
recompiling only the affected owners equal a fresh full compile: the logical flows AND the
resolved OpenFlow table (cookies included) -- and no two lowered flows compete for a key."""

from __future__ import annotations

import random

import pytest

from dragonflow.apps.registry import default_apps
from dragonflow.controller.engine import Engine
from dragonflow.model import (
    AddressGroup,
    Binding,
    Chassis,
    FixedIp,
    FloatingIP,
    Gateway,
    NbObject,
    Network,
    Port,
    Router,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from dragonflow.ovs.flows import Conjunction
from dragonflow.pipeline.topology import ChassisFacts, Topology

CHASSIS = ["hv1", "hv2", "hv3"]
PROJECTS = ["admin", "proj-a", "proj-b"]  # networks and ports of any project mix


class World:
    """A random NB world, applied to a topology the way the controller loop applies it."""

    def __init__(self, seed: int, l3_mode: str = "proactive") -> None:
        self.rng = random.Random(seed)
        self.topo = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan", "geneve", "gre"),
                                          tunnel_ofports={"vxlan": 1, "geneve": 2, "gre": 3},
                                          l3_mode=l3_mode, chassis_mac="fa:16:3f:00:00:01",
                                          gateway=seed % 2 == 0))
        self.topo.set_phys_ofports({"ext": 7})
        self.engine = Engine(default_apps(), self.topo)
        self.engine.full()
        self.objs: dict[tuple[str, str], NbObject] = {}
        self.next_key = 1
        self.next_ofport = 10
        for i, c in enumerate(CHASSIS):
            self.put(Chassis(id=c, ip=f"10.255.0.{11 + i}", tunnel_types=("vxlan", "geneve",
                                                                          "gre"),
                             bridge_mappings=(("ext", "br-ext"),), gateway=i != 2))

    def key(self) -> int:
        self.next_key += 1
        return self.next_key

    def put(self, obj: NbObject) -> None:
        old = self.objs.get((obj.TABLE, obj.id))
        obj = obj.replace(version=(old.version + 1) if old else 1)
        self.objs[(obj.TABLE, obj.id)] = obj
        self.engine.changed(self.topo.apply(obj.TABLE, obj.id, obj) or set())

    def delete(self, table: str, obj_id: str) -> None:
        self.objs.pop((table, obj_id))
        self.engine.changed(self.topo.apply(table, obj_id, None) or set())

    def of(self, table: str) -> list[NbObject]:
        return [o for (t, _), o in sorted(self.objs.items()) if t == table]

    def step(self) -> str:
        r = self.rng
        nets = self.of("network")
        ports = self.of("port")
        choice = r.random()
        if nets and r.random() < 0.15:
            return self.north_south_step()
        if choice < 0.15 or not nets:
            i = self.key()
            ntype = r.choice(["vxlan", "geneve", "gre"])
            self.put(Network(id=f"n{i}", topic=r.choice(PROJECTS), network_type=ntype,
                             segmentation_id=i, unique_key=i))
            self.put(Subnet.from_dict({"id": f"s{i}", "topic": "p", "network_id": f"n{i}",
                                       "cidr": f"10.{i % 250}.0.0/24"}))
            return "add network"
        if choice < 0.25:
            return self.router_step(nets)
        if choice < 0.45:
            net = r.choice(nets)
            i = self.key()
            chassis = r.choice(CHASSIS + [None])
            self.put(Port(id=f"p{i}", topic=r.choice(PROJECTS), network_id=net.id,
                          mac=f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}",
                          fixed_ips=(FixedIp.from_dict({
                              "subnet_id": f"s{net.id[1:]}",
                              "ip_address": f"10.{int(net.id[1:]) % 250}.0.{i % 200 + 2}"}),),
                          binding=Binding(kind="chassis", chassis_id=chassis) if chassis else None,
                          unique_key=i))
            return "add port"
        if choice < 0.6 and ports:
            p = r.choice(ports)
            assert isinstance(p, Port)
            if p.id in self.topo.facts.ofports:
                self.engine.changed(self.topo.set_ofport(p.id, None))
                return "unplug"
            self.next_ofport += 1
            self.engine.changed(self.topo.set_ofport(p.id, self.next_ofport))
            return "plug"
        if choice < 0.7 and ports:
            p = r.choice(ports)
            assert isinstance(p, Port)
            self.put(p.replace(binding=Binding(kind="chassis", chassis_id=r.choice(CHASSIS))))
            return "move port"
        if choice < 0.74 and ports:
            p = r.choice(ports)
            assert isinstance(p, Port)
            self.put(p.replace(mac=f"fa:16:3e:01:{self.key() % 256:02x}:00"))
            return "change mac"
        if choice < 0.8:
            return self.group_step(ports)
        if choice < 0.9 and ports:
            p = r.choice(ports)
            self.delete("port", p.id)
            self.engine.changed(self.topo.set_ofport(p.id, None) | {("ofport", p.id)})
            return "delete port"
        if choice < 0.86:
            return self.group_step(ports)
        if choice < 0.92:
            return self.chassis_fact_step()
        if choice < 0.95:
            c = r.choice(self.of("chassis"))
            assert isinstance(c, Chassis)
            self.put(c.replace(ip=f"10.255.1.{self.key() % 250}"))
            return "chassis ip"
        net = r.choice(nets)
        in_router = any(isinstance(x, Router) and any(rp.network_id == net.id for rp in x.ports)
                        for x in self.of("router"))
        used = any(isinstance(x, Router) and x.gateway is not None
                   and x.gateway.network_id == net.id for x in self.of("router")) or any(
            isinstance(f, FloatingIP) and f.floating_network_id == net.id
            for f in self.of("floatingip"))
        if not in_router and not used and not any(isinstance(p, Port)
                                                  and p.network_id == net.id for p in ports):
            self.delete("subnet", f"s{net.id[1:]}")
            self.delete("network", net.id)
            return "delete network"
        return "noop"


    def random_rule(self, groups: list[str]) -> SecurityGroupRule:
        r = self.rng
        kw: dict[str, object] = {"id": f"r{self.key()}",
                                 "direction": r.choice(["ingress", "egress"]),
                                 "ethertype": r.choice(["IPv4", "IPv6"])}
        proto = r.choice([None, "tcp", "udp", "icmp", 47])
        if proto is not None:
            kw["protocol"] = proto
        if proto in ("tcp", "udp"):
            lo = r.randint(1, 2000)
            kw["port_range_min"], kw["port_range_max"] = lo, lo + r.choice([0, 1, 7, 300])
        remote = r.random()
        ags = [a.id for a in self.of("addressgroup")]
        if remote < 0.15 and ags:
            kw["remote_address_group_id"] = r.choice(ags)
        elif remote < 0.4 and groups:
            kw["remote_group_id"] = r.choice(groups)
        elif remote < 0.6:
            kw["remote_ip_prefix"] = "10.1.0.0/16" if kw["ethertype"] == "IPv4" else "fd00::/64"
        return SecurityGroupRule.from_dict(kw)

    def group_step(self, ports: list[NbObject]) -> str:
        """Create a group, change its rules, delete an unused one, or change a port's
        groups / port security."""
        r = self.rng
        groups = [g.id for g in self.of("securitygroup")]
        choice = r.random()
        if choice < 0.08:
            i = self.key()
            ags = self.of("addressgroup")
            ag_id = ags[0].id if ags and r.random() < 0.5 else f"ag{i}"  # changed or new
            self.put(AddressGroup(id=ag_id, topic=r.choice(PROJECTS), addresses=tuple(
                r.sample(["10.1.0.0/24", "10.2.3.4/32", "fd00::/64", "192.0.2.1"],
                         r.randint(0, 3)))))
            return "address group"
        if choice < 0.25 or not groups:
            gid = f"g{self.key()}"
            rules = tuple(self.random_rule(groups + [gid]) for _ in range(r.randint(1, 4)))
            self.put(SecurityGroup(id=gid, topic=r.choice(PROJECTS), rules=rules,
                                   stateful=r.random() < 0.8))
            return "add group"
        if choice < 0.45:
            g = self.objs[("securitygroup", r.choice(groups))]
            assert isinstance(g, SecurityGroup)
            rules = list(g.rules)
            if rules and r.random() < 0.5:
                rules.pop(r.randrange(len(rules)))
            else:
                rules.append(self.random_rule(groups))
            self.put(g.replace(rules=tuple(rules)))
            return "change rules"
        if choice < 0.5:
            gid = r.choice(groups)
            used = any(isinstance(p, Port) and gid in p.security_groups for p in ports) or any(
                isinstance(g, SecurityGroup) and gid in g.remote_groups()
                for g in self.of("securitygroup") if g.id != gid)
            if used:
                return "noop"
            self.delete("securitygroup", gid)
            return "delete group"
        if not ports:
            return "noop"
        p = r.choice(ports)
        assert isinstance(p, Port)
        if r.random() < 0.2:
            self.put(p.replace(port_security_enabled=False, security_groups=(),
                               allowed_address_pairs=()))
            return "port security off"
        chosen = tuple(r.sample(groups, min(len(groups), r.randint(0, 2))))
        self.put(p.replace(port_security_enabled=True, security_groups=chosen))
        return "port groups"

    def free_router_ip(self, net_id: str) -> int:
        """A host part no other router uses on ``net_id`` (as Neutron's IPAM ensures);
        ports use .2 - .201."""
        used = {c.ip.packed[-1] for x in self.of("router") if isinstance(x, Router)
                for rp in x.ports if rp.network_id == net_id for c in rp.cidrs}
        return next(h for h in range(202, 255) if h not in used)

    def external_port(self, ext: NbObject, mac_byte: str, owner: str, device: str
                      ) -> tuple[int, str]:
        """A port of external network ``ext`` (a router's gateway port, a floating IP's
        port) with a fresh address: (its key, the address)."""
        i = self.key()
        ip = f"10.{int(ext.id[1:]) % 250}.0.{i % 200 + 2}"
        self.put(Port(id=f"p{i}", topic="admin", network_id=ext.id, unique_key=i,
                      mac=f"fa:16:3e:{mac_byte}:{i // 256:02x}:{i % 256:02x}",
                      fixed_ips=(FixedIp.from_dict({"subnet_id": f"s{ext.id[1:]}",
                                                    "ip_address": ip}),),
                      device_owner=owner, device_id=device))
        return i, ip

    def north_south_step(self) -> str:
        """Provider / external networks, router gateways, floating IPs, gateway liveness,
        learned neighbours."""
        r = self.rng
        choice = r.random()
        routers = [x for x in self.of("router") if isinstance(x, Router)]
        exts = [x for x in self.of("network") if isinstance(x, Network) and x.external]
        if choice < 0.2 or not exts:
            i = self.key()
            used = {(n.network_type, n.segmentation_id) for n in self.of("network")
                    if isinstance(n, Network) and n.physical_network}
            vlan = r.choice([None, 100 + i % 50])
            if ("vlan" if vlan else "flat", vlan) in used:  # one per wire (an NB claim)
                return "noop"
            self.put(Network(id=f"n{i}", topic="admin", unique_key=i, external=r.random() < 0.8,
                             network_type="vlan" if vlan else "flat", segmentation_id=vlan,
                             physical_network="ext"))
            self.put(Subnet.from_dict({"id": f"s{i}", "topic": "admin", "network_id": f"n{i}",
                                       "cidr": f"10.{i % 250}.0.0/24",
                                       "gateway_ip": f"10.{i % 250}.0.1"}))
            return "add provider network"
        if choice < 0.45 and routers and exts:
            router = r.choice(routers)
            if router.gateway is not None and r.random() < 0.3:
                self.put(router.replace(gateway=None))
                return "clear gateway"
            ext = r.choice(exts)
            _, ip = self.external_port(ext, "ee", "network:router_gateway", router.id)
            self.put(router.replace(gateway=Gateway.from_dict(
                {"network_id": ext.id, "ip_address": ip, "enable_snat": r.random() < 0.8})))
            return "set gateway"
        if choice < 0.75 and exts:
            fips = [x for x in self.of("floatingip") if isinstance(x, FloatingIP)]
            if fips and r.random() < 0.2:
                self.delete("floatingip", r.choice(fips).id)
                return "delete fip"
            ports = [p for p in self.of("port") if isinstance(p, Port) and p.fixed_ips
                     and not p.device_owner and p.fixed_ips[0].ip_address.version == 4]
            if fips and r.random() < 0.5:
                fip = r.choice(fips)
                port = r.choice(ports) if ports and r.random() < 0.7 else None
                rid = r.choice(routers).id if routers and port else None
                self.put(fip.replace(port_id=port.id if port and rid else None,
                                     fixed_ip_address=port.fixed_ips[0].ip_address
                                     if port and rid else None, router_id=rid))
                return "associate fip"
            ext = r.choice(exts)
            i, ip = self.external_port(ext, "ff", "network:floatingip", "")
            port = r.choice(ports) if ports else None
            rid = r.choice(routers).id if routers and port else None
            self.put(FloatingIP.from_dict({
                "id": f"f{i}", "topic": "admin", "floating_ip_address": ip,
                "floating_network_id": ext.id, "port_id": port.id if port and rid else None,
                "fixed_ip_address": str(port.fixed_ips[0].ip_address) if port and rid else None,
                "router_id": rid}))
            return "add fip"
        if choice < 0.9:
            self.engine.changed(self.topo.set_live(frozenset(
                c for c in CHASSIS if r.random() < 0.7)))
            return "gateways live"
        if exts:
            ext = r.choice(exts)
            self.engine.changed(self.topo.learn_neighbour(
                ext.id, f"10.{int(ext.id[1:]) % 250}.0.{r.randint(2, 254)}",
                f"02:00:00:00:00:{r.randint(1, 250):02x}"))
            return "learn neighbour"
        return "noop"

    def chassis_fact_step(self) -> str:
        """Tunnel ports renumbered or gone, reactive learn/forget, or a full resync."""
        r = self.rng
        choice = r.random()
        if choice < 0.3:
            ofports = {t: r.randint(1, 9) for t in ("vxlan", "geneve", "gre")
                       if r.random() < 0.8}
            self.engine.changed(self.topo.set_tunnel_ofports(ofports))
            return "tunnel ofports"
        if choice < 0.8:
            routers = [x for x in self.of("router") if isinstance(x, Router)]
            ports = [p for p in self.of("port") if isinstance(p, Port) and p.fixed_ips]
            if not routers or not ports:
                return "noop"
            router = r.choice(routers)
            ip = str(r.choice(ports).fixed_ips[0].ip_address)
            if r.random() < 0.6:
                self.engine.changed(self.topo.learn(router.id, ip))
                return "learn"
            self.engine.changed(self.topo.forget(router.id, ip))
            return "forget"
        # the stream was lost: the controller replaces the topology and recompiles all
        self.topo.replace_all(self.objs.values())
        self.engine.full()
        return "resync"

    def router_step(self, nets: list[NbObject]) -> str:
        """Create a router on 1-3 networks (with a route via a port), change, or delete one."""
        r = self.rng
        routers = self.of("router")
        if routers and r.random() < 0.4:
            victim = r.choice(routers)
            if r.random() < 0.5:
                self.delete("router", victim.id)
                return "delete router"
            assert isinstance(victim, Router)
            self.put(victim.replace(ports=victim.ports[:-1] or victim.ports, routes=()))
            return "shrink router"
        chosen = r.sample(nets, min(len(nets), r.randint(1, 3)))
        i = self.key()
        ports = [{"id": f"rp{i}-{j}", "mac": f"fa:16:3e:aa:{i % 256:02x}:{j:02x}",
                  "network_id": n.id,
                  "cidrs": [f"10.{int(n.id[1:]) % 250}.0.{self.free_router_ip(n.id)}/24"],
                  "unique_key": 10000 + i * 10 + j} for j, n in enumerate(chosen)]
        hosts = [p for p in self.of("port") if isinstance(p, Port)
                 and p.network_id == chosen[0].id and p.fixed_ips]
        routes = [{"destination": "192.168.0.0/16",
                   "nexthop": str(hosts[0].fixed_ips[0].ip_address)}] if hosts else []
        if hosts and r.random() < 0.3:  # a route equal to an attached subnet: must not
            routes.append({"destination": f"10.{int(chosen[0].id[1:]) % 250}.0.0/24",
                           "nexthop": str(hosts[0].fixed_ips[0].ip_address)})
        self.put(Router.from_dict({"id": f"r{i}", "topic": r.choice(PROJECTS), "ports": ports,
                                   "routes": routes, "unique_key": i}))
        return "add router"


@pytest.mark.parametrize("seed", range(12))
def test_incremental_equals_full(seed: int) -> None:
    w = World(seed, l3_mode="reactive" if seed % 3 == 2 else "proactive")
    steps = set()
    most = 0
    for n in range(120):
        what = w.step()
        steps.add(what)
        most = max(most, len(w.engine.desired()))
        oracle = Engine(default_apps(), w.topo)
        oracle.full()
        assert w.engine.desired() == oracle.desired(), f"step {n} ({what}) diverged"
        # owners listed by parts, incrementally, are exactly those a full listing finds
        assert set(w.engine.flows) == set(oracle.flows), f"step {n} ({what}): owners"
        # every flow lowered against its stage declaration (a failure would be an error)
        assert w.engine.errors == 0 and not w.engine.failed
        w.engine.table.resolve()
        oracle.table.resolve()
        assert w.engine.table.desired == oracle.table.desired, f"step {n} ({what}): table"
        assert not w.engine.table.conflicts, f"step {n} ({what}): {w.engine.table.conflicts}"
        # the topology's indexes equal a rebuild from scratch
        fresh = Topology(w.topo.facts)
        fresh.replace_all(w.objs.values())
        assert {k: v for k, v in w.topo.net_ports.items() if v} == \
            {k: v for k, v in fresh.net_ports.items() if v}, f"step {n} ({what})"
        for index in ("net_local", "net_addrs", "net_dhcp", "net_subnets", "net_chassis",
                      "net_port_owners", "group_port_owners", "_by_key"):
            assert {k: v for k, v in getattr(w.topo, index).items() if v} == \
                {k: v for k, v in getattr(fresh, index).items() if v}, f"step {n}: {index}"
        assert (w.topo.local_networks, w.topo.local_routers, w.topo.routed_networks) == \
            (fresh.local_networks, fresh.local_routers, fresh.routed_networks)
        assert {k: v for k, v in w.topo.group_ports.items() if v} == \
            {k: v for k, v in fresh.group_ports.items() if v}, f"step {n} ({what})"
        assert w.topo.scopes_needed() == fresh.scopes_needed()
        for key, owners in w.engine.table.by_key.items():
            bodies = {(f.actions, f.goto, f.write_metadata, f.meter)
                      for fs in owners.values() for f in fs}
            merged = all(isinstance(a, Conjunction) for b in bodies for a in b[0])
            assert len(bodies) == 1 or merged, f"step {n} ({what}): two flows for {key}"
    assert most > 20, "the random world hardly compiled any flows"
    assert len(steps) > 8, steps
    assert "add group" in steps, steps


def test_the_random_worlds_exercise_north_south() -> None:
    """Over the oracle's seeds, the NAT app compiles gateway and floating IP flows into
    every one of its stages (so the oracle above checks them)."""
    stages: set[str] = set()
    kinds: set[str] = set()
    for seed in range(12):
        w = World(seed)
        for _ in range(120):
            w.step()
            for (app, owner), flows in w.engine.flows.items():
                if app == "nat" and flows:
                    kinds.add(owner.split("/")[0])
                    stages |= {f.stage for f in flows}
    assert kinds == {"gw", "fip"}, kinds
    assert stages == {"ext_in", "nat_in", "snat", "ext_out"}, stages


def test_the_random_worlds_exercise_every_group_step() -> None:
    """The oracle above sees groups created, changed, deleted and ports moved between
    them (over its seeds; not every seed draws every kind)."""
    seen: set[str] = set()
    for seed in range(12):
        w = World(seed)
        seen |= {w.step() for _ in range(120)}
    assert {"add group", "change rules", "delete group", "port groups",
            "port security off", "address group"} <= seen, seen


def test_recompiles_only_affected_owners() -> None:
    for seed in range(50):  # the first world with a plugged port
        w = World(seed)
        for _ in range(60):
            w.step()
        ports = [p for p in w.of("port") if isinstance(p, Port) and p.id in w.topo.facts.ofports]
        if ports:
            break
    assert ports, "no seed plugged a port"
    total = len(w.engine.flows)
    p = ports[0]
    touched = w.topo.apply("port", p.id, p.replace(name="renamed", version=p.version + 1))
    recompiled = w.engine.changed(touched or set())
    assert 0 < recompiled < total


def test_status_writes_recompile_nothing() -> None:
    for seed in range(50):
        w = World(seed)
        for _ in range(60):
            w.step()
        ports = [p for p in w.of("port") if isinstance(p, Port)
                 and ("obj", "port", p.id) in w.engine.by_dep]  # some owner reads them
        if ports:
            break
    before = w.engine.compiled
    for p in ports:
        w.put(p.replace(status="ACTIVE" if p.status != "ACTIVE" else "DOWN"))
    assert w.engine.compiled == before  # nothing recompiled, nothing lowered
    oracle = Engine(default_apps(), w.topo)
    oracle.full()
    assert w.engine.desired() == oracle.desired()
    assert w.topo.get(Port, ports[0].id) == w.objs[("port", ports[0].id)]  # but stored
    w.put(ports[0].replace(mac="fa:16:3e:77:77:77"))  # a real change still recompiles
    assert w.engine.compiled > before
