"""Port security in a real ovs-vswitchd, traced with ofproto/trace (no mocks): what a port
with port security on may send reaches the next stage and its destination (the receiver's
ofport, or every other local port for broadcast/multicast); every spoofed frame stops in the
port_security table with nothing output. A port with port security off sends anything; a
port with allowed address pairs sends from them (an IP with its own MAC, a CIDR with the
port's MAC) and from nothing else.

hv1 (this bridge): net1 (IPv4 10.1.0.0/24 and IPv6 fd00:1::/64, no DHCP) with
  vm1  port security on
  vm2  port security OFF
  vm3  on, with allowed address pairs 10.1.0.100 + fd00:1::100 (own MAC PAIR_MAC),
       10.1.0.128/25 and fd00:1::1:0/112 (the port's MAC)
  vm4  on: the receiver of the unicast cases
  vm5  on hv2 (remote: no port security flows here)
net2 (DHCP on) has vm6 (on), whose DHCP requests the DHCP stage punts before port security.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from dragonflow.apps.port_security import PortSecurityApp, allowed_sources
from dragonflow.apps.ra import link_local
from dragonflow.model import Chassis, NbObject, Network, Port, Subnet
from dragonflow.pipeline.topology import ChassisFacts, Topology, View
from tests.fixtures.ovs_bridge import CompiledRig, OvsBridgeEnv, rig_on_bridge

pytestmark = pytest.mark.ovs

PAIR_MAC = "fa:16:3e:00:01:00"
SPOOF_MAC = "fa:16:3e:00:00:99"
BCAST = "ff:ff:ff:ff:ff:ff"
VMS = {  # name: (mac, IPv4, IPv6, key, port security, chassis)
    "vm1": ("fa:16:3e:00:00:11", "10.1.0.11", "fd00:1::11", 11, True, "hv1"),
    "vm2": ("fa:16:3e:00:00:12", "10.1.0.12", "fd00:1::12", 12, False, "hv1"),
    "vm3": ("fa:16:3e:00:00:13", "10.1.0.13", "fd00:1::13", 13, True, "hv1"),
    "vm4": ("fa:16:3e:00:00:14", "10.1.0.14", "fd00:1::14", 14, True, "hv1"),
    "vm5": ("fa:16:3e:00:00:15", "10.1.0.15", "fd00:1::15", 15, True, "hv2"),
}
PAIRS = [{"ip_address": "10.1.0.100", "mac": PAIR_MAC}, {"ip_address": "10.1.0.128/25"},
         {"ip_address": "fd00:1::100", "mac": PAIR_MAC}, {"ip_address": "fd00:1::1:0/112"}]
LOCAL = ("vm1", "vm2", "vm3", "vm4")
VM6_MAC = "fa:16:3e:00:02:16"


def mac(vm: str) -> str:
    return VMS[vm][0]


def lla(vm_or_mac: str) -> str:
    return link_local(VMS[vm_or_mac][0] if vm_or_mac in VMS else vm_or_mac)


def nb_objects() -> list[NbObject]:
    objs: list[NbObject] = [
        Chassis.from_dict({"id": "hv1", "ip": "10.255.0.11", "tunnel_types": ["vxlan"]}),
        Chassis.from_dict({"id": "hv2", "ip": "10.255.0.12", "tunnel_types": ["vxlan"]}),
        Network.from_dict({"id": "net1", "topic": "p", "network_type": "vxlan",
                           "segmentation_id": 101, "unique_key": 1}),
        Subnet.from_dict({"id": "s4", "topic": "p", "network_id": "net1",
                          "cidr": "10.1.0.0/24", "enable_dhcp": False}),
        Subnet.from_dict({"id": "s6", "topic": "p", "network_id": "net1",
                          "cidr": "fd00:1::/64", "enable_dhcp": False}),
        Network.from_dict({"id": "net2", "topic": "p", "network_type": "vxlan",
                           "segmentation_id": 102, "unique_key": 2}),
        Subnet.from_dict({"id": "s2", "topic": "p", "network_id": "net2",
                          "cidr": "10.2.0.0/24", "gateway_ip": "10.2.0.1"}),
        Port.from_dict({"id": "vm6", "topic": "p", "network_id": "net2", "mac": VM6_MAC,
                        "unique_key": 16, "device_owner": "compute:nova",
                        "fixed_ips": [{"subnet_id": "s2", "ip_address": "10.2.0.16"}],
                        "binding": {"kind": "chassis", "chassis_id": "hv1"}}),
    ]
    for vm, (vmac, ip4, ip6, key, secure, hv) in VMS.items():
        objs.append(Port.from_dict({
            "id": vm, "topic": "p", "network_id": "net1", "mac": vmac, "unique_key": key,
            "device_owner": "compute:nova", "port_security_enabled": secure,
            "fixed_ips": [{"subnet_id": "s4", "ip_address": ip4},
                          {"subnet_id": "s6", "ip_address": ip6}],
            "allowed_address_pairs": PAIRS if vm == "vm3" else [],
            "binding": {"kind": "chassis", "chassis_id": hv}}))
    return objs


class Rig(CompiledRig):
    def __init__(self, env: OvsBridgeEnv) -> None:
        super().__init__(env, nb_objects(), (*LOCAL, "vm6"))
        self.table = self.engine.pipeline.table("port_security")

    def trace(self, src: str, proto: str, fields: str, *, eth_src: str | None = None,
              eth_dst: str | None = None) -> str:
        """Trace ``proto`` (ovs-ofctl's shorthand: udp, arp, icmp6 ...) sent by ``src``
        from its own MAC (or ``eth_src``) to vm4's MAC (or ``eth_dst``)."""
        smac = eth_src or (VM6_MAC if src == "vm6" else mac(src))
        flow = f"in_port={self.ofports[src]},dl_src={smac},dl_dst={eth_dst or mac('vm4')}"
        return self.env.trace(f"{flow},{proto},{fields}" if fields else f"{flow},{proto}")


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with rig_on_bridge(Rig) as r:
        yield r


def outputs(trace: str) -> list[str]:
    """Where the packet went (ofports, IN_PORT, CONTROLLER); an output to the port it came
    in on, which OVS skips (broadcast replication lists every local port), is left out."""
    found = re.findall(r"^\s+(?:output:(\d+)|(IN_PORT)|(CONTROLLER):\d+)$"
                       r"(\n\s+>> skipping output to input port)?", trace, re.M)
    return [a or b or c for a, b, c, skipped in found if not skipped]


def visited(trace: str) -> list[tuple[int, int]]:
    """(table, priority) of every flow the trace went through, in order."""
    return [(int(t), int(p)) for t, p in
            re.findall(r"^\s*(\d+)\. .*?priority (\d+)", trace, re.M)]


def assert_dropped(rig: Rig, trace: str) -> None:
    """Stopped in port_security by one of the port's own flows, nothing output."""
    assert outputs(trace) == [], trace
    assert re.search(r"^Datapath actions: drop$", trace, re.M), trace
    last_table, last_prio = visited(trace)[-1]
    assert last_table == rig.table and last_prio > 0, trace


def assert_passed(rig: Rig, trace: str) -> None:
    """Went through port_security (not by its table miss: the port's allow flow, or none
    for a port without port security) into the next stage."""
    tables = [t for t, _ in visited(trace)]
    assert rig.table in tables and rig.table + 1 in tables, trace


def assert_to(rig: Rig, trace: str, *vms: str) -> None:
    assert_passed(rig, trace)
    assert sorted(outputs(trace)) == sorted(str(rig.ofports[v]) for v in vms), trace


def assert_flooded(rig: Rig, trace: str, src: str) -> None:
    assert_to(rig, trace, *(v for v in LOCAL if v != src))


def own_flow(rig: Rig, trace: str) -> int:
    """The priority of the port_security flow the trace matched."""
    return next(p for t, p in visited(trace) if t == rig.table)


# --- the port's own addresses pass -------------------------------------------------------
def test_own_ipv4_and_ipv6_reach_the_receiver(rig: Rig) -> None:
    for proto, fields in (
            ("udp", "nw_src=10.1.0.11,nw_dst=10.1.0.14,udp_src=1000,udp_dst=2000,nw_ttl=64"),
            ("tcp", "nw_src=10.1.0.11,nw_dst=10.1.0.14,tcp_dst=22,nw_ttl=64"),
            ("udp6", "ipv6_src=fd00:1::11,ipv6_dst=fd00:1::14,udp_dst=2000,nw_ttl=64"),
            ("udp6", f"ipv6_src={lla('vm1')},ipv6_dst={lla('vm4')},udp_dst=2000,nw_ttl=64")):
        t = rig.trace("vm1", proto, fields)
        assert_to(rig, t, "vm4")
        assert own_flow(rig, t) == 100, t  # the port's allow flow, not the table miss


def test_own_arp_requests_replies_and_probes_are_flooded(rig: Rig) -> None:
    for fields in (  # 10.1.0.50 is no port's: the ARP responder leaves it alone
            "arp_op=1,arp_spa=10.1.0.11,arp_tpa=10.1.0.50,arp_sha=fa:16:3e:00:00:11",
            # gratuitous ARP for its own address
            "arp_op=2,arp_spa=10.1.0.11,arp_tpa=10.1.0.11,arp_sha=fa:16:3e:00:00:11",
            # RFC 5227 probe: sender address 0.0.0.0
            "arp_op=1,arp_spa=0.0.0.0,arp_tpa=10.1.0.50,arp_sha=fa:16:3e:00:00:11"):
        t = rig.trace("vm1", "arp", fields, eth_dst=BCAST)
        assert_flooded(rig, t, "vm1")


def test_dhcp_client_traffic_passes(rig: Rig) -> None:
    # no DHCP on net1: the DISCOVER goes where the network sends it (flooded)
    t = rig.trace("vm1", "udp", "nw_src=0.0.0.0,nw_dst=255.255.255.255,udp_src=68,udp_dst=67",
                  eth_dst=BCAST)
    assert_flooded(rig, t, "vm1")
    t = rig.trace("vm1", "udp6", f"ipv6_src={lla('vm1')},ipv6_dst=ff02::1:2,udp_src=546,"
                  "udp_dst=547", eth_dst="33:33:00:01:00:02")
    assert_flooded(rig, t, "vm1")
    # with DHCP on (net2) the DHCP stage, before port security, punts it to the controller
    t = rig.trace("vm6", "udp", "nw_src=0.0.0.0,nw_dst=255.255.255.255,udp_src=68,udp_dst=67",
                  eth_dst=BCAST)
    assert outputs(t) == ["CONTROLLER"], t


def test_neighbour_discovery_of_its_own_addresses_passes(rig: Rig) -> None:
    m = mac("vm1")
    # solicitations for an address no port has (the ND responder punts known targets)
    for src, sll in ((lla("vm1"), m), ("fd00:1::11", m), (lla("vm1"), "00:00:00:00:00:00")):
        t = rig.trace("vm1", "icmp6", f"ipv6_src={src},ipv6_dst=ff02::1:ff00:99,"
                      f"icmpv6_type=135,nd_target=fd00:1::99,nd_sll={sll},nw_ttl=255",
                      eth_dst="33:33:ff:00:00:99")
        assert_flooded(rig, t, "vm1")
        assert own_flow(rig, t) == 200, t
    # advertisements: own target, own or no link-layer option, own source
    for src, target, tll in (("fd00:1::11", "fd00:1::11", m),
                             (lla("vm1"), lla("vm1"), "00:00:00:00:00:00"),
                             (lla("vm1"), "fd00:1::11", m)):
        t = rig.trace("vm1", "icmp6", f"ipv6_src={src},ipv6_dst={lla('vm4')},"
                      f"icmpv6_type=136,nd_target={target},nd_tll={tll},nw_ttl=255")
        assert_to(rig, t, "vm4")


def test_unspecified_source_only_for_dad_and_mld_reports(rig: Rig) -> None:
    # duplicate address detection of its link-local address (no NB port has that target)
    t = rig.trace("vm1", "icmp6", f"ipv6_src=::,ipv6_dst=ff02::1:ff00:11,icmpv6_type=135,"
                  f"nd_target={lla('vm1')},nw_ttl=255", eth_dst="33:33:ff:00:00:11")
    assert_flooded(rig, t, "vm1")
    for kind in (143, 131):  # MLDv2 / MLDv1 reports while the address is tentative
        t = rig.trace("vm1", "icmp6", f"ipv6_src=::,ipv6_dst=ff02::16,icmpv6_type={kind},"
                      "nw_ttl=1", eth_dst="33:33:00:00:00:16")
        assert_flooded(rig, t, "vm1")
    for proto, fields, dst in (
            ("udp6", "ipv6_src=::,ipv6_dst=ff02::1,udp_dst=2000", "33:33:00:00:00:01"),
            ("icmp6", "ipv6_src=::,ipv6_dst=ff02::1,icmpv6_type=128", "33:33:00:00:00:01"),
            # DAD to a unicast destination, or with a link-layer option (RFC 4861 7.1.1)
            ("icmp6", f"ipv6_src=::,ipv6_dst={lla('vm4')},icmpv6_type=135,"
                      f"nd_target={lla('vm1')}", mac("vm4")),
            ("icmp6", f"ipv6_src=::,ipv6_dst=ff02::1:ff00:11,icmpv6_type=135,"
                      f"nd_target={lla('vm1')},nd_sll={mac('vm1')}", "33:33:ff:00:00:11"),
            ("icmp6", "ipv6_src=::,ipv6_dst=fd00:1::14,icmpv6_type=143", mac("vm4"))):
        assert_dropped(rig, rig.trace("vm1", proto, fields + ",nw_ttl=255", eth_dst=dst))


# --- spoofing is dropped -----------------------------------------------------------------
def test_spoofed_ipv4_sources_and_macs_are_dropped(rig: Rig) -> None:
    udp = "nw_dst=10.1.0.14,udp_src=1000,udp_dst=2000,nw_ttl=64"
    for src_ip in ("10.1.0.99", "10.1.0.14", "10.1.0.100", "10.1.0.200", "0.0.0.0"):
        assert_dropped(rig, rig.trace("vm1", "udp", f"nw_src={src_ip},{udp}"))
    for smac in (SPOOF_MAC, mac("vm4"), "01:00:5e:00:00:01"):  # a multicast source too
        assert_dropped(rig, rig.trace("vm1", "udp", f"nw_src=10.1.0.11,{udp}", eth_src=smac))
    # a VLAN tag (no trunk ports), even from its own addresses
    assert_dropped(rig, rig.trace("vm1", "udp", f"dl_vlan=5,nw_src=10.1.0.11,{udp}"))
    assert_dropped(rig, rig.trace("vm1", "udp", f"dl_vlan=0,nw_src=10.1.0.11,{udp}"))


def test_spoofed_arp_is_dropped(rig: Rig) -> None:
    m = mac("vm1")
    for fields, smac in (
            (f"arp_op=2,arp_spa=10.1.0.14,arp_tpa=10.1.0.14,arp_sha={m}", m),  # poisoning
            (f"arp_op=1,arp_spa=10.1.0.77,arp_tpa=10.1.0.50,arp_sha={m}", m),
            (f"arp_op=2,arp_spa=10.1.0.11,arp_tpa=10.1.0.14,arp_sha={SPOOF_MAC}", m),
            (f"arp_op=2,arp_spa=10.1.0.11,arp_tpa=10.1.0.14,arp_sha={SPOOF_MAC}", SPOOF_MAC),
            (f"arp_op=1,arp_spa=0.0.0.0,arp_tpa=10.1.0.50,arp_sha={SPOOF_MAC}", m)):
        assert_dropped(rig, rig.trace("vm1", "arp", fields, eth_src=smac, eth_dst=BCAST))


def test_spoofed_neighbour_discovery_is_dropped(rig: Rig) -> None:
    m, other = mac("vm1"), mac("vm4")
    ns = "ipv6_dst=ff02::1:ff00:99,icmpv6_type=135,nd_target=fd00:1::99,nw_ttl=255"
    for src, sll in ((lla("vm1"), other), ("fd00:1::11", SPOOF_MAC), ("fd00:1::99", m),
                     (lla("vm4"), "00:00:00:00:00:00")):
        t = rig.trace("vm1", "icmp6", f"ipv6_src={src},{ns},nd_sll={sll}",
                      eth_dst="33:33:ff:00:00:99")
        assert_dropped(rig, t)
    na = f"ipv6_dst={lla('vm4')},icmpv6_type=136,nw_ttl=255"
    for src, target, tll in (("fd00:1::11", "fd00:1::14", m),          # target: vm4's
                             (lla("vm1"), lla("vm4"), "00:00:00:00:00:00"),
                             ("fd00:1::11", "fd00:1::11", other),      # link-layer: vm4's
                             ("fd00:1::99", "fd00:1::11", m),          # source: not its own
                             (lla("vm4"), "fd00:1::11", m)):
        t = rig.trace("vm1", "icmp6", f"ipv6_src={src},{na},nd_target={target},nd_tll={tll}")
        assert_dropped(rig, t)


def test_spoofed_ipv6_sources_are_dropped(rig: Rig) -> None:
    for src in ("fd00:1::99", "fd00:1::14", lla("vm4"), "fd00:1::100", "fd00:1::1:5"):
        t = rig.trace("vm1", "udp6", f"ipv6_src={src},ipv6_dst=fd00:1::14,udp_dst=2000")
        assert_dropped(rig, t)
    t = rig.trace("vm1", "udp6", "ipv6_src=fd00:1::11,ipv6_dst=fd00:1::14,udp_dst=2000",
                  eth_src=SPOOF_MAC)
    assert_dropped(rig, t)


def test_dhcp_servers_and_router_advertisements_of_vms_are_dropped(rig: Rig) -> None:
    t = rig.trace("vm1", "udp", "nw_src=10.1.0.11,nw_dst=255.255.255.255,udp_src=67,"
                  "udp_dst=68", eth_dst=BCAST)  # a DHCP OFFER / ACK
    assert_dropped(rig, t)
    t = rig.trace("vm1", "udp6", f"ipv6_src={lla('vm1')},ipv6_dst={lla('vm4')},udp_src=547,"
                  "udp_dst=546")  # a DHCPv6 ADVERTISE / REPLY
    assert_dropped(rig, t)
    t = rig.trace("vm1", "icmp6", f"ipv6_src={lla('vm1')},ipv6_dst=ff02::1,icmpv6_type=134,"
                  "nw_ttl=255", eth_dst="33:33:00:00:00:01")
    assert_dropped(rig, t)
    assert own_flow(rig, t) == 300, t


def test_other_ethertypes_are_dropped(rig: Rig) -> None:
    for eth_type in ("0x88b5", "0x8035", "0x88cc"):
        t = rig.trace("vm1", f"dl_type={eth_type}", "", eth_dst=BCAST)
        assert_dropped(rig, t)


# --- allowed address pairs -----------------------------------------------------------------
def test_address_pairs_pass_with_their_mac_only(rig: Rig) -> None:
    own = mac("vm3")
    udp = "nw_dst=10.1.0.14,udp_dst=2000,nw_ttl=64"
    udp6 = "ipv6_dst=fd00:1::14,udp_dst=2000,nw_ttl=64"
    allowed = (("udp", f"nw_src=10.1.0.100,{udp}", PAIR_MAC),    # the pair's own MAC
               ("udp", f"nw_src=10.1.0.200,{udp}", own),         # in 10.1.0.128/25
               ("udp", f"nw_src=10.1.0.128,{udp}", own),
               ("udp", f"nw_src=10.1.0.13,{udp}", own),          # its fixed IP still
               ("udp6", f"ipv6_src=fd00:1::100,{udp6}", PAIR_MAC),
               ("udp6", f"ipv6_src=fd00:1::1:5,{udp6}", own),    # in fd00:1::1:0/112
               ("udp6", f"ipv6_src={lla(PAIR_MAC)},{udp6}", PAIR_MAC),
               ("udp6", f"ipv6_src={lla('vm3')},{udp6}", own))
    for proto, fields, smac in allowed:
        assert_to(rig, rig.trace("vm3", proto, fields, eth_src=smac), "vm4")
    denied = (("udp", f"nw_src=10.1.0.100,{udp}", own),        # pair IP, wrong MAC
              ("udp", f"nw_src=10.1.0.200,{udp}", PAIR_MAC),   # CIDR is the port MAC's
              ("udp", f"nw_src=10.1.0.127,{udp}", own),        # just outside the CIDR
              ("udp", f"nw_src=10.1.0.13,{udp}", PAIR_MAC),    # fixed IP, pair's MAC
              ("udp6", f"ipv6_src=fd00:1::100,{udp6}", own),
              ("udp6", f"ipv6_src=fd00:1::2:5,{udp6}", own),
              ("udp6", f"ipv6_src=fd00:1::1:5,{udp6}", PAIR_MAC),
              ("udp6", f"ipv6_src={lla(PAIR_MAC)},{udp6}", own))
    for proto, fields, smac in denied:
        assert_dropped(rig, rig.trace("vm3", proto, fields, eth_src=smac))


def test_address_pairs_arp_and_neighbour_discovery(rig: Rig) -> None:
    own = mac("vm3")
    for spa, sha, ok in (("10.1.0.100", PAIR_MAC, True), ("10.1.0.130", own, True),
                         ("10.1.0.100", own, False), ("10.1.0.130", PAIR_MAC, False)):
        t = rig.trace("vm3", "arp", f"arp_op=2,arp_spa={spa},arp_tpa={spa},arp_sha={sha}",
                      eth_src=sha, eth_dst=BCAST)
        if ok:
            assert_flooded(rig, t, "vm3")
        else:
            assert_dropped(rig, t)
    na = f"ipv6_dst={lla('vm4')},icmpv6_type=136,nw_ttl=255"
    for src, target, smac, tll, ok in (
            (lla(PAIR_MAC), "fd00:1::100", PAIR_MAC, PAIR_MAC, True),
            ("fd00:1::1:5", "fd00:1::1:5", own, own, True),
            ("fd00:1::13", "fd00:1::1:6", own, "00:00:00:00:00:00", True),
            (lla(PAIR_MAC), "fd00:1::1:5", PAIR_MAC, PAIR_MAC, False),  # not that MAC's
            ("fd00:1::13", "fd00:1::100", own, own, False),
            (lla(PAIR_MAC), "fd00:1::100", PAIR_MAC, own, False),      # link-layer mixed
            ("fd00:1::13", "fd00:1::100", PAIR_MAC, PAIR_MAC, False)):  # source mixed
        t = rig.trace("vm3", "icmp6", f"ipv6_src={src},{na},nd_target={target},nd_tll={tll}",
                      eth_src=smac)
        if ok:
            assert_to(rig, t, "vm4")
        else:
            assert_dropped(rig, t)


# --- port security off ---------------------------------------------------------------------
def test_a_port_without_port_security_sends_anything(rig: Rig) -> None:
    udp = "nw_dst=10.1.0.14,udp_dst=2000,nw_ttl=64"
    t = rig.trace("vm2", "udp", f"nw_src=10.1.0.99,{udp}", eth_src=SPOOF_MAC)
    assert_to(rig, t, "vm4")
    assert own_flow(rig, t) == 0, t  # the stage's miss: "next"
    for proto, fields, dst in (
            ("udp", "nw_src=10.1.0.12,nw_dst=255.255.255.255,udp_src=67,udp_dst=68", BCAST),
            ("icmp6", f"ipv6_src={lla('vm2')},ipv6_dst=ff02::1,icmpv6_type=134,nw_ttl=255",
             "33:33:00:00:00:01"),
            ("arp", "arp_op=2,arp_spa=10.1.0.14,arp_tpa=10.1.0.14,"
                    f"arp_sha={SPOOF_MAC}", BCAST),
            ("icmp6", "ipv6_src=fd00:1::12,ipv6_dst=ff02::1,icmpv6_type=136,"
                      f"nd_target=fd00:1::14,nd_tll={SPOOF_MAC},nw_ttl=255",
             "33:33:00:00:00:01")):
        assert_flooded(rig, rig.trace("vm2", proto, fields, eth_dst=dst), "vm2")
    dumped = rig.env.dump_flows(f"table={rig.table},reg6={VMS['vm2'][3]}")
    assert dumped == [], dumped


# --- toward the VM, and which ports get flows ------------------------------------------------
def test_unicast_to_another_mac_is_not_delivered_to_the_port(rig: Rig) -> None:
    # l2_lookup delivers a port only its own MAC (and broadcast/multicast): a frame for an
    # unknown MAC reaches no port, one for vm4 only vm4 -- even from a port without security
    udp = "nw_src=10.1.0.12,nw_dst=10.1.0.11,udp_dst=2000,nw_ttl=64"
    t = rig.trace("vm2", "udp", udp, eth_dst="fa:16:3e:00:00:77")
    assert outputs(t) == [], t
    t = rig.trace("vm2", "udp", udp, eth_dst=mac("vm4"))
    assert outputs(t) == [str(rig.ofports["vm4"])], t


def test_flows_only_for_local_ports_with_port_security(rig: Rig) -> None:
    for vm, (_, _, _, key, secure, hv) in VMS.items():
        dumped = rig.env.dump_flows(f"table={rig.table},reg6={key}")
        assert bool(dumped) == (secure and hv == "hv1"), (vm, dumped)
    # the stage sits between the responders and everything that forwards
    order = rig.engine.pipeline.order
    assert order.index("ra") < order.index("port_security") < order.index("l2_lookup")
    assert order.index("port_security") < order.index("secgroup_out_ct")


def test_a_cidr_is_one_masked_match(rig: Rig) -> None:
    dumped = rig.env.dump_flows(f"table={rig.table},reg6={VMS['vm3'][3]}")
    assert any("nw_src=10.1.0.128/25" in f for f in dumped), dumped
    assert any("arp_spa=10.1.0.128/25" in f for f in dumped), dumped
    assert any("ipv6_src=fd00:1::1:0/112" in f for f in dumped), dumped
    assert not any("nw_src=10.1.0.129" in f for f in dumped), dumped
    # and the allowed sources, per MAC (link-local first)
    port = rig.topo.get(Port, "vm3")
    assert port is not None
    assert allowed_sources(port) == {
        mac("vm3"): (["10.1.0.13", "10.1.0.128/25"],
                     [lla("vm3"), "fd00:1::13", "fd00:1::1:0/112"]),
        PAIR_MAC: (["10.1.0.100"], [lla(PAIR_MAC), "fd00:1::100"]),
    }


def test_port_changes_recompile(rig: Rig) -> None:
    """Compile against the current model: switching port security off removes the port's
    flows, an added pair adds its source (no OVS: what the engine would install)."""
    app = PortSecurityApp()
    port = rig.topo.get(Port, "vm1")
    assert port is not None
    topo = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",)))
    topo.replace_all([o for o in nb_objects() if o.id != "vm1"]
                     + [port.replace(port_security_enabled=False)])
    topo.set_ofport("vm1", 5)
    assert app.compile(View(topo), "port/vm1") == []
    topo.replace_all([o for o in nb_objects() if o.id != "vm1"] + [port])
    topo.set_ofport("vm1", 5)
    flows = app.compile(View(topo), "port/vm1")
    assert flows and all(dict(f.match)["in_port"] == 11 for f in flows)
    topo.set_ofport("vm1", None)
    assert app.compile(View(topo), "port/vm1") == []



def test_a_port_whose_only_ipv6_address_is_link_local_advertises_only_that(rig: Rig) -> None:
    """vm6 (IPv4 only): its advertisements are two direct flows, no conjunction -- its
    link-local address as source and target, its own or no link-layer option."""
    ll, m = link_local(VM6_MAC), VM6_MAC

    def passes(src: str, target: str, tll: str) -> bool:
        t = rig.trace("vm6", "icmp6", f"ipv6_src={src},ipv6_dst=ff02::1,icmpv6_type=136,"
                      f"nd_target={target},nd_tll={tll},nw_ttl=255", eth_dst="33:33:00:00:00:01")
        tables = [table for table, _ in visited(t)]
        assert rig.table in tables, t
        return rig.table + 1 in tables

    assert passes(ll, ll, m) and passes(ll, ll, "00:00:00:00:00:00")
    assert not passes(ll, lla("vm4"), m)        # another port's address as target
    assert not passes(ll, ll, mac("vm4"))       # another port's MAC as link-layer option
    assert not passes(lla("vm4"), ll, m)        # another source
    assert not passes("fd00:1::16", "fd00:1::16", m)  # an address it does not have
