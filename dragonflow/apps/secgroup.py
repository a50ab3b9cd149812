"""Stateful security groups, in flows, on the chassis of each port (Neutron semantics).

A local port with port security and security groups gets its traffic in both directions
through conntrack, in a zone of its own, and its groups' rules decide what may START a
connection; what belongs to an allowed connection (replies, related ICMP errors) passes.

Zones: one per local port (as OVN): its OpenFlow port number on this chassis' bridge
(``zone_of``). That number is unique on the bridge, never 0, below 65,280 (OVS allocates
ofports under OFPP_MAX), so it fits the 16-bit zone without folding, and it stays the port's
across a controller restart (OVS keeps an interface's ofport) -- nothing to allocate or
persist. (A port plugged at ofport 49,152 or above gets no zone -- its owner fails, the port
is not reported ACTIVE: zones 0xC000..0xFEFF are the routers' NAT zones, 0xFF00.. stay free
for other chassis-wide uses.) So the packets
of one port's connections never share conntrack state with another port's, whatever their
networks or addresses (two networks with the same CIDR included), and a connection between
two ports on one chassis is checked twice: by the sender's egress rules in the sender's zone
and by the receiver's ingress rules in the receiver's zone. (A zone per network, as
Neutron's OVS firewall, would let the receiver's lookup find the sender's entry and skip the
receiver's ingress rules. A zone from the NB unique key would have to fold keys above 65,535
-- any long-lived cloud has them -- and two local ports could then share a zone.)

Stages (from a VM: ``secgroup_out_ct`` -> ``secgroup_out``, before L2; to a VM:
``secgroup_in_ct`` -> ``secgroup_in``, between ``deliver`` and ``egress``):

* ``*_ct``: IPv4 / IPv6 of the port -> its zone, into conntrack, on to the next stage with
  ct_state; neighbour discovery, MLD and router solicitation/advertisement (ICMPv6 130-136,
  143) skip it (conntrack does not track them; port security polices them) -- one set of
  flows for all ports, above the ports' own.
* verdict stage, per port (priority):
    300  +inv                                      drop
    290  +rpl, not blocked                         pass (replies of allowed connections)
    280  +rel, not blocked                         pass (ICMP errors about them)
    100  a rule allows it (conjunction, below)     commit (mark: not blocked), pass
     50  +est, original direction, no rule now     commit with the BLOCKED mark, drop
     10  anything else tracked                     drop
  A rule removed: the next packet of a connection it allowed finds no rule, marks the
  connection blocked and is dropped; so are its replies (ct_mark blocked, as OVN's
  ct_label.blocked). A rule added never touches existing connections.
* Rules as conjunctive matches, so that flows grow with ports + members + rules, never
  their product (as OVN's port groups and address sets): conjunction id = the rule's
  (group, rule) hash; clause 1 = the local ports of the group (``in_port`` / ``out_port``),
  clause 2 = the remote side when the rule has one (the remote CIDR, every address of
  every member of the remote group, allowed address pairs included, or the addresses of the
  remote address group -- an empty or unknown one allows nothing), the last clause = the
  ethertype, protocol and port range (a range as its covering masked matches, not one flow
  per port) or ICMP type/code. A member joining a remote group adds one flow per address;
  a port joining a group one clause-1 action. Clause flows of several groups with the same
  match are merged by the flow table (many owners, one flow). A stateful rule's clause 2/3
  flows also match ct_state=+trk: for an untracked packet (a port without groups) OVS's
  staged lookup stops there, so the datapath flow keeps its addresses and L4 ports
  wildcarded (without it: one megaflow, i.e. one upcall, per connection of every port;
  tests/pipeline/test_secgroup_pipeline.py).

Stateless groups (Neutron's ``stateful: false``): a port whose groups are all stateless
skips conntrack; a rule's verdict passes the (untracked) packet itself, replies need rules
of their own, anything else IP is dropped; neighbour discovery passes.

Owners: ``port/<id>`` (a local port: zone, state flows, its clause-1 flows; and any port,
local or not, that is a member of a group a local group's rules name: its addresses as
clause 2 of each of those rules) and ``secgroup/<id>`` (a group with a local member: CIDR /
address-group clause 2, clause 3, the conj_id verdicts) -- a member joining, leaving or
changing its addresses compiles its own owner only, whatever the size of the group (the
group's member owners are a set the topology keeps: re-listing them is a copy).
Ports with port security off or no groups get nothing: the stages' miss lets them pass.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging

from dragonflow.apps.base import network_part_owners, network_parts, split_owner
from dragonflow.apps.ra import link_local
from dragonflow.model import AddressGroup, Port, SecurityGroup, SecurityGroupRule
from dragonflow.model.secgroup import PROTOCOL_NUMBERS, REMOTE_FIELDS
from dragonflow.pipeline.fields import (
    CT_ESTABLISHED,
    CT_INVALID,
    CT_RELATED,
    CT_REPLY,
    CT_TRACKED,
)
from dragonflow.pipeline.flow import NEXT, Conjunction, Ct, Flow, Next, SetReg
from dragonflow.pipeline.stages import Stage, fields
from dragonflow.pipeline.topology import OwnersView, View

LOG = logging.getLogger(__name__)
RULE_MATCHES = fields("eth_type", "ip_proto", "tcp_dst", "udp_dst", "sctp_dst",
                      "icmpv4_type", "icmpv4_code", "icmpv6_type", "icmpv6_code")
ETH = {"IPv4": 0x0800, "IPv6": 0x86DD}
# ICMPv6 conntrack does not track: MLD (130-132, 143), RS, RA, NS, NA
UNTRACKED_ICMP6 = (130, 131, 132, 133, 134, 135, 136, 143)
UNTRACKED_OWNER = "untracked/icmpv6"  # one owner for all ports (not an NB object)
MEMBERS_PART = "members/"  # owner part: the members of one remote group
BLOCKED = 0x1  # ct_mark bit: the rule that allowed this connection is gone
PRIO_INVALID, PRIO_REPLY, PRIO_RELATED, PRIO_RULE, PRIO_BLOCK, PRIO_DROP = (
    300, 290, 280, 100, 50, 10)
# (stage of the ct lookup, verdict stage, the port's logical field, remote-side address)
DIRECTIONS = {"egress": ("secgroup_out_ct", "secgroup_out", "in_port", "dst"),
              "ingress": ("secgroup_in_ct", "secgroup_in", "out_port", "src")}


# zones from here up are never a port's: 0xC000..0xFEFF are routers' NAT zones
# (pipeline/topology.py NAT_ZONES), 0xFF00.. free for chassis-wide use
ZONE_RESERVED = 0xC000


def zone_of(ofport: int) -> int:
    """The conntrack zone of the local port plugged at ``ofport`` (see the module doc)."""
    if not 0 < ofport < ZONE_RESERVED:
        raise ValueError(f"ofport {ofport} cannot be a conntrack zone (1..{ZONE_RESERVED - 1})")
    return ofport


def conj_id(group_id: str, rule_id: str) -> int:
    digest = hashlib.blake2b(f"{group_id}/{rule_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") or 1


def clause_state(stateful: bool) -> dict[str, object]:
    """The extra match of a stateful rule's clause 2/3 flows: tracked packets only (the
    verdict needs +trk anyway). OVS's staged lookup then stops at ct_state for untracked
    packets (ports without groups) and leaves their addresses and L4 ports wildcarded in
    the datapath flow, instead of one megaflow per connection."""
    return {"ct_state": (CT_TRACKED, CT_TRACKED)} if stateful else {}


def port_mask_ranges(lo: int, hi: int) -> list[tuple[int, int]]:
    """The (value, mask) pairs of 16-bit ports that together match exactly lo..hi."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out


def remote_kind(rule: SecurityGroupRule) -> str | None:
    """Which remote side the rule names (None: any address). Every kind the model has must
    be handled here AND in _rule: a rule whose remote side is unknown would otherwise be
    compiled as "from anywhere"."""
    for name in REMOTE_FIELDS:
        if getattr(rule, name) is not None:
            return name
    return None


def enforced(port: Port | None) -> bool:
    """Security groups apply: port security on and at least one group (Neutron's rule)."""
    return port is not None and port.port_security_enabled and bool(port.security_groups)


def member_addresses(port: Port, version: int) -> list[ipaddress.IPv4Network
                                                      | ipaddress.IPv6Network]:
    """Every address a member of a remote group may use: fixed IPs and allowed address
    pairs (IP or CIDR) of that IP version."""
    out = [ipaddress.ip_network(f.ip_address) for f in port.fixed_ips
           if f.ip_address.version == version]
    out += [p.ip_address for p in port.allowed_address_pairs if p.ip_address.version == version]
    if version == 6:  # its link-local address (a rule naming a group covers it, as OVN)
        out.append(ipaddress.ip_network(link_local(port.mac)))
    return out


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
        """The groups with a local port (their rules), and the shared untracked flows."""
        return {f"secgroup/{g}" for g in topo.local_groups} | {UNTRACKED_OWNER}

    def owner_parts(self, topo: OwnersView) -> set[str]:
        """The ports of each local network; and for every group a local group's rules name
        as remote group, its members (each member's addresses are one owner, so a member
        joining compiles that member only, and re-lists that group's members only)."""
        remote: set[str] = set()
        for gid in topo.local_groups:
            group = topo.get(SecurityGroup, gid)
            if group is not None:
                remote |= {r.remote_group_id for r in group.rules if r.remote_group_id}
        return network_parts(topo) | {MEMBERS_PART + g for g in remote}

    def part_owners(self, topo: OwnersView, part: str) -> frozenset[str]:
        if part.startswith(MEMBERS_PART):
            return topo.group_port_owners(part[len(MEMBERS_PART):])
        return network_part_owners(topo, part)

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, obj_id = split_owner(owner)
        if owner == UNTRACKED_OWNER:  # for every port, once: ND & co. never enter conntrack
            return [Flow.make(st, prio, {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": t},
                              (Next(),), owner)
                    for ct_stage, stage, *_ in DIRECTIONS.values()
                    for st, prio in ((ct_stage, 110), (stage, PRIO_INVALID + 10))
                    for t in UNTRACKED_ICMP6]
        if table == "secgroup":
            return self._group(view, obj_id, owner)
        port = view.port(obj_id)
        if port is None:
            return []
        flows = self._member(view, port, owner)  # empty unless a local rule names its group
        if enforced(port) and view.ofport(obj_id) is not None:
            flows += self._port(view, port, owner)
        return flows

    # --- one local port: zone, states, clause 1 -----------------------------------------
    def _port(self, view: View, port: Port, owner: str) -> list[Flow]:
        flows: list[Flow] = []
        ofport = view.ofport(port.id)
        assert ofport is not None  # compile() only asks for plugged ports
        zone, key = zone_of(ofport), port.unique_key
        trk = CT_TRACKED
        not_blocked = (0, BLOCKED)
        rules: dict[str, list[Conjunction]] = {"egress": [], "ingress": []}
        groups = [g for gid in port.security_groups
                  if (g := view.get(SecurityGroup, gid)) is not None]
        for group in groups:
            for rule in group.rules:
                n = 2 if remote_kind(rule) is None else 3
                rules[rule.direction].append(Conjunction(conj_id(group.id, rule.id), 1, n))
        # Neutron refuses stateful and stateless groups on one port; if the NB has it anyway,
        # conntrack is used (and only the stateful groups' verdicts match tracked packets)
        stateless = bool(groups) and not any(g.stateful for g in groups)
        for direction, (ct_stage, stage, field, _) in DIRECTIONS.items():
            me = {field: key}
            clause1: list[Conjunction] = sorted(set(rules[direction]),
                                                key=lambda c: c.conj_id)
            if clause1:
                flows.append(Flow.make(stage, PRIO_RULE, me, tuple(clause1), owner))
            if stateless:
                flows += self._stateless(stage, me, owner)
                continue
            for eth in ETH.values():
                flows.append(Flow.make(ct_stage, 100, dict(me, eth_type=eth),
                                       (SetReg("zone", zone), Ct(zone="zone", table=NEXT)),
                                       owner))
            flows += [
                Flow.make(stage, PRIO_INVALID,
                          dict(me, ct_state=(trk | CT_INVALID, trk | CT_INVALID)), (), owner),
                Flow.make(stage, PRIO_REPLY, dict(me, ct_state=(trk | CT_REPLY, trk | CT_REPLY),
                                                  ct_mark=not_blocked), (Next(),), owner),
                Flow.make(stage, PRIO_RELATED,
                          dict(me, ct_state=(trk | CT_RELATED, trk | CT_RELATED),
                               ct_mark=not_blocked), (Next(),), owner),
                Flow.make(stage, PRIO_DROP, dict(me, ct_state=(trk, trk)), (), owner),
            ]
            # a connection no rule allows any more: marked, so its replies stop too (ct
            # actions need the IP version in the match)
            flows += [Flow.make(stage, PRIO_BLOCK, dict(me, eth_type=eth, ct_state=(
                trk | CT_ESTABLISHED, trk | CT_ESTABLISHED | CT_REPLY)),
                (Ct(commit=True, zone="zone", mark=(BLOCKED, BLOCKED)),), owner)
                for eth in ETH.values()]
        return flows

    @staticmethod
    def _stateless(stage: str, me: dict[str, int], owner: str) -> list[Flow]:
        """A port whose groups are all stateless: no conntrack; a packet passes when a rule
        of its direction allows it (the verdicts of stateless groups match it whatever its
        ct_state), IPv6 neighbour discovery / MLD / RS / RA pass (the shared flows above
        everything), any other IP is dropped."""
        return [Flow.make(stage, PRIO_DROP, dict(me, eth_type=eth), (), owner)
                for eth in ETH.values()]

    # --- one group: the remote and L4 clauses, the verdicts -----------------------------
    def _group(self, view: View, gid: str, owner: str) -> list[Flow]:
        """Clause flows of every rule of the group, one flow per distinct match (the
        conjunction actions of all rules that share it: a member address named by three
        rules is ONE flow), and one verdict flow per rule."""
        group = view.get(SecurityGroup, gid)
        if group is None or not view.has_local_members(gid):
            return []
        clauses: dict[tuple[str, tuple[tuple[str, object], ...]], set[Conjunction]] = {}
        flows: list[Flow] = []
        for rule in group.rules:
            stage, verdict, parts = self._rule(view, gid, rule, group.stateful)
            flows.append(verdict)
            for match, conj in parts:
                clauses.setdefault((stage, tuple(sorted(match.items()))), set()).add(conj)
        return flows + self._clause_flows(clauses, owner)

    # --- one member of a remote group: its addresses, for every rule naming the group ----
    def _member(self, view: View, port: Port, owner: str) -> list[Flow]:
        """Clause 2 of every rule (of a group with a local port) whose remote group this
        port is a member of: one flow per address and direction, with the conjunction of
        each such rule."""
        clauses: dict[tuple[str, tuple[tuple[str, object], ...]], set[Conjunction]] = {}
        for g in port.security_groups:
            for sid in view.referrers(g):
                group = view.get(SecurityGroup, sid)
                if group is None or not view.has_local_members(sid):
                    continue
                for rule in group.rules:
                    if rule.remote_group_id != g:
                        continue
                    _, stage, _, side = DIRECTIONS[rule.direction]
                    conj = Conjunction(conj_id(sid, rule.id), 2, 3)
                    for net in member_addresses(port, rule.ip_version):
                        value = (str(net.network_address) if net.prefixlen == net.max_prefixlen
                                 else (str(net.network_address), str(net.netmask)))
                        match = {"eth_type": ETH[rule.ethertype],
                                 f"ipv{rule.ip_version}_{side}": value,
                                 **clause_state(group.stateful)}
                        clauses.setdefault((stage, tuple(sorted(match.items()))),
                                           set()).add(conj)
        return self._clause_flows(clauses, owner)

    @staticmethod
    def _clause_flows(clauses: dict[tuple[str, tuple[tuple[str, object], ...]],
                                    set[Conjunction]], owner: str) -> list[Flow]:
        """One flow per (stage, match) with the conjunctions of every rule sharing it."""
        flows = []
        for (stage, key), conjs in sorted(clauses.items(), key=lambda kv: repr(kv[0])):
            actions: list[Conjunction] = sorted(conjs, key=lambda c: (c.conj_id, c.clause))
            flows.append(Flow.make(stage, PRIO_RULE, dict(key), tuple(actions), owner))
        return flows

    def _rule(self, view: View, gid: str, rule: SecurityGroupRule, stateful: bool = True
              ) -> tuple[str, Flow, list[tuple[dict[str, object], Conjunction]]]:
        """(stage, the rule's verdict flow, its clause-2/3 (match, conjunction) parts)."""
        _, stage, _, side = DIRECTIONS[rule.direction]
        cid = conj_id(gid, rule.id)
        eth = ETH[rule.ethertype]
        version = rule.ip_version
        addr_field = f"ipv{version}_{side}"
        remote: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None
        kind = remote_kind(rule)
        if rule.remote_ip_prefix is not None:
            remote = [rule.remote_ip_prefix]
        elif rule.remote_group_id is not None:
            remote = []  # clause 2 is compiled per member (_member): a join costs one owner
        elif rule.remote_address_group_id is not None:
            # an address group not (yet) known, or empty, allows nothing: no clause 2 flow
            ag = view.get(AddressGroup, rule.remote_address_group_id)
            remote = list(ag.networks(version)) if ag is not None else []
        assert (remote is None) == (kind is None)  # a remote side we do not know: never "any"
        n = 2 if remote is None else 3
        parts: list[tuple[dict[str, object], Conjunction]] = []
        tracked = clause_state(stateful)
        for net in remote or ():
            value = (str(net.network_address) if net.prefixlen == net.max_prefixlen
                     else (str(net.network_address), str(net.netmask)))
            parts.append(({"eth_type": eth, addr_field: value, **tracked},
                          Conjunction(cid, 2, n)))
        parts += [(dict(match, **tracked), Conjunction(cid, n, n))
                  for match in self._l4(rule, eth)]
        # the verdict: a new (or still allowed) connection in the original direction; the
        # zone register still holds the port's zone (set before the lookup). Stateless: the
        # packet itself, untracked, passes.
        owner = f"secgroup/{gid}"
        if not stateful:  # (a packet a stateful sender's chassis tracked still passes)
            return stage, Flow.make(stage, PRIO_RULE, {"conj_id": cid, "eth_type": eth},
                                    (Next(),), owner), parts
        verdict = Flow.make(stage, PRIO_RULE, {"conj_id": cid, "eth_type": eth, "ct_state": (
            CT_TRACKED, CT_TRACKED | CT_REPLY | CT_INVALID)},
            (Ct(commit=True, zone="zone", mark=(0, BLOCKED)), Next()), owner)
        return stage, verdict, parts

    @staticmethod
    def _l4(rule: SecurityGroupRule, eth: int) -> list[dict[str, object]]:
        """The protocol clause: one match per masked port range (or ICMP type/code)."""
        base: dict[str, object] = {"eth_type": eth}
        proto = rule.protocol
        if proto is None:
            return [base]
        number = PROTOCOL_NUMBERS.get(proto, proto) if isinstance(proto, str) else proto
        base["ip_proto"] = number
        lo, hi = rule.port_range_min, rule.port_range_max
        if proto in ("tcp", "udp", "sctp"):
            if lo is None or hi is None or (lo, hi) == (0, 65535) or (lo, hi) == (1, 65535):
                return [base]
            return [dict(base, **{f"{proto}_dst": (v, m) if m != 0xFFFF else v})
                    for v, m in port_mask_ranges(lo, hi)]
        if proto in ("icmp", "icmpv6"):
            kind = "icmpv4" if proto == "icmp" else "icmpv6"
            if lo is not None:
                base[f"{kind}_type"] = lo
                if hi is not None:
                    base[f"{kind}_code"] = hi
        return [base]
