"""An example app living outside the dragonflow package (see the README, "Writing an app").

It declares one stage, ``block_ipv6``, placed after the core ``classify`` stage and before
``arp_responder``: every frame a local VM sends passes through it (frames from tunnels go
from classify straight to l2_lookup, as the physical app declares). Its one flow drops IPv6;
everything else takes the stage's miss, ``next``. No table number, no register: the stage
and its fields are declared, the pipeline places it, lowering checks its flows.
"""

from __future__ import annotations

from dragonflow.pipeline.flow import Flow
from dragonflow.pipeline.stages import Stage, fields
from dragonflow.pipeline.topology import OwnersView, View

OWNER = "chassis/block_ipv6"


class BlockIpv6App:
    name = "block_ipv6"
    stages = (
        Stage("block_ipv6", after=("classify",), before=("arp_responder",),
              matches=fields("eth_type"), miss="next",
              doc="IPv6 from local VMs is dropped"),
    )

    def owners(self, topo: OwnersView) -> set[str]:
        return {OWNER} if topo.local_networks else set()

    def compile(self, view: View, owner: str) -> list[Flow]:
        return [Flow.make("block_ipv6", 100, {"eth_type": 0x86DD}, (), owner)]
