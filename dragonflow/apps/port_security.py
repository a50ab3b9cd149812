"""Port security (anti-spoofing): what a local port with ``port_security_enabled`` may send.

Stage ``port_security``, after the local responders (ARP, DHCP, ND, RA: they answer the
sender itself, and their own flows match only well-formed requests) and before anything
forwards a frame (security groups, L2, the router). (To be written: see the module's tests.)
"""

from __future__ import annotations

from dragonflow.apps.base import split_owner
from dragonflow.pipeline.flow import Flow
from dragonflow.pipeline.stages import Stage, fields
from dragonflow.pipeline.topology import OwnersView, View


class PortSecurityApp:
    name = "port_security"
    stages = (
        Stage("port_security", after=("ra",), before=("l2_lookup",),
              matches=fields("in_port", "eth_src", "eth_dst", "eth_type", "vlan_vid",
                             "ip_proto", "ipv4_src", "ipv6_src", "arp_op", "arp_spa",
                             "arp_sha", "icmpv6_type", "ipv6_nd_target", "ipv6_nd_sll",
                             "ipv6_nd_tll", "udp_src", "udp_dst"),
              masked=fields("eth_src", "eth_dst", "ipv4_src", "ipv6_src", "arp_spa",
                            "ipv6_nd_target", "vlan_vid"),
              miss="next", doc="what a port with port security may send (anti-spoofing)"),
    )

    def owners(self, topo: OwnersView) -> set[str]:
        return set()

    def compile(self, view: View, owner: str) -> list[Flow]:
        split_owner(owner)
        return []
