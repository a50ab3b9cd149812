"""Incremental == full: after every step of random change sequences (networks, ports,
chassis, VIFs plugged and unplugged, ports moved between chassis), the flows the engine
holds after recompiling only the affected owners equal a fresh full compile -- and every
flow lowers to OpenFlow against its stage declaration."""

from __future__ import annotations

import random

import pytest

from dragonflow.apps.registry import default_apps
from dragonflow.controller.engine import Engine
from dragonflow.controller.topology import ChassisFacts, Topology
from dragonflow.model import (
    Binding,
    Chassis,
    FixedIp,
    NbObject,
    Network,
    Port,
    Router,
    Subnet,
)
from dragonflow.pipeline.lower import Lowering

CHASSIS = ["hv1", "hv2", "hv3"]


class World:
    """A random NB world, applied to a topology the way the controller loop applies it."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.topo = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan", "geneve", "gre"),
                                          tunnel_ofports={"vxlan": 1, "geneve": 2, "gre": 3}))
        self.engine = Engine(default_apps(), self.topo)
        self.engine.full()
        self.objs: dict[tuple[str, str], NbObject] = {}
        self.next_key = 1
        self.next_ofport = 10
        for i, c in enumerate(CHASSIS):
            self.put(Chassis(id=c, ip=f"10.255.0.{11 + i}", tunnel_types=("vxlan", "geneve",
                                                                          "gre")))

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
        if choice < 0.15 or not nets:
            i = self.key()
            ntype = r.choice(["vxlan", "geneve", "gre"])
            self.put(Network(id=f"n{i}", topic="p", network_type=ntype, segmentation_id=i,
                             unique_key=i))
            self.put(Subnet.from_dict({"id": f"s{i}", "topic": "p", "network_id": f"n{i}",
                                       "cidr": f"10.{i % 250}.0.0/24"}))
            return "add network"
        if choice < 0.25:
            return self.router_step(nets)
        if choice < 0.45:
            net = r.choice(nets)
            i = self.key()
            chassis = r.choice(CHASSIS + [None])
            self.put(Port(id=f"p{i}", topic="p", network_id=net.id,
                          mac=f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}",
                          fixed_ips=(FixedIp.from_dict({
                              "subnet_id": f"s{net.id[1:]}",
                              "ip_address": f"10.{int(net.id[1:]) % 250}.0.{i % 250 + 2}"}),),
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
        if choice < 0.8 and ports:
            p = r.choice(ports)
            assert isinstance(p, Port)
            self.put(p.replace(mac=f"fa:16:3e:01:{self.key() % 256:02x}:00"))
            return "change mac"
        if choice < 0.9 and ports:
            p = r.choice(ports)
            self.delete("port", p.id)
            self.topo.set_ofport(p.id, None)
            self.engine.changed({("ofport", p.id)})
            return "delete port"
        if choice < 0.95:
            c = r.choice(self.of("chassis"))
            assert isinstance(c, Chassis)
            self.put(c.replace(ip=f"10.255.1.{self.key() % 250}"))
            return "chassis ip"
        net = r.choice(nets)
        in_router = any(isinstance(x, Router) and any(rp.network_id == net.id for rp in x.ports)
                        for x in self.of("router"))
        if not in_router and not any(isinstance(p, Port) and p.network_id == net.id
                                     for p in ports):
            self.delete("subnet", f"s{net.id[1:]}")
            self.delete("network", net.id)
            return "delete network"
        return "noop"


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
                  "network_id": n.id, "cidrs": [f"10.{int(n.id[1:]) % 250}.0.1/24"],
                  "unique_key": 10000 + i * 10 + j} for j, n in enumerate(chosen)]
        hosts = [p for p in self.of("port") if isinstance(p, Port)
                 and p.network_id == chosen[0].id and p.fixed_ips]
        routes = [{"destination": "192.168.0.0/16",
                   "nexthop": str(hosts[0].fixed_ips[0].ip_address)}] if hosts else []
        self.put(Router.from_dict({"id": f"r{i}", "topic": "p", "ports": ports,
                                   "routes": routes, "unique_key": i}))
        return "add router"


@pytest.mark.parametrize("seed", range(12))
def test_incremental_equals_full(seed: int) -> None:
    w = World(seed)
    lowering = Lowering(w.topo.facts.tunnel_ofports)
    for n in range(120):
        what = w.step()
        oracle = Engine(default_apps(), w.topo)
        oracle.full()
        assert w.engine.desired() == oracle.desired(), f"step {n} ({what}) diverged"
        assert w.engine.errors == 0
        lowering.lower_all(w.engine.desired())  # every flow satisfies its stage declaration
    assert w.engine.desired(), "the random world compiled to no flows at all"


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
