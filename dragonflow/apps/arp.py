"""ARP responder: requests for any NB-known IPv4 address of a port in the network are
answered on this chassis, from the port's MAC; no ARP broadcast for a known address leaves
the node. Unknown addresses fall through (stage miss) to L2 flooding.
"""

from __future__ import annotations

from dragonflow.apps.base import (
    local_router_owners,
    network_part_owners,
    network_parts,
    split_owner,
)
from dragonflow.pipeline.flow import Flow, Move, OutputInPort, SetField
from dragonflow.pipeline.stages import Stage, fields
from dragonflow.pipeline.topology import OwnersView, View

ARP = 0x0806


def arp_reply_actions(mac: str, ip: str) -> tuple:
    """Turn the request in place into the reply from (mac, ip), back out of its port."""
    return (
        Move("eth_src", "eth_dst", 48), SetField("eth_src", mac), SetField("arp_op", 2),
        Move("arp_sha", "arp_tha", 48), SetField("arp_sha", mac),
        Move("arp_spa", "arp_tpa", 32), SetField("arp_spa", ip), OutputInPort(),
    )


class ArpResponderApp:
    name = "arp"
    stages = (
        Stage("arp_responder", after=("classify",),
              matches=fields("network", "eth_type", "arp_op", "arp_tpa"),
              sets=fields("eth_src", "eth_dst", "arp_op", "arp_sha", "arp_tha", "arp_spa",
                          "arp_tpa"),
              miss="next", doc="ARP requests for known addresses answered in place"),
    )

    owner_parts = staticmethod(network_parts)  # its port owners, by network
    part_owners = staticmethod(network_part_owners)

    def owners(self, topo: OwnersView) -> set[str]:
        return local_router_owners(topo)

    def compile(self, view: View, owner: str) -> list[Flow]:
        """One responder flow per IPv4 address of the port, or of the router's interfaces
        on local networks (each answered on its own network, from its own MAC)."""
        table, obj_id = split_owner(owner)
        targets: list[tuple[int, str, str]] = []  # (network key, mac, ip)
        if table == "router":
            interfaces = view.local_interfaces(obj_id)
            targets = [(net.unique_key, rp.mac, str(c.ip))
                       for rp, net in interfaces for c in rp.cidrs if c.version == 4]
        elif found := view.local_port(obj_id):
            port, net = found
            targets = [(net.unique_key, port.mac, str(f.ip_address))
                       for f in port.fixed_ips if f.ip_address.version == 4]
        return [Flow.make("arp_responder", 100,
                          {"network": key, "eth_type": ARP, "arp_op": 1, "arp_tpa": ip},
                          arp_reply_actions(mac, ip), owner)
                for key, mac, ip in targets]
