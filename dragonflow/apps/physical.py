"""The physical layer: the only app that knows ofports and tunnel ports.

classify: a local port's ofport -> (in_port key, network key), on to the ARP responder;
          a tunnel port + VNI -> network key, flagged "from tunnel", on to L2 lookup.
egress:   out_port of a local port -> its ofport; out_port of a remote port -> encapsulate
          towards its chassis with the network's VNI (never for packets from a tunnel).

Provider networks (flat, VLAN; ``[controller] bridge_mappings``): the patch to the bridge of
the network's physical network is the network's "localnet" on this chassis. From it, a
frame of the network (untagged for flat, its VLAN tag for VLAN, popped here) is classified
as from outside (``from_tunnel``: never sent back out, flooded to local ports only) and goes
to L2 lookup; towards it go frames for the network's ports on other chassis and for
``LOCALNET`` (a broadcast's one copy, unknown unicast), tagged at the boundary. Nothing of
a provider network goes into a tunnel: its chassis meet on the physical network.

The hold: a booting VM asks for its address (DHCPv4 DISCOVER, DHCPv6 SOLICIT, router
solicitation) the moment its interface is up, often before this chassis has installed its
port's flows; classify has no flow for that ofport yet and the request would be lost, the
client backing off for seconds. Such requests from an ofport classify does not know are
punted instead (one shared meter, ``hold``), kept (at most HOLD_PER_PORT per ofport, for
HOLD_PORTS ofports, HOLD_SECONDS) and replayed through the pipeline as from that ofport as
soon as its port's flows are in (``port_wired``), or at once when the port was wired while
the request waited in the packet-in queue: the DHCP and RA stages answer them as if they had
arrived just then. Nothing else is held: data traffic before the port is wired is
dropped, as it always was.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from dragonflow.apps.base import network_part_owners, scoped_network_parts, split_owner
from dragonflow.model import Network
from dragonflow.ovs.ofchannel import PacketIn
from dragonflow.pipeline.fields import LOCALNET
from dragonflow.pipeline.flow import (
    Action,
    Flow,
    Goto,
    Meter,
    Next,
    Output,
    OutputTunnel,
    PopVlan,
    PushVlan,
    SetField,
    SetReg,
    ToController,
)
from dragonflow.pipeline.punt import Answer
from dragonflow.pipeline.stages import MeterDecl, Stage, fields
from dragonflow.pipeline.topology import OwnersView, Topology, View

TUNNEL_TYPES = ("vxlan", "geneve", "gre")
PROVIDER_TYPES = ("flat", "vlan")
VLAN_PRESENT = 0x1000  # OFPVID_PRESENT: vlan_vid of a tagged frame is VLAN_PRESENT | id


def wire_vlan(net: Network) -> int:
    """vlan_vid of the network's frames on its physical network (0: untagged)."""
    if net.network_type == "vlan" and net.segmentation_id is not None:
        return VLAN_PRESENT | net.segmentation_id
    return 0


def to_physnet(net: Network, patch: int) -> tuple[Action, ...]:
    """Out of the patch to the network's physical network, tagged if it is a VLAN."""
    vid = wire_vlan(net)
    if vid:
        return (PushVlan(), SetField("vlan_vid", vid), Output(patch))
    return (Output(patch),)
HOLD_OWNER = "hold/unwired"
# what a booting VM sends first to get an address: DHCPv4, DHCPv6, router solicitation
HOLD_MATCHES = (
    {"eth_type": 0x0800, "ip_proto": 17, "udp_src": 68, "udp_dst": 67},
    {"eth_type": 0x86DD, "ip_proto": 17, "udp_src": 546, "udp_dst": 547},
    {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 133},
)
HOLD_SECONDS = 10.0
HOLD_PER_PORT = 4
HOLD_PORTS = 256


class PhysicalApp:
    name = "physical"
    stages = (
        Stage("classify", physical=True,
              matches=fields("in_ofport", "tunnel_id", "vlan_vid", "eth_type", "ip_proto",
                             "udp_src", "udp_dst", "icmpv6_type"),
              sets=fields("network", "in_port", "from_tunnel"), goto=("l2_lookup",),
              punt=True, miss="drop",
              doc="ofport -> logical in_port + network; tunnel VNI -> network; address "
                  "requests of an ofport not wired yet held"),
        Stage("deliver", after=("l2_lookup", "l3_lookup"), before=("egress",), miss="next",
              doc="where a frame for a known out_port enters the output side: services "
                  "acting on the destination port (ingress security) sit between it and "
                  "egress"),
        Stage("egress", physical=True, after=("classify", "l2_lookup", "l3_lookup"),
              matches=fields("out_port", "from_tunnel", "network"), sets=fields("vlan_vid"),
              miss="drop",
              doc="out_port -> local ofport, or encapsulate to the port's chassis"),
    )

    meters = (MeterDecl("hold", rate=100, burst=100),)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # ofport -> [(when, frame)], oldest ofport first
        self.held: OrderedDict[int, list[tuple[float, bytes]]] = OrderedDict()
        self._replayed: OrderedDict[bytes, None] = OrderedDict()  # replayed on arrival

    owner_parts = staticmethod(scoped_network_parts)  # its port owners, by network
    part_owners = staticmethod(network_part_owners)

    def owners(self, topo: OwnersView) -> set[str]:
        # (the patches are set before the first compile: listing them needs no dependency)
        physnets = {f"physnet/{p}" for p in topo.facts.phys_ofports}
        return {f"network/{n}" for n in topo.local_networks} | {HOLD_OWNER} | physnets

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, obj_id = split_owner(owner)
        if owner == HOLD_OWNER:
            return [Flow.make("classify", 1, m, (Meter("hold"), ToController()), owner)
                    for m in HOLD_MATCHES]
        if table == "network":
            return self._tunnel_in(view, obj_id, owner)
        if table == "physnet":  # what no local provider network takes: dropped, never held
            patch = view.phys_ofport(obj_id)
            return [] if patch is None else [
                Flow.make("classify", 50, {"in_ofport": patch}, (), owner)]
        port = view.port(obj_id)
        net = view.network(port.network_id) if port else None
        if port is None or net is None or not (
                view.is_local_network(net.id) or view.is_routed_network(net.id)):
            return []
        ofport = view.ofport(port.id)
        if ofport is not None:
            return [
                Flow.make("classify", 100, {"in_ofport": ofport},
                          (SetReg("in_port", port.unique_key), SetReg("network", net.unique_key),
                           Next()), owner),
                Flow.make("egress", 100, {"out_port": port.unique_key}, (Output(ofport),), owner),
            ]
        if port.binding is None or port.binding.kind != "chassis":
            return []
        if net.network_type in PROVIDER_TYPES:  # its chassis meet on the physical network
            patch = view.phys_ofport(net.physical_network)
            if patch is None or port.binding.chassis_id == view.facts.chassis_id:
                return []
            return [Flow.make("egress", 100, {"out_port": port.unique_key, "from_tunnel": 0},
                              to_physnet(net, patch), owner)]
        chassis = view.chassis(port.binding.chassis_id)
        if (chassis is None or chassis.id == view.facts.chassis_id
                or net.network_type not in TUNNEL_TYPES
                or net.network_type not in chassis.tunnel_types
                or (tunnel := view.tunnel_ofport(net.network_type)) is None):
            return []
        assert net.segmentation_id is not None
        return [Flow.make("egress", 100, {"out_port": port.unique_key, "from_tunnel": 0},
                          (OutputTunnel(tunnel, str(chassis.ip), net.segmentation_id),),
                          owner)]

    def _tunnel_in(self, view: View, net_id: str, owner: str) -> list[Flow]:
        net = view.network(net_id)
        if net is None or not view.is_local_network(net_id):
            return []
        if net.network_type in PROVIDER_TYPES:
            return self._localnet(view, net, owner)
        if net.network_type not in TUNNEL_TYPES:
            return []
        ofport = view.tunnel_ofport(net.network_type)
        if ofport is None or net.segmentation_id is None:
            return []
        return [Flow.make("classify", 100,
                          {"in_ofport": ofport, "tunnel_id": net.segmentation_id},
                          (SetReg("network", net.unique_key), SetReg("from_tunnel", 1),
                           Goto("l2_lookup")), owner)]

    def _localnet(self, view: View, net: Network, owner: str) -> list[Flow]:
        """The provider network's frames from its physical network, and to it."""
        patch = view.phys_ofport(net.physical_network)
        if patch is None:
            return []
        vid = wire_vlan(net)
        strip: tuple[Action, ...] = (PopVlan(),) if vid else ()
        return [
            Flow.make("classify", 100, {"in_ofport": patch, "vlan_vid": vid},
                      (*strip, SetReg("network", net.unique_key), SetReg("from_tunnel", 1),
                       Goto("l2_lookup")), owner),
            Flow.make("egress", 100, {"out_port": LOCALNET, "network": net.unique_key,
                                      "from_tunnel": 0}, to_physnet(net, patch), owner),
        ]

    # --- the hold ------------------------------------------------------------------------
    def packet_in(self, topo: Topology, stage: str, pin: PacketIn) -> Answer:
        """An address request from an ofport classify does not know: kept for its port."""
        ofport = pin.in_port
        if (ofport is None or ofport in topo.facts.tunnel_ofports.values()
                or ofport in topo.facts.phys_ofports.values()):
            return Answer()  # a tunnel's unknown VNI is not a booting VM
        now = self.clock()
        self._expire(now)
        known = ofport in topo.facts.ofports.values()
        if known and pin.data not in self._replayed:
            # its port was wired while this waited in the packet-in queue: this answer goes
            # out after this iteration's flows are in; once (should it come back, its port
            # has no flows after all: it waits for port_wired like the others)
            self._replayed[pin.data] = None
            while len(self._replayed) > HOLD_PORTS:
                self._replayed.popitem(last=False)
            return Answer(replay=[(ofport, pin.data)])
        frames = self.held.pop(ofport, [])
        frames = (frames + [(now, pin.data)])[-HOLD_PER_PORT:]
        self.held[ofport] = frames
        while len(self.held) > HOLD_PORTS:
            self.held.popitem(last=False)
        return Answer()

    def port_wired(self, topo: Topology, port_id: str) -> Answer:
        """The port's flows are in: what its ofport sent before goes through them now."""
        ofport = topo.facts.ofports.get(port_id)
        if not self.held or ofport is None:
            return Answer()
        fresh = self.clock() - HOLD_SECONDS
        return Answer(replay=[(ofport, frame) for when, frame in self.held.pop(ofport, [])
                              if when >= fresh])

    def _expire(self, now: float) -> None:
        for ofport in [o for o, f in self.held.items() if f[-1][0] < now - HOLD_SECONDS]:
            del self.held[ofport]
