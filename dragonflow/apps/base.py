"""What an app is: pure compile code, one owner at a time.

``owners(topo)`` lists the owners ("<table>/<id>") the app has flows for right now;
``compile(view, owner)`` returns that owner's flows, reading only through ``view`` (which
records dependencies). Apps never send anything and never touch another app's stages.
"""

from __future__ import annotations

from typing import Protocol

from dragonflow.controller.topology import Topology, View
from dragonflow.pipeline.flow import Flow


class App(Protocol):
    name: str

    def owners(self, topo: Topology) -> set[str]: ...

    def compile(self, view: View, owner: str) -> list[Flow]: ...


def split_owner(owner: str) -> tuple[str, str]:
    table, _, obj_id = owner.partition("/")
    return table, obj_id


def local_network_ports(topo: Topology) -> set[str]:
    """Owners "port/<id>" of every port (local or remote) in a network with a local port."""
    return {f"port/{pid}" for net in topo.local_networks for pid in topo.net_ports.get(net, ())}


def scoped_network_ports(topo: Topology) -> set[str]:
    """Owners "port/<id>" of every port in a local network or a network a local router
    reaches (routed traffic is delivered to those ports from this chassis)."""
    nets = topo.local_networks | topo.routed_networks
    return {f"port/{pid}" for net in nets for pid in topo.net_ports.get(net, ())}


def local_router_owners(topo: Topology) -> set[str]:
    return {f"router/{r}" for r in topo.local_routers}
