"""IPv6 ND responder: neighbour solicitations for any NB-known IPv6 address of a port or a
router interface in the network are answered on this chassis. The flows pick the known
targets out (no solicitation for a known address leaves the node); the advertisement itself
is built by the local controller (controller/packet_in.py), since OpenFlow cannot turn a
solicitation's options into an advertisement's."""

from __future__ import annotations

from dragonflow.apps.base import local_network_ports, local_router_owners, split_owner
from dragonflow.controller.topology import Topology, View
from dragonflow.pipeline.flow import Flow, ToController

NS = {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 135}


class NdResponderApp:
    name = "nd"

    def owners(self, topo: Topology) -> set[str]:
        return local_network_ports(topo) | local_router_owners(topo)

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, obj_id = split_owner(owner)
        targets: list[tuple[int, str]] = []  # (network key, address)
        if table == "router":
            interfaces = view.local_interfaces(obj_id)
            targets = [(net.unique_key, str(c.ip))
                       for rp, net in interfaces for c in rp.cidrs if c.version == 6]
        elif found := view.local_port(obj_id):
            port, net = found
            targets = [(net.unique_key, str(f.ip_address)) for f in port.fixed_ips
                       if f.ip_address.version == 6]
        return [Flow.make("nd_responder", 100,
                          dict(NS, network=key, ipv6_nd_target=ip), (ToController(),), owner)
                for key, ip in targets]
