"""IPv6 router advertisements from every chassis: a VM on a SLAAC subnet forms exactly the
EUI-64 address Neutron computed and routes through the router's link-local address; on a
DHCPv6-stateful subnet it forms none (M flag, prefix not autonomous)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from dragonflow.apps.ra import link_local
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Vm
from tests.fixtures.wait import eventually

RMAC0 = "fa:16:3e:aa:02:00"  # r1's interface on the first network (Deployment.router)


def eui64(prefix: str, mac: str) -> str:
    iid = ipaddress.IPv6Address(link_local(mac)).packed[8:]
    return str(ipaddress.IPv6Address(ipaddress.IPv6Network(prefix).network_address.packed[:8]
                                     + iid))


@pytest.fixture(params=["etcd", "redis"])
def dep(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """df-controller processes on a real etcd / redis NB: the session's deployment on it
    (the test's networks, router and VMs are removed after it)."""
    shared = request.getfixturevalue(f"{request.param}_deployment")
    with shared.use(request) as d:
        yield d


def global_v6(vm: Vm) -> list[str]:
    out = vm.exec(["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"]).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def solicit(vm: Vm) -> None:
    """Bounce the link: the kernel sends its router solicitations again."""
    vm.exec(["ip", "link", "set", "eth0", "down"])
    vm.exec(["ip", "link", "set", "eth0", "up"])


def test_slaac_forms_the_nb_address_and_routes_via_the_router(dep: Deployment) -> None:
    n = dep.bed.nodes
    dep.network("s", "vxlan", 931, "10.31.0.0/24")
    dep.subnet("s", "s-subnet6", "fd00:31::/64", gateway_ip="fd00:31::1", ipv6_mode="slaac")
    dep.network("t", "vxlan", 932, "10.32.0.0/24")
    dep.subnet("t", "t-subnet6", "fd00:32::/64", gateway_ip="fd00:32::1",
               ipv6_mode="dhcpv6-stateful")
    vms = {}
    for name, node, net, mac in (("a", "hv1", "s", "fa:16:3e:31:00:11"),
                                 ("b", "hv2", "s", "fa:16:3e:31:00:12"),
                                 ("c", "hv1", "t", "fa:16:3e:32:00:11")):
        k = 31 if net == "s" else 32
        v6 = eui64(f"fd00:{k}::/64", mac)
        vms[name] = dep.vm(n[node], name, net, mac, f"10.{k}.0.{len(vms) + 11}",
                           ipv6=f"{v6}/64", slaac=True)
    dep.router("r1", [("s", ["10.31.0.1/24", "fd00:31::1/64"]),
                      ("t", ["10.32.0.1/24", "fd00:32::1/64"])])
    dep.wait_active([f"{v}-port" for v in vms], timeout=30)
    # the processes install the router's flows just after the ports': ask again until the
    # advertisement came (the kernel solicits only a few times after the link comes up)
    assert eventually(lambda: bool(dep.flow_count(n["hv1"])), timeout=5)
    a, b, c = vms["a"], vms["b"], vms["c"]

    def formed() -> bool:
        if global_v6(a) and global_v6(b):
            return True
        for vm in (a, b):
            if not global_v6(vm):
                solicit(vm)
        return False
    assert eventually(formed, timeout=20, poll=2.0), (global_v6(a), global_v6(b))
    solicit(c)
    assert global_v6(a) == [eui64("fd00:31::/64", a.mac)]  # exactly Neutron's address
    assert global_v6(b) == [eui64("fd00:31::/64", b.mac)]
    route = a.exec(["ip", "-6", "route", "show", "default"]).stdout
    assert f"via {link_local(RMAC0)}" in route, route
    assert a.ping(global_v6(b)[0], count=2, timeout=3)  # across nodes
    assert a.ping("fd00:31::1", count=2, timeout=3)  # the router answers
    # dhcpv6-stateful: the RA (M=1, prefix not autonomous) gives a route, no SLAAC address
    assert eventually(lambda: "default via fe80" in c.exec(
        ["ip", "-6", "route", "show", "default"]).stdout, timeout=15)
    assert global_v6(c) == []
