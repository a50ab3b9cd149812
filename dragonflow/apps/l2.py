"""Distributed L2: destination lookup by MAC, and broadcast/multicast replication.

Per port (local or remote) of a network with a local port: ``eth_dst=<mac>`` -> out_port.
Per such network: broadcast/multicast goes to every local port (OVS never outputs a packet to
the port it came in on) and to ONE representative port on each remote chassis hosting ports
of the network, whose egress flow tunnels it there; the far side floods it locally only
(packets from a tunnel are never re-tunnelled). Unknown unicast: the stage's miss drops it.
"""

from __future__ import annotations

from dragonflow.apps.base import local_network_ports, local_router_owners, split_owner
from dragonflow.pipeline.flow import Flow, Goto, Resubmit, SetReg
from dragonflow.pipeline.stages import Stage, fields
from dragonflow.pipeline.topology import OwnersView, View

MULTICAST = ("01:00:00:00:00:00", "01:00:00:00:00:00")


class L2App:
    name = "l2"
    stages = (
        Stage("l2_lookup", after=("classify", "arp_responder", "nd_responder"),
              matches=fields("network", "from_tunnel", "eth_dst"), masked=fields("eth_dst"),
              sets=fields("out_port", "router"), goto=("l3_input", "deliver"),
              resubmit=("egress",), miss="drop",
              doc="destination MAC -> out_port (or the router); broadcast replication"),
    )

    def owners(self, topo: OwnersView) -> set[str]:
        return (local_network_ports(topo) | {f"network/{n}" for n in topo.local_networks}
                | local_router_owners(topo))

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
        local: list[int] = []
        remote_rep: dict[str, int] = {}
        for p in view.ports_of_network(net_id):
            if view.ofport(p.id) is not None:
                local.append(p.unique_key)
            elif p.binding is not None and p.binding.kind == "chassis":
                chassis = p.binding.chassis_id
                if chassis != view.facts.chassis_id:
                    remote_rep.setdefault(chassis, p.unique_key)
        to_local: list = []
        for key in sorted(local):
            to_local += [SetReg("out_port", key), Resubmit("egress")]
        to_remote: list = []
        for chassis in sorted(remote_rep):
            to_remote += [SetReg("out_port", remote_rep[chassis]), Resubmit("egress")]
        match = {"network": net.unique_key, "eth_dst": MULTICAST}
        tunnel_in = dict(match, from_tunnel=1)
        return [
            Flow.make("l2_lookup", 200, match, tuple(to_local + to_remote), owner),
            Flow.make("l2_lookup", 210, tunnel_in, tuple(to_local), owner),
        ]
