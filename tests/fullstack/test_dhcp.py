"""Distributed DHCPv4 with a real client: VMs boot with no address and ask ISC dhclient
for one; every chassis answers its own VMs from the NB (df-controller processes, real etcd
and redis)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from dragonflow.db.connect import open_nb
from dragonflow.model import Subnet
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Testbed
from tests.fixtures.wait import eventually


@pytest.fixture(params=["etcd", "redis"])
def dep(request: pytest.FixtureRequest, testbed: Testbed) -> Iterator[Deployment]:
    server = request.getfixturevalue(f"{request.param}_server")
    nb = open_nb(server.url, root=f"/dhcp{uuid.uuid4().hex[:8]}/")
    d = Deployment(testbed, nb, server.url, in_process=False)
    try:
        d.add_node("hv1", "10.255.0.11")
        d.add_node("hv2", "10.255.0.12")
        yield d
    finally:
        d.stop()
        nb.driver.close()


def test_vms_get_their_nb_address_gateway_dns_mtu_routes_and_options(dep: Deployment) -> None:
    n = dep.bed.nodes
    dep.network("blue", "vxlan", 901, "10.90.0.0/24", dhcp=True, dns=("10.90.0.53",),
                host_routes=(("192.168.77.0/24", "10.90.0.254"),), mtu=1400)
    dep.network("plain", "vxlan", 902, "10.91.0.0/24")  # DHCP disabled
    a = dep.vm(n["hv1"], "a", "blue", "fa:16:3e:90:00:11", "10.90.0.11", dhcp=True,
               extra_dhcp_opts=(("ntp-server", "10.90.0.123"), ("66", "tftp.example")))
    b = dep.vm(n["hv2"], "b", "blue", "fa:16:3e:90:00:12", "10.90.0.12", dhcp=True)
    c = dep.vm(n["hv1"], "c", "plain", "fa:16:3e:91:00:11", "10.91.0.11", dhcp=True)
    dep.wait_active(["a-port", "b-port", "c-port"], timeout=60)
    for vm in (a, b):
        got = vm.dhclient()
        assert got.returncode == 0, got.stderr[-2000:]
        assert "DHCPACK" in got.stderr and "bound to" in got.stderr, got.stderr[-2000:]
    assert (a.ip, b.ip) == ("10.90.0.11", "10.90.0.12")  # exactly the NB addresses
    routes = a.exec(["ip", "-4", "route"]).stdout
    assert "default via 10.90.0.1" in routes, routes
    assert "192.168.77.0/24 via 10.90.0.254" in routes, routes  # option 121
    assert "mtu 1400" in a.exec(["ip", "link", "show", "eth0"]).stdout
    resolv = a.resolv_conf()
    assert "nameserver 10.90.0.53" in resolv and "openstacklocal" in resolv, resolv
    lease = (a.node.rundir / "dhclient-a.leases").read_text()
    assert re.search(r"option ntp-servers 10\.90\.0\.123;", lease), lease  # extra options
    assert 'option host-name "host-10-90-0-11"' in lease, lease
    assert re.search(r"option dhcp-server-identifier 10\.90\.0\.1;", lease), lease
    assert a.ping(b.ip, count=2, timeout=3)  # across nodes, with the leased addresses
    # renew: unicast to the server address, answered (ACK) by the VM's own chassis
    renewed = a.exec(["dhclient", "-4", "-1", "-v", "-cf", str(a.node.rundir / "dhclient-a.conf"),
                      "-lf", str(a.node.rundir / "dhclient-a.leases"), "-pf",
                      str(a.node.rundir / "dhclient-a.pid"), "eth0"], timeout=30)
    assert "DHCPACK" in renewed.stderr, renewed.stderr[-2000:]
    # DHCP disabled on the subnet: no offer
    none = c.dhclient(timeout=5)
    assert none.returncode != 0 and "DHCPOFFER of" not in none.stderr, none.stderr[-2000:]
    assert c.ip == ""


def test_subnet_changes_take_effect_without_a_restart(dep: Deployment) -> None:
    n = dep.bed.nodes
    dep.network("red", "vxlan", 903, "10.92.0.0/24", dhcp=True)
    v = dep.vm(n["hv1"], "v", "red", "fa:16:3e:92:00:11", "10.92.0.11", dhcp=True)
    dep.wait_active(["v-port"], timeout=60)
    sub = dep.nb.get(Subnet, "red-subnet")
    assert sub is not None
    dep.nb.update(sub.replace(enable_dhcp=False))
    assert eventually(lambda: v.dhclient(timeout=4).returncode != 0, timeout=20)
    sub = dep.nb.get(Subnet, "red-subnet")
    assert sub is not None
    dep.nb.update(sub.replace(enable_dhcp=True, dns_nameservers=("10.92.0.99",)))
    assert eventually(lambda: v.dhclient(timeout=4).returncode == 0, timeout=20)
    assert v.ip == "10.92.0.11" and "10.92.0.99" in v.resolv_conf()
