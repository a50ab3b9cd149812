"""Port security (anti-spoofing): what a local port with ``port_security_enabled`` may send.

Neutron's semantics, as its OVS firewall and OVN's port-security tables have them: a port
may send only from its own MAC and fixed IPs and from its allowed address pairs (an IP or a
CIDR, with the pair's own MAC when it names one, else the port's MAC). Everything else it
sends is dropped before anything forwards it. A port with port security off gets no flows
at all: the stage's miss is "next", so its frames pass untouched.

Where: stage ``port_security``, after the local responders (ARP, DHCP, ND, RA: they answer
the sender itself, and their own flows match only well-formed requests, so a spoofed request
they answer reaches nobody else) and before anything forwards a frame (security groups, L2,
the router). (So a duplicate address detection for a fixed IPv6 address never gets here:
the ND responder punts solicitations for known targets and ignores those from ::.) Frames
from a tunnel skip it (classify sends them straight to L2): they were
checked on the chassis of the port that sent them. Toward a VM nothing is needed here:
l2_lookup delivers a port only frames to its own MAC and broadcast/multicast (unknown
unicast is its miss: dropped).

What a port may send. Per allowed MAC ``m`` (the port's, and each pair's own) the allowed
source addresses ``A4(m)`` / ``A6(m)`` are the port's fixed IPs (for the port's MAC) and the
pairs' IPs or CIDRs (for their MAC); ``A6(m)`` always holds ``m``'s EUI-64 link-local
address. A CIDR is ONE masked match (a prefix), never one flow per address; 0.0.0.0/0 (or
::/0), Neutron's "any address from this MAC", becomes a match without the address at all.

The flows of one port (owner ``port/<id>``, compiled only while the port is plugged here --
``view.ofport`` -- and every one matching ``in_port`` = its key), by priority:

    300  drop, whatever the source: a VLAN tag (no trunk ports exist), a multicast source
         MAC, DHCP server replies (UDP source port 67), DHCPv6 server replies (UDP source
         port 547), router advertisements (ICMPv6 134). Above every allow below.
    200  neighbour discovery, allowed:
         * solicitations (135) from an address of A6(m) with source link-layer option m or
           none (nd_sll 00:..:00), one flow per (address, option);
         * duplicate address detection: a solicitation from :: to ff02::/16 without the
           option (RFC 4861 7.1.1: with it the receivers discard it anyway);
         * MLD reports (131, 143) from :: to ff02::/16 (sent while the link-local address is
           still tentative);
         * advertisements (136): source in A6(m) AND target in A6(m) AND target link-layer
           option m or none -- a conjunctive match (``conjunction(<port key>, k/3)``, every
           clause with in_port and eth_src=m, then ``conj_id=<port key>`` -> next): one flow
           per address and dimension instead of |A6(m)|^2 * 2 (with one address, its
           link-local only -- an IPv4-only port --, the 2 direct flows are fewer). OVS
           takes a conjunction only when no ordinary flow of a higher or equal priority
           matches: the drops at 300 still win, the drop at 190 does not, and nothing else
           at 200 matches an advertisement.
    190  drop every other solicitation / advertisement of the port (a spoofed target or
         link-layer address): they would otherwise pass as IPv6 below.
    100  allowed, per MAC m: IPv4 from A4(m); ARP with eth_src = arp_sha = m and arp_spa in
         A4(m), or 0.0.0.0 (RFC 5227 probes); DHCP client traffic (0.0.0.0, UDP 68 -> 67);
         IPv6 from A6(m). Flows of one priority that overlap (a fixed IP inside a pair's
         CIDR) have the same action, so OpenFlow's "undefined" choice between them is moot.
      1  drop anything else from the port: other MACs, other addresses, :: for anything but
         DAD and MLD, every other ethertype.

The conjunction's id is the port's unique key: unique in this stage's table, and never 0 (a
key is allocated 1..2**32-1; conj_id 0 would match every packet). A port with key 0 (never
allocated, no NB assigns that) gets one drop-everything flow: fail closed.
"""

from __future__ import annotations

import ipaddress
import logging

from dragonflow.apps.base import network_part_owners, network_parts, split_owner
from dragonflow.apps.ra import link_local
from dragonflow.model import Port
from dragonflow.model.fields import IPAddress, IPNetwork
from dragonflow.pipeline.flow import Action, Conjunction, Flow, MatchSpec, Next
from dragonflow.pipeline.stages import Stage, fields
from dragonflow.pipeline.topology import OwnersView, View

LOG = logging.getLogger(__name__)
STAGE = "port_security"

PRIO_DROP = 300
PRIO_ND = 200
PRIO_ND_DROP = 190
PRIO_ALLOW = 100
PRIO_DEFAULT = 1

IPV4, ARP, IPV6 = 0x0800, 0x0806, 0x86DD
UDP, ICMPV6 = 17, 58
NS, NA, RA = 135, 136, 134
MLD_REPORTS = (131, 143)
NO_LLADDR = "00:00:00:00:00:00"  # nd_sll / nd_tll of a message without the option
MULTICAST_MAC = ("01:00:00:00:00:00", "01:00:00:00:00:00")
VLAN_PRESENT = (0x1000, 0x1000)  # OFPVID_PRESENT: the frame has an 802.1Q / 802.1ad tag
LINK_SCOPE_MULTICAST = "ff02::/16"

ICMP6 = {"eth_type": IPV6, "ip_proto": ICMPV6}
DROPS: tuple[MatchSpec, ...] = (
    {"vlan_vid": VLAN_PRESENT},
    {"eth_src": MULTICAST_MAC},
    {"eth_type": IPV4, "ip_proto": UDP, "udp_src": 67},    # DHCP server
    {"eth_type": IPV6, "ip_proto": UDP, "udp_src": 547},   # DHCPv6 server
    dict(ICMP6, icmpv6_type=RA),                           # router advertisement
)


def _source(net: IPAddress | IPNetwork) -> str:
    """A match value: the bare address for a host (/32, /128), else the prefix."""
    if isinstance(net, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(net)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def allowed_sources(port: Port) -> dict[str, tuple[list[str], list[str]]]:
    """Allowed MAC -> (IPv4 sources, IPv6 sources) of ``port``: addresses or prefixes,
    without duplicates, in a stable order (the port's MAC first, then the pairs' MACs as
    listed; each MAC's link-local address first)."""
    own = port.mac.lower()
    out: dict[str, tuple[list[str], list[str]]] = {}

    def add(mac: str, net: IPAddress | IPNetwork | None) -> None:
        v4, v6 = out.setdefault(mac, ([], [link_local(mac)]))
        if net is not None:
            dest = v4 if net.version == 4 else v6
            src = _source(net)
            if src not in dest:
                dest.append(src)

    add(own, None)
    for f in port.fixed_ips:
        add(own, f.ip_address)
    for pair in port.allowed_address_pairs:
        add((pair.mac or own).lower(), pair.ip_address)
    return out


class PortSecurityApp:
    name = "port_security"
    stages = (
        Stage("port_security", after=("ra",), before=("l2_lookup",),
              matches=fields("in_port", "eth_src", "eth_type", "vlan_vid", "ip_proto",
                             "ipv4_src", "ipv6_src", "ipv6_dst", "arp_spa", "arp_sha",
                             "icmpv6_type", "ipv6_nd_target", "ipv6_nd_sll", "ipv6_nd_tll",
                             "udp_src", "udp_dst", "conj_id"),
              masked=fields("eth_src", "ipv4_src", "ipv6_src", "ipv6_dst", "arp_spa",
                            "ipv6_nd_target", "vlan_vid"),
              miss="next", doc="what a port with port security may send (anti-spoofing)"),
    )

    owner_parts = staticmethod(network_parts)  # its port owners, by network
    part_owners = staticmethod(network_part_owners)

    def owners(self, topo: OwnersView) -> set[str]:
        return set()

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, port_id = split_owner(owner)
        port = view.port(port_id) if table == "port" else None
        if port is None or view.ofport(port_id) is None or not port.port_security_enabled:
            return []
        key = port.unique_key
        if key == 0:
            LOG.warning("port %s has no unique key: everything it sends is dropped",
                        port.id)
            return [Flow.make(STAGE, PRIO_DEFAULT, {"in_port": 0}, (), owner)]
        out = _Flows(key, owner)
        for m in DROPS:
            out.drop(PRIO_DROP, m)
        for t in (NS, NA):
            out.drop(PRIO_ND_DROP, dict(ICMP6, icmpv6_type=t))
        out.drop(PRIO_DEFAULT, {})
        for mac, (v4, v6) in allowed_sources(port).items():
            out.ipv4(mac, v4)
            out.ipv6(mac, v6)
        if out.conjunction:
            out.allow(PRIO_ND, {"conj_id": key})  # the advertisements' conjunction matched
        return list(dict.fromkeys(out.flows))  # a pair of 0.0.0.0 repeats the ARP probe


class _Flows:
    """The flows of one port (``in_port`` = ``key``), as they are made."""

    def __init__(self, key: int, owner: str) -> None:
        self.key, self.owner = key, owner
        self.flows: list[Flow] = []
        self.conjunction = False  # a MAC's advertisements need the conjunction

    def _add(self, prio: int, match: MatchSpec, actions: tuple[Action, ...]) -> None:
        self.flows.append(Flow.make(STAGE, prio, dict(match, in_port=self.key), actions,
                                    self.owner))

    def allow(self, prio: int, match: MatchSpec) -> None:
        self._add(prio, match, (Next(),))

    def drop(self, prio: int, match: MatchSpec) -> None:
        self._add(prio, match, ())

    def ipv4(self, mac: str, sources: list[str]) -> None:
        arp = {"eth_src": mac, "eth_type": ARP, "arp_sha": mac}
        for src in sources:
            self.allow(PRIO_ALLOW, {"eth_src": mac, "eth_type": IPV4, "ipv4_src": src})
            self.allow(PRIO_ALLOW, dict(arp, arp_spa=src))
        self.allow(PRIO_ALLOW, dict(arp, arp_spa="0.0.0.0"))  # ARP probe (RFC 5227)
        self.allow(PRIO_ALLOW, {"eth_src": mac, "eth_type": IPV4, "ipv4_src": "0.0.0.0",
                                "ip_proto": UDP, "udp_src": 68, "udp_dst": 67})

    def ipv6(self, mac: str, sources: list[str]) -> None:
        for src in sources:
            self.allow(PRIO_ALLOW, {"eth_src": mac, "eth_type": IPV6, "ipv6_src": src})
        ns = dict(ICMP6, eth_src=mac, icmpv6_type=NS)
        for src in sources:
            for lladdr in (mac, NO_LLADDR):
                self.allow(PRIO_ND, dict(ns, ipv6_src=src, ipv6_nd_sll=lladdr))
        unspecified = dict(ICMP6, eth_src=mac, ipv6_src="::", ipv6_dst=LINK_SCOPE_MULTICAST)
        self.allow(PRIO_ND, dict(unspecified, icmpv6_type=NS, ipv6_nd_sll=NO_LLADDR))
        for t in MLD_REPORTS:
            self.allow(PRIO_ND, dict(unspecified, icmpv6_type=t))
        # advertisements: source AND target allowed AND target link-layer option ours/none
        na = dict(ICMP6, eth_src=mac, icmpv6_type=NA)
        if len(sources) == 1:  # its link-local address only: two flows, no conjunction
            for lladdr in (mac, NO_LLADDR):
                self.allow(PRIO_ND, dict(na, ipv6_src=sources[0], ipv6_nd_target=sources[0],
                                         ipv6_nd_tll=lladdr))
            return
        self.conjunction = True
        dims: list[list[MatchSpec]] = [
            [dict(na, ipv6_src=src) for src in sources],
            [dict(na, ipv6_nd_target=src) for src in sources],
            [dict(na, ipv6_nd_tll=lladdr) for lladdr in (mac, NO_LLADDR)],
        ]
        for k, clauses in enumerate(dims, start=1):
            for m in clauses:
                self._add(PRIO_ND, m, (Conjunction(self.key, k, len(dims)),))
