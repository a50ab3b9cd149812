"""Port security end to end: df-controller processes on two nodes (real etcd and redis), VMs
in namespaces. A VM with port security may send only from its MAC and fixed IP and its
allowed address pairs: a neighbour on the other node never hears a changed MAC, a spoofed
IP, a spoofed ARP, a DHCP OFFER or a router advertisement from it (a raw socket listens in
the neighbour, and its neighbour cache stays as it was); pings from an exact address pair
and from an address in a pair's CIDR work. A port with port security off sends from any
address. Every "not heard" has a "heard" control through the same listener: the same kind
of frame from an allowed address, or from the port without port security.

    hv1: a   10.60.0.11  port security on; pairs 10.60.0.100, 10.60.0.128/26 (its MAC),
             10.60.0.101 with PAIR_MAC
         c   10.60.0.13  port security OFF
    hv2: b   10.60.0.12  port security on: the neighbour that listens
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytest
from os_ken.lib.packet import arp, dhcp, ethernet, icmpv6, ipv4, ipv6, packet, udp, vlan

from dragonflow.apps.ra import link_local
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Vm
from tests.fixtures.wait import at_once, eventually

PAIR_MAC = "fa:16:3e:60:01:01"
SPOOF_MAC = "fa:16:3e:60:00:99"
BCAST = "ff:ff:ff:ff:ff:ff"
ALL_NODES_MAC = "33:33:00:00:00:01"
A, B, C = ("fa:16:3e:60:00:11", "10.60.0.11"), ("fa:16:3e:60:00:12", "10.60.0.12"), \
    ("fa:16:3e:60:00:13", "10.60.0.13")


@pytest.fixture(params=["etcd", "redis"])
def dep(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """df-controller processes on a real etcd / redis NB: the session's deployment on it
    (each test on a network and VMs of its own, removed after it)."""
    shared = request.getfixturevalue(f"{request.param}_deployment")
    with shared.use(request) as d:
        yield d


def vms(dep: Deployment, test: int) -> tuple[Vm, Vm, Vm]:
    """a, b and c as above, named a<test>, b<test>, c<test>, on network ps<test>."""
    n = dep.bed.nodes
    net = f"ps{test}"
    dep.network(net, "vxlan", 960 + test, "10.60.0.0/24")
    a = dep.vm(n["hv1"], f"a{test}", net, *A, address_pairs=(
        ("10.60.0.100", None), ("10.60.0.128/26", None), ("10.60.0.101", PAIR_MAC)))
    b = dep.vm(n["hv2"], f"b{test}", net, *B)
    c = dep.vm(n["hv1"], f"c{test}", net, *C, port_security=False)
    dep.wait_active([f"{v.name}-port" for v in (a, b, c)], timeout=60)
    # the ports are ACTIVE once wired; the processes may still be installing the rest
    assert eventually(lambda: a.ping(b.ip) and c.ping(b.ip), timeout=20)
    return a, b, c


# --- raw frames ------------------------------------------------------------------------------
# The listener: every frame eth0 sees until its stdin closes; prints the markers found in
# them.
LISTEN = r"""
import select, socket, sys
markers = sys.argv[1:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0))
print("ready", flush=True)
seen = set()
while True:
    ready, _, _ = select.select([s, sys.stdin], [], [], 1.0)
    if sys.stdin in ready:
        break
    if s in ready:
        frame = s.recv(65535)
        seen.update(m for m in markers if m.encode() in frame)
print(" ".join(sorted(seen)), flush=True)
"""
# The sender: each frame (hex) three times, out of eth0 as the VM's driver would.
SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
frames = [bytes.fromhex(h) for h in sys.argv[1:]]
for _ in range(3):
    for f in frames:
        s.send(f)
    time.sleep(0.3)
"""


def frame(marker: str, *protocols: object) -> str:
    """The serialized frame, with ``marker`` after it (a trailer the listener looks for:
    it changes no header port security reads)."""
    p = packet.Packet()
    for proto in protocols:
        p.add_protocol(proto)
    p.serialize()
    return (bytes(p.data) + marker.encode()).hex()


def udp4(marker: str, smac: str, src: str, dst: str = B[1], dmac: str = B[0],
         sport: int = 4000, dport: int = 5000) -> str:
    return frame(marker, ethernet.ethernet(dst=dmac, src=smac, ethertype=0x0800),
                 ipv4.ipv4(src=src, dst=dst, proto=17), udp.udp(src_port=sport, dst_port=dport))


def tagged(marker: str, smac: str, src: str) -> str:
    return frame(marker, ethernet.ethernet(dst=B[0], src=smac, ethertype=0x8100),
                 vlan.vlan(vid=5, ethertype=0x0800), ipv4.ipv4(src=src, dst=B[1], proto=17),
                 udp.udp(src_port=4000, dst_port=5000))


def garp(marker: str, smac: str, sha: str, spa: str) -> str:
    """A gratuitous ARP reply: "``spa`` is at ``sha``", to everyone."""
    return frame(marker, ethernet.ethernet(dst=BCAST, src=smac, ethertype=0x0806),
                 arp.arp(opcode=2, src_mac=sha, src_ip=spa, dst_mac=BCAST, dst_ip=spa))


def offer(marker: str, smac: str, server: str) -> str:
    """A DHCP OFFER of 10.60.0.50 to b's MAC, broadcast (a rogue DHCP server)."""
    msg = dhcp.dhcp(op=2, chaddr=B[0], xid=99, yiaddr="10.60.0.50", siaddr=server,
                    options=dhcp.options(option_list=[
                        dhcp.option(tag=dhcp.DHCP_MESSAGE_TYPE_OPT,
                                    value=bytes([dhcp.DHCP_OFFER])),
                        dhcp.option(tag=dhcp.DHCP_SERVER_IDENTIFIER_OPT,
                                    value=socket.inet_aton(server)),
                        dhcp.option(tag=dhcp.DHCP_GATEWAY_ADDR_OPT,
                                    value=socket.inet_aton(server))]))
    return frame(marker, ethernet.ethernet(dst=BCAST, src=smac, ethertype=0x0800),
                 ipv4.ipv4(src=server, dst="255.255.255.255", proto=17),
                 udp.udp(src_port=67, dst_port=68), msg)


def advert(marker: str, smac: str) -> str:
    """A router advertisement from the VM's link-local address (a rogue router)."""
    return frame(marker, ethernet.ethernet(dst=ALL_NODES_MAC, src=smac, ethertype=0x86DD),
                 ipv6.ipv6(src=link_local(smac), dst="ff02::1", nxt=58, hop_limit=255),
                 icmpv6.icmpv6(type_=icmpv6.ND_ROUTER_ADVERT, data=icmpv6.nd_router_advert(
                     ch_l=64, rou_l=1800, options=[icmpv6.nd_option_sla(hw_src=smac)])))


def neighbour_advert(marker: str, smac: str, target: str) -> str:
    """An unsolicited advertisement "``target`` is at ``smac``", to all nodes."""
    return frame(marker, ethernet.ethernet(dst=ALL_NODES_MAC, src=smac, ethertype=0x86DD),
                 ipv6.ipv6(src=link_local(smac), dst="ff02::1", nxt=58, hop_limit=255),
                 icmpv6.icmpv6(type_=icmpv6.ND_NEIGHBOR_ADVERT, data=icmpv6.nd_neighbor(
                     res=1, dst=target, option=icmpv6.nd_option_tla(hw_src=smac))))


def send(vm: Vm, frames: list[str]) -> None:
    done = vm.exec([sys.executable, "-c", SEND, *frames], timeout=30)
    assert done.returncode == 0, done.stderr


@contextmanager
def listening(vm: Vm, markers: Iterable[str]) -> Iterator[set[str]]:
    """A raw socket in ``vm`` while the block runs; the set yielded is filled, on the way
    out, with the markers it saw."""
    heard: set[str] = set()
    proc = subprocess.Popen(["ip", "netns", "exec", vm.netns, sys.executable, "-c", LISTEN,
                             *markers], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield heard
        time.sleep(0.5)  # the last frames' way across the tunnel
        out, _ = proc.communicate(timeout=30)
        heard.update(out.split())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_spoofed_frames_never_reach_the_neighbour(dep: Deployment) -> None:
    a, b, c = vms(dep, 1)
    a_mac, a_ip = A
    c_mac = C[0]
    spoofed = {  # from a: each must be dropped on hv1
        "PS-ip": udp4("PS-ip", a_mac, "10.60.0.77"),
        "PS-mac": udp4("PS-mac", SPOOF_MAC, a_ip),
        "PS-neighbours-ip": udp4("PS-neighbours-ip", a_mac, C[1]),
        "PS-pair-wrong-mac": udp4("PS-pair-wrong-mac", a_mac, "10.60.0.101"),
        "PS-outside-cidr": udp4("PS-outside-cidr", a_mac, "10.60.0.200"),
        "PS-vlan": tagged("PS-vlan", a_mac, a_ip),
        "PS-garp": garp("PS-garp", a_mac, a_mac, C[1]),  # "c's address is at a"
        "PS-arp-sha": garp("PS-arp-sha", a_mac, SPOOF_MAC, a_ip),
        "PS-offer": offer("PS-offer", a_mac, a_ip),
        "PS-ra": advert("PS-ra", a_mac),
        "PS-na": neighbour_advert("PS-na", a_mac, link_local(c_mac)),
    }
    allowed = {  # from a, the same kinds of frames from what it may use
        "OK-own": udp4("OK-own", a_mac, a_ip),
        "OK-pair": udp4("OK-pair", a_mac, "10.60.0.100"),
        "OK-pair-cidr": udp4("OK-pair-cidr", a_mac, "10.60.0.130"),
        "OK-pair-mac": udp4("OK-pair-mac", PAIR_MAC, "10.60.0.101"),
        "OK-garp": garp("OK-garp", a_mac, a_mac, a_ip),
        "OK-na": neighbour_advert("OK-na", a_mac, link_local(a_mac)),
    }
    unsecured = {  # from c (port security off): anything goes
        "C-spoof": udp4("C-spoof", SPOOF_MAC, "10.60.0.77"),
        "C-garp": garp("C-garp", c_mac, c_mac, "10.60.0.99"),
        "C-offer": offer("C-offer", c_mac, C[1]),
        "C-ra": advert("C-ra", c_mac),
        "C-vlan": tagged("C-vlan", c_mac, C[1]),
    }
    with listening(b, [*spoofed, *allowed, *unsecured]) as got:
        send(a, [*spoofed.values(), *allowed.values()])
        send(c, list(unsecured.values()))
    assert got & set(spoofed) == set(), f"the neighbour heard spoofed frames: {got}"
    assert got >= set(allowed) | set(unsecured), \
        f"missing: {sorted(set(allowed) | set(unsecured) - got)}"


# --- what the VMs' own kernels send ------------------------------------------------------------
def ping_from(vm: Vm, src: str, dst: str, marker: str = "", count: int = 2,
              timeout: int = 3) -> bool:
    """``ping -I src`` (with ``marker``, at most 16 bytes, as the payload's pattern): True
    if any reply came."""
    pattern = ["-p", marker.encode().hex()] if marker else []
    proc = vm.exec(["ping", "-4", "-n", "-q", "-c", str(count), "-i", "0.2", "-w",
                    str(timeout), "-I", src, *pattern, dst], timeout=timeout + 10)
    m = re.search(r"(\d+) (?:packets )?received", proc.stdout)
    return bool(m and int(m.group(1)) > 0)


def lladdr(vm: Vm, ip: str) -> str:
    out = vm.exec(["ip", "neigh", "show", ip, "dev", "eth0"]).stdout
    m = re.search(r"lladdr (\S+)", out)
    return m.group(1) if m else ""


def test_changed_mac_spoofed_ip_and_arp_fail_pairs_and_unsecured_ports_work(
        dep: Deployment) -> None:
    """What the VMs' kernels send; b listens for each ping's own payload pattern, so "not
    heard" means b never saw the echo request (not merely that no reply came back)."""
    a, b, c = vms(dep, 2)
    for ip in ("10.60.0.77", "10.60.0.100", "10.60.0.130", "10.60.0.200"):
        a.exec(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"], check=True)
    c.exec(["ip", "addr", "add", "10.60.0.88/24", "dev", "eth0"], check=True)
    markers = ("PSk-spoofed-ip", "PSk-pair", "PSk-pair-cidr", "PSk-outside",
               "PSk-unsecured", "PSk-changed-mac", "PSk-mac-back")
    with listening(b, markers) as heard:
        pinged = at_once({  # side by side: each failing one waits out its timeout
            # a spoofed address: the echo request never leaves hv1
            "spoofed_ip": lambda: ping_from(a, "10.60.0.77", b.ip, "PSk-spoofed-ip"),
            # its allowed address pairs: the exact one and one in the CIDR work, outside not
            "pair": lambda: ping_from(a, "10.60.0.100", b.ip, "PSk-pair"),
            "pair_cidr": lambda: ping_from(a, "10.60.0.130", b.ip, "PSk-pair-cidr"),
            "outside": lambda: ping_from(a, "10.60.0.200", b.ip, "PSk-outside"),
            # the port without port security sends from any address
            "unsecured": lambda: ping_from(c, "10.60.0.88", b.ip, "PSk-unsecured"),
        })
        spoofed_ip, pair, pair_cidr, outside, unsecured = (pinged[k] for k in (
            "spoofed_ip", "pair", "pair_cidr", "outside", "unsecured"))
        # a changed MAC: nothing gets through; back to its own, everything does again
        a.exec(["ip", "link", "set", "dev", "eth0", "address", SPOOF_MAC], check=True)
        changed = ping_from(a, A[1], b.ip, "PSk-changed-mac")
        a.exec(["ip", "link", "set", "dev", "eth0", "address", A[0]], check=True)
        back = eventually(lambda: ping_from(a, A[1], b.ip, "PSk-mac-back"), timeout=10)
    assert not spoofed_ip and "PSk-spoofed-ip" not in heard, heard
    assert pair and pair_cidr and {"PSk-pair", "PSk-pair-cidr"} <= heard, heard
    assert not outside and "PSk-outside" not in heard, heard
    assert unsecured and "PSk-unsecured" in heard, heard
    assert not changed and "PSk-changed-mac" not in heard, heard
    assert back and "PSk-mac-back" in heard, heard
    # ARP spoofing: b knows c's address is at c's MAC; a claims it (a gratuitous reply)
    assert b.ping(c.ip)
    assert lladdr(b, c.ip) == C[0]
    time.sleep(1.5)  # past the neighbour entry's locktime: an override would be taken
    send(a, [garp("x", A[0], A[0], c.ip)])
    time.sleep(1.0)
    assert lladdr(b, c.ip) == C[0], "a's spoofed ARP reached b"
    # ... which would have worked from a port without port security (the control)
    send(c, [garp("y", C[0], "fa:16:3e:60:00:98", c.ip)])
    assert eventually(lambda: lladdr(b, c.ip) == "fa:16:3e:60:00:98", timeout=5), \
        lladdr(b, c.ip)
