"""Router interface addresses answer ICMP / ICMPv6 echo, in flows, on the source chassis.

The request is turned into the reply in place: Ethernet and IP addresses swapped (through
scratch registers: OpenFlow has no swap), type set to echo reply, out of the port it came in
on. Every interface address of the router answers from any of its networks.
"""

from __future__ import annotations

from dragonflow.apps.base import local_router_owners, split_owner
from dragonflow.pipeline.flow import Action, Flow, Move, OutputInPort, SetField
from dragonflow.pipeline.stages import Stage, fields
from dragonflow.pipeline.topology import OwnersView, View


def swap(a: str, b: str, bits: int) -> tuple[Move, ...]:
    """a <-> b through the scratch registers reg0..reg3 (32 bits each)."""
    regs = ("reg0", "reg1", "reg2", "reg3")
    chunks = [(i * 32, min(32, bits - i * 32)) for i in range((bits + 31) // 32)]
    out = [Move(a, regs[i], n, src_ofs=ofs) for i, (ofs, n) in enumerate(chunks)]
    out.append(Move(b, a, bits))
    out += [Move(regs[i], b, n, dst_ofs=ofs) for i, (ofs, n) in enumerate(chunks)]
    return tuple(out)


ECHO = {  # version: (eth_type, ip_proto, type field, request, reply, src, dst, bits)
    4: (0x0800, 1, "icmpv4_type", 8, 0, "ipv4_src", "ipv4_dst", 32),
    6: (0x86DD, 58, "icmpv6_type", 128, 129, "ipv6_src", "ipv6_dst", 128),
}


class IcmpResponderApp:
    name = "icmp"
    stages = (
        Stage("l3_input", after=("l2_lookup",),
              matches=fields("router", "eth_type", "ip_proto", "icmpv4_type", "icmpv6_type",
                             "ipv4_dst", "ipv6_dst"),
              sets=fields("eth_src", "eth_dst", "ipv4_src", "ipv4_dst", "ipv6_src",
                          "ipv6_dst", "icmpv4_type", "icmpv6_type"),
              miss="next", doc="router interface addresses answer echo requests"),
    )

    def owners(self, topo: OwnersView) -> set[str]:
        return local_router_owners(topo)

    def compile(self, view: View, owner: str) -> list[Flow]:
        _, router_id = split_owner(owner)
        router = view.router(router_id)
        if router is None or not view.is_local_router(router_id):
            return []
        flows = []
        for rp in router.ports:
            for cidr in rp.cidrs:
                eth_type, proto, tfield, req, rep, src, dst, bits = ECHO[cidr.version]
                match = {"router": router.unique_key, "eth_type": eth_type, "ip_proto": proto,
                         tfield: req, dst: str(cidr.ip)}
                actions: tuple[Action, ...] = (
                    *swap("eth_src", "eth_dst", 48), *swap(src, dst, bits),
                    SetField(tfield, rep), OutputInPort())
                flows.append(Flow.make("l3_input", 100, match, actions, owner))
        return flows
