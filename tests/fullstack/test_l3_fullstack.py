"""Fullstack distributed router: 3 nodes, one router with 3 IPv4 and 2 IPv6 subnets, VMs on
every node, real pings / traceroutes between namespaced VMs -- every test in proactive AND
reactive L3 mode. Controllers run in this process on the embedded NB (the same code as
df-controller; the L2 fullstack covers the process + etcd/redis path)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from functools import partial

import pytest

from dragonflow.db.connect import open_nb
from dragonflow.model import Route, Router
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Testbed, Vm
from tests.fixtures.deploy import SharedDeployment
from tests.fixtures.wait import at_once

NODES = [("hv1", "10.255.0.11"), ("hv2", "10.255.0.12"), ("hv3", "10.255.0.13")]
# network: (type, vni, v4 cidr, gateway, v6 cidr or None, gateway6)
NETS = {
    "n1": ("vxlan", 301, "10.1.0.0/24", "10.1.0.1", "fd00:1::/64", "fd00:1::1"),
    "n2": ("geneve", 302, "10.2.0.0/24", "10.2.0.1", "fd00:2::/64", "fd00:2::1"),
    "n3": ("gre", 303, "10.3.0.0/24", "10.3.0.1", None, None),
}
VMS = {  # name: (node, network, host number)
    "a": ("hv1", "n1", 11), "b": ("hv2", "n1", 12),
    "c": ("hv2", "n2", 11), "d": ("hv3", "n2", 12),
    "e": ("hv3", "n3", 11), "f": ("hv1", "n3", 12),
}


class L3Bed:
    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.vms: dict[str, Vm] = {}
        self.v6: dict[str, str] = {}

    def build(self) -> None:
        dep, n = self.dep, self.dep.bed.nodes
        interfaces = []
        for net, (ntype, vni, cidr, gw, cidr6, gw6) in NETS.items():
            dep.network(net, ntype, vni, cidr)
            cidrs = [f"{gw}/24"]
            if cidr6:
                dep.subnet(net, f"{net}-subnet6", cidr6)
                cidrs.append(f"{gw6}/64")
            interfaces.append((net, cidrs))
        for i, (vm, (node, net, host)) in enumerate(VMS.items()):
            _, _, cidr, gw, cidr6, gw6 = NETS[net]
            ip = cidr.replace("0/24", str(host))
            v6 = cidr6.replace("/64", f"{host}") if cidr6 else None
            # f routes for 192.168.77.0/24 (an extra route through it): as in Neutron, a VM
            # that forwards needs those addresses as an allowed address pair (port security)
            pairs = (("192.168.77.0/24", None),) if vm == "f" else ()
            self.vms[vm] = dep.vm(n[node], vm, net, f"fa:16:3e:00:33:{i:02x}", ip, gateway=gw,
                                  ipv6=f"{v6}/64" if v6 else None, gateway6=gw6,
                                  address_pairs=pairs)
            if v6:
                self.v6[vm] = v6
        dep.router("r1", interfaces)
        dep.wait_active([f"{v}-port" for v in VMS], timeout=60)
        dep.settle()  # every node has the flows of every other node's ports too


def own_bed(testbed: Testbed, l3_mode: str) -> Iterator[L3Bed]:
    nb = open_nb(f"memory://l3-{uuid.uuid4().hex[:8]}", root="/l3/")
    dep = Deployment(testbed, nb, "memory://", in_process=True, l3_mode=l3_mode)
    try:
        for name, ip in NODES:
            dep.add_node(name, ip)
        bed = L3Bed(dep)
        bed.build()
        yield bed
    finally:
        dep.stop()


def build(dep: Deployment) -> L3Bed:
    bed = L3Bed(dep)
    bed.build()
    return bed


@pytest.fixture(scope="module")
def proactive_bed() -> Iterator[SharedDeployment]:
    """The proactive bed, which the tests that leave its topology and VMs as they found them
    take turns on (what a test adds is removed after it)."""
    shared = SharedDeployment("memory://", tag="l3", extra_nodes=tuple(NODES[2:]),
                              l3_mode="proactive", setup=build)
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture(params=["proactive", "reactive"])
def l3(request: pytest.FixtureRequest) -> Iterator[L3Bed]:
    """Proactive: the module's bed (its flows do not depend on the traffic before). Reactive:
    a bed of the test's own, so that its first packets take the controller's path (host
    flows learned by a test before would carry them)."""
    if request.param == "proactive":
        shared = request.getfixturevalue("proactive_bed")
        with shared.use(request):
            yield shared.base
    else:
        yield from own_bed(request.getfixturevalue("testbed"), request.param)


@pytest.fixture(params=["proactive", "reactive"])
def own_l3(request: pytest.FixtureRequest, testbed: Testbed) -> Iterator[L3Bed]:
    """A bed of the test's own in either mode: for a test that changes its router or VMs."""
    yield from own_bed(testbed, request.param)


def ttl_of(vm: Vm, ip: str) -> int:
    out = vm.exec(f"ping -c1 -W2 {ip}").stdout
    m = re.search(r"(?:ttl|hlim)=(\d+)", out)
    assert m, out
    return int(m.group(1))


def test_every_vm_reaches_every_vm_across_subnets_v4_and_v6(l3: L3Bed) -> None:
    pinged = at_once({(a, b): partial(l3.vms[a].ping, l3.vms[b].ip, count=2, timeout=3)
                      for a in l3.vms for b in l3.vms if a != b})
    failed = [pair for pair, ok in pinged.items() if not ok]
    assert failed == []
    pinged = at_once({(a, b): partial(l3.vms[a].ping, l3.v6[b], count=2, timeout=3)
                      for a in l3.v6 for b in l3.v6 if a != b})
    failed6 = [pair for pair, ok in pinged.items() if not ok]
    assert failed6 == []


def test_routed_ttl_is_exactly_one_less(l3: L3Bed) -> None:
    a = l3.vms["a"]
    same_subnet = ttl_of(a, l3.vms["b"].ip)
    routed = ttl_of(a, l3.vms["c"].ip)
    assert routed == same_subnet - 1
    assert ttl_of(a, l3.v6["d"]) == ttl_of(a, l3.v6["b"]) - 1


def test_traceroute_shows_the_router_interface_as_hop_1(l3: L3Bed) -> None:
    a, e = l3.vms["a"], l3.vms["e"]
    for mode in ("", "-I"):  # UDP, then ICMP
        out = a.exec(f"traceroute -n -w2 -q1 -m4 {mode} {e.ip}").stdout
        hops = re.findall(r"^\s*(\d+)\s+(\S+)", out, re.M)
        assert hops[:2] == [("1", "10.1.0.1"), ("2", e.ip)], out
    out = a.exec(f"traceroute -6 -n -w2 -q1 -m4 {l3.v6['c']}").stdout
    hops = re.findall(r"^\s*(\d+)\s+(\S+)", out, re.M)
    assert hops[:2] == [("1", "fd00:1::1"), ("2", l3.v6["c"])], out


def test_router_interfaces_answer_ping_and_unknown_nets_are_unreachable(l3: L3Bed) -> None:
    a = l3.vms["a"]
    for gw in ("10.1.0.1", "10.2.0.1", "10.3.0.1", "fd00:1::1", "fd00:2::1"):
        assert a.ping(gw, count=2), gw
    out = a.exec("ping -c1 -W2 192.0.2.7").stdout
    assert "From 10.1.0.1" in out and "Net Unreachable" in out, out
    out = a.exec("ping -6 -c1 -W2 2001:db8::7").stdout
    assert "From fd00:1::1" in out and "No route" in out, out


def test_extra_route_through_a_vm_router(own_l3: L3Bed) -> None:
    """VM f (n3) forwards to a 'loopback network' 192.168.77.0/24 it hosts on lo."""
    l3 = own_l3  # f is changed for good
    a, f = l3.vms["a"], l3.vms["f"]
    f.exec("sysctl -qw net.ipv4.ip_forward=1 && ip addr add 192.168.77.1/32 dev lo", check=True)
    assert not a.ping("192.168.77.1", timeout=1)
    nb = l3.dep.nb
    r = nb.get_or_raise(Router, "r1")
    route = Route.from_dict({"destination": "192.168.77.0/24", "nexthop": f.ip})
    nb.update(r.replace(routes=(*r.routes, route)))
    l3.dep.settle()
    assert a.ping("192.168.77.1", count=3, timeout=5)
    r = nb.get_or_raise(Router, "r1")
    nb.update(r.replace(routes=()))
    l3.dep.settle()
    assert not a.ping("192.168.77.1", count=2, timeout=2)


def test_removing_an_interface_stops_only_that_subnet_then_router_delete_stops_all(
        own_l3: L3Bed) -> None:
    l3 = own_l3  # the router goes
    a = l3.vms["a"]
    nb = l3.dep.nb
    r = nb.get_or_raise(Router, "r1")
    nb.update(r.replace(ports=tuple(p for p in r.ports if p.network_id != "n3")))
    l3.dep.settle()
    assert not a.ping(l3.vms["e"].ip, count=2, timeout=2)
    assert a.ping(l3.vms["c"].ip, count=2)
    nb.delete(Router, "r1")
    l3.dep.settle()
    assert not a.ping(l3.vms["c"].ip, count=2, timeout=2)
    assert a.ping(l3.vms["b"].ip)  # L2 is untouched


def test_two_routers_with_overlapping_subnets_in_two_projects_stay_isolated(l3: L3Bed) -> None:
    dep, n = l3.dep, l3.dep.bed.nodes
    dep.topic = "project2"
    dep.network("m1", "vxlan", 401, "10.1.0.0/24")  # the same CIDRs as project 1
    dep.network("m2", "geneve", 402, "10.2.0.0/24")
    x = dep.vm(n["hv1"], "x", "m1", "fa:16:3e:00:44:01", "10.1.0.11", gateway="10.1.0.1")
    y = dep.vm(n["hv2"], "y", "m2", "fa:16:3e:00:44:02", "10.2.0.11", gateway="10.2.0.1")
    dep.router("r2", [("m1", ["10.1.0.1/24"]), ("m2", ["10.2.0.1/24"])])
    dep.wait_active(["x-port", "y-port"])
    dep.settle()
    assert x.ping(y.ip, count=2)  # routed inside project 2
    assert l3.vms["a"].ping(l3.vms["c"].ip, count=2)  # and inside project 1
    # 10.2.0.12 is d in project 1 only: project 2's router must not reach it ...
    assert not x.ping(l3.vms["d"].ip, count=2, timeout=1.5)
    assert l3.vms["a"].ping(l3.vms["d"].ip, count=2)  # ... while project 1's does


def test_host_routes_are_proactive_or_learned_on_first_packet(l3: L3Bed) -> None:
    """proactive: the host route to e exists before any traffic; reactive: it appears (with
    an idle timeout) only once a packet for e went through the controller."""
    hv1 = l3.dep.bed.nodes["hv1"]
    e_ip = l3.vms["e"].ip

    def host_flows() -> list[str]:
        return [f for f in hv1.ofctl("dump-flows", "br-int").splitlines()
                if f"nw_dst={e_ip} " in f or f"nw_dst={e_ip}," in f]

    if l3.dep.l3_mode == "proactive":
        flows = host_flows()
        assert len(flows) == 1 and "idle_timeout" not in flows[0]
        return
    assert host_flows() == []
    assert l3.vms["a"].ping(e_ip, count=2)  # a is on hv1
    flows = host_flows()
    assert len(flows) == 1 and "idle_timeout=30" in flows[0], flows
