"""What an app is: declared stages, pure compile code one owner at a time, and (optionally)
packet-in handlers and meters.

* ``name``: the app's name (its stevedore entry point in ``dragonflow.apps``);
* ``stages``: the :class:`~dragonflow.pipeline.stages.Stage` s it owns -- its flows may only
  go into these (lowering rejects anything else);
* ``meters`` (optional): :class:`~dragonflow.pipeline.stages.MeterDecl` s its flows use;
* ``owners(topo)``: the owners ("<table>/<id>") the app has flows for right now;
* ``owner_parts(topo)`` and ``part_owners(topo, part)`` (optional, together): more owners,
  listed by part -- the engine re-lists only the parts whose reads a change touched, so an
  app with an owner per port of every local network lists one network's ports when one
  port comes, not all of them (:func:`network_parts` / :func:`network_part_owners`); an
  owner is the app's while ``owners()`` or any part names it;
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


NET_PART = "net/"


def network_parts(topo: OwnersView) -> set[str]:
    """One part per network with a local port: its ports are owners ("port/<id>", local or
    remote; see :func:`network_part_owners`)."""
    return {NET_PART + n for n in topo.local_networks}


def scoped_network_parts(topo: OwnersView) -> set[str]:
    """One part per local network or network a local router reaches (routed traffic is
    delivered to those ports from this chassis)."""
    return {NET_PART + n for n in topo.local_networks | topo.routed_networks}


def routed_network_parts(topo: OwnersView) -> set[str]:
    """One part per network a local router has an interface on."""
    return {NET_PART + n for n in topo.routed_networks}


def network_part_owners(topo: OwnersView, part: str) -> frozenset[str]:
    """The owners of a network part: "port/<id>" of each port of the network."""
    return topo.port_owners(part[len(NET_PART):])


def local_router_owners(topo: OwnersView) -> set[str]:
    return {f"router/{r}" for r in topo.local_routers}
