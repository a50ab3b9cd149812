"""Pipeline tests: the compiled L2 / tunnel / ARP flows, installed through the real
OfChannel + Reconciler into a real ovs-vswitchd, and packets traced with ofproto/trace.

Chassis hv1 (this bridge) hosts vm1, vm2 (net-a) and vm4 (net-b); hv2 hosts vm3 (net-a),
hv3 hosts vm5 (net-b). net-a and net-b use the SAME CIDR, different VNIs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dragonflow.apps.registry import default_apps
from dragonflow.controller.engine import Engine
from dragonflow.controller.reconciler import Reconciler
from dragonflow.model import Binding, Chassis, FixedIp, NbObject, Network, Port, Subnet
from dragonflow.ovs.ofchannel import OfChannel
from dragonflow.pipeline.topology import ChassisFacts, Topology
from tests.fixtures.ovs_bridge import OvsBridgeEnv, require_ovs

HV = {"hv1": "10.255.0.11", "hv2": "10.255.0.12", "hv3": "10.255.0.13"}
NETS = {"net-a": ("vxlan", 100, 1), "net-b": ("vxlan", 200, 2)}
VMS = {  # name: (network, chassis, mac, ip, key)
    "vm1": ("net-a", "hv1", "fa:16:3e:00:00:01", "10.0.0.11", 11),
    "vm2": ("net-a", "hv1", "fa:16:3e:00:00:02", "10.0.0.12", 12),
    "vm3": ("net-a", "hv2", "fa:16:3e:00:00:03", "10.0.0.13", 13),
    "vm4": ("net-b", "hv1", "fa:16:3e:00:00:04", "10.0.0.11", 14),
    "vm5": ("net-b", "hv3", "fa:16:3e:00:00:05", "10.0.0.15", 15),
}


@dataclass
class Rig:
    env: OvsBridgeEnv
    ofports: dict[str, int]
    tunnel_ofport: int
    topo: Topology
    engine: Engine
    channel: OfChannel
    reconciler: Reconciler

    def sync(self) -> int:
        sent = self.reconciler.sync(self.channel, self.engine.table, meters=self.engine.meters)
        assert not self.engine.table.rejected and not self.engine.table.conflicts
        return sent

    def trace(self, vm: str, dst_mac: str, extra: str = "") -> str:
        _, _, mac, ip, _ = VMS[vm]
        # a real frame of the VM (its own addresses: port security drops anything else)
        extra = extra or f",ip,nw_src={ip},nw_dst=10.0.0.99"
        return self.env.trace(f"in_port={self.ofports[vm]},dl_src={mac},dl_dst={dst_mac}{extra}")


def nb_objects() -> list[NbObject]:
    objs: list[NbObject] = [Chassis(id=c, ip=ip, tunnel_types=("vxlan", "geneve", "gre"))
                            for c, ip in HV.items()]
    for name, (ntype, vni, key) in NETS.items():
        objs.append(Network(id=name, topic="p", network_type=ntype, segmentation_id=vni,
                            unique_key=key, version=1))
        objs.append(Subnet(id=f"sub-{name}", topic="p", network_id=name, cidr="10.0.0.0/24"))
    for vm, (net, hv, mac, ip, key) in VMS.items():
        objs.append(Port(id=vm, topic="p", network_id=net, mac=mac, unique_key=key, version=1,
                         fixed_ips=(FixedIp(subnet_id=f"sub-{net}", ip_address=ip),),
                         binding=Binding(kind="chassis", chassis_id=hv)))
    return objs


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    require_ovs()
    env = OvsBridgeEnv().start()
    channel = None
    try:
        ofports = {vm: env.add_port(f"{env.prefix}{vm}") for vm, v in VMS.items() if v[1] == "hv1"}
        env.vsctl("add-port", "br-int", "df-vxlan", "--", "set", "interface", "df-vxlan",
                  "type=vxlan", "options:remote_ip=flow", "options:key=flow")
        tunnel = int(env.vsctl("get", "interface", "df-vxlan", "ofport").strip())
        topo = Topology(ChassisFacts("hv1", HV["hv1"], ("vxlan",),
                                     tunnel_ofports={"vxlan": tunnel}))
        topo.replace_all(nb_objects())
        for vm, ofport in ofports.items():
            topo.set_ofport(vm, ofport)
        engine = Engine(default_apps(), topo)
        engine.full()
        channel = OfChannel(env.controller_target)
        channel.connect()
        r = Rig(env, ofports, tunnel, topo, engine, channel, Reconciler())
        r.sync()
        yield r
    finally:
        if channel is not None:
            channel.close()
        env.stop()


def dp_actions(trace: str) -> str:
    m = re.search(r"^Datapath actions: (.*)$", trace, re.M)
    assert m, trace
    return m.group(1)


def outputs(trace: str) -> list[str]:
    """Every OpenFlow output the packet reached, in order (from the trace body)."""
    return [a or b for a, b in re.findall(r"^\s+(?:output:(\d+)|(IN_PORT))$", trace, re.M)]


def test_same_network_local_delivery(rig: Rig) -> None:
    t = rig.trace("vm1", VMS["vm2"][2])
    assert outputs(t) == [str(rig.ofports["vm2"])]


def test_remote_port_goes_through_the_networks_vni_to_its_chassis(rig: Rig) -> None:
    t = rig.trace("vm1", VMS["vm3"][2])
    assert f"set_field:{HV['hv2']}->tun_dst" in t
    assert "set_field:0x64->tun_id" in t
    assert outputs(t) == [str(rig.tunnel_ofport)]


def test_broadcast_reaches_local_ports_and_only_chassis_with_ports_of_the_network(rig: Rig
                                                                                  ) -> None:
    t = rig.trace("vm1", "ff:ff:ff:ff:ff:ff")
    outs = outputs(t)
    # vm1 itself is skipped by OVS (input port); vm2 local; one copy towards hv2 (vm3)
    assert str(rig.ofports["vm2"]) in outs
    assert str(rig.ofports["vm4"]) not in outs
    assert outs.count(str(rig.tunnel_ofport)) == 1
    assert f"set_field:{HV['hv2']}->tun_dst" in t
    assert HV["hv3"] not in t  # hv3 hosts only net-b ports


def test_other_network_is_unreachable_even_with_same_cidr(rig: Rig) -> None:
    t = rig.trace("vm1", VMS["vm4"][2])  # vm4: same IP space, other network
    assert outputs(t) == []
    assert dp_actions(t) == "drop"
    t = rig.trace("vm4", VMS["vm1"][2])
    assert outputs(t) == []


def test_unknown_unicast_is_dropped(rig: Rig) -> None:
    t = rig.trace("vm1", "fa:16:3e:99:99:99")
    assert outputs(t) == [] and dp_actions(t) == "drop"


def test_arp_for_known_ip_is_answered_locally(rig: Rig) -> None:
    vm3_mac, vm3_ip = VMS["vm3"][2], VMS["vm3"][3]
    t = rig.trace("vm1", "ff:ff:ff:ff:ff:ff",
                  f",arp,arp_op=1,arp_spa=10.0.0.11,arp_tpa={vm3_ip},arp_sha={VMS['vm1'][2]}")
    assert outputs(t) == ["IN_PORT"]
    assert str(rig.tunnel_ofport) not in outputs(t)
    dp = dp_actions(t)
    assert f"src={vm3_mac}" in dp and f"dst={VMS['vm1'][2]}" in dp
    assert f"sip={vm3_ip}" in dp and "tip=10.0.0.11" in dp and "op=2" in dp
    assert f"sha={vm3_mac}" in dp


def test_arp_is_scoped_to_the_network(rig: Rig) -> None:
    # vm4 (net-b) asks for 10.0.0.13, which exists only in net-a: not answered, flooded in net-b
    t = rig.trace("vm4", "ff:ff:ff:ff:ff:ff",
                  ",arp,arp_op=1,arp_spa=10.0.0.11,arp_tpa=10.0.0.13,"
                  f"arp_sha={VMS['vm4'][2]}")
    assert "IN_PORT" not in outputs(t)
    assert f"set_field:{HV['hv3']}->tun_dst" in t  # flooded to net-b's remote chassis only
    assert HV["hv2"] not in t


def test_from_tunnel_is_delivered_locally_and_never_retunnelled(rig: Rig) -> None:
    tun = f"in_port={rig.tunnel_ofport},tun_id=100,tun_src={HV['hv2']},tun_dst={HV['hv1']}"
    t = rig.env.trace(f"{tun},dl_src={VMS['vm3'][2]},dl_dst={VMS['vm1'][2]}")
    assert outputs(t) == [str(rig.ofports["vm1"])]
    t = rig.env.trace(f"{tun},dl_src={VMS['vm3'][2]},dl_dst=ff:ff:ff:ff:ff:ff")
    assert sorted(outputs(t)) == sorted([str(rig.ofports["vm1"]), str(rig.ofports["vm2"])])
    # a packet from the tunnel for a remote MAC is not sent back into a tunnel
    t = rig.env.trace(f"{tun},dl_src={VMS['vm3'][2]},dl_dst={VMS['vm3'][2]}")
    assert outputs(t) == []
    # an unknown VNI is dropped
    t = rig.env.trace(f"in_port={rig.tunnel_ofport},tun_id=999,dl_dst={VMS['vm1'][2]}")
    assert outputs(t) == []


def test_port_delete_removes_its_flows_and_traffic(rig: Rig) -> None:
    vm2 = rig.topo.get(Port, "vm2")
    assert vm2 is not None
    touched = rig.topo.apply("port", "vm2", None)
    rig.engine.changed(touched or set())
    rig.engine.changed(rig.topo.set_ofport("vm2", None))
    assert rig.sync() > 0
    assert outputs(rig.trace("vm1", VMS["vm2"][2])) == []
    assert not any(VMS["vm2"][2] in f for f in rig.env.dump_flows())
    # and back: re-adding restores exactly the flows of a full compile
    rig.engine.changed(rig.topo.apply("port", "vm2", vm2) or set())
    rig.engine.changed(rig.topo.set_ofport("vm2", rig.ofports["vm2"]))
    rig.sync()
    assert outputs(rig.trace("vm1", VMS["vm2"][2])) == [str(rig.ofports["vm2"])]
    installed = len(rig.env.dump_flows())
    assert installed == len(rig.reconciler.installed)
