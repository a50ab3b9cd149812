"""What an app is: declared stages, pure compile code one owner at a time, and (optionally)
packet-in handlers and meters.

* ``name``: the app's name (its stevedore entry point in ``dragonflow.apps``);
* ``stages``: the :class:`~dragonflow.pipeline.stages.Stage` s it owns -- its flows may only
  go into these (lowering rejects anything else);
* ``meters`` (optional): :class:`~dragonflow.pipeline.stages.MeterDecl` s its flows use;
* ``owners(topo)``: the owners ("<table>/<id>") the app has flows for right now;
* ``compile(view, owner)``: that owner's flows, reading only through ``view`` (which
  records dependencies);
* ``packet_in(topo, stage, pin) -> Answer`` / ``flow_removed(topo, stage, msg) -> touched``
  (optional): for its stages declared ``punt=True`` (see pipeline/punt.py);
* ``configure(facts)`` (optional): called once with this chassis' ChassisFacts before the
  pipeline is assembled, for declarations that follow configuration (e.g. a meter's rate).

Apps never send anything, never name a table number, and never write into another app's
stage; "go on" is ``Next()``, another stage only through the stage declaration's ``goto``.
"""

from __future__ import annotations

from typing import Protocol

from dragonflow.pipeline.flow import Flow
from dragonflow.pipeline.stages import Stage
from dragonflow.pipeline.topology import OwnersView, View


class App(Protocol):
    name: str
    stages: tuple[Stage, ...]

    def owners(self, topo: OwnersView) -> set[str]: ...

    def compile(self, view: View, owner: str) -> list[Flow]: ...


def split_owner(owner: str) -> tuple[str, str]:
    table, _, obj_id = owner.partition("/")
    return table, obj_id


def local_network_ports(topo: OwnersView) -> set[str]:
    """Owners "port/<id>" of every port (local or remote) in a network with a local port."""
    return {f"port/{pid}" for net in topo.local_networks for pid in topo.net_ports.get(net, ())}


def scoped_network_ports(topo: OwnersView) -> set[str]:
    """Owners "port/<id>" of every port in a local network or a network a local router
    reaches (routed traffic is delivered to those ports from this chassis)."""
    nets = topo.local_networks | topo.routed_networks
    return {f"port/{pid}" for net in nets for pid in topo.net_ports.get(net, ())}


def local_router_owners(topo: OwnersView) -> set[str]:
    return {f"router/{r}" for r in topo.local_routers}
