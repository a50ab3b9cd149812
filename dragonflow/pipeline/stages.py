"""The pipeline, declared once as data: the only place that knows the order of the stages.

Each :class:`Stage` says which app owns it, which logical fields its flows may match and set,
which stages its flows may ``goto`` (OpenFlow only allows forward gotos) or ``resubmit`` to,
and what a table miss does. Table numbers and registers are derived here and checked when
the module is imported, so a bad declaration fails at start-up, not in the datapath; every
flow is checked against its stage when it is lowered (see pipeline/physical.py).

Registers (logical field -> OXM field):
    network    metadata  the network's unique key (set by classify; rewritten by routing)
    in_port    reg6      the source logical port's unique key (0 for tunnel/unknown)
    out_port   reg7      the destination logical port's unique key (set by l2/l3 lookup)
    router     reg5      the router whose interface MAC the packet was sent to (l2_lookup)
    flags      reg10     bit 0: arrived from a tunnel (never sent back into one)

The path of a packet:  classify -> arp_responder -> nd_responder -> l2_lookup
    -> (to a router interface MAC) l3_input -> l3_lookup -> egress
    -> (anything else)                                      egress
"""

from __future__ import annotations

from dataclasses import dataclass

REGISTERS: dict[str, str] = {
    "network": "metadata",
    "in_port": "reg6",
    "out_port": "reg7",
    "router": "reg5",
    "flags": "reg10",
}
FLAG_FROM_TUNNEL = 0x1
# Registers any stage may use as temporaries WITHIN one flow's actions (e.g. to swap two
# addresses); their value means nothing to the next stage.
SCRATCH = ("reg0", "reg1", "reg2", "reg3", "reg8", "reg9")

# Packet header fields every stage may match (OXM names, passed through unchanged).
HEADER_FIELDS = frozenset({
    "eth_src", "eth_dst", "eth_type", "vlan_vid", "ip_proto", "ipv4_src", "ipv4_dst",
    "ipv6_src", "ipv6_dst", "arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha",
    "icmpv4_type", "icmpv4_code", "icmpv6_type", "icmpv6_code", "ipv6_nd_target",
    "tcp_src", "tcp_dst", "udp_src", "udp_dst", "ip_dscp", "nw_ttl",
})


@dataclass(frozen=True)
class Stage:
    name: str
    owner: str
    matches: frozenset[str] = frozenset()   # logical fields (REGISTERS keys) flows may match
    sets: frozenset[str] = frozenset()      # logical fields flows may set
    goto: tuple[str, ...] = ()              # stages a flow may continue in (forward only)
    resubmit: tuple[str, ...] = ()          # stages a flow may resubmit to (any direction)
    miss: str = "drop"                      # "drop", or "goto:<stage>"
    physical: bool = False                  # may match/act on ofports and tunnels


def _s(*names: str) -> frozenset[str]:
    return frozenset(names)


STAGES: tuple[Stage, ...] = (
    Stage("classify", owner="physical", physical=True,
          sets=_s("network", "in_port", "flags"),
          goto=("arp_responder", "l2_lookup"), miss="drop"),
    Stage("arp_responder", owner="arp", matches=_s("network", "in_port"),
          goto=("nd_responder",), miss="goto:nd_responder"),
    Stage("nd_responder", owner="nd", matches=_s("network", "in_port"),
          goto=("l2_lookup",), miss="goto:l2_lookup"),
    Stage("l2_lookup", owner="l2", matches=_s("network", "flags"), sets=_s("out_port", "router"),
          goto=("l3_input", "egress"), resubmit=("egress",), miss="drop"),
    Stage("l3_input", owner="icmp", matches=_s("network", "router"),
          goto=("l3_lookup",), miss="goto:l3_lookup"),
    Stage("l3_lookup", owner="l3", matches=_s("network", "router"),
          sets=_s("network", "out_port"), goto=("egress",), miss="drop"),
    Stage("egress", owner="physical", physical=True, matches=_s("out_port", "flags", "network"),
          miss="drop"),
)


class PipelineError(Exception):
    pass


class Pipeline:
    """Table numbers derived from the declaration order (``base`` + index)."""

    def __init__(self, stages: tuple[Stage, ...] = STAGES, base: int = 0) -> None:
        self.stages = {s.name: s for s in stages}
        if len(self.stages) != len(stages):
            raise PipelineError("duplicate stage names")
        self.table: dict[str, int] = {s.name: base + i for i, s in enumerate(stages)}
        for s in stages:
            for nxt in s.goto:
                if nxt not in self.stages:
                    raise PipelineError(f"stage {s.name}: goto to undeclared stage {nxt!r}")
                if self.table[nxt] <= self.table[s.name]:
                    raise PipelineError(f"stage {s.name}: goto {nxt!r} is not forward")
            for nxt in s.resubmit:
                if nxt not in self.stages:
                    raise PipelineError(f"stage {s.name}: resubmit to undeclared {nxt!r}")
            if s.miss.startswith("goto:") and s.miss[5:] not in s.goto:
                raise PipelineError(f"stage {s.name}: miss target {s.miss[5:]!r} not in goto")
            if s.miss != "drop" and not s.miss.startswith("goto:"):
                raise PipelineError(f"stage {s.name}: bad miss {s.miss!r}")
            unknown = (s.matches | s.sets) - set(REGISTERS)
            if unknown:
                raise PipelineError(f"stage {s.name}: unknown logical fields {sorted(unknown)}")
        used_regs = list(REGISTERS.values()) + list(SCRATCH)
        if len(set(used_regs)) != len(used_regs):
            raise PipelineError("two logical fields share a register")

    def stage(self, name: str) -> Stage:
        try:
            return self.stages[name]
        except KeyError:
            raise PipelineError(f"unknown stage {name!r}") from None

    @property
    def tables(self) -> list[int]:
        return sorted(self.table.values())


PIPELINE = Pipeline()
