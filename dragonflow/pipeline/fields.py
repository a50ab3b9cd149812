"""Logical fields: named bit ranges of registers (OVN's logical-fields table, in Python).

Apps match and set *logical* fields by name; lowering (pipeline/lower.py) turns them into
masked matches on, and partial writes of, the registers below. Every bit has at most one
meaning: the table is checked when the module is imported (no two fields share a bit, no
field overlaps a scratch register), so a bad edit fails at start-up, not in the datapath.

    field          register       bits    meaning
    network        metadata       0..31   the network's unique key (classify; rewritten by routing)
    router         reg5           0..31   router whose interface MAC the frame was sent to (l2)
    in_port        reg6           0..31   the source logical port's unique key (0: tunnel/unknown)
    out_port       reg7           0..31   the destination logical port's unique key (l2/l3 lookup)
    from_tunnel    reg10          0       flag: arrived from a tunnel (never sent back into one)
    reinjected     reg10          1       flag: the controller re-injected it (never punted again)
    flags          reg10          2..15   more named flag bits, for the services to come
    punt_table     reg10          16..23  controller path: the table that punted (CoPP tables)
    punt_meter     reg10          24..31  controller path: the punt's meter (CoPP tables)
    zone           reg13          0..15   conntrack zone of the packet's logical port
    snat_zone      reg13          16..31  conntrack zone for SNAT of the packet's router
    metadata bits 32..63 are free for a second datapath key.

Scratch registers (SCRATCH) are temporaries *within one flow's actions* (e.g. to swap two
addresses): their value means nothing to the next stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from dragonflow.ovs.flows import FIELDS


@dataclass(frozen=True)
class LogicalField:
    name: str
    register: str  # OXM/NXM field name (os-ken)
    ofs: int
    nbits: int
    doc: str = ""

    @property
    def mask(self) -> int:
        """The field's bits, in register position."""
        return ((1 << self.nbits) - 1) << self.ofs

    @property
    def whole(self) -> bool:
        """The field is the whole register."""
        return self.ofs == 0 and self.nbits == 8 * FIELDS[self.register].nbytes

    def __str__(self) -> str:
        return f"{self.name}={self.register}[{self.ofs}..{self.ofs + self.nbits - 1}]"


LOGICAL_FIELDS: dict[str, LogicalField] = {f.name: f for f in (
    LogicalField("network", "metadata", 0, 32, "the network's unique key"),
    LogicalField("router", "reg5", 0, 32, "the router of the interface MAC the frame hit"),
    LogicalField("in_port", "reg6", 0, 32, "the source logical port's unique key"),
    LogicalField("out_port", "reg7", 0, 32, "the destination logical port's unique key"),
    LogicalField("from_tunnel", "reg10", 0, 1, "flag: arrived from a tunnel"),
    LogicalField("reinjected", "reg10", 1, 1, "flag: re-injected by the controller"),
    LogicalField("punt_table", "reg10", 16, 8, "controller path: the table that punted"),
    LogicalField("punt_meter", "reg10", 24, 8, "controller path: the punt's meter id"),
    LogicalField("zone", "reg13", 0, 16, "conntrack zone of the packet's logical port"),
    LogicalField("snat_zone", "reg13", 16, 16, "conntrack zone for SNAT of the router"),
)}
# out_port of a frame for the network's physical network on this chassis (a provider
# network's "localnet": the patch to the bridge its physical network is mapped to); no port
# unique key reaches it (keys count up from 1)
LOCALNET = 0xFFFF_FFF0
# Flag bits reg10[2..15] are reserved for named flags; add them to LOGICAL_FIELDS as 1-bit
# fields (as from_tunnel) when a service needs one.

# Registers any stage may use as temporaries WITHIN one flow's actions.
SCRATCH = ("reg0", "reg1", "reg2", "reg3", "reg8", "reg9")

# Packet header fields (OXM names) a stage may declare to match or set. Physical fields
# (in_ofport, tunnel_id) only in stages declared physical.
HEADER_FIELDS = frozenset({
    "eth_src", "eth_dst", "eth_type", "vlan_vid", "vlan_pcp", "ip_proto", "ip_dscp", "ip_ecn",
    "nw_ttl", "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst", "ipv6_flabel", "arp_op",
    "arp_spa", "arp_tpa", "arp_sha", "arp_tha", "icmpv4_type", "icmpv4_code",
    "icmpv6_type", "icmpv6_code", "ipv6_nd_target", "ipv6_nd_sll", "ipv6_nd_tll",
    "tcp_src", "tcp_dst", "tcp_flags", "udp_src", "udp_dst", "sctp_src", "sctp_dst",
    "pkt_mark",
})
# Conntrack and conjunction state: matchable, never set directly (ct() sets them).
STATE_FIELDS = frozenset({"ct_state", "ct_zone", "ct_mark", "ct_label", "conj_id"})
# Physical match fields (logical name -> OXM name): physical stages only.
PHYSICAL_FIELDS = {"in_ofport": "in_port", "tunnel_id": "tunnel_id",
                   "tun_ipv4_src": "tun_ipv4_src", "tun_ipv4_dst": "tun_ipv4_dst"}

# Conntrack state bits (ct_state), as OVS names them.
CT_NEW, CT_ESTABLISHED, CT_RELATED, CT_REPLY, CT_INVALID, CT_TRACKED = \
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20
CT_SNAT, CT_DNAT = 0x40, 0x80


def check_layout() -> None:
    """No two logical fields share a bit; no field uses a scratch register; every field
    fits its register."""
    owner: dict[tuple[str, int], str] = {}
    for f in LOGICAL_FIELDS.values():
        if f.register not in FIELDS or f.register in SCRATCH:
            raise ValueError(f"logical field {f}: register not usable")
        if f.nbits <= 0 or f.ofs + f.nbits > 8 * FIELDS[f.register].nbytes:
            raise ValueError(f"logical field {f}: does not fit {f.register}")
        for bit in range(f.ofs, f.ofs + f.nbits):
            other = owner.setdefault((f.register, bit), f.name)
            if other != f.name:
                raise ValueError(f"logical fields {other} and {f.name} share "
                                 f"{f.register} bit {bit}")
    clash = set(LOGICAL_FIELDS) & (HEADER_FIELDS | STATE_FIELDS | set(PHYSICAL_FIELDS))
    if clash:
        raise ValueError(f"logical field names shadow OpenFlow fields: {sorted(clash)}")


check_layout()


def read_field(regs: object, name: str) -> int | None:
    """The value of logical field ``name`` out of a packet-in / flow-removed match
    (a mapping of OXM names to register values); None if the register is absent."""
    lfd = LOGICAL_FIELDS[name]
    raw = regs.get(lfd.register) if hasattr(regs, "get") else None
    if isinstance(raw, tuple):  # (value, mask) in a flow-removed match
        raw = raw[0]
    if not isinstance(raw, int):
        return None
    return (raw >> lfd.ofs) & ((1 << lfd.nbits) - 1)
