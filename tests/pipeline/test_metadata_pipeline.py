"""The metadata flows in a real ovs-vswitchd, traced with ofproto/trace: a local VM's
request to 169.254.169.254:80 leaves on the metadata interface with the source address
that names its port (SYNs through the port's own meter), the answer comes back with the VM's
own address, ARP on both sides is answered, a spoofed source goes nowhere."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from dragonflow.apps.registry import default_apps
from dragonflow.controller.engine import Engine
from dragonflow.controller.reconciler import Reconciler
from dragonflow.metadata.datapath import INTERFACE_MAC, SERVICE_MAC, port_address
from dragonflow.model import Chassis, NbObject, Network, Port, Subnet
from dragonflow.ovs.ofchannel import OfChannel
from dragonflow.pipeline.topology import ChassisFacts, Topology
from tests.fixtures.ovs_bridge import OvsBridgeEnv, rig_on_bridge

pytestmark = pytest.mark.ovs

VMS = {  # name: (mac, [IPv4 addresses], unique key)
    "vm1": ("fa:16:3e:00:00:11", ["10.1.0.11", "10.1.1.11"], 11),
    "vm2": ("fa:16:3e:00:00:12", ["10.1.0.12"], 12),
}
MD_REQ = "tcp,nw_dst=169.254.169.254,tp_dst=80,tp_src=40000,nw_ttl=64"


def nb_objects() -> list[NbObject]:
    objs: list[NbObject] = [
        Chassis.from_dict({"id": "hv1", "ip": "10.255.0.11", "tunnel_types": ["vxlan"]}),
        Network.from_dict({"id": "net1", "topic": "p", "network_type": "vxlan",
                           "segmentation_id": 101, "unique_key": 1}),
        Subnet.from_dict({"id": "s1", "topic": "p", "network_id": "net1",
                          "cidr": "10.1.0.0/24", "gateway_ip": "10.1.0.1"}),
        Subnet.from_dict({"id": "s1b", "topic": "p", "network_id": "net1",
                          "cidr": "10.1.1.0/24"}),
    ]
    for vm, (mac, ips, key) in VMS.items():
        objs.append(Port.from_dict({
            "id": vm, "topic": "p", "network_id": "net1", "mac": mac, "unique_key": key,
            "device_id": f"instance-{vm}", "device_owner": "compute:nova",
            "fixed_ips": [{"subnet_id": "s1" if ip.startswith("10.1.0.") else "s1b",
                           "ip_address": ip} for ip in ips],
            "binding": {"kind": "chassis", "chassis_id": "hv1"}}))
    return objs


class Rig:
    def __init__(self, env: OvsBridgeEnv) -> None:
        self.env = env
        self.ofports = {vm: env.add_port(f"{env.prefix}{vm}") for vm in VMS}
        self.md = env.add_port(f"{env.prefix}md")
        topo = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",), metadata_syn_rate=7,
                                     metadata_syn_burst=3, dhcp_rate_per_port=9,
                                     dhcp_burst_per_port=4, rs_rate_per_port=3,
                                     rs_burst_per_port=2))
        topo.replace_all(nb_objects())
        for vm, ofport in self.ofports.items():
            topo.set_ofport(vm, ofport)
        topo.set_metadata_port(self.md, INTERFACE_MAC)
        self.engine = Engine(default_apps(), topo)
        self.engine.full()
        self.channel = OfChannel(env.controller_target)
        self.channel.connect()
        assert not self.engine.table.conflicts
        Reconciler().sync(self.channel, self.engine.table, meters=self.engine.meters)
        assert not self.engine.table.rejected

    def trace(self, fields: str, src: str = "vm1", dst_mac: str = SERVICE_MAC) -> str:
        in_port = self.md if src == "md" else self.ofports[src]
        mac = INTERFACE_MAC if src == "md" else VMS[src][0]
        return self.env.trace(f"in_port={in_port},dl_src={mac},dl_dst={dst_mac},{fields}")


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with rig_on_bridge(Rig) as r:
        yield r


def final_flow(trace: str) -> str:
    m = re.search(r"^Final flow: (.*)$", trace, re.M)
    assert m, trace
    return m.group(1)


def outputs(trace: str) -> list[str]:
    found = re.findall(r"^\s+(?:output:(\d+)|(IN_PORT)|(CONTROLLER):\d+)$", trace, re.M)
    return [a or b or c for a, b, c in found]


def meters(trace: str) -> list[int]:
    return [int(m) for m in re.findall(r"^\s+meter:(\d+)$", trace, re.M)]


def test_a_syn_leaves_on_the_metadata_interface_named_by_its_port(rig: Rig) -> None:
    t = rig.trace(f"{MD_REQ},nw_src=10.1.0.11,tcp_flags=0x002")
    assert outputs(t) == [str(rig.md)], t
    f = final_flow(t)
    assert f"nw_src={port_address(11, 0)}" in f and f"dl_dst={INTERFACE_MAC}" in f, f
    assert port_address(11, 0) == "100.64.0.44"
    # through vm1's own SYN meter, which has the configured rate
    mid = rig.engine.pipeline.meter_id("metadata", "syn")
    assert mid is not None
    own = rig.engine._port_meters["vm1"][mid]
    assert meters(t) == [own], t
    dumped = rig.env.ofctl("dump-meters", "br-int")
    assert re.search(rf"meter={own} pktps [^\n]*\ntype=drop rate=7 burst_size=3\b", dumped), \
        dumped
    t2 = rig.trace(f"{MD_REQ},nw_src=10.1.0.12,tcp_flags=0x002", src="vm2")
    assert meters(t2) == [rig.engine._port_meters["vm2"][mid]] != [own]


def test_the_rest_of_the_connection_is_not_metered(rig: Rig) -> None:
    t = rig.trace(f"{MD_REQ},nw_src=10.1.0.11,tcp_flags=0x010")
    assert outputs(t) == [str(rig.md)] and meters(t) == [], t


def test_each_fixed_address_has_its_own_encoded_source(rig: Rig) -> None:
    t = rig.trace(f"{MD_REQ},nw_src=10.1.1.11,tcp_flags=0x010")
    assert outputs(t) == [str(rig.md)]
    assert f"nw_src={port_address(11, 1)}" in final_flow(t)


def test_a_spoofed_source_goes_nowhere(rig: Rig) -> None:
    # vm1 using vm2's address (or any other): dropped, not steered, not routed on
    for src in ("10.1.0.12", "10.9.9.9"):
        t = rig.trace(f"{MD_REQ},nw_src={src},tcp_flags=0x002")
        assert outputs(t) == [], t


def test_the_answer_goes_back_to_the_port_with_its_own_address(rig: Rig) -> None:
    for index, ip in enumerate(VMS["vm1"][1]):
        t = rig.trace(f"tcp,nw_src=169.254.169.254,tp_src=80,tp_dst=40000,"
                      f"nw_dst={port_address(11, index)},nw_ttl=64", src="md")
        assert outputs(t) == [str(rig.ofports["vm1"])], t
        f = final_flow(t)
        assert f"nw_dst={ip}" in f and f"dl_dst={VMS['vm1'][0]}" in f, f
        assert f"dl_src={SERVICE_MAC}" in f and "nw_src=169.254.169.254" in f, f


def test_arp_on_both_sides(rig: Rig) -> None:
    # a VM with an on-link route to 169.254.169.254 asks for it
    t = rig.trace("arp,arp_op=1,arp_spa=10.1.0.11,arp_tpa=169.254.169.254,"
                  f"arp_sha={VMS['vm1'][0]}", dst_mac="ff:ff:ff:ff:ff:ff")
    assert outputs(t) == ["IN_PORT"], t
    f = final_flow(t)
    assert f"arp_sha={SERVICE_MAC}" in f and "arp_spa=169.254.169.254" in f, f
    assert "arp_op=2" in f and "arp_tpa=10.1.0.11" in f, f
    # the metadata interface asks for an encoded address
    t = rig.trace(f"arp,arp_op=1,arp_spa=169.254.169.254,arp_tpa={port_address(12, 0)},"
                  f"arp_sha={INTERFACE_MAC}", src="md", dst_mac="ff:ff:ff:ff:ff:ff")
    assert outputs(t) == ["IN_PORT"], t
    f = final_flow(t)
    assert f"arp_spa={port_address(12, 0)}" in f and "arp_tpa=169.254.169.254" in f, f
    assert f"arp_sha={SERVICE_MAC}" in f and f"dl_dst={INTERFACE_MAC}" in f, f


def test_nothing_else_passes_the_metadata_interface(rig: Rig) -> None:
    # e.g. the host trying to reach a VM through it, or its IPv6 chatter
    t = rig.trace("tcp,nw_src=169.254.169.254,tp_src=22,nw_dst=10.1.0.12", src="md",
                  dst_mac=VMS["vm2"][0])
    assert outputs(t) == [], t
    t = rig.trace("ipv6,ipv6_src=fe80::1,ipv6_dst=ff02::2", src="md",
                  dst_mac="33:33:00:00:00:02")
    assert outputs(t) == [], t


def test_other_traffic_of_the_vms_is_untouched(rig: Rig) -> None:
    t = rig.trace("tcp,nw_src=10.1.0.11,nw_dst=10.1.0.12,tp_dst=80,nw_ttl=64",
                  dst_mac=VMS["vm2"][0])
    assert outputs(t) == [str(rig.ofports["vm2"])], t


def test_the_configured_per_port_rates_are_the_switchs_meters(rig: Rig) -> None:
    """[controller] dhcp_/rs_rate_per_port and [metadata] syn_rate become each local port's
    own meters in OVS (read back from the switch)."""
    p, own = rig.engine.pipeline, rig.engine._port_meters
    dumped = rig.env.ofctl("dump-meters", "br-int")
    for app, kind, rate, burst in (("dhcp", "dhcp", 9, 4), ("ra", "rs", 3, 2),
                                   ("metadata", "syn", 7, 3)):
        mid = p.meter_id(app, kind)
        assert mid is not None
        for vm in VMS:
            assert re.search(rf"meter={own[vm][mid]} pktps [^\n]*\ntype=drop rate={rate} "
                             rf"burst_size={burst}\b", dumped), (app, dumped)
