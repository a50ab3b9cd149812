"""IPv6 ND responder: neighbour solicitations for any NB-known IPv6 address of a port or a
router interface in the network are answered on this chassis. The flows pick the known
targets out (no solicitation for a known address leaves the node) and punt them, policed by
the app's meter; the advertisement itself is built by this app's packet-in handler, since
OpenFlow cannot turn a solicitation's options into an advertisement's."""

from __future__ import annotations

import logging

from dragonflow.apps.base import (
    local_router_owners,
    network_part_owners,
    network_parts,
    split_owner,
)
from dragonflow.model import Network, Router
from dragonflow.ovs import packets
from dragonflow.ovs.ofchannel import PacketIn
from dragonflow.pipeline.fields import read_field
from dragonflow.pipeline.flow import Flow, Meter, ToController
from dragonflow.pipeline.punt import Answer
from dragonflow.pipeline.stages import MeterDecl, Stage, fields
from dragonflow.pipeline.topology import OwnersView, Topology, View

LOG = logging.getLogger(__name__)
NS = {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 135}


class NdResponderApp:
    name = "nd"
    stages = (
        Stage("nd_responder", after=("classify", "arp_responder"),
              matches=fields("network", "eth_type", "ip_proto", "icmpv6_type",
                             "ipv6_nd_target"),
              punt=True, miss="next", doc="solicitations for known IPv6 addresses punted"),
    )
    # a VM flooding solicitations for known targets costs the controller at most this
    meters = (MeterDecl("punt", rate=500, burst=100, per_port=100, per_port_burst=20),)

    owner_parts = staticmethod(network_parts)  # its port owners, by network
    part_owners = staticmethod(network_part_owners)

    def owners(self, topo: OwnersView) -> set[str]:
        return local_router_owners(topo)

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, obj_id = split_owner(owner)
        targets: list[tuple[int, str]] = []  # (network key, address)
        if table == "router":
            interfaces = view.local_interfaces(obj_id)
            targets = [(net.unique_key, str(c.ip))
                       for rp, net in interfaces for c in rp.cidrs if c.version == 6]
        elif found := view.local_port(obj_id):
            port, net = found
            targets = [(net.unique_key, str(f.ip_address)) for f in port.fixed_ips
                       if f.ip_address.version == 6]
        return [Flow.make("nd_responder", 100, dict(NS, network=key, ipv6_nd_target=ip),
                          (Meter("punt"), ToController()), owner)
                for key, ip in targets]

    def packet_in(self, topo: Topology, stage: str, pin: PacketIn) -> Answer:
        answer = Answer()
        req = packets.parse(pin.data)
        key = read_field(pin.match, "network")
        net = topo.by_unique_key(Network, key)
        if net is None or req.ns_target is None or pin.in_port is None:
            return answer
        if req.ip_src in ("::", None):
            # duplicate address detection (RFC 4862 5.4): the owner probing its own new
            # address; answering would make it give the address up
            return answer
        frame = None
        for port in topo.ports_holding(net.id, req.ns_target):
            frame = packets.neighbour_advertisement(req, req.ns_target, port.mac, False)
            break
        else:
            for router in topo.all(Router):
                for rp in router.ports:
                    if rp.network_id == net.id and any(str(c.ip) == req.ns_target
                                                       for c in rp.cidrs):
                        frame = packets.neighbour_advertisement(req, req.ns_target, rp.mac,
                                                                True)
        if frame is not None:
            answer.frames.append((pin.in_port, frame))
        return answer
