"""Fullstack north-south: provider networks (flat, VLAN), routers' external gateways with SNAT
on a gateway chassis (and its failover), distributed floating IPs -- real packets between
namespaced VMs and a host of the outside world on the test bed's physical network.

Three nodes map the physical network "ext" (each its own br-ext, uplink on the test bed's
physical switch): hv1 a compute node, hv2 and hv3 gateway-capable. The outside host sits on
the flat external network (172.24.4.0/24) and on VLAN 100 (10.100.0.0/24)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from dragonflow.db.connect import open_nb
from dragonflow.db.errors import StaleVersion
from dragonflow.model import Binding, FloatingIP, Port
from dragonflow.pipeline.topology import chassis_mac, gateway_rank
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.probes import capture, connection_source, echo_source, probe
from dragonflow.sim.testbed import Host, Testbed, Vm
from tests.fixtures.wait import eventually

EXT_CIDR, EXT_GW = "172.24.4.0/24", "172.24.4.1"
OUTSIDE = "172.24.4.100"
ROUTER_GW = "172.24.4.10"
VLAN, VLAN_CIDR, VLAN_OUTSIDE = 100, "10.100.0.0/24", "10.100.0.100"


@dataclass
class Bed:
    dep: Deployment
    outside: Host
    outside_vlan: Host


def _bed(testbed: Testbed, url: str) -> Iterator[Bed]:
    memory = url.startswith("memory:")
    tag = uuid.uuid4().hex[:8]
    nb = open_nb(f"memory://ns-{tag}" if memory else url, root=f"/ns{tag}/")
    dep = Deployment(testbed, nb, url, in_process=memory)
    try:
        dep.add_node("hv1", "10.255.0.11", physnets=("ext",))
        dep.add_node("hv2", "10.255.0.12", physnets=("ext",), gateway=True)
        dep.add_node("hv3", "10.255.0.13", physnets=("ext",), gateway=True)
        outside = testbed.add_outside("out", "ext", f"{OUTSIDE}/24")
        # the outside's VLAN leg: another host on VLAN 100 of the same physical network
        vlan = testbed.add_outside("outv", "ext", f"{VLAN_OUTSIDE}/24", vlan=VLAN)
        yield Bed(dep, outside, vlan)
    finally:
        dep.stop()
        if not memory:
            nb.driver.close()


@pytest.fixture(params=["etcd", "redis"])
def bed(request: pytest.FixtureRequest, testbed: Testbed) -> Iterator[Bed]:
    """Three df-controller processes on ``request.param`` (tests that need only one
    database parametrize ``bed`` indirectly)."""
    server = request.getfixturevalue(f"{request.param}_server")
    yield from _bed(testbed, server.url)


def _sees_source(host: Host, vm: Vm, dst: str) -> str:
    """The source address ``host`` sees on an ICMP echo ``vm`` sends to ``dst``."""
    return echo_source(host.netns, host.dev, lambda: vm.ping(dst, count=3))


def _router_with_gateway(dep: Deployment) -> None:
    """The external flat network, project network t1 (10.0.0.0/24) and router r1 on it with
    its gateway on the external network."""
    dep.provider_network("ext", "ext", EXT_CIDR, external=True, gateway_ip=EXT_GW)
    dep.network("t1", "vxlan", 501, "10.0.0.0/24")
    dep.router("r1", [("t1", ["10.0.0.1/24"])])
    dep.set_gateway("r1", "ext", ROUTER_GW)


def _first_reply(host: Host, ip: str, t0: float, timeout: float = 10.0) -> float:
    """Seconds from ``t0`` until ``host`` gets an echo reply from ``ip`` (probing every
    ~0.1 s); fails the test after ``timeout``."""
    while time.monotonic() - t0 < timeout:
        if host.exec(["ping", "-n", "-c", "1", "-W", "0.1", ip]).returncode == 0:
            return time.monotonic() - t0
    raise AssertionError(f"no reply from {ip} within {timeout} s")


def _capture(netns: str, dev: str, bpf: str, action: Callable[[], object], count: int = 1
             ) -> str:
    """tcpdump -e of ``count`` frames matching ``bpf`` on ``dev`` in ``netns`` while
    ``action()`` runs (link-level headers: VLAN tags and MACs)."""
    return capture(netns, dev, bpf, action, count, link=True)


@pytest.mark.parametrize("bed", ["etcd"], indirect=True)
def test_vlan_provider_network_spans_chassis_and_reaches_the_outside(bed: Bed) -> None:
    dep, n = bed.dep, bed.dep.bed.nodes
    dep.provider_network("pv", "ext", VLAN_CIDR, vlan=VLAN)
    a = dep.vm(n["hv1"], "a", "pv", "fa:16:3e:10:00:01", "10.100.0.11")
    b = dep.vm(n["hv2"], "b", "pv", "fa:16:3e:10:00:02", "10.100.0.12")
    dep.wait_active(["a-port", "b-port"])
    assert eventually(lambda: a.ping("10.100.0.12"), 10), "VLAN: hv1 -> hv2"
    assert b.ping("10.100.0.11")
    assert a.ping(VLAN_OUTSIDE, count=2), "VLAN: VM -> host outside on VLAN 100"
    assert bed.outside_vlan.ping("10.100.0.12", count=2), "outside -> VM on VLAN 100"
    # on the physical network (hv1's uplink, at the physical switch) the frames carry the tag
    seen = _capture(dep.bed.net_ns, "x1-ext", "icmp or (vlan and icmp)",
                    lambda: a.ping("10.100.0.12", count=2))
    assert "vlan 100" in seen, seen
    # nothing of VLAN 100 reaches the untagged (flat) side
    assert not a.ping(OUTSIDE, count=1, timeout=1)
    # a flat network on the same physical network: untagged, and meets the outside host
    dep.provider_network("pf", "ext", EXT_CIDR)
    f1 = dep.vm(n["hv1"], "f1", "pf", "fa:16:3e:10:01:01", "172.24.4.51")
    f3 = dep.vm(n["hv3"], "f3", "pf", "fa:16:3e:10:01:03", "172.24.4.53")
    dep.wait_active(["f1-port", "f3-port"])
    assert eventually(lambda: f1.ping("172.24.4.53"), 10), "flat: hv1 -> hv3"
    assert f3.ping(OUTSIDE, count=2) and bed.outside.ping("172.24.4.51", count=2)
    seen = _capture(dep.bed.net_ns, "x3-ext", "icmp or (vlan and icmp)",
                    lambda: f3.ping(OUTSIDE, count=2))
    assert seen and "vlan" not in seen, seen
    # one broadcast from the outside reaches each VM once (no loop through the chassis)
    out = bed.outside.exec(["ping", "-b", "-c", "3", "-i", "0.3", "172.24.4.255"]).stdout
    dups = re.findall(r"DUP!", out)
    assert len(dups) <= 3 * 2, out  # two VMs answer each probe: one reply counted, one DUP


@pytest.mark.parametrize("bed", ["redis"], indirect=True)
def test_routing_onto_a_vlan_network_uses_the_chassis_mac(bed: Bed) -> None:
    dep, n = bed.dep, bed.dep.bed.nodes
    dep.provider_network("pv", "ext", VLAN_CIDR, vlan=VLAN)
    dep.network("t2", "vxlan", 502, "10.0.2.0/24")
    dep.router("r2", [("t2", ["10.0.2.1/24"]), ("pv", ["10.100.0.1/24"])])
    x = dep.vm(n["hv1"], "x", "t2", "fa:16:3e:30:00:01", "10.0.2.11", gateway="10.0.2.1")
    b = dep.vm(n["hv2"], "b", "pv", "fa:16:3e:30:00:02", "10.100.0.12", gateway="10.100.0.1")
    dep.wait_active(["x-port", "b-port"])
    assert eventually(lambda: x.ping("10.100.0.12"), 10), "routed onto the VLAN network"
    assert b.ping("10.0.2.11", count=2), "and back"
    seen = _capture(b.netns, "eth0", "icmp[icmptype] = icmp-echo",
                    lambda: x.ping("10.100.0.12"))
    # the frame came from hv1 through the physical network with hv1's own MAC, never the
    # router's (which would appear behind every chassis' uplink)
    assert chassis_mac("hv1") in seen and "fa:16:3e:aa" not in seen, seen


def test_snat_floating_ips_and_hairpin(bed: Bed) -> None:
    dep, n = bed.dep, bed.dep.bed.nodes
    _router_with_gateway(dep)
    a = dep.vm(n["hv1"], "a", "t1", "fa:16:3e:20:00:01", "10.0.0.11", gateway="10.0.0.1")
    b = dep.vm(n["hv1"], "b", "t1", "fa:16:3e:20:00:02", "10.0.0.12", gateway="10.0.0.1")
    c = dep.vm(n["hv2"], "c", "t1", "fa:16:3e:20:00:03", "10.0.0.13", gateway="10.0.0.1")
    dep.wait_active(["a-port", "b-port", "c-port"])
    # SNAT: a VM without a floating IP reaches the outside as the gateway IP
    assert eventually(lambda: a.ping(OUTSIDE), 10), "SNAT: VM -> outside"
    assert _sees_source(bed.outside, a, OUTSIDE) == ROUTER_GW
    assert c.ping(OUTSIDE, count=2), "SNAT from the other node"
    assert bed.outside.ping(ROUTER_GW), "the gateway IP answers ping"
    # a floating IP: the outside reaches b by it, b leaves as it
    dep.floating_ip("f1", "ext", "172.24.4.20", "b-port", "r1")
    assert eventually(lambda: bed.outside.ping("172.24.4.20"), 10), "outside -> FIP"
    assert _sees_source(bed.outside, b, OUTSIDE) == "172.24.4.20"
    assert connection_source(bed.outside.netns, 8080, lambda: probe(b, "tcp", OUTSIDE, 8080)
                             ) == "172.24.4.20", "a connection b opens comes from its FIP"
    assert connection_source(bed.outside.netns, 8080, lambda: probe(a, "tcp", OUTSIDE, 8080)
                             ) == ROUTER_GW, "a's connection: SNAT"
    # hairpin: through each other's floating IPs
    dep.floating_ip("f2", "ext", "172.24.4.21", "c-port", "r1")
    assert eventually(lambda: bed.outside.ping("172.24.4.21"), 10)
    assert b.ping("172.24.4.21", count=2), "FIP -> FIP across nodes"
    assert a.ping("172.24.4.20", count=2), "SNAT'd VM -> FIP on its own node"
    assert eventually(lambda: (f := dep.nb.get(FloatingIP, "f1")) is not None
                      and f.status == "ACTIVE", 10), "FIP reported ACTIVE"
    # an expiring TTL on the way out: time exceeded from the router
    out = a.exec(["ping", "-n", "-c", "1", "-W", "2", "-t", "1", OUTSIDE]).stdout
    assert "10.0.0.1" in out and "Time to live exceeded" in out, out


@pytest.mark.parametrize("bed", ["etcd"], indirect=True)
def test_floating_ip_follows_its_port_and_the_vm(bed: Bed) -> None:
    dep, n = bed.dep, bed.dep.bed.nodes
    _router_with_gateway(dep)
    b = dep.vm(n["hv1"], "b", "t1", "fa:16:3e:20:00:02", "10.0.0.12", gateway="10.0.0.1")
    c = dep.vm(n["hv2"], "c", "t1", "fa:16:3e:20:00:03", "10.0.0.13", gateway="10.0.0.1")
    dep.wait_active(["b-port", "c-port"])
    fip = "172.24.4.20"
    dep.floating_ip("f1", "ext", fip)  # unassociated: nobody answers for it
    assert not bed.outside.ping(fip, count=2, timeout=1)
    assert dep.nb.get(FloatingIP, "f1").status == "DOWN"  # type: ignore[union-attr]
    dep.associate("f1", "b-port", "r1")
    assert eventually(lambda: bed.outside.ping(fip, count=1, timeout=0.5), 10, poll=0.0)
    assert _sees_source(bed.outside, b, OUTSIDE) == fip
    # moved to another VM on another chassis: the outside follows (gratuitous ARP)
    b.exec(["ip", "link", "set", "eth0", "down"])  # only c can answer for it now
    t0 = time.monotonic()
    dep.associate("f1", "c-port", "r1")
    print(f"FIP moved to another VM: outside follows after "
          f"{_first_reply(bed.outside, fip, t0):.2f} s")
    assert _sees_source(bed.outside, c, OUTSIDE) == fip
    assert bed.outside.ping(fip, count=2)
    # the VM moves to another chassis (hv2 -> hv3): the floating IP goes with it
    dep.bed.remove_vm(c)
    for _ in range(10):  # (its controller writes the port's status meanwhile)
        port = dep.nb.get(Port, "c-port")
        assert port is not None
        try:
            dep.nb.update(port.replace(binding=Binding(kind="chassis", chassis_id="hv3")))
            break
        except StaleVersion:
            continue
    t0 = time.monotonic()
    c = dep.bed.add_vm(n["hv3"], "c", "fa:16:3e:20:00:03", "10.0.0.13/24", "c-port",
                       gateway="10.0.0.1")
    print(f"VM moved to another chassis: outside follows after "
          f"{_first_reply(bed.outside, fip, t0):.2f} s")
    assert _sees_source(bed.outside, c, OUTSIDE) == fip
    # disassociated: nobody answers any more, and it is DOWN
    dep.associate("f1", None)
    assert eventually(lambda: not bed.outside.ping(fip, count=1, timeout=0.5), 10)


@pytest.mark.parametrize("bed", ["redis"], indirect=True)
def test_gateway_failover(bed: Bed) -> None:
    dep, n = bed.dep, bed.dep.bed.nodes
    _router_with_gateway(dep)
    a = dep.vm(n["hv1"], "a", "t1", "fa:16:3e:20:00:01", "10.0.0.11", gateway="10.0.0.1")
    dep.wait_active(["a-port"])
    assert eventually(lambda: a.ping(OUTSIDE), 10)
    active = max(("hv2", "hv3"), key=lambda c: gateway_rank("r1", c))
    t0 = time.monotonic()
    dep.kill_controller(n[active])
    dep.bed.kill_vswitchd(n[active])
    assert eventually(lambda: a.ping(OUTSIDE, count=1, timeout=0.5), 15, poll=0.0)
    outage = time.monotonic() - t0
    print(f"SNAT outage after the active gateway {active} died: {outage:.2f} s")
    assert _sees_source(bed.outside, a, OUTSIDE) == ROUTER_GW
    # router gateway cleared: nothing leaves
    dep.set_gateway("r1", None)
    assert eventually(lambda: not a.ping(OUTSIDE, count=1, timeout=1), 10)
