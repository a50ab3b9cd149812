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
def dep(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """df-controller processes on a real etcd / redis: the session's deployment on it (each
    test's networks and VMs are removed after it)."""
    shared = request.getfixturevalue(f"{request.param}_deployment")
    with shared.use(request) as d:
        yield d


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


FLOOD = r"""
import socket, sys, time
from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, udp
mac, seconds = sys.argv[1], float(sys.argv[2])
p = packet.Packet()
p.add_protocol(ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=mac, ethertype=0x0800))
p.add_protocol(ipv4.ipv4(src="0.0.0.0", dst="255.255.255.255", proto=17))
p.add_protocol(udp.udp(src_port=68, dst_port=67))
p.add_protocol(dhcp.dhcp(op=1, chaddr=mac, xid=7, options=dhcp.options(option_list=[
    dhcp.option(tag=dhcp.DHCP_MESSAGE_TYPE_OPT, value=bytes([dhcp.DHCP_DISCOVER]))])))
p.serialize()
frame = bytes(p.data)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    try:
        s.send(frame)
        sent += 1
    except OSError:
        pass
print(sent)
"""


# What the two raw DHCP clients below share: a DISCOVER frame, and waiting for its OFFER.
CLIENT = r"""
import socket, sys, time
from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, udp


def discover(mac, xid):
    p = packet.Packet()
    p.add_protocol(ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=mac, ethertype=0x0800))
    p.add_protocol(ipv4.ipv4(src="0.0.0.0", dst="255.255.255.255", proto=17))
    p.add_protocol(udp.udp(src_port=68, dst_port=67))
    p.add_protocol(dhcp.dhcp(op=1, chaddr=mac, xid=xid, options=dhcp.options(option_list=[
        dhcp.option(tag=dhcp.DHCP_MESSAGE_TYPE_OPT, value=bytes([dhcp.DHCP_DISCOVER]))])))
    p.serialize()
    return bytes(p.data)


def offer(s, xid, seconds):
    # the address OFFERed for xid within seconds, else None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            frame = s.recv(2048)
        except socket.timeout:
            continue
        try:
            d = packet.Packet(frame).get_protocol(dhcp.dhcp)
        except Exception:
            continue
        if d is not None and d.op == 2 and d.xid == xid:
            return d.yiaddr
    return None


s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("eth0", 0))
"""

# A neighbour's own DISCOVERs during the flood, 20 per second (its own budget is 50/s):
# prints how many OFFERs came back.
ASK = CLIENT + r"""
mac, count = sys.argv[1], int(sys.argv[2])
s.settimeout(0.01)
offers = 0
for i in range(count):
    s.send(discover(mac, 1000 + i))
    offers += offer(s, 1000 + i, 0.05) is not None
print(offers)
"""
ASKS = 60


def test_a_discover_flood_does_not_starve_a_neighbours_lease(testbed: Testbed) -> None:
    """One VM floods DISCOVERs as fast as a raw socket sends (>= 5,000/s) for 10 s; a VM on
    the same node gets (nearly) every one of its own DISCOVERs answered and binds meanwhile
    (its own per-port budget), and a new port there still goes ACTIVE."""
    import subprocess
    import sys
    import time

    nb = open_nb(f"memory://dhcpflood-{uuid.uuid4().hex[:8]}", root="/df/")
    d = Deployment(testbed, nb, "memory://", in_process=True)
    try:
        hv1 = d.add_node("hv1", "10.255.0.11")
        d.network("g", "vxlan", 904, "10.93.0.0/24", dhcp=True)
        bad = d.vm(hv1, "bad", "g", "fa:16:3e:93:00:66", "10.93.0.66", dhcp=True)
        good = d.vm(hv1, "good", "g", "fa:16:3e:93:00:11", "10.93.0.11", dhcp=True)
        d.wait_active(["bad-port", "good-port"], timeout=30)
        flood = subprocess.Popen(["ip", "netns", "exec", bad.netns, sys.executable, "-c",
                                  FLOOD, bad.mac, "10"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            asked = good.exec([sys.executable, "-c", ASK, good.mac, str(ASKS)], timeout=30)
            got = good.dhclient(timeout=8)
            d.vm(hv1, "late", "g", "fa:16:3e:93:00:12", "10.93.0.12")
            d.wait_active(["late-port"], timeout=8)
            still = flood.poll() is None
        finally:
            out, _ = flood.communicate(timeout=40)
        sent = int(out.strip() or 0)
        assert sent >= 50_000, f"the flood was {sent} frames in 10 s"
        assert still, "the checks ran after the flood: they prove nothing"
        offers = int(asked.stdout.strip() or 0)
        print(f"flood: {sent} DISCOVERs in 10 s; the neighbour got {offers} offers for "
              f"{ASKS} DISCOVERs")
        assert offers >= ASKS * 0.8, f"only {offers} of {ASKS} DISCOVERs answered"
        assert got.returncode == 0 and good.ip == "10.93.0.11", got.stderr[-1500:]
    finally:
        d.stop()


# ONE DISCOVER, then wait for its OFFER: prints the address offered, or "none".
ONCE = CLIENT + r"""
mac, wait = sys.argv[1], float(sys.argv[2])
s.settimeout(0.1)
s.send(discover(mac, 4242))
print("sent", flush=True)
print(offer(s, 4242, wait) or "none")
"""


def test_a_discover_sent_before_the_port_is_wired_is_answered_once_it_is(
        dep: Deployment) -> None:
    """A VM asks before its chassis has its port (here: before the NB port even exists):
    its one DISCOVER is held and answered when the port's flows are in -- no client
    back-off. Only one DISCOVER is ever sent, so an OFFER proves the hold."""
    import subprocess
    import sys

    hv1 = dep.bed.nodes["hv1"]
    dep.network("early", "vxlan", 907, "10.96.0.0/24", dhcp=True)
    vm = dep.bed.add_vm(hv1, "early", "fa:16:3e:96:00:11", None, "early-port", mtu=1500)
    asker = subprocess.Popen(["ip", "netns", "exec", vm.netns, sys.executable, "-c", ONCE,
                              vm.mac, "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert asker.stdout is not None and asker.stdout.readline().strip() == "sent"
        ofport = hv1.vsctl("get", "Interface", vm.port, "ofport").strip()
        dump = hv1.ofctl("dump-flows", "br-int", f"in_port={ofport}")
        assert "in_port" not in dump, dump  # asked before anything knew the port
        dep.vm_port(hv1, "early", "early", vm.mac, "10.96.0.11")
        dep.wait_active(["early-port"], timeout=30)
        out, _ = asker.communicate(timeout=30)
    finally:
        if asker.poll() is None:
            asker.kill()
    assert out.strip() == "10.96.0.11", out


def test_dhcpv6_stateful_gives_the_nb_address_and_stateless_the_options(
        dep: Deployment) -> None:
    n = dep.bed.nodes
    dep.network("six", "vxlan", 905, "10.94.0.0/24", dhcp=True)
    dep.subnet("six", "six-full", "fd00:94::/64", gateway_ip="fd00:94::1",
               ipv6_mode="dhcpv6-stateful")
    dep.network("less", "vxlan", 906, "10.95.0.0/24", dhcp=True)
    dep.subnet("less", "less-opts", "fd00:95::/64", gateway_ip="fd00:95::1",
               ipv6_mode="dhcpv6-stateless")
    for sid, dns in (("six-full", "fd00:94::53"), ("less-opts", "fd00:95::53")):
        sub = dep.nb.get(Subnet, sid)
        assert sub is not None
        dep.nb.update(sub.replace(dns_nameservers=(dns,)))
    a = dep.vm(n["hv1"], "a6", "six", "fa:16:3e:94:00:11", "10.94.0.11",
               ipv6="fd00:94::1:11/64", ipv6_subnet="six-full", slaac=True)
    b = dep.vm(n["hv2"], "b6", "less", "fa:16:3e:95:00:11", "10.95.0.11",
               ipv6="fd00:95::f816:3eff:fe95:11/64", ipv6_subnet="less-opts", slaac=True)
    dep.wait_active(["a6-port", "b6-port"], timeout=60)
    got = a.dhclient6(timeout=10)
    assert got.returncode == 0, got.stderr[-2000:]
    addrs = a.exec(["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"]).stdout
    assert "fd00:94::1:11/128" in addrs, (addrs, got.stderr[-1500:])  # exactly the NB's
    assert "fd00:94::53" in a.resolv_conf(), a.resolv_conf()
    got = b.dhclient6(stateless=True, timeout=10)
    assert got.returncode == 0, got.stderr[-2000:]
    assert "fd00:95::53" in b.resolv_conf(), b.resolv_conf()
