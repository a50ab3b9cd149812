"""Distributed L2: destination lookup by MAC, and broadcast/multicast replication.

Per port (local or remote) of a network with a local port: ``eth_dst=<mac>`` -> out_port.
Per such network: broadcast/multicast goes to every local port (OVS never outputs a packet to
the port it came in on) and to ONE representative port on each remote chassis hosting ports
of the network, whose egress flow tunnels it there; the far side floods it locally only
(packets from a tunnel are never re-tunnelled). Each copy enters the output side where a
unicast frame does (``deliver``), so it passes the receiving port's ingress security groups
like any other packet (conntrack inside a resubmit: OVS freezes the rest of the flood and
resumes it after the recirculation). Unknown unicast: the stage's miss drops it.

A provider network (flat, VLAN) has no representatives: its one copy for the other chassis
(and the outside) goes to ``LOCALNET``, the network's physical network, and so does unknown
unicast from a local port (a host outside the cloud); what comes from the physical network
is flooded to local ports only.
"""

from __future__ import annotations

from dragonflow.apps.base import (
    local_router_owners,
    network_part_owners,
    network_parts,
    split_owner,
)
from dragonflow.pipeline.fields import LOCALNET
from dragonflow.pipeline.flow import Flow, Goto, Resubmit, SetReg
from dragonflow.pipeline.stages import Stage, fields
from dragonflow.pipeline.topology import ROUTER_DEVICE_OWNERS, OwnersView, View

MULTICAST = ("01:00:00:00:00:00", "01:00:00:00:00:00")
PROVIDER_TYPES = ("flat", "vlan")


class L2App:
    name = "l2"
    stages = (
        Stage("l2_lookup", after=("classify", "arp_responder", "nd_responder"),
              matches=fields("network", "from_tunnel", "eth_dst"), masked=fields("eth_dst"),
              sets=fields("out_port", "router"), goto=("l3_input", "deliver"),
              resubmit=("deliver",), miss="drop",
              doc="destination MAC -> out_port (or the router); broadcast replication"),
    )

    owner_parts = staticmethod(network_parts)  # its port owners, by network
    part_owners = staticmethod(network_part_owners)

    def owners(self, topo: OwnersView) -> set[str]:
        return {f"network/{n}" for n in topo.local_networks} | local_router_owners(topo)

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, obj_id = split_owner(owner)
        if table == "port":
            return self._port(view, obj_id, owner)
        if table == "router":
            return self._router(view, obj_id, owner)
        return self._flood(view, obj_id, owner)

    def _router(self, view: View, router_id: str, owner: str) -> list[Flow]:
        """A frame to a router interface's MAC continues in the distributed router."""
        router = view.router(router_id)
        return [Flow.make("l2_lookup", 100, {"network": net.unique_key, "eth_dst": rp.mac},
                          (SetReg("router", router.unique_key), Goto("l3_input")), owner)
                for rp, net in view.local_interfaces(router_id) if router is not None]

    def _port(self, view: View, port_id: str, owner: str) -> list[Flow]:
        found = view.local_port(port_id)
        if found is None:
            return []
        port, net = found
        return [Flow.make("l2_lookup", 100, {"network": net.unique_key, "eth_dst": port.mac},
                          (SetReg("out_port", port.unique_key), Goto("deliver")), owner)]

    def _flood(self, view: View, net_id: str, owner: str) -> list[Flow]:
        net = view.network(net_id)
        if net is None or not view.is_local_network(net_id):
            return []
        # from the topology's per-network indexes: a port joining elsewhere on a chassis
        # that already has ports of the network changes nothing here
        local = [p.unique_key for p in view.local_ports_of_network(net_id)
                 if p.device_owner not in ROUTER_DEVICE_OWNERS]
        # (a port bound elsewhere but still plugged here -- a move in progress -- is local:
        # its egress is this chassis' ofport, so it cannot carry the copy to its chassis)
        provider = net.network_type in PROVIDER_TYPES
        remote_rep = {} if provider else {
            chassis: p.unique_key for chassis, p in view.chassis_of_network(net_id).items()
            if chassis != view.facts.chassis_id and view.ofport(p.id) is None}
        to_local: list = []
        for key in sorted(local):
            to_local += [SetReg("out_port", key), Resubmit("deliver")]
        to_remote: list = []
        for chassis in sorted(remote_rep):
            to_remote += [SetReg("out_port", remote_rep[chassis]), Resubmit("deliver")]
        if provider:
            to_remote = [SetReg("out_port", LOCALNET), Resubmit("deliver")]
        match = {"network": net.unique_key, "eth_dst": MULTICAST}
        tunnel_in = dict(match, from_tunnel=1)
        flows = [
            Flow.make("l2_lookup", 200, match, tuple(to_local + to_remote), owner),
            Flow.make("l2_lookup", 210, tunnel_in, tuple(to_local), owner),
        ]
        if provider:  # unknown unicast from a local port: a host on the physical network
            flows.append(Flow.make("l2_lookup", 1, {"network": net.unique_key, "from_tunnel": 0},
                                   (SetReg("out_port", LOCALNET), Goto("deliver")), owner))
        return flows
