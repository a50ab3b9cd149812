"""The physical layer: the only app that knows ofports and tunnel ports.

classify: a local port's ofport -> (in_port key, network key), on to the ARP responder;
          a tunnel port + VNI -> network key, flagged "from tunnel", on to L2 lookup.
egress:   out_port of a local port -> its ofport; out_port of a remote port -> encapsulate
          towards its chassis with the network's VNI (never for packets from a tunnel).
"""

from __future__ import annotations

from dragonflow.apps.base import scoped_network_ports, split_owner
from dragonflow.pipeline.flow import Flow, Goto, Next, Output, OutputTunnel, SetReg
from dragonflow.pipeline.stages import Stage, fields
from dragonflow.pipeline.topology import OwnersView, View

TUNNEL_TYPES = ("vxlan", "geneve", "gre")


class PhysicalApp:
    name = "physical"
    stages = (
        Stage("classify", physical=True, matches=fields("in_ofport", "tunnel_id"),
              sets=fields("network", "in_port", "from_tunnel"), goto=("l2_lookup",),
              miss="drop", doc="ofport -> logical in_port + network; tunnel VNI -> network"),
        Stage("egress", physical=True, after=("classify", "l2_lookup", "l3_lookup"),
              matches=fields("out_port", "from_tunnel", "network"), miss="drop",
              doc="out_port -> local ofport, or encapsulate to the port's chassis"),
    )

    def owners(self, topo: OwnersView) -> set[str]:
        return scoped_network_ports(topo) | {f"network/{n}" for n in topo.local_networks}

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, obj_id = split_owner(owner)
        if table == "network":
            return self._tunnel_in(view, obj_id, owner)
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
        if net is None or not view.is_local_network(net_id) or net.network_type not in TUNNEL_TYPES:
            return []
        ofport = view.tunnel_ofport(net.network_type)
        if ofport is None or net.segmentation_id is None:
            return []
        return [Flow.make("classify", 100,
                          {"in_ofport": ofport, "tunnel_id": net.segmentation_id},
                          (SetReg("network", net.unique_key), SetReg("from_tunnel", 1),
                           Goto("l2_lookup")), owner)]
