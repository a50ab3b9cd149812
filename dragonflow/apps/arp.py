"""ARP responder: requests for any NB-known IPv4 address of a port in the network are
answered on this chassis, from the port's MAC; no ARP broadcast for a known address leaves
the node. Unknown addresses fall through (stage miss) to L2 flooding.
"""

from __future__ import annotations

from dragonflow.apps.base import local_network_ports, local_router_owners, split_owner
from dragonflow.controller.topology import Topology, View
from dragonflow.pipeline.flow import Flow, Move, OutputInPort, SetField

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

    def owners(self, topo: Topology) -> set[str]:
        return local_network_ports(topo) | local_router_owners(topo)

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, port_id = split_owner(owner)
        if table == "router":
            return self._router(view, port_id, owner)
        port = view.port(port_id)
        net = view.network(port.network_id) if port else None
        if port is None or net is None or not view.is_local_network(net.id):
            return []
        flows = []
        for fip in port.fixed_ips:
            if fip.ip_address.version != 4:
                continue
            ip = str(fip.ip_address)
            match = {"network": net.unique_key, "eth_type": ARP, "arp_op": 1, "arp_tpa": ip}
            flows.append(Flow.make("arp_responder", 100, match,
                                   arp_reply_actions(port.mac, ip), owner))
        return flows

    def _router(self, view: View, router_id: str, owner: str) -> list[Flow]:
        """Router interface addresses answer ARP on their own network."""
        router = view.router(router_id)
        if router is None or not view.is_local_router(router_id):
            return []
        flows = []
        for rp in router.ports:
            net = view.network(rp.network_id)
            if net is None or not view.is_local_network(net.id):
                continue
            for cidr in rp.cidrs:
                if cidr.version != 4:
                    continue
                ip = str(cidr.ip)
                match = {"network": net.unique_key, "eth_type": ARP, "arp_op": 1, "arp_tpa": ip}
                flows.append(Flow.make("arp_responder", 100, match,
                                       arp_reply_actions(rp.mac, ip), owner))
        return flows
