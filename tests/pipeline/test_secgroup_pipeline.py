"""Security groups in a real ovs-vswitchd, traced with ofproto/trace (no mocks).

* Broadcast and multicast IP are filtered per receiving port like unicast: a flooded copy
  enters each local port's ingress rules (through ``deliver``), so a UDP broadcast reaches a
  port in a group only where a rule allows it, and ports without groups always.
* Security-group flows must not make OVS's datapath flows finer for traffic they cannot
  apply to. A port with no group (an untracked packet) takes the secgroup stages' misses;
  the rules' clause flows (a member's address, a masked L4 port range) match a tracked
  packet only, so OVS's staged lookup stops at ct_state and leaves the packet's L4 ports
  and destination wildcarded in the megaflow -- otherwise every new connection of every
  port would be one more upcall (ofproto/trace's Megaflow line).

hv1 (this bridge), net1 10.1.0.0/24: vm1, vm2, vm3 in no group; web1 in group "web" (ingress
TCP 5120-5375 from members of "web", UDP 5000 from 10.1.0.0/24, egress anything); web2 a
member of "web" on hv2.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from dragonflow.model import Chassis, NbObject, Network, Port, SecurityGroup, Subnet
from tests.fixtures.ovs_bridge import CompiledRig, OvsBridgeEnv, rig_on_bridge

pytestmark = pytest.mark.ovs

VMS = {  # name: (mac, ip, key, groups, chassis)
    "vm1": ("fa:16:3e:00:00:11", "10.1.0.11", 11, [], "hv1"),
    "vm2": ("fa:16:3e:00:00:12", "10.1.0.12", 12, [], "hv1"),
    "web1": ("fa:16:3e:00:00:13", "10.1.0.13", 13, ["web"], "hv1"),
    "web2": ("fa:16:3e:00:00:14", "10.1.0.14", 14, ["web"], "hv2"),
    "vm3": ("fa:16:3e:00:00:15", "10.1.0.15", 15, [], "hv1"),  # flooded after web1's ct
}
LOCAL = ("vm1", "vm2", "web1", "vm3")


def nb_objects() -> list[NbObject]:
    objs: list[NbObject] = [
        Chassis.from_dict({"id": "hv1", "ip": "10.255.0.11", "tunnel_types": ["vxlan"]}),
        Chassis.from_dict({"id": "hv2", "ip": "10.255.0.12", "tunnel_types": ["vxlan"]}),
        Network.from_dict({"id": "net1", "topic": "p", "network_type": "vxlan",
                           "segmentation_id": 101, "unique_key": 1}),
        Subnet.from_dict({"id": "s4", "topic": "p", "network_id": "net1",
                          "cidr": "10.1.0.0/24", "enable_dhcp": False}),
        SecurityGroup.from_dict({"id": "web", "topic": "p", "rules": [
            {"id": "in", "direction": "ingress", "protocol": "tcp", "port_range_min": 5120,
             "port_range_max": 5375, "remote_group_id": "web"},
            {"id": "bc", "direction": "ingress", "protocol": "udp", "port_range_min": 5000,
             "port_range_max": 5000, "remote_ip_prefix": "10.1.0.0/24"},
            {"id": "out", "direction": "egress"}]}),
    ]
    for vm, (vmac, ip, key, groups, hv) in VMS.items():
        objs.append(Port.from_dict({
            "id": vm, "topic": "p", "network_id": "net1", "mac": vmac, "unique_key": key,
            "device_owner": "compute:nova", "security_groups": groups,
            "fixed_ips": [{"subnet_id": "s4", "ip_address": ip}],
            "binding": {"kind": "chassis", "chassis_id": hv}}))
    return objs


class Rig(CompiledRig):
    def __init__(self, env: OvsBridgeEnv) -> None:
        super().__init__(env, nb_objects(), LOCAL)

    def megaflow(self, src: str, dst: str, tp_src: int, tp_dst: int) -> str:
        s, d = VMS[src], VMS[dst]
        trace = self.env.trace(f"in_port={self.ofports[src]},dl_src={s[0]},dl_dst={d[0]},"
                               f"tcp,nw_src={s[1]},nw_dst={d[1]},tp_src={tp_src},"
                               f"tp_dst={tp_dst}")
        found = re.search(r"^Megaflow: (.*)$", trace, re.M)
        assert found, trace
        assert f"output:{self.ofports[dst]}" in trace, trace  # it does get there
        return found.group(1)


    def flood(self, src: str, dst_ip: str, tp_dst: int) -> list[str]:
        """The ofports a UDP broadcast/multicast from ``src`` reaches (new connections:
        ofproto/trace takes every ct as +trk+new)."""
        s = VMS[src]
        dst_mac = "ff:ff:ff:ff:ff:ff" if dst_ip.endswith(".255") else "01:00:5e:01:02:03"
        trace = self.env.trace(f"in_port={self.ofports[src]},dl_src={s[0]},dl_dst={dst_mac},"
                               f"udp,nw_src={s[1]},nw_dst={dst_ip},udp_src=4000,"
                               f"udp_dst={tp_dst}", "--ct-next", "trk,new")
        found = re.findall(r"^\s+output:(\d+)$(\n\s+>> skipping output to input port)?",
                           trace, re.M)
        return sorted({port for port, skipped in found if not skipped})


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with rig_on_bridge(Rig) as r:
        yield r


def test_ports_without_groups_keep_their_tcp_ports_wildcarded(rig: Rig) -> None:
    """vm1 -> vm2 (no groups): the group's port-range and member-address clause flows in
    the same tables must not un-wildcard tp_src / tp_dst or the destination address (the
    source address is port security's: one megaflow per sender, not per connection)."""
    for sport, dport in ((40001, 5200), (40002, 80)):
        mf = rig.megaflow("vm1", "vm2", sport, dport)
        assert "tp_dst" not in mf and "tp_src" not in mf, mf
        assert "nw_dst" not in mf, mf


@pytest.mark.parametrize("dst_ip", ["10.1.0.255", "239.1.2.3"])
def test_broadcast_and_multicast_ip_pass_each_receivers_ingress_rules(rig: Rig,
                                                                       dst_ip: str) -> None:
    """(vm3 comes after web1 in the flood: the copies after a conntrack recirculation are
    still sent.)"""
    vm2, web1, vm3 = (str(rig.ofports[vm]) for vm in ("vm2", "web1", "vm3"))
    assert rig.flood("vm1", dst_ip, 5000) == sorted([vm2, web1, vm3])  # web1's rule allows
    assert rig.flood("vm1", dst_ip, 5001) == sorted([vm2, vm3])  # no rule of web1 allows it
