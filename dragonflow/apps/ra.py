"""IPv6 router advertisements, on every chassis, for its own VMs.

A local port on a network where a router has an interface on an IPv6 subnet with an
``ipv6_ra_mode`` gets one flow: its router solicitations (ICMPv6 133) are punted, policed
per port (meter ``rs``), and answered here; every ``[controller] ra_interval`` seconds each
such port also gets an unsolicited advertisement. The advertisement is what Neutron's
modes say (RFC 4861 / Neutron's radvd configuration):

    ipv6_ra_mode        M  O   prefix option
    slaac               0  0   on-link, autonomous (the VM forms its EUI-64 address)
    dhcpv6-stateless    0  1   on-link, autonomous (addresses by SLAAC, options by DHCPv6)
    dhcpv6-stateful     1  1   on-link only (the address comes from DHCPv6)

from the router interface's link-local address (EUI-64 of its MAC) with its MAC as source
link-layer option and the network's MTU. Subnets attached to a router without an
ipv6_ra_mode get no advertisement from us (an external router may send them).
"""

from __future__ import annotations

import ipaddress
import logging
import struct

from os_ken.lib.packet import ethernet, icmpv6, ipv6, packet

from dragonflow.apps.base import network_part_owners, network_parts, split_owner
from dragonflow.model import Network, Port, Router, Subnet
from dragonflow.ovs.ofchannel import PacketIn
from dragonflow.pipeline.fields import read_field
from dragonflow.pipeline.flow import Flow, Meter, ToController
from dragonflow.pipeline.punt import Answer
from dragonflow.pipeline.stages import MeterDecl, Stage, fields
from dragonflow.pipeline.topology import ChassisFacts, OwnersView, Topology, View

LOG = logging.getLogger(__name__)
RS = {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 133}
ALL_NODES = "ff02::1"
FLAGS = {"slaac": 0, "dhcpv6-stateless": 1, "dhcpv6-stateful": 2}  # M<<1 | O
ROUTER_LIFETIME = 1800
VALID_LIFETIME, PREFERRED_LIFETIME = 2592000, 604800


def link_local(mac: str) -> str:
    """The EUI-64 link-local address of ``mac``."""
    b = bytearray(int(x, 16) for x in mac.split(":"))
    b[0] ^= 0x02
    iid = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + iid))


def advertised(routers: list[Router], get_subnet, net_id: str  # type: ignore[no-untyped-def]
               ) -> list[tuple[str, Subnet]]:
    """(router interface MAC, subnet) for every IPv6 subnet with an ipv6_ra_mode that one of
    ``routers`` has an interface on, in ``net_id``."""
    out = []
    for router in routers:
        for rp in router.ports:
            if rp.network_id != net_id:
                continue
            for sid in rp.subnet_ids:
                sub = get_subnet(Subnet, sid)
                if sub is not None and sub.ip_version == 6 and sub.ipv6_ra_mode is not None:
                    out.append((rp.mac, sub))
    return out


class RouterAdvertApp:
    name = "ra"
    stages = (
        Stage("ra", after=("nd_responder",), before=("l2_lookup",),
              matches=fields("in_port", "eth_type", "ip_proto", "icmpv6_type"),
              punt=True, miss="next", doc="router solicitations punted; advertisements"),
    )
    def __init__(self) -> None:
        self.malformed = 0
        self.meters: tuple[MeterDecl, ...] = self._meter(10, 5)

    @staticmethod
    def _meter(rate: int, burst: int) -> tuple[MeterDecl, ...]:
        return (MeterDecl("rs", rate=200, burst=50, per_port=max(1, rate),
                          per_port_burst=max(0, burst)),)

    def configure(self, facts: ChassisFacts) -> None:
        """[controller] rs_rate_per_port / rs_burst_per_port."""
        self.meters = self._meter(facts.rs_rate_per_port, facts.rs_burst_per_port)

    owner_parts = staticmethod(network_parts)  # its port owners, by network
    part_owners = staticmethod(network_part_owners)

    def owners(self, topo: OwnersView) -> set[str]:
        return set()

    def compile(self, view: View, owner: str) -> list[Flow]:
        _, port_id = split_owner(owner)
        found = view.local_port(port_id)
        if found is None or view.ofport(port_id) is None:
            return []
        port, net = found
        # the routers of this network (recorded reads: a router change recompiles)
        if not self._has_ra(view, net.id):
            return []
        return [Flow.make("ra", 100, dict(RS, in_port=port.unique_key),
                          (Meter("rs"), ToController()), owner)]

    @staticmethod
    def _has_ra(view: View, net_id: str) -> bool:
        return bool(advertised(view.routers_on(net_id), view.get, net_id))

    # --- answers -----------------------------------------------------------------------
    def packet_in(self, topo: Topology, stage: str, pin: PacketIn) -> Answer:
        answer = Answer()
        port = topo.by_unique_key(Port, read_field(pin.match, "in_port"))
        if port is None or pin.in_port is None:
            return answer
        try:
            rs = packet.Packet(pin.data).get_protocol(icmpv6.icmpv6)
        except Exception:  # the codec rejects it: never answered
            self.malformed += 1
            return answer
        if rs is None or rs.type_ != icmpv6.ND_ROUTER_SOLICIT:
            return answer
        answer.frames += [(pin.in_port, f) for f in advertisements(topo, port)]
        return answer

    def periodic_interval(self, facts: object) -> float:
        """Seconds between unsolicited advertisements ([controller] ra_interval)."""
        return float(getattr(facts, "ra_interval", 30.0))

    def periodic(self, topo: Topology) -> Answer:
        """Unsolicited advertisements to every local port that gets them."""
        answer = Answer()
        for pid, ofport in sorted(topo.facts.ofports.items()):
            port = topo.get(Port, pid)
            if port is not None:
                answer.frames += [(ofport, f) for f in advertisements(topo, port)]
        return answer


def advertisements(topo: Topology, port: Port) -> list[bytes]:
    """One advertisement per router interface MAC with advertised subnets on the port's
    network, to the port (all-nodes destination, the port's MAC)."""
    net = topo.get(Network, port.network_id)
    if net is None:
        return []
    routers = [r for rid in sorted(topo.local_routers)
               if (r := topo.get(Router, rid)) is not None]
    by_mac: dict[str, list[Subnet]] = {}
    for mac, sub in advertised(routers, topo.get, net.id):
        by_mac.setdefault(mac, []).append(sub)
    frames = []
    for mac, subs in sorted(by_mac.items()):
        flags = max(FLAGS[s.ipv6_ra_mode] for s in subs if s.ipv6_ra_mode)
        # the MTU option by hand: os-ken 4.2's nd_option_mtu cannot serialize (no _MIN_LEN)
        options: list = [icmpv6.nd_option_sla(hw_src=mac),
                         struct.pack("!BBHI", icmpv6.ND_OPTION_MTU, 1, 0, net.mtu)]
        for sub in sorted(subs, key=lambda s: str(s.cidr)):
            auto = sub.ipv6_ra_mode in ("slaac", "dhcpv6-stateless")
            options.append(icmpv6.nd_option_pi(
                pl=sub.cidr.prefixlen, res1=6 if auto else 4, val_l=VALID_LIFETIME,
                pre_l=PREFERRED_LIFETIME, prefix=str(sub.cidr.network_address)))
        ra = icmpv6.nd_router_advert(ch_l=64, res=flags, rou_l=ROUTER_LIFETIME,
                                     options=options)
        p = packet.Packet()
        p.add_protocol(ethernet.ethernet(dst=port.mac, src=mac, ethertype=0x86DD))
        p.add_protocol(ipv6.ipv6(src=link_local(mac), dst=ALL_NODES, nxt=58, hop_limit=255))
        p.add_protocol(icmpv6.icmpv6(type_=icmpv6.ND_ROUTER_ADVERT, data=ra))
        p.serialize()
        frames.append(bytes(p.data))
    return frames
