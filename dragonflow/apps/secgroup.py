"""Security groups (stateful, conntrack): skeleton -- see below."""

from __future__ import annotations

from dragonflow.pipeline.flow import Flow
from dragonflow.pipeline.stages import Stage, fields
from dragonflow.pipeline.topology import OwnersView, View

RULE_MATCHES = fields("eth_type", "ip_proto", "tcp_dst", "udp_dst", "sctp_dst",
                      "icmpv4_type", "icmpv4_code", "icmpv6_type", "icmpv6_code")


class SecurityGroupApp:
    name = "secgroup"
    stages = (
        Stage("secgroup_out_ct", after=("ra", "port_security"), before=("l2_lookup",),
              matches=fields("in_port", "eth_type", "ip_proto", "icmpv6_type"),
              sets=fields("zone"), miss="next",
              doc="from a port with security groups: into conntrack (its zone)"),
        Stage("secgroup_out", after=("secgroup_out_ct",), before=("l2_lookup",),
              matches=fields("in_port", "ct_state", "ct_mark", "conj_id", "ipv4_dst",
                             "ipv6_dst") | RULE_MATCHES,
              masked=fields("ct_state", "ct_mark", "ipv4_dst", "ipv6_dst", "tcp_dst",
                            "udp_dst", "sctp_dst"),
              sets=fields("zone"), miss="next",
              doc="egress rules: new connections allowed by a rule committed, replies and "
                  "related pass, the rest dropped"),
        Stage("secgroup_in_ct", after=("deliver",), before=("egress",),
              matches=fields("out_port", "eth_type", "ip_proto", "icmpv6_type"),
              sets=fields("zone"), miss="next",
              doc="to a local port with security groups: into conntrack (its zone)"),
        Stage("secgroup_in", after=("secgroup_in_ct",), before=("egress",),
              matches=fields("out_port", "ct_state", "ct_mark", "conj_id", "ipv4_src",
                             "ipv6_src") | RULE_MATCHES,
              masked=fields("ct_state", "ct_mark", "ipv4_src", "ipv6_src", "tcp_dst",
                            "udp_dst", "sctp_dst"),
              sets=fields("zone"), miss="next",
              doc="ingress rules, as secgroup_out for the destination port"),
    )

    def owners(self, topo: OwnersView) -> set[str]:
        return set()

    def compile(self, view: View, owner: str) -> list[Flow]:
        return []
