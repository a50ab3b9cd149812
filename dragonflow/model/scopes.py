"""Relevance scopes: what part of the NB an object belongs to, for the change stream's filter
(a chassis follows the scopes its local ports need: pipeline/topology.py) and for the tags a
writer puts on each change (db/nbapi.py), so a database that can filter on the server
(ovsdb) sends a subscriber only its scopes' changes."""

from __future__ import annotations

from dragonflow.model.base import NbObject
from dragonflow.model.l2 import Chassis, Network, Port, Subnet
from dragonflow.model.l3 import FloatingIP, Router
from dragonflow.model.secgroup import AddressGroup


def relevance_scopes(obj: NbObject) -> tuple[str, ...]:
    """The scopes an object belongs to, for the change stream's filter: networks, not
    projects. A network, its subnets and ports are in ``net:<network id>``; a router in the
    scope of every network it has an interface or its gateway on; a floating IP in its
    external network's and its project's; chassis are global; anything else (security
    groups, QoS policies) in ``project:<project id>``."""
    if isinstance(obj, Network):  # an external one also in its physnet's ("ext:<physnet>")
        if obj.external and obj.physical_network:
            return (f"net:{obj.id}", f"ext:{obj.physical_network}")
        return (f"net:{obj.id}",)
    if isinstance(obj, Port):  # and the groups it is a member of (remote-group rules)
        return (f"net:{obj.network_id}", *(f"sg:{g}" for g in obj.security_groups))
    if isinstance(obj, Subnet):
        return (f"net:{obj.network_id}",)
    if isinstance(obj, Router):
        scopes = [f"net:{rp.network_id}" for rp in obj.ports]
        if obj.gateway is not None:
            scopes.append(f"net:{obj.gateway.network_id}")
        return tuple(scopes)
    if isinstance(obj, FloatingIP):
        return (f"net:{obj.floating_network_id}", f"project:{obj.topic}")
    if isinstance(obj, AddressGroup):  # any project's: followed where a local rule names it
        return (f"ag:{obj.id}", f"project:{obj.topic}") if obj.topic else ("",)
    if isinstance(obj, Chassis) or not obj.topic:
        return ("",)
    return (f"project:{obj.topic}",)


def relevance_scope_id(scope: str) -> str:
    """The id every object of a relevance scope carries in its stored form: ``net:<id>``
    objects name the network (id, network_id, a router port's or gateway's network_id, a
    floating IP's floating_network_id), ``ext:<physnet>`` networks their physical network,
    ``project:<id>`` objects their project (topic),
    ``sg:<id>`` ports their security group, ``ag:<id>`` an address group its id."""
    return scope.split(":", 1)[1]


