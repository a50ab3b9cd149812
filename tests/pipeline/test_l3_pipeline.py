"""Pipeline tests for the distributed router, traced with ofproto/trace in a real OVS.

Chassis hv1 (this bridge) hosts vm1 (net1, 10.1.0.11); net2 has vm2 on hv1 (10.2.0.11) and
vm3 on hv2 (10.2.0.12). Router r1: 10.1.0.1/24 + fd00:1::1/64 on net1, 10.2.0.1/24 on net2,
extra route 192.168.5.0/24 via vm2.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from dragonflow.apps.registry import default_apps
from dragonflow.controller.engine import Engine
from dragonflow.controller.reconciler import Reconciler
from dragonflow.model import Chassis as ChassisObj
from dragonflow.model import NbObject, Network, Port, Router, Subnet
from dragonflow.ovs.ofchannel import OfChannel
from dragonflow.pipeline.lower import punt_origin
from dragonflow.pipeline.topology import ChassisFacts, Topology
from tests.fixtures.ovs_bridge import OvsBridgeEnv, rig_on_bridge

RMAC = {"net1": "fa:16:3e:aa:00:01", "net2": "fa:16:3e:aa:00:02"}
VMS = {  # name: (network, chassis, mac, ip, key)
    "vm1": ("net1", "hv1", "fa:16:3e:00:00:01", "10.1.0.11", 11),
    "vm2": ("net2", "hv1", "fa:16:3e:00:00:02", "10.2.0.11", 12),
    "vm3": ("net2", "hv2", "fa:16:3e:00:00:03", "10.2.0.12", 13),
}


def nb_objects() -> list[NbObject]:
    objs: list[NbObject] = [
        ChassisObj.from_dict({"id": "hv1", "ip": "10.255.0.11", "tunnel_types": ["vxlan"]}),
        ChassisObj.from_dict({"id": "hv2", "ip": "10.255.0.12", "tunnel_types": ["vxlan"]}),
        Network(id="net1", topic="p", network_type="vxlan", segmentation_id=101, unique_key=1),
        Network(id="net2", topic="p", network_type="vxlan", segmentation_id=102, unique_key=2),
        Subnet.from_dict({"id": "s1", "topic": "p", "network_id": "net1", "cidr": "10.1.0.0/24"}),
        Subnet.from_dict({"id": "s2", "topic": "p", "network_id": "net2", "cidr": "10.2.0.0/24"}),
        Subnet.from_dict({"id": "s1v6", "topic": "p", "network_id": "net1",
                          "cidr": "fd00:1::/64"}),
    ]
    for vm, (net, hv, mac, ip, key) in VMS.items():
        objs.append(Port.from_dict({
            "id": vm, "topic": "p", "network_id": net, "mac": mac, "unique_key": key,
            "fixed_ips": [{"subnet_id": "s" + net[-1], "ip_address": ip}]
            + ([{"subnet_id": "s1v6", "ip_address": "fd00:1::11"}] if vm == "vm1" else []),
            "binding": {"kind": "chassis", "chassis_id": hv}}))
    # Neutron also stores the router interface as a port (same MAC and IP): it must not turn
    # into an ordinary logical port competing with the router for that MAC
    objs.append(Port.from_dict({
        "id": "rp1", "topic": "p", "network_id": "net1", "mac": RMAC["net1"], "unique_key": 21,
        "device_owner": "network:router_interface", "device_id": "r1",
        "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.1.0.1"}]}))
    objs.append(Router.from_dict({
        "id": "r1", "topic": "p", "unique_key": 7,
        "ports": [{"id": "rp1", "mac": RMAC["net1"], "network_id": "net1",
                   "cidrs": ["10.1.0.1/24", "fd00:1::1/64"], "unique_key": 21},
                  {"id": "rp2", "mac": RMAC["net2"], "network_id": "net2",
                   "cidrs": ["10.2.0.1/24"], "unique_key": 22}],
        "routes": [{"destination": "192.168.5.0/24", "nexthop": "10.2.0.11"}]}))
    return objs


class Rig:
    def __init__(self, env: OvsBridgeEnv) -> None:
        self.env = env
        self.ofports = {vm: env.add_port(f"{env.prefix}{vm}") for vm in ("vm1", "vm2")}
        env.vsctl("add-port", "br-int", "df-vxlan", "--", "set", "interface", "df-vxlan",
                  "type=vxlan", "options:remote_ip=flow", "options:key=flow")
        self.tunnel = int(env.vsctl("get", "interface", "df-vxlan", "ofport").strip())
        topo = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",),
                                     tunnel_ofports={"vxlan": self.tunnel}))
        topo.replace_all(nb_objects())
        for vm, ofport in self.ofports.items():
            topo.set_ofport(vm, ofport)
        self.engine = Engine(default_apps(), topo)
        self.engine.full()
        self.channel = OfChannel(env.controller_target)
        self.channel.connect()
        assert not self.engine.table.conflicts, "two different flows compete for one match"
        Reconciler().sync(self.channel, self.engine.table, meters=self.engine.meters)
        assert not self.engine.table.rejected

    def trace(self, fields: str, src: str = "vm1", dst_mac: str | None = None) -> str:
        _, _, mac, _, _ = VMS[src]
        dst_mac = dst_mac or RMAC[VMS[src][0]]
        return self.env.trace(
            f"in_port={self.ofports[src]},dl_src={mac},dl_dst={dst_mac},{fields}")


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


def test_routed_to_a_local_vm_in_another_subnet(rig: Rig) -> None:
    t = rig.trace("ip,nw_src=10.1.0.11,nw_dst=10.2.0.11,nw_ttl=64")
    assert outputs(t) == [str(rig.ofports["vm2"])]
    assert "dec_ttl" in t
    f = final_flow(t)
    assert f"dl_src={RMAC['net2']}" in f and f"dl_dst={VMS['vm2'][2]}" in f
    assert "nw_ttl=63" in f


def test_routed_to_a_remote_vm_goes_with_the_destination_networks_vni(rig: Rig) -> None:
    t = rig.trace("ip,nw_src=10.1.0.11,nw_dst=10.2.0.12,nw_ttl=64")
    assert "set_field:10.255.0.12->tun_dst" in t
    assert "set_field:0x66->tun_id" in t  # 102: net2's VNI, not net1's 101
    assert outputs(t) == [str(rig.tunnel)]


def test_ttl_expiry_and_unknown_destination_go_to_the_controller(rig: Rig) -> None:
    t = rig.trace("ip,nw_src=10.1.0.11,nw_dst=10.2.0.11,nw_ttl=1")
    assert outputs(t) == [] and "dec_ttl" in t  # OVS turns the expiry into a packet-in
    t = rig.trace("ip,nw_src=10.1.0.11,nw_dst=198.51.100.9,nw_ttl=64")
    assert outputs(t) == ["CONTROLLER"]


def test_attached_subnet_without_such_host_is_dropped(rig: Rig) -> None:
    t = rig.trace("ip,nw_src=10.1.0.11,nw_dst=10.2.0.99,nw_ttl=64")
    assert outputs(t) == []


def test_extra_route_goes_to_its_next_hop_and_longest_prefix_wins(rig: Rig) -> None:
    t = rig.trace("ip,nw_src=10.1.0.11,nw_dst=192.168.5.77,nw_ttl=64")
    assert outputs(t) == [str(rig.ofports["vm2"])]
    assert f"dl_dst={VMS['vm2'][2]}" in final_flow(t)


def test_router_interface_answers_arp_and_ping(rig: Rig) -> None:
    t = rig.trace("arp,arp_op=1,arp_spa=10.1.0.11,arp_tpa=10.1.0.1",
                  dst_mac="ff:ff:ff:ff:ff:ff")
    assert outputs(t) == ["IN_PORT"]
    assert f"arp_sha={RMAC['net1']}" in final_flow(t)
    # ping of the router's OTHER interface address, answered from the ingress MAC
    t = rig.trace("icmp,nw_src=10.1.0.11,nw_dst=10.2.0.1,icmp_type=8,icmp_code=0")
    assert outputs(t) == ["IN_PORT"]
    f = final_flow(t)
    assert "nw_src=10.2.0.1" in f and "nw_dst=10.1.0.11" in f and "icmp_type=0" in f
    assert f"dl_src={RMAC['net1']}" in f and f"dl_dst={VMS['vm1'][2]}" in f


def test_ipv6_router_address_solicitation_and_echo(rig: Rig) -> None:
    t = rig.trace("icmp6,ipv6_src=fd00:1::11,ipv6_dst=ff02::1:ff00:1,icmpv6_type=135,"
                  "nd_target=fd00:1::1", dst_mac="33:33:ff:00:00:01")
    assert outputs(t) == ["CONTROLLER"]  # the NA is built by the controller
    t = rig.trace("icmp6,ipv6_src=fd00:1::11,ipv6_dst=fd00:1::1,icmpv6_type=128")
    assert outputs(t) == ["IN_PORT"]
    f = final_flow(t)
    assert "ipv6_src=fd00:1::1" in f and "ipv6_dst=fd00:1::11" in f and "icmp_type=129" in f


def test_other_networks_cannot_use_the_router_mac(rig: Rig) -> None:
    # vm2 (net2) sending to net1's router MAC: that MAC is not a router port on net2
    t = rig.trace("ip,nw_src=10.2.0.11,nw_dst=10.1.0.11,nw_ttl=64", src="vm2",
                  dst_mac=RMAC["net1"])
    assert outputs(t) == []


def test_punts_pass_their_ports_own_meter_then_the_shared_one(rig: Rig) -> None:
    """Control-plane policing per port: vm1's solicitation for the router goes through
    vm1's meter, then ND's shared meter, then to the controller -- carrying the table that
    punted it (the controller dispatches by that); vm2's punts use vm2's meter."""
    p = rig.engine.pipeline
    nd_meter = p.meter_id("nd", "punt")
    l3_meter = p.meter_id("l3", "punt")
    assert nd_meter is not None and l3_meter is not None
    own = rig.engine._port_meters
    t = rig.trace("icmp6,ipv6_src=fd00:1::11,ipv6_dst=ff02::1:ff00:1,icmpv6_type=135,"
                  "nd_target=fd00:1::1", dst_mac="33:33:ff:00:00:01")
    meters = [int(m) for m in re.findall(r"^\s+meter:(\d+)$", t, re.M)]
    assert meters == [own["vm1"][nd_meter], nd_meter], t
    assert outputs(t) == ["CONTROLLER"]
    regs = re.search(r"reg10=(0x[0-9a-f]+)", final_flow(t))
    assert regs, final_flow(t)
    assert punt_origin({"reg10": int(regs.group(1), 16)}) == p.table("nd_responder")
    t = rig.trace("ip,nw_src=10.2.0.11,nw_dst=198.51.100.9,nw_ttl=64", src="vm2")
    meters = [int(m) for m in re.findall(r"^\s+meter:(\d+)$", t, re.M)]
    assert meters == [own["vm2"][l3_meter], l3_meter], t
    assert own["vm1"][l3_meter] != own["vm2"][l3_meter]
    # the meters exist in the switch, with the declared per-port and shared rates
    dumped = rig.env.ofctl("dump-meters", "br-int")
    for mid, rate in ((own["vm1"][nd_meter], 100), (nd_meter, 500),
                      (own["vm2"][l3_meter], 200), (l3_meter, 1000)):
        assert re.search(rf"meter={mid} pktps [^\n]*\ntype=drop rate={rate}\b", dumped), dumped
