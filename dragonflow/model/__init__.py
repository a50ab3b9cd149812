"""The typed NB model: immutable, validated objects with a strict JSON codec.

``TABLES`` maps each table name to its class; ``obj_from_json`` decodes one object;
``REFERENCED_BY[t]`` lists the (referring table, index name) pairs whose index value is the
id of a ``t`` object, so a delete can be refused while anything still refers to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dragonflow.model.base import NbObject, Record
from dragonflow.model.errors import ValidationError
from dragonflow.model.fields import IPAddress, IPInterface, IPNetwork
from dragonflow.model.l2 import (
    AddressPair,
    Binding,
    Chassis,
    DhcpOpt,
    FixedIp,
    HostRoute,
    Network,
    Port,
    Subnet,
)
from dragonflow.model.l3 import FloatingIP, Gateway, Route, Router, RouterPort
from dragonflow.model.qos import QosPolicy, QosRule
from dragonflow.model.secgroup import AddressGroup, SecurityGroup, SecurityGroupRule

TABLES: dict[str, type[NbObject]] = {
    cls.TABLE: cls
    for cls in (Chassis, Network, Subnet, Port, Router, SecurityGroup, FloatingIP, QosPolicy,
                AddressGroup)
}

REFERENCED_BY: dict[str, list[tuple[str, str]]] = {
    "network": [("subnet", "network_id"), ("port", "network_id"), ("router", "network_id"),
                ("floatingip", "floating_network_id")],
    "subnet": [("port", "subnet_id"), ("router", "subnet_id")],
    "securitygroup": [("port", "security_group"), ("securitygroup", "remote_group")],
    "qospolicy": [("port", "qos_policy_id"), ("network", "qos_policy_id")],
    "addressgroup": [("securitygroup", "remote_address_group")],
    "port": [("floatingip", "port_id")],
    "router": [("floatingip", "router_id")],
}


def obj_from_json(table: str, data: Mapping[str, Any]) -> NbObject:
    """Decode one object of ``table`` from its JSON dict (strict)."""
    cls = TABLES.get(table)
    if cls is None:
        raise ValidationError(str(table), "", "table",
                              f"unknown table {table!r}; known: {', '.join(sorted(TABLES))}")
    return cls.from_dict(data)


__all__ = [
    "REFERENCED_BY",
    "TABLES",
    "AddressGroup",
    "AddressPair",
    "Binding",
    "Chassis",
    "DhcpOpt",
    "FixedIp",
    "FloatingIP",
    "Gateway",
    "HostRoute",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "NbObject",
    "Network",
    "Port",
    "QosPolicy",
    "QosRule",
    "Record",
    "Route",
    "Router",
    "RouterPort",
    "SecurityGroup",
    "SecurityGroupRule",
    "Subnet",
    "ValidationError",
    "obj_from_json",
]
